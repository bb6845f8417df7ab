"""``torchrun --nproc_per_node=2 -m dyntta.evaluate``: the work split across 2 gloo ranks, merged on rank 0,
gives the single-process report field by field (timings and the output path aside)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dyntta.evaluate.__main__ import main as evaluate
from dyntta.evaluate.sharded import unit_owners, without_run_specifics
from dyntta.train.__main__ import main as train

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
from train_folders import make_image_folder  # noqa: E402

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DYNTTA_DIST_TIMEOUT_S": "30"}


def test_units_are_dealt_round_robin() -> None:
    owners = unit_owners([("clean", 0), ("fog", 1)], n=50, batch_size=16, world_size=2)
    assert len(owners) == 8  # 2 conditions x 4 batches
    assert sorted(owners.values()) == [0, 0, 0, 0, 1, 1, 1, 1]


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data = make_image_folder(tmp_path_factory.mktemp("data"), per_class=40, size=32)
    out = tmp_path_factory.mktemp("recognizer")
    argv = ["recognizer", "--arch", "test_resnet", "--data", "imagefolder", "--data-dir", str(data)]
    assert train([*argv, "--image-size", "32", "--epochs", "1", "--batch-size", "32", "--out", str(out)]) == 0
    return out, data


def test_sharded_report_equals_single_process_report(model_and_data: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = model_and_data
    args = [
        "--model", str(model), "--reference", str(model), "--data", "imagefolder", "--data-dir", str(data),
        "--corruptions", "gaussian_noise", "contrast", "--severities", "1", "5", "--batch-size", "8",
        "--threads", "1", "--no-figures", "--no-cache",
    ]  # fmt: skip
    threads = torch.get_num_threads()
    try:  # the single-process reference in this process (what `python -m dyntta.evaluate` runs)
        assert evaluate([*args, "--out", str(tmp_path / "single")]) == 0
    finally:
        torch.set_num_threads(threads)
    sharded = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
         "dyntta.evaluate", *args, "--out", str(tmp_path / "sharded")],
        capture_output=True, text=True, env=ENV, timeout=240,
    )  # fmt: skip
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    assert "sharded evaluation" in sharded.stderr
    assert sharded.stdout.count('"out"') == 1  # rank 0 alone writes and reports
    assert not (tmp_path / "sharded" / "report.json").with_name("rank1").exists()
    a = json.loads((tmp_path / "single" / "report.json").read_text())
    b = json.loads((tmp_path / "sharded" / "report.json").read_text())
    a, b = without_run_specifics(a), without_run_specifics(b)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == b[key], key
