"""Robustness report jobs through the gateway and Triton: built-in set, uploaded zip, persistence."""

from __future__ import annotations

import io
import subprocess
import sys
import time
import zipfile
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from dyntta.data import arrays_to_model_input
from dyntta.evaluate.predictions import corrupt_uint8
from serve.store import JobParams, JobStore, default_state_url
from tests.serve.conftest import CLASSES, SIZE, GatewayFactory, LinearProbe
from tests.serve.helpers import fmnist_raw, png_bytes
from tests.serve.test_gateway import wait_job


def test_builtin_job_report_matches_offline_clean_accuracy(make_gateway: GatewayFactory, probe: LinearProbe):
    gateway = make_gateway()
    with gateway.client() as client:
        before = _job_gauge(client.get("/metrics").text)
        form = {"corruptions": "gaussian_noise,contrast", "severities": "1,5", "num_images": "200", "seed": "3"}
        submitted = client.post("/v1/robustness", data=form)
        assert submitted.status_code == 202, submitted.text
        job = wait_job(client, submitted.json()["id"])
        after = _job_gauge(client.get("/metrics").text)
        assert job["status"] == "done", job
        assert job["progress"] == 1.0 and job["num_images"] == 200
        report = client.get(job["report_url"]).json()["report"]
        page = client.get(job["report_html_url"])
        listed = client.get("/v1/robustness").json()["jobs"]
        strip_predictions = _served_predictions_of_the_strip(client, report["enhancer_strip"], seed=3)
    assert report["format"] == "dyntta.robustness-report/1"
    assert set(report["models"]) == {"recognizer", "enhancer + recognizer"}
    assert report["conditions"]["corruptions"] == ["gaussian_noise", "contrast"]
    assert report["header"]["seed"] == 3 and report["header"]["data"]["n"] == 200
    # clean accuracy through Triton equals the same model's offline accuracy on the same images
    raw, labels = fmnist_raw("test", 200)
    with torch.no_grad():
        offline = (probe(arrays_to_model_input(raw, SIZE).float() / 255).argmax(1).numpy() == labels).mean()
    assert report["models"]["recognizer"]["clean"]["accuracy"] == offline
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "gaussian_noise" in page.text and 'class="heatmap"' in page.text
    assert listed[0]["id"] == job["id"]
    # the enhancer strip (issue 16 item 2): its predictions are what the served models say of those images,
    # its PNGs (clean | corrupted | enhanced, two groups here) sit next to the report and are in the page
    strip = report["enhancer_strip"]
    assert strip["severity"] == 1 and [r["corruption"] for r in strip["rows"]] == ["gaussian_noise", "contrast"]
    assert len(strip["indices"]) == 3 and "ENHANCED_IMAGE" in strip["enhanced_by"]
    assert strip_predictions == [[s["predicted"] for s in row["samples"]] for row in strip["rows"]]
    folder = gateway.app.state.jobs.reports_dir / job["id"]
    assert strip["curves_file"] == "enhancer_curves.png" and (folder / "enhancer_curves.png").is_file()
    assert sorted({r["file"] for r in strip["rows"]}) == ["enhancer_strip_digital.png", "enhancer_strip_noise.png"]
    assert all((folder / r["file"]).read_bytes()[:4] == b"\x89PNG" for r in strip["rows"])
    assert page.text.count('<img src="data:image/png;base64,') == 3 and "The enhancer at work" in page.text
    # the job ran in a worker process; the gateway's metric reads the store, so it still sees the finish
    assert before == {"queued": 0, "running": 0, "done": 0, "failed": 0}
    assert after == {"queued": 0, "running": 0, "done": 1, "failed": 0}


def _served_predictions_of_the_strip(client: Any, strip: dict[str, Any], seed: int) -> list[list[dict[str, int]]]:
    """Each strip image re-corrupted here and classified by the gateway, recognizer alone and ensemble."""
    raw, _ = fmnist_raw("test", max(strip["indices"]) + 1)
    index = torch.tensor(strip["indices"])
    clean = arrays_to_model_input(raw, SIZE)[index]
    out = []
    for row in strip["rows"]:
        condition = (row["corruption"], strip["severity"])
        corrupted = corrupt_uint8(clean, condition, index, seed=seed, table=None, device="cpu")
        pngs = [png_bytes(np.ascontiguousarray(a.permute(1, 2, 0).numpy())) for a in corrupted]
        blobs = [("files", (f"{i}.png", png, "image/png")) for i, png in enumerate(pngs)]
        said: dict[str, list[int]] = {}
        for name, enhance in (("recognizer", "false"), ("enhancer + recognizer", "true")):
            results = client.post("/v1/classify", params={"enhance": enhance}, files=blobs).json()["results"]
            said[name] = [r["top_k"][0]["index"] for r in results]
        out.append([{m: said[m][k] for m in said} for k in range(len(corrupted))])
    return out


def _job_gauge(exposition: str) -> dict[str, float]:
    families = {f.name: f for f in text_string_to_metric_families(exposition)}
    return {s.labels["state"]: s.value for s in families["dyntta_gateway_robustness_jobs"].samples}


def test_zip_job_and_refusals(make_gateway: GatewayFactory):
    gateway = make_gateway(max_zip_files=50)
    raw, labels = fmnist_raw("test", 30)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, (image, label) in enumerate(zip(raw, labels, strict=True)):
            archive.writestr(f"mine/{CLASSES[label].replace('/', '_')}/{i}.png", png_bytes(image))
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("../../etc/Coat/x.png", png_bytes(raw[0]))
    crowded = io.BytesIO()
    with zipfile.ZipFile(crowded, "w") as archive:
        for i in range(51):
            archive.writestr(f"Coat/{i}.png", png_bytes(raw[0]))
    with gateway.client() as client:
        form = {"corruptions": "pixelate", "severities": "2", "with_enhancer": "false"}
        submitted = client.post(
            "/v1/robustness", data=form, files={"file": ("set.zip", buffer.getvalue(), "application/zip")}
        )
        assert submitted.status_code == 202, submitted.text
        assert submitted.json()["source"] == "set.zip"
        job = wait_job(client, submitted.json()["id"])
        assert job["status"] == "done", job
        report = client.get(job["report_url"]).json()["report"]
        assert list(report["models"]) == ["recognizer"] and report["header"]["data"]["n"] == 30
        refused = {
            400: client.post(
                "/v1/robustness", data=form, files={"file": ("e.zip", evil.getvalue(), "application/zip")}
            ),
            413: client.post(
                "/v1/robustness", data=form, files={"file": ("c.zip", crowded.getvalue(), "application/zip")}
            ),
            415: client.post("/v1/robustness", data=form, files={"file": ("n.zip", b"plain text", "text/plain")}),
        }
        bad_params = client.post("/v1/robustness", data={"corruptions": "gausian_noise"})
        pending = client.get(f"/v1/robustness/{job['id']}/report")
    for status, response in refused.items():
        assert response.status_code == status, response.text
    assert bad_params.status_code == 400 and "gaussian_noise" in bad_params.json()["error"]["message"]
    assert pending.status_code == 200


def test_restart_keeps_finished_reports_and_resumes_unfinished_jobs(make_gateway: GatewayFactory, tmp_path_factory):
    state = tmp_path_factory.mktemp("persist")
    first = make_gateway(state_dir=state)
    with first.client() as client:
        done = wait_job(
            client,
            client.post(
                "/v1/robustness", data={"corruptions": "brightness", "severities": "1", "num_images": "20"}
            ).json()["id"],
        )
    first.stop()
    # a job that was running when its worker died (simulated: the row of a crashed worker, lease expired)
    store = JobStore(default_state_url(state))
    crashed = store.create("builtin", 20, JobParams(["fog"], [1], image_size=SIZE))
    claimed = store.claim("crashed-worker", lease_s=0.0)
    assert claimed is not None and claimed.id == crashed.id
    store.close()

    second = make_gateway(state_dir=state)
    with second.client() as client:
        assert client.get(f"/v1/robustness/{done['id']}").json()["status"] == "done"
        assert client.get(f"/v1/robustness/{done['id']}/report").status_code == 200
        assert client.get(f"/v1/robustness/{done['id']}/report.html").status_code == 200
        resumed = wait_job(client, crashed.id)
        assert resumed["status"] == "done", resumed
        assert client.get(f"/v1/robustness/{crashed.id}/report").json()["report"]["header"]["data"]["n"] == 20


def test_queue_limit_is_429_and_stopping_hands_the_job_back(make_gateway: GatewayFactory):
    gateway = make_gateway(max_queued_jobs=1)
    form = {"corruptions": "all", "severities": "1,2,3,4,5", "num_images": "300"}
    with gateway.client() as client:
        first = client.post("/v1/robustness", data=form)
        second = client.post("/v1/robustness", data=form)
    assert first.status_code == 202 and second.status_code == 429
    assert int(second.headers["retry-after"]) > 0
    gateway.stop()  # the embedded worker stops at its next batch and gives the job back to the queue
    store = JobStore(default_state_url(gateway.app.state.settings.state_dir))
    job = store.get(first.json()["id"])
    assert job is not None and job.status == "queued" and job.lease_token is None
    assert np.isfinite(job.progress)


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_full_queue_refuses_before_decoding_the_upload(make_gateway: GatewayFactory):
    """Issue 10 item 4: the 429 comes before the zip is read (a broken member would otherwise be a 400)."""
    gateway = make_gateway(max_queued_jobs=1, workers=0)  # no worker: the first job stays queued
    raw, _ = fmnist_raw("test", 1)
    broken = _zip({"Coat/ok.png": png_bytes(raw[0]), "Coat/broken.png": b"\x89PNG\r\n\x1a\n broken"})
    form = {"corruptions": "fog", "severities": "1"}
    with gateway.client() as client:
        assert client.post("/v1/robustness", data={**form, "num_images": "10"}).status_code == 202
        started = time.perf_counter()
        refused = client.post("/v1/robustness", data=form, files={"file": ("b.zip", broken, "application/zip")})
        seconds = time.perf_counter() - started
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) > 0 and seconds < 1.0


def test_jobs_are_visible_only_to_the_key_that_created_them(make_gateway: GatewayFactory, tmp_path_factory):
    """Issue 10 item 5: a job is stored under a fingerprint of its key (never the key) and read under it."""
    state = tmp_path_factory.mktemp("keys")
    form = {"corruptions": "fog", "severities": "1", "num_images": "10"}
    first = make_gateway(state_dir=state, api_key="key-one", workers=0)
    with first.client(headers={"X-API-Key": "key-one"}) as client:
        job_id = client.post("/v1/robustness", data=form).json()["id"]
        assert client.get(f"/v1/robustness/{job_id}").status_code == 200
    with first.client() as anonymous:
        assert anonymous.get("/v1/robustness").status_code == 401
        assert anonymous.get(f"/v1/robustness/{job_id}").status_code == 401
    first.stop()
    store = JobStore(default_state_url(state))
    stored = store.get(job_id)
    store.close()
    assert stored is not None and stored.owner and "key-one" not in stored.owner
    second = make_gateway(state_dir=state, api_key="key-two", workers=0)  # the key rotated
    with second.client(headers={"X-API-Key": "key-two"}) as client:
        assert client.get(f"/v1/robustness/{job_id}").status_code == 404
        assert client.get(f"/v1/robustness/{job_id}/report").status_code == 404
        assert job_id not in [j["id"] for j in client.get("/v1/robustness").json()["jobs"]]
    second.stop()
    third = make_gateway(state_dir=state, workers=0)  # no key at all: still not another key's jobs
    with third.client() as client:
        assert client.get(f"/v1/robustness/{job_id}").status_code == 404


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the refused start
def test_second_gateway_on_a_state_dir_refuses_and_leaves_its_jobs_alone(
    make_gateway: GatewayFactory, tmp_path_factory
):
    """Issue 10 item 6: the state directory is locked by the gateway that owns it."""
    state = tmp_path_factory.mktemp("owned")
    first = make_gateway(state_dir=state, workers=0)
    with first.client() as client:
        job = client.post("/v1/robustness", data={"corruptions": "fog", "severities": "1", "num_images": "10"}).json()
    with pytest.raises(RuntimeError, match="did not start"):
        make_gateway(state_dir=state, workers=0)
    started = time.perf_counter()
    cli = subprocess.run(
        [sys.executable, "-m", "serve", "--state-dir", str(state), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 1 and "in use by another gateway" in cli.stderr, cli.stderr
    assert time.perf_counter() - started < 30  # refused before starting Triton
    with first.client() as client:
        after = client.get(f"/v1/robustness/{job['id']}").json()
    assert after["status"] == "queued" and after["updated"] == job["updated"] and after["message"] == job["message"]


def test_invalid_table_and_missing_builtin_data_are_400(make_gateway: GatewayFactory, monkeypatch, tmp_path):
    """Issue 10 item 11: refused at submission, not accepted and failed later."""
    gateway = make_gateway(workers=0)
    with gateway.client() as client:
        bad_table = client.post("/v1/robustness", data={"corruptions": "fog", "severities": "1", "table": "cifar100"})
        monkeypatch.setenv("DYNTTA_FASHION_MNIST_DIR", str(tmp_path))  # an empty directory
        no_data = client.post("/v1/robustness", data={"corruptions": "fog", "severities": "1"})
        listed = client.get("/v1/robustness").json()["jobs"]
    assert bad_table.status_code == 400 and "cifar100" in bad_table.json()["error"]["message"]
    assert no_data.status_code == 400 and "Fashion-MNIST" in no_data.json()["error"]["message"]
    assert listed == []


def test_retention_keeps_the_newest_reports(make_gateway: GatewayFactory):
    """Issue 10 item 11: finished jobs beyond --keep-reports are deleted with their files."""
    gateway = make_gateway(keep_reports=1)
    form = {"corruptions": "brightness", "severities": "1", "num_images": "10", "with_enhancer": "false"}
    with gateway.client() as client:
        old = wait_job(client, client.post("/v1/robustness", data=form).json()["id"])
        new = wait_job(client, client.post("/v1/robustness", data=form).json()["id"])
        assert old["status"] == new["status"] == "done"
        deadline = time.monotonic() + 10
        while client.get(f"/v1/robustness/{old['id']}").status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get(f"/v1/robustness/{old['id']}").status_code == 404
        assert client.get(f"/v1/robustness/{new['id']}/report").status_code == 200
    reports = gateway.app.state.jobs.reports_dir
    assert not (reports / old["id"]).exists() and (reports / new["id"] / "report.json").is_file()


def test_embedded_worker_is_restarted_when_it_dies(make_gateway: GatewayFactory):
    gateway = make_gateway()
    workers = gateway.app.state.jobs.workers
    first = workers.processes[0]
    first.kill()
    first.wait()
    with gateway.client() as client:
        job = client.post("/v1/robustness", data={"corruptions": "fog", "severities": "1", "num_images": "8"})
        assert wait_job(client, job.json()["id"])["status"] == "done"
    assert workers.restarts == 1 and workers.processes[0].pid != first.pid
