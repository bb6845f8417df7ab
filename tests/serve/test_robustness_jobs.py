"""Robustness report jobs through the gateway and Triton: built-in set, uploaded zip, persistence."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import torch

from dyntta.data import arrays_to_model_input
from serve.jobs import JobParams, JobStore
from tests.serve.conftest import CLASSES, SIZE, GatewayFactory, LinearProbe
from tests.serve.helpers import fmnist_raw, png_bytes
from tests.serve.test_gateway import wait_job


def test_builtin_job_report_matches_offline_clean_accuracy(make_gateway: GatewayFactory, probe: LinearProbe):
    gateway = make_gateway()
    with gateway.client() as client:
        form = {"corruptions": "gaussian_noise,contrast", "severities": "1,5", "num_images": "200", "seed": "3"}
        submitted = client.post("/v1/robustness", data=form)
        assert submitted.status_code == 202, submitted.text
        job = wait_job(client, submitted.json()["id"])
        assert job["status"] == "done", job
        assert job["progress"] == 1.0 and job["num_images"] == 200
        report = client.get(job["report_url"]).json()["report"]
        page = client.get(job["report_html_url"])
        listed = client.get("/v1/robustness").json()["jobs"]
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


def test_restart_keeps_finished_reports_and_marks_interrupted_jobs(make_gateway: GatewayFactory, tmp_path_factory):
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
    # a job that was running when the process died (simulated: the row of a crashed gateway)
    store = JobStore(state / "jobs.sqlite3")
    crashed = store.create("builtin", 20, JobParams(["fog"], [1]))
    store.update(crashed.id, status="running", progress=0.4)
    store.close()

    second = make_gateway(state_dir=state)
    with second.client() as client:
        assert client.get(f"/v1/robustness/{done['id']}").json()["status"] == "done"
        assert client.get(f"/v1/robustness/{done['id']}/report").status_code == 200
        assert client.get(f"/v1/robustness/{done['id']}/report.html").status_code == 200
        interrupted = client.get(f"/v1/robustness/{crashed.id}").json()
        assert interrupted["status"] == "interrupted" and "submit it again" in interrupted["message"]
        assert client.get(f"/v1/robustness/{crashed.id}/report").status_code == 409


def test_queue_limit_is_429(make_gateway: GatewayFactory):
    gateway = make_gateway(max_queued_jobs=1)
    form = {"corruptions": "all", "severities": "1,2,3,4,5", "num_images": "300"}
    with gateway.client() as client:
        first = client.post("/v1/robustness", data=form)
        second = client.post("/v1/robustness", data=form)
    assert first.status_code == 202 and second.status_code == 429
    gateway.stop()  # shutting down interrupts the running job instead of waiting for it
    store = JobStore(gateway.app.state.settings.state_dir / "jobs.sqlite3")
    assert store.get(first.json()["id"]).status == "interrupted"
    assert np.isfinite(store.get(first.json()["id"]).progress)
