"""The bundled Triton server on a freshly exported repository: inference equals onnxruntime in-process,
labels through the classification extension, readiness, errors and clean shutdown."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from dyntta.models import create_recognizer
from export.build import export_repository, random_images
from export.onnx import ENHANCED_IMAGE, IMAGE, LOGITS, cpu_session
from serve.triton import (
    ModelLoadError,
    PortInUseError,
    RepositoryNotFoundError,
    TritonError,
    TritonServer,
    TritonURLs,
    connect,
    grpc_addresses,
    parse_triton_url,
    repository_index,
    split_urls,
)
from tests.export.conftest import ToyEnhancer  # a small per-image enhancer: the ensemble changes pixels
from tests.triton_helpers import running_triton

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    recognizer = create_recognizer("test_resnet", CLASSES).eval()
    out = tmp_path_factory.mktemp("triton") / "model_repository"
    export_repository(recognizer, CLASSES, 32, out, enhancer=ToyEnhancer().eval(), parity_images=random_images(32, 32))
    return out


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[TritonServer]:
    yield from running_triton(repository, startup_timeout=120)


@pytest.fixture(scope="module")
def reference(repository: Path):
    """The ensemble computed in-process with onnxruntime on the same ONNX files."""
    enhancer = cpu_session(repository / "enhancer" / "1" / "model.onnx")
    recognizer = cpu_session(repository / "recognizer" / "1" / "model.onnx")

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        enhanced = enhancer.run([ENHANCED_IMAGE], {IMAGE: images})[0]
        return enhanced, recognizer.run([LOGITS], {IMAGE: enhanced})[0]

    return run


def grpc_input(images: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(IMAGE, list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    return tensor


def http_input(images: np.ndarray) -> httpclient.InferInput:
    tensor = httpclient.InferInput(IMAGE, list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=True)
    return tensor


def test_urls_are_loopback_and_server_is_ready(server: TritonServer):
    urls = server.urls
    assert urls.http_url.startswith("http://127.0.0.1:") and urls.grpc_url.startswith("grpc://127.0.0.1:")
    assert urls.metrics_url.endswith("/metrics")
    assert httpclient.InferenceServerClient(urls.http_address).is_server_ready()
    assert grpcclient.InferenceServerClient(urls.grpc_address).is_server_ready()
    states = {m["name"]: m["state"] for m in repository_index(urls.http_url, server.admin_headers)}
    assert states == {"dyntta": "READY", "enhancer": "READY", "recognizer": "READY"}


def test_grpc_ensemble_equals_onnxruntime_in_process(server: TritonServer, reference):
    images = random_images(16, 32, seed=3)
    client = grpcclient.InferenceServerClient(server.urls.grpc_address)
    logits = client.infer("dyntta", [grpc_input(images)]).as_numpy(LOGITS)
    enhanced, expected = reference(images)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    # each step stays callable on its own: the no-enhancer baseline and the enhanced images
    np.testing.assert_array_equal(client.infer("enhancer", [grpc_input(images)]).as_numpy(ENHANCED_IMAGE), enhanced)
    alone = client.infer("recognizer", [grpc_input(images)]).as_numpy(LOGITS)
    np.testing.assert_allclose(alone, reference_recognizer(server, images), rtol=1e-5, atol=1e-5)


def reference_recognizer(server: TritonServer, images: np.ndarray) -> np.ndarray:
    session = cpu_session(server.model_repository / "recognizer" / "1" / "model.onnx")
    return session.run([LOGITS], {IMAGE: images})[0]


def test_http_ensemble_equals_onnxruntime_in_process(server: TritonServer, reference):
    images = random_images(5, 32, seed=4)
    client = httpclient.InferenceServerClient(server.urls.http_address)
    result = client.infer(
        "dyntta", [http_input(images)], outputs=[httpclient.InferRequestedOutput(LOGITS, binary_data=True)]
    )
    np.testing.assert_allclose(result.as_numpy(LOGITS), reference(images)[1], rtol=1e-5, atol=1e-5)


def test_concurrent_requests_are_batched_without_changing_results(server: TritonServer, reference):
    batches = [random_images(1 + i % 4, 32, seed=10 + i) for i in range(24)]
    client = grpcclient.InferenceServerClient(server.urls.grpc_address)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda b: client.infer("dyntta", [grpc_input(b)]).as_numpy(LOGITS), batches))
    for images, logits in zip(batches, results, strict=True):
        np.testing.assert_allclose(logits, reference(images)[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_classification_extension_returns_labels(server: TritonServer, reference, protocol: str):
    images = random_images(3, 32, seed=5)
    if protocol == "grpc":
        client = grpcclient.InferenceServerClient(server.urls.grpc_address)
        output = grpcclient.InferRequestedOutput(LOGITS, class_count=3)
        top = client.infer("dyntta", [grpc_input(images)], outputs=[output]).as_numpy(LOGITS)
    else:
        client = httpclient.InferenceServerClient(server.urls.http_address)
        output = httpclient.InferRequestedOutput(LOGITS, class_count=3)
        top = client.infer("dyntta", [http_input(images)], outputs=[output]).as_numpy(LOGITS)
    expected = reference(images)[1]
    assert top.shape == (3, 3)
    for row, logits in zip(top, expected, strict=True):
        entries = [item.decode().split(":") for item in row]
        assert [len(e) for e in entries] == [3, 3, 3]
        indices = [int(e[1]) for e in entries]
        assert indices == list(np.argsort(-logits)[:3])
        assert [e[2] for e in entries] == [CLASSES[i] for i in indices]
        np.testing.assert_allclose([float(e[0]) for e in entries], logits[indices], atol=1e-5)


def test_served_config_is_the_exported_one(server: TritonServer):
    config = httpclient.InferenceServerClient(server.urls.http_address).get_model_config("dyntta")
    assert config["platform"] == "ensemble" and config["max_batch_size"] == 128
    assert config["output"][0]["label_filename"] == "labels.txt"


def test_connect_to_a_running_server(server: TritonServer):
    urls = connect(
        server.urls.http_url,
        grpc_url=server.urls.grpc_address,
        metrics_url=server.urls.metrics_url,
        models=["dyntta"],
        timeout=10,
    )
    assert urls == server.urls
    over_grpc = connect(
        server.urls.grpc_url,
        http_url=server.urls.http_url,
        metrics_url=server.urls.metrics_url,
        models=["dyntta", "recognizer"],
        timeout=10,
    )
    assert over_grpc == server.urls


def test_connect_to_nothing_is_a_clear_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening
        with pytest.raises(TritonError, match="not ready"):
            connect(f"http://127.0.0.1:{port}", timeout=0.5)
        with pytest.raises(TritonError, match="not ready"):
            connect(f"grpc://127.0.0.1:{port}", timeout=0.5)


def test_urls_dataclass_gives_tritonclient_addresses():
    urls = TritonURLs.local(1, 2, 3)
    assert (urls.http_address, urls.grpc_address) == ("127.0.0.1:1", "127.0.0.1:2")
    assert urls.metrics_url == "http://127.0.0.1:3/metrics"


STANDARD = TritonURLs("http://triton:8000", "grpc://triton:8001", "http://triton:8002/metrics")


@pytest.mark.parametrize(
    "url", ["triton:8001", "grpc://triton:8001", "dns:///triton:8001", "triton", "http://triton:8000", "triton:8001/"]
)
def test_one_url_rule_no_scheme_means_grpc(url: str):
    assert parse_triton_url(url) == STANDARD
    assert parse_triton_url(url).grpc_address == "triton:8001"


def test_url_rule_overrides_and_other_layouts():
    external = parse_triton_url("https://t.example/", grpc_url="t.example:443")
    assert external.http_url == "https://t.example:8000" and external.grpc_address == "t.example:443"
    assert parse_triton_url("http://[::1]:9000").grpc_address == "[::1]:9001"
    assert parse_triton_url("10.0.0.5:9001").http_url == "http://10.0.0.5:9000"
    assert parse_triton_url("host:8001").protocol == "grpc" and parse_triton_url("http://h").protocol == "http"


@pytest.mark.parametrize("bad", ["", "ftp://triton:8001", "triton:notaport", "http://triton:8000/v2", "grpc://:8001"])
def test_bad_urls_are_clear_errors(bad: str):
    with pytest.raises(TritonError):
        parse_triton_url(bad)


def test_several_urls_and_names_resolving_to_several_addresses():
    assert split_urls(["a:8001,b:8001", " c "]) == ["a:8001", "b:8001", "c"]
    assert split_urls(None) == [] and split_urls("a,b") == ["a", "b"]
    assert grpc_addresses("127.0.0.2:9001") == ["127.0.0.2:9001"]
    assert grpc_addresses("localhost:9001") in (
        ["127.0.0.1:9001"],
        ["127.0.0.1:9001", "[::1]:9001"],
        ["[::1]:9001", "127.0.0.1:9001"],
    )
    headless = {"triton-headless": ["10.1.0.7", "10.1.0.8", "10.1.0.7"]}
    resolver = lambda host, port: list(dict.fromkeys(headless[host]))  # noqa: E731 (what getaddrinfo returns)
    assert grpc_addresses("http://triton-headless:8000", resolver) == ["10.1.0.7:8001", "10.1.0.8:8001"]
    assert grpc_addresses("no-such-host.invalid:8001") == ["no-such-host.invalid:8001"]


def test_admin_apis_are_restricted_to_the_launchers_secret(server: TritonServer):
    """Issue 10 item 8: a plain local client can neither read the repository nor unload a model; with the
    per-start secret the index is readable, and model control stays off even then."""
    urls, plain = server.urls, httpclient.InferenceServerClient(server.urls.http_address)
    with pytest.raises(Exception, match="restricted"):
        plain.unload_model("recognizer")
    with pytest.raises(Exception, match="restricted"):
        plain.get_model_repository_index()
    with pytest.raises(Exception, match="restricted"):
        plain.update_log_settings({"log_verbose_level": 1})
    grpc_plain = grpcclient.InferenceServerClient(urls.grpc_address)
    with pytest.raises(Exception, match="restricted"):
        grpc_plain.unload_model("recognizer")
    with pytest.raises(Exception, match="not allowed"):
        grpc_plain.unload_model("recognizer", headers=server.admin_grpc_headers)
    assert len(repository_index(urls.http_url, server.admin_headers)) == 3
    assert plain.is_model_ready("recognizer") and grpc_plain.is_model_ready("dyntta")  # inference side open
    assert server.admin_headers != {} and all(len(v) >= 24 for v in server.admin_headers.values())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0); a reaped child does not
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def test_missing_repository_is_a_clear_error(tmp_path: Path):
    with pytest.raises(RepositoryNotFoundError, match="does not exist"):
        TritonServer(tmp_path / "nowhere").start()
    (tmp_path / "empty").mkdir()
    with pytest.raises(RepositoryNotFoundError, match="no model"):
        TritonServer(tmp_path / "empty").start()


def test_busy_port_is_a_clear_error(repository: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        with pytest.raises(PortInUseError, match="already in use"):
            TritonServer(repository, grpc_port=sock.getsockname()[1]).start()


def test_busy_metrics_port_is_an_error_too(repository: Path, monkeypatch):
    # Triton runs on without metrics when their port is taken; the launcher must not accept that.
    monkeypatch.setattr("serve.triton.ports.check_port_free", lambda *args, **kwargs: None)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        triton = TritonServer(repository, metrics_port=sock.getsockname()[1])
        with pytest.raises(PortInUseError, match="metrics") as info:
            triton.start()
    assert info.value.service == "metrics" and not triton.is_alive()


def test_a_picked_port_taken_before_triton_binds_it_is_retried(repository: Path, monkeypatch):
    import serve.triton.ports

    real_free_port = serve.triton.ports.free_port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        picks = iter([taken])
        monkeypatch.setattr(
            "serve.triton.ports.free_port", lambda host="127.0.0.1": next(picks, None) or real_free_port()
        )
        with TritonServer(repository) as urls:
            assert urls.http_url != f"http://127.0.0.1:{taken}"


def test_model_that_fails_to_load_surfaces_tritons_message(repository: Path, tmp_path: Path):
    broken = tmp_path / "broken"
    shutil.copytree(repository, broken)
    (broken / "recognizer" / "1" / "model.onnx").write_bytes(b"this is not an onnx file")
    triton = TritonServer(broken, startup_timeout=60)
    with pytest.raises(ModelLoadError) as info:
        triton.start()
    reason = info.value.reasons["recognizer"].lower()
    assert "onnx" in reason or "protobuf" in reason
    assert not triton.is_alive() and triton.pid is None


def test_stop_leaves_no_process_behind(repository: Path, tmp_path: Path):
    triton = TritonServer(repository, log_file=tmp_path / "triton.log")
    with triton as urls:
        pid = triton.pid
        assert pid is not None and _alive(pid)
        assert httpclient.InferenceServerClient(urls.http_address).is_model_ready("dyntta")
    started = time.monotonic()
    assert not _alive(pid)
    with pytest.raises(ProcessLookupError):  # nothing left in its process group (python stubs included)
        os.killpg(pid, 0)
    assert time.monotonic() - started < 1
    triton.stop()  # idempotent
    log = (tmp_path / "triton.log").read_text()
    assert "Started GRPCInferenceService" in log and "successfully loaded 'dyntta'" in log


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found.extend(int(c) for c in children)
    return found


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_the_server_dies_with_its_launcher(repository: Path, how: signal.Signals):
    """``python -m serve.triton`` stopped by SIGTERM (clean stop) or SIGKILL (no cleanup code runs: the
    kernel's parent-death signal ends the server) leaves no tritonserver behind."""
    launcher = subprocess.Popen(
        [sys.executable, "-m", "serve.triton", "--model-repository", str(repository)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert launcher.stdout is not None
        urls = json.loads(launcher.stdout.readline())
        assert httpclient.InferenceServerClient(urls["http_url"].removeprefix("http://")).is_server_ready()
        (server_pid,) = _children(launcher.pid)
        launcher.send_signal(how)
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 20
        while _alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(server_pid)
    finally:
        if launcher.poll() is None:
            launcher.kill()
