"""Blocking health and repository probes over Triton's HTTP and gRPC APIs (the launcher's view)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any


def http_status(url: str, timeout: float = 2.0, headers: Mapping[str, str] | None = None) -> int | None:
    """The HTTP status of a GET, or None when nothing answers."""
    try:
        request = urllib.request.Request(url, headers=dict(headers or {}))
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def http_json(
    url: str, body: dict[str, Any] | None = None, timeout: float = 5.0, headers: Mapping[str, str] | None = None
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url,
        data=data,
        method="POST" if data is not None else "GET",
        headers={"Content-Type": "application/json", **dict(headers or {})},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def repository_index(http_url: str, headers: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Triton's repository index: ``[{"name", "version", "state", "reason"}, ...]``. The bundled server
    restricts this API: pass its :attr:`~serve.triton.TritonServer.admin_headers`."""
    return list(http_json(http_url.rstrip("/") + "/v2/repository/index", body={}, headers=headers) or [])


def failed_models(http_url: str, headers: Mapping[str, str] | None = None) -> dict[str, str]:
    """Model name -> Triton's reason, for every model neither READY nor LOADING ({} if unknown)."""
    try:
        index = repository_index(http_url, headers)
    except (OSError, ValueError):
        return {}
    return {
        m["name"]: m.get("reason") or m.get("state", "UNAVAILABLE")
        for m in index
        if m.get("state") not in ("READY", "LOADING")
    }


def http_ready(http_url: str, models: Sequence[str]) -> bool:
    return http_status(http_url + "/v2/health/ready") == 200 and all(
        http_status(f"{http_url}/v2/models/{name}/ready") == 200 for name in models
    )


def grpc_ready(address: str, models: Sequence[str]) -> bool:
    import tritonclient.grpc as grpcclient  # only needed for gRPC-only connections

    try:
        client = grpcclient.InferenceServerClient(address)
        try:
            return bool(client.is_server_ready(client_timeout=2)) and all(
                client.is_model_ready(name, client_timeout=2) for name in models
            )
        finally:
            client.close()
    except Exception:  # any transport error means "not ready yet"
        return False
