"""The one parser of Triton addresses, used by the gateway, ``serve.client``, the launcher and the benchmarks.

The rule (Triton's standard port layout is HTTP 8000, gRPC 8001, metrics 8002)::

    grpc://host:port    gRPC at port; HTTP at port - 1, metrics at port + 1
    dns:///host:port    the same (gRPC's own name syntax)
    host:port           the same: no scheme means gRPC, the protocol the gateway and the client speak
    host                gRPC at 8001 (HTTP 8000, metrics 8002)
    http://host:port    HTTP at port; gRPC at port + 1, metrics at port + 2 (https:// likewise)

So ``host:8001`` and ``grpc://host:8001`` and ``http://host:8000`` name the same server. Any other scheme,
a path, or a missing host is a :class:`TritonError`. :func:`grpc_addresses` turns a host name into one
address per IP it resolves to (a Kubernetes headless Service, a round-robin DNS name): one replica each.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from serve.triton.errors import TritonError

HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
Protocol = Literal["http", "grpc"]


@dataclass(frozen=True)
class TritonURLs:
    """Where a server listens.

    ``http_url`` and ``metrics_url`` are full URLs (for httpx/urllib); ``grpc_url`` is ``grpc://host:port``.
    tritonclient wants ``host:port`` without a scheme: use :attr:`http_address` / :attr:`grpc_address`.
    ``protocol`` is the one the URL was given in (readiness is asked over it); it takes no part in equality.
    """

    http_url: str  # http://127.0.0.1:PORT
    grpc_url: str  # grpc://127.0.0.1:PORT
    metrics_url: str  # http://127.0.0.1:PORT/metrics
    protocol: Protocol = dataclasses.field(default="grpc", compare=False)

    @property
    def http_address(self) -> str:
        return urllib.parse.urlsplit(self.http_url).netloc

    @property
    def grpc_address(self) -> str:
        return urllib.parse.urlsplit(self.grpc_url).netloc

    @classmethod
    def local(cls, http_port: int, grpc_port: int, metrics_port: int, host: str = "127.0.0.1") -> TritonURLs:
        return cls(f"http://{host}:{http_port}", f"grpc://{host}:{grpc_port}", f"http://{host}:{metrics_port}/metrics")


def _split(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url`` by the rule above; the scheme defaults to grpc."""
    text = url.strip()
    if not text:
        raise TritonError("empty Triton URL")
    if text.startswith("dns:///"):
        text = "grpc://" + text[len("dns:///") :]
    elif "://" not in text:
        text = "grpc://" + text
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise TritonError(f"not a Triton URL: {url!r} ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("grpc", "http", "https"):
        raise TritonError(f"Triton URL {url!r}: the scheme must be grpc://, http:// or https:// (or none: gRPC)")
    if not parts.hostname:
        raise TritonError(f"Triton URL {url!r} names no host")
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise TritonError(f"Triton URL {url!r}: give host[:port] only, no path")
    return scheme, parts.hostname, port


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_triton_url(
    url: str, *, http_url: str | None = None, grpc_url: str | None = None, metrics_url: str | None = None
) -> TritonURLs:
    """All of a server's URLs from one of them (see the module docstring for the rule). ``http_url``,
    ``grpc_url`` and ``metrics_url`` override the derived ones (for servers not on the standard layout);
    ``grpc_url`` follows the same rule, ``http_url`` may omit ``http://``."""
    scheme, host, port = _split(url)
    if scheme == "grpc":
        grpc = port or GRPC_PORT
        http_scheme, http_port, metrics = "http", grpc - 1, grpc + 1
    else:
        http_port = port or HTTP_PORT
        http_scheme, grpc, metrics = scheme, http_port + 1, http_port + 2
    urls = TritonURLs(
        http_url=f"{http_scheme}://{_netloc(host, http_port)}",
        grpc_url=f"grpc://{_netloc(host, grpc)}",
        metrics_url=f"http://{_netloc(host, metrics)}/metrics",
        protocol="grpc" if scheme == "grpc" else "http",
    )
    if grpc_url:
        g_scheme, g_host, g_port = _split(grpc_url)
        if g_scheme != "grpc":
            raise TritonError(f"gRPC URL {grpc_url!r} has scheme {g_scheme}://")
        urls = dataclasses.replace(urls, grpc_url=f"grpc://{_netloc(g_host, g_port or GRPC_PORT)}")
    if http_url:
        h_text = http_url if "://" in http_url else "http://" + http_url
        h_scheme, h_host, h_port = _split(h_text)
        urls = dataclasses.replace(urls, http_url=f"{h_scheme}://{_netloc(h_host, h_port or HTTP_PORT)}")
    if metrics_url:
        urls = dataclasses.replace(urls, metrics_url=metrics_url)
    return urls


def split_urls(values: str | Sequence[str] | None) -> list[str]:
    """``--triton-url`` values: a list (the flag repeated) and/or comma-separated strings (one variable)."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    return [part.strip() for item in items for part in item.split(",") if part.strip()]


Resolver = Callable[[str, int], list[str]]


def resolve_host(host: str, port: int) -> list[str]:
    """The distinct IP addresses ``host`` resolves to, in the resolver's order (TCP only)."""
    found: list[str] = []
    for *_, sockaddr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP):
        address = str(sockaddr[0])
        if address not in found:
            found.append(address)
    return found


def grpc_addresses(url: str, resolver: Resolver = resolve_host) -> list[str]:
    """The gRPC ``host:port`` addresses behind one ``--triton-url``: an IP literal gives itself, a host name
    one address per IP it resolves to now. A name that does not resolve gives itself (gRPC keeps trying
    to connect, and the replica stays down until it does)."""
    host_port = parse_triton_url(url).grpc_address
    host, _, port_text = host_port.rpartition(":")
    host = host.strip("[]")
    port = int(port_text)
    try:
        ipaddress.ip_address(host)
        return [host_port]
    except ValueError:
        pass
    try:
        resolved = resolver(host, port)
    except OSError:
        resolved = []
    return [_netloc(ip, port) for ip in resolved] or [host_port]
