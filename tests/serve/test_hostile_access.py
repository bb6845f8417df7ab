"""Access control, browser-side safety and observability against the real gateway and Triton
(issue 10 items 4, 5, 12, 13)."""

from __future__ import annotations

import logging
import socket
import time

import pytest

from tests.serve.conftest import GatewayFactory, LiveGateway

#: the target is 100 ms (docs/RESULTS.md has the measured times); the bound tolerates a loaded, shared
#: 2-core machine, while the unfixed cases take seconds or wait for a body that never comes
FAST = 0.25


def raw_exchange(gateway: LiveGateway, request: bytes) -> tuple[str, float]:
    """Send ``request`` (headers only) on a socket and return the reply and the seconds it took."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        start = time.perf_counter()
        sock.sendall(request)
        reply = sock.recv(65536).decode("latin-1")
        return reply, time.perf_counter() - start


@pytest.fixture(scope="module")
def keyed(make_gateway: GatewayFactory) -> LiveGateway:
    return make_gateway(api_key="k-one,k-two")


@pytest.fixture(scope="module")
def open_gateway(make_gateway: GatewayFactory) -> LiveGateway:
    return make_gateway()


def test_unauthenticated_upload_is_refused_before_its_body(keyed: LiveGateway, sample_png: bytes):
    """Headers announce a 9 MB body (under the 10 MB limit) that never comes: the 401 arrives anyway, at
    once; before the fix FastAPI waited to parse the form before the key dependency ran."""
    reply, seconds = raw_exchange(
        keyed,
        b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: 9000000\r\n\r\n",
    )
    assert reply.startswith("HTTP/1.1 401"), reply
    assert "API key" in reply and seconds < FAST
    with keyed.client() as client:
        ok = client.post(
            "/v1/classify", files={"files": ("a.png", sample_png, "image/png")}, headers={"X-API-Key": "k-two"}
        )
        assert ok.status_code == 200, ok.text


def test_every_v1_route_metrics_and_docs_need_the_key(keyed: LiveGateway, make_gateway: GatewayFactory):
    with keyed.client() as client:
        for path in ("/v1/models", "/v1/robustness", f"/v1/robustness/{'0' * 32}", "/metrics", "/docs"):
            response = client.get(path)
            assert response.status_code == 401, path
            assert response.json()["error"]["code"] == "unauthorized"
        assert client.get("/v1/models", headers={"X-API-Key": "k-one"}).status_code == 200
        assert client.get("/v1/models", headers={"X-API-Key": "k-onex"}).status_code == 401
    public = make_gateway(api_key="k", public_metrics=True, public_docs=True)
    with public.client() as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/docs").status_code == 200
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/v1/models").status_code == 401


def test_docs_are_served_offline_with_a_strict_csp(open_gateway: LiveGateway):
    with open_gateway.client() as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert "cdn" not in page.text.lower() and "<script>" not in page.text  # no CDN, no inline script
        for asset in ("/docs/static/swagger-ui-bundle.js", "/docs/static/swagger-ui.css", "/static/docs.js"):
            response = client.get(asset)
            assert response.status_code == 200 and len(response.content) > 100, asset
        for path in ("/", "/docs", "/v1/models", "/healthz", "/nope"):
            headers = client.get(path).headers
            assert "script-src 'self'" in headers["content-security-policy"], path
            assert "frame-ancestors 'none'" in headers["content-security-policy"], path
            assert headers["x-content-type-options"] == "nosniff", path


def test_host_and_origin_checks_without_a_key(open_gateway: LiveGateway, keyed: LiveGateway, sample_png: bytes):
    upload = {"files": ("a.png", sample_png, "image/png")}
    with open_gateway.client() as client:
        rebinding = client.get("/v1/models", headers={"Host": "evil.example:8000"})
        assert rebinding.status_code == 400
        assert "DNS rebinding" in rebinding.json()["error"]["message"]
        assert client.get("/healthz", headers={"Host": "10.0.0.7:8000"}).status_code == 200  # probes
        cross = client.post("/v1/classify", files=upload, headers={"Origin": "https://evil.example"})
        assert cross.status_code == 403
        assert "cross-site" in cross.json()["error"]["message"]
        fetch_meta = client.post("/v1/classify", files=upload, headers={"Sec-Fetch-Site": "cross-site"})
        assert fetch_meta.status_code == 403
        same = client.post("/v1/classify", files=upload, headers={"Origin": open_gateway.url})
        assert same.status_code == 200, same.text
        assert client.post("/v1/classify", files=upload).status_code == 200  # curl sends no Origin
    with keyed.client() as client:  # with a key the key is the protection; any Host (behind a proxy) works
        proxied = client.get("/v1/models", headers={"Host": "dyntta.example", "X-API-Key": "k-one"})
        assert proxied.status_code == 200


def test_request_id_is_returned_logged_and_created(
    open_gateway: LiveGateway, sample_png: bytes, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="serve.access")
    with open_gateway.client() as client:
        given = client.post(
            "/v1/classify", files={"files": ("a.png", sample_png, "image/png")}, headers={"X-Request-ID": "abc-123"}
        )
        assert given.headers["x-request-id"] == "abc-123"
        made = client.get("/healthz")
        assert len(made.headers["x-request-id"]) == 32
        insane = client.get("/healthz", headers={"X-Request-ID": "x" * 500})
        assert insane.headers["x-request-id"] != "x" * 500
        failed = client.post(
            "/v1/classify", files={"files": ("t.txt", b"text", "text/plain")}, headers={"X-Request-ID": "bad-1"}
        )
        assert failed.status_code == 415 and failed.headers["x-request-id"] == "bad-1"
    logged = [r.getMessage() for r in caplog.records if r.name == "serve.access"]
    assert any("/v1/classify -> 415" in m and "request_id=bad-1" in m for m in logged), logged


def test_metrics_have_queue_gauges_and_deadline_buckets(make_gateway: GatewayFactory, sample_png: bytes):
    gateway = make_gateway(triton_timeout_s=12.0)
    with gateway.client() as client:
        client.post("/v1/classify", files={"files": ("a.png", sample_png, "image/png")})
        text = client.get("/metrics").text
    assert 'dyntta_gateway_triton_duration_seconds_bucket{le="12.0",model="dyntta"}' in text
    for gauge in ("dyntta_gateway_inference_waiting", "dyntta_gateway_inference_in_flight"):
        assert f"\n{gauge} 0.0" in text, gauge
    assert "dyntta_gateway_decode_waiting" in text
