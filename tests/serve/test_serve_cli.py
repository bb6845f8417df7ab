"""The commands: ``python -m serve.client`` (batch gRPC straight to Triton) and ``python -m serve`` (Triton +
gateway, stopped cleanly by Ctrl-C)."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dyntta.data import arrays_to_model_input
from serve import __main__ as serve_main
from serve import client as batch_client
from serve import worker
from serve.config import MB, settings_from_args
from serve.triton import TritonServer, free_port
from tests.serve.conftest import CLASSES, SIZE, ContrastStretch, LinearProbe
from tests.serve.helpers import fmnist_raw, png_bytes, start_serve, wait_ready


def test_batch_client_classifies_a_folder(triton: TritonServer, probe: LinearProbe, tmp_path: Path):
    raw, _ = fmnist_raw("test", 70)
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i, image in enumerate(raw):
        (folder / ("sub" if i % 2 else "") / f"{i:03d}.png").write_bytes(png_bytes(image))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    out_csv, out_jsonl = tmp_path / "pred.csv", tmp_path / "pred.jsonl"

    code = batch_client.main(
        [
            str(folder),
            "--url",
            triton.urls.grpc_address,
            "--model",
            "recognizer",
            "--batch-size",
            "16",
            "--out",
            str(out_csv),
        ]
    )
    assert code == 1  # one file failed to decode, the rest were classified
    rows = {Path(r["path"]).name: r for r in csv.DictReader(out_csv.open())}
    assert len(rows) == 71 and rows["broken.png"]["error"] and not rows["000.png"]["error"]
    with torch.no_grad():
        offline = probe(arrays_to_model_input(raw, SIZE).float() / 255).argmax(1).numpy()
    served = np.array([int(rows[f"{i:03d}.png"]["index"]) for i in range(len(raw))])
    np.testing.assert_array_equal(served, offline)
    assert rows["000.png"]["label"] == CLASSES[offline[0]]

    code = batch_client.main(
        [
            str(folder / "sub"),
            "--url",
            triton.urls.grpc_address,
            "--model",
            "dyntta",
            "--top-k",
            "3",
            "--out",
            str(out_jsonl),
        ]
    )
    lines = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert code == 0 and len(lines) == 35 and all(len(entry["top_k"]) == 3 for entry in lines)
    for entry in lines:  # labels from Triton's classification extension, probabilities best first
        probabilities = [c["probability"] for c in entry["top_k"]]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
        assert all(c["label"] == CLASSES[c["index"]] for c in entry["top_k"])
    # the ensemble = the enhancer (contrast stretch, rounded to uint8 as served) then the recognizer
    with torch.no_grad():
        pixels = arrays_to_model_input(raw[1::2], SIZE).float() / 255
        enhanced = torch.floor(ContrastStretch()(pixels) * 255 + 0.5) / 255
        expected = probe(enhanced).argmax(1).numpy()
    by_name = {Path(entry["path"]).name: entry for entry in lines}
    top1 = np.array([by_name[f"{i:03d}.png"]["top_k"][0]["index"] for i in range(1, len(raw), 2)])
    assert (top1 == expected).mean() >= 0.97
    assert (top1 != served[1::2]).any() or (expected == offline[1::2]).all()  # the enhancer is in the path


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


@pytest.mark.timeout(300)
def test_python_m_serve_starts_everything_and_ctrl_c_stops_it(gateway_repository: Path, tmp_path: Path):
    port = free_port()
    process = start_serve(gateway_repository, tmp_path / "var", port)
    try:
        wait_ready(process, port)
        triton_pids = [
            p
            for p in _children(process.pid)
            if "tritonserver" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
        ]
        assert triton_pids, "the bundled Triton is a child of python -m serve"
        process.send_signal(signal.SIGINT)  # Ctrl-C
        assert process.wait(timeout=60) == 0
        time.sleep(0.5)
        assert not any(
            Path(f"/proc/{p}").exists()
            and "tritonserver" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")
            for p in triton_pids
        ), "tritonserver outlived python -m serve"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


#: every variable the gateway and worker have read since they had settings (deployments set them: never drop one)
VARIABLES = [
    "HOST",
    "PORT",
    "TRITON_URL",
    "MODEL_REPOSITORY",
    "STATE_DIR",
    "API_KEY",
    "MAX_UPLOAD_MB",
    "MAX_ZIP_MB",
    "MAX_ZIP_FILES",
    "MAX_ZIP_UNCOMPRESSED_MB",
    "MAX_ZIP_PIXELS",
    "MAX_IMAGES",
    "MAX_IMAGE_PIXELS",
    "MAX_INFLIGHT",
    "TRITON_TIMEOUT_S",
    "MAX_QUEUED_JOBS",
    "ENSEMBLE_MODEL",
    "RECOGNIZER_MODEL",
    "ENHANCER_MODEL",
    "MAX_REQUEST_PIXELS",
    "DECODE_CPU_S",
    "DECODE_WORKERS",
    "MAX_WAITING",
    "QUEUE_WAIT_S",
    "LIMIT_CONCURRENCY",
    "PUBLIC_METRICS",
    "PUBLIC_DOCS",
    "ALLOWED_HOSTS",
    "JSON_LOGS",
    "STATE_URL",
    "REPORTS_DIR",
    "WORKERS",
    "JOB_LEASE_S",
    "JOB_BATCH_SIZE",
    "KEEP_REPORTS",
    "REPORT_MAX_AGE_DAYS",
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in os.environ:
        if name.startswith("DYNTTA_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_settings_come_from_dyntta_variables_and_flags_win(clean_env: pytest.MonkeyPatch):
    help_text = " ".join(serve_main.build_parser().format_help().split())  # unwrapped
    assert [name for name in VARIABLES if f"(env DYNTTA_{name}; default" not in help_text] == []
    for name, value in {
        "PORT": "9001",
        "HOST": "0.0.0.0",
        "JSON_LOGS": "yes",
        "PUBLIC_METRICS": "0",
        "MAX_UPLOAD_MB": "2.5",
        "REPORTS_DIR": "/srv/reports",
        "API_KEY": "",  # empty is unset, as before
        "WORKERS": "0",
    }.items():
        clean_env.setenv(f"DYNTTA_{name}", value)
    argv = ["--host", "::1", "--triton-url", "a:8001", "--triton-url", "grpc://b:8001", "--public-docs", "true"]
    settings = settings_from_args(serve_main.build_parser().parse_args(argv))
    assert (settings.port, settings.json_logs, settings.public_metrics, settings.workers) == (9001, True, False, 0)
    assert settings.max_upload_bytes == int(2.5 * MB) and settings.reports_dir == Path("/srv/reports")
    assert settings.api_key is None and settings.api_keys == []
    assert settings.host == "::1" and settings.public_docs is True  # the flag over DYNTTA_HOST
    assert settings.triton_url == "a:8001,grpc://b:8001"  # one replica per --triton-url
    assert settings.model_repository == Path("model_repository") and settings.keep_reports == 1000  # defaults


def _exit_code(main, argv: list[str]) -> object:
    try:
        return main(argv)
    except SystemExit as exit:  # argparse's parser.error
        return exit.code


@pytest.mark.parametrize("command", [serve_main.main, worker.main], ids=["serve", "serve.worker"])
def test_a_bad_setting_is_a_usage_error_naming_its_source(
    command, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    clean_env.setenv("DYNTTA_JOB_LEASE_S", "soon")
    assert _exit_code(command, ["--triton-url", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "DYNTTA_JOB_LEASE_S='soon'" in err and "valid number" in err
    assert "Traceback" not in err

    clean_env.delenv("DYNTTA_JOB_LEASE_S")
    clean_env.setenv("DYNTTA_JSON_LOGS", "perhaps")
    assert _exit_code(command, ["--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert "--port='70000'" in err and "less than or equal to 65535" in err and "DYNTTA_JSON_LOGS='perhaps'" in err
