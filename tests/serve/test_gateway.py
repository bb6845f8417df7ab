"""The gateway end to end, through the real bundled Triton: the API, bad input, limits and operations."""

from __future__ import annotations

import io
import socket
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import CLASSES, PROBE_RECIPE, SIZE, GatewayFactory, LiveGateway
from tests.serve.helpers import encode, fmnist_raw, header_bomb_png, png_bytes


def files(*blobs: bytes, content_type: str = "image/png") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"img{i}.png", blob, content_type)) for i, blob in enumerate(blobs)]


def test_health_ready_and_models(gateway: LiveGateway):
    with gateway.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert set(ready.json()["models"]) == {"dyntta", "recognizer", "enhancer"}
        models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        # input size and labels come from Triton, not from the gateway's code
        assert models["recognizer"]["input_size"] == SIZE and models["recognizer"]["labels"] == CLASSES
        assert models["dyntta"]["labels"] == CLASSES and models["enhancer"]["labels"] is None
        # how each was trained: the checkpoint's recipe, through the export's config parameter and Triton
        assert models["recognizer"]["training"] == {**PROBE_RECIPE, "loss": None}
        assert models["enhancer"]["training"] is None and models["dyntta"]["training"] is None  # no recipe


def test_classify_one_and_many_with_and_without_enhancer(gateway: LiveGateway):
    raw, _ = fmnist_raw("test", 3)
    blobs = [png_bytes(a) for a in raw]
    with gateway.client() as client:
        plain = client.post("/v1/classify", params={"enhance": "false", "top_k": 3}, files=files(*blobs))
        enhanced = client.post("/v1/classify", params={"top_k": 10}, files=files(*blobs))
    assert plain.status_code == 200, plain.text
    body = plain.json()
    assert body["model"] == {"name": "recognizer", "version": "1"} and body["enhanced"] is False
    assert body["input_size"] == SIZE and len(body["results"]) == 3
    assert body["timing"]["total_ms"] >= body["timing"]["inference_ms"] > 0
    top = body["results"][0]["top_k"]
    assert len(top) == 3 and top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
    assert all(p["label"] == CLASSES[p["index"]] for p in top)
    full = enhanced.json()
    assert full["model"]["name"] == "dyntta" and full["enhanced"] is True
    for result in full["results"]:  # top_k = all classes: softmax sums to one
        assert abs(sum(p["probability"] for p in result["top_k"]) - 1.0) < 1e-5
    # the enhancer changes the input, so the probabilities differ
    first = plain.json()["results"][0]["top_k"][0]
    assert first["probability"] != full["results"][0]["top_k"][0]["probability"]


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP", "PNG"])
def test_formats_and_sizes(gateway: LiveGateway, fmt: str):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 211, 3), dtype=np.uint8))
    with gateway.client() as client:
        response = client.post("/v1/classify", files=[("files", ("x", encode(image, fmt), "image/" + fmt))])
    assert response.status_code == 200, response.text


def test_enhance_returns_a_png_at_model_size(gateway: LiveGateway, sample_png: bytes):
    with gateway.client() as client:
        response = client.post("/v1/enhance", files={"file": ("a.png", sample_png, "image/png")})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.headers["x-model"] == "enhancer/1"
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.size == (SIZE, SIZE) and image.mode == "RGB"


def test_bad_inputs(gateway: LiveGateway, sample_png: bytes):
    with gateway.client() as client:
        cases = {
            415: [
                files(b"just text", content_type="text/plain"),
                files(b"%PDF-1.4 not an image", content_type="application/octet-stream"),
                files(encode(Image.new("RGB", (8, 8)), "GIF"), content_type="image/gif"),
            ],
            400: [files(sample_png[:30]), files(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)],
            413: [files(header_bomb_png(100_000, 100_000))],  # a decompression bomb
        }
        for status, variants in cases.items():
            for variant in variants:
                response = client.post("/v1/classify", files=variant)
                assert response.status_code == status, response.text
                assert response.json()["error"]["message"]
        assert client.post("/v1/classify").status_code == 422  # no files
        assert client.post("/v1/classify", params={"top_k": 0}, files=files(sample_png)).status_code == 422
        too_many = files(*([sample_png] * 65))
        assert client.post("/v1/classify", files=too_many).status_code == 413
        assert client.get("/v1/robustness/not-a-job-id").status_code == 422
        assert client.get("/v1/robustness/" + "0" * 32).status_code == 404


def test_body_limit_answers_413_without_reading_the_body(gateway: LiveGateway):
    """Content-Length over the limit gets 413 at once: the 11 MB body is never sent."""
    host, port = "127.0.0.1", gateway.port
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nContent-Length: 11000000\r\n\r\n"
        )
        reply = sock.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 413"), reply

    # a streamed (chunked) body is cut off as soon as it passes the limit
    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
        for _ in range(12):
            yield b"\x00" * 1_000_000

    with gateway.client() as client:
        response = client.post(
            "/v1/classify", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"}
        )
    assert response.status_code == 413


def test_api_key_protects_every_v1_route(make_gateway: GatewayFactory, sample_png: bytes):
    gateway = make_gateway(api_key="s3cret")
    with gateway.client() as client:
        assert client.post("/v1/classify", files=files(sample_png)).status_code == 401
        wrong = client.post("/v1/classify", files=files(sample_png), headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401
        ok = client.post("/v1/classify", files=files(sample_png), headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200
        for path in ("/v1/robustness", "/v1/models", "/metrics", "/docs", "/openapi.json"):  # reads too (issue 10)
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers={"X-API-Key": "s3cret"}).status_code == 200, path
        assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200  # Prometheus
        assert client.get("/readyz").status_code == 200  # probes and the page itself stay open
        assert client.get("/healthz").status_code == 200
        assert client.get("/").status_code == 200


def test_metrics_count_requests_latency_and_errors(gateway: LiveGateway, sample_png: bytes):
    with gateway.client() as client:
        client.post("/v1/classify", files=files(sample_png))
        client.post("/v1/classify", files=files(b"x", content_type="text/plain"))
        text = client.get("/metrics").text
    assert 'dyntta_gateway_requests_total{method="POST",route="/v1/classify",status="200"}' in text
    assert 'dyntta_gateway_errors_total{route="/v1/classify",status="415"}' in text
    assert 'dyntta_gateway_request_duration_seconds_bucket{le="0.005",method="POST",route="/v1/classify"}' in text
    assert 'dyntta_gateway_triton_duration_seconds_count{model="dyntta"}' in text


def wait_job(client: httpx.Client, job_id: str, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/robustness/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}")
