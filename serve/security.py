"""Pure ASGI guards that answer before the request body is read: API key, Host allow-list, Origin check,
and the browser safety headers on every response.

The key is checked here, not in a FastAPI dependency, because FastAPI parses the multipart form (spooling
up to the body limit to disk) before dependencies run: an unauthenticated client must not get to upload
100 MB before its 401.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import secrets
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.errors import error_body

#: Content-Security-Policy for every response: scripts only from the gateway itself (the web page and the
#: locally served Swagger UI), inline styles allowed (report heatmap cells), no framing, no plugins
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
#: probes come with whatever Host the orchestrator uses (a pod IP); they reveal nothing
_HOST_EXEMPT = {"/healthz", "/readyz"}


def key_fingerprint(key: str) -> str:
    """What is stored to tie a job to the key that created it (``Job.owner``): a hash prefix, never the key.
    The key is a high-entropy secret chosen by the operator, so an unsalted hash does not make it guessable."""
    return hashlib.sha256(b"dyntta-api-key\0" + key.encode()).hexdigest()[:16]


async def _reject(
    send: Send, status: int, code: str, message: str, headers: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    body = json.dumps(error_body(code, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    headers: Iterable[tuple[bytes, bytes]] = scope["headers"]
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


class HttpMiddleware:
    """A pure ASGI middleware (it answers before FastAPI parses anything) that acts on HTTP requests in
    :meth:`http`; lifespan and websocket messages pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class ApiKeyGuard(HttpMiddleware):
    """401 before the body is read when a key is configured and the path is protected (``protected``).

    The key comes in ``X-API-Key`` or as ``Authorization: Bearer <key>`` (what Prometheus sends). Several
    keys may be configured; the matching key's fingerprint goes to ``request.state.api_key_fingerprint``
    ("" when no key is configured) so jobs can be tied to the key that made them.
    """

    def __init__(self, app: ASGIApp, keys: Iterable[str], protected: Callable[[str], bool]) -> None:
        super().__init__(app)
        self.keys = [(k.encode(), key_fingerprint(k)) for k in keys if k]
        self.protected = protected

    def _match(self, scope: Scope) -> str | None:
        given = _header(scope, b"x-api-key")
        if given is None:
            auth = _header(scope, b"authorization") or ""
            scheme, _, token = auth.partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else None
        if not given:
            return None
        found = None
        for key, fingerprint in self.keys:  # compare with every key: the time says nothing about which
            if secrets.compare_digest(given.encode("latin-1"), key):
                found = fingerprint
        return found

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.keys:  # no key configured: everyone is the same (anonymous) owner
            scope.setdefault("state", {})["api_key_fingerprint"] = ""
            await self.app(scope, receive, send)
            return
        fingerprint = self._match(scope)
        scope.setdefault("state", {})["api_key_fingerprint"] = fingerprint
        if fingerprint is None and self.protected(scope["path"]):
            await _reject(
                send,
                401,
                "unauthorized",
                "missing or wrong API key: send it in the X-API-Key header (or Authorization: Bearer)",
                [(b"www-authenticate", b'Bearer realm="dyntta"'), (b"connection", b"close")],
            )
            return
        await self.app(scope, receive, send)


def _host_name(value: str) -> str:
    """'Example.COM:8000' -> 'example.com'; '[::1]:8000' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def default_allowed_hosts(bind_host: str) -> set[str] | None:
    """Loopback names plus the bound address; None (any Host) when bound to every interface, where the
    operator was already warned and must name hosts with ``--allowed-hosts``."""
    try:
        if ipaddress.ip_address(bind_host).is_unspecified:
            return None
    except ValueError:
        pass
    return _LOOPBACK_NAMES | {_host_name(bind_host)}


class BrowserGuard(HttpMiddleware):
    """Without an API key, the gateway's only protection against a hostile web page in the user's browser:

    - ``Host`` must be an allowed name (DNS rebinding: evil.example resolving to 127.0.0.1) -> else 400;
    - unsafe methods with a cross-site ``Origin`` (or ``Sec-Fetch-Site: cross-site``) -> 403 (a form on
      another site posting to the local gateway).

    With a key configured neither can succeed (a cross-site form cannot send the key header), so the guard
    is not installed.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: set[str] | None) -> None:
        super().__init__(app)
        self.allowed_hosts = allowed_hosts

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        host = _host_name(_header(scope, b"host") or "")
        if self.allowed_hosts is not None and scope["path"] not in _HOST_EXEMPT and host not in self.allowed_hosts:
            await _reject(
                send,
                400,
                "bad_host",
                f"Host {host!r} is not served here (DNS rebinding protection); "
                "start the gateway with --allowed-hosts naming it",
            )
            return
        if scope["method"] in _UNSAFE_METHODS and self._cross_site(scope, host):
            await _reject(send, 403, "forbidden", "cross-site request refused (its Origin is not this gateway)")
            return
        await self.app(scope, receive, send)

    def _cross_site(self, scope: Scope, host: str) -> bool:
        origin = _header(scope, b"origin")
        if origin is None:
            return (_header(scope, b"sec-fetch-site") or "").lower() == "cross-site"
        origin_host = urlsplit(origin).netloc.lower()
        if not origin_host:  # "null": a sandboxed frame or a file:// page
            return True
        own = (_header(scope, b"host") or "").strip().lower()
        if origin_host == own:
            return False
        return self.allowed_hosts is None or _host_name(origin_host) not in self.allowed_hosts


class SecurityHeaders(HttpMiddleware):
    """CSP, nosniff, frame-ancestors / X-Frame-Options and Referrer-Policy on every response."""

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in _SECURITY_HEADERS if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, with_headers)
