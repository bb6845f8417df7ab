"""``python -m export`` on a real checkpoint directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dyntta.contract import ENHANCED_IMAGE, LOGITS, OP_NAMES_PARAMETER, OP_WEIGHTS, PREPROCESS_PARAMETER
from dyntta.data import RESIZE, Preprocess
from dyntta.models import save_recognizer
from export.__main__ import main
from export.repository import parse_config
from export.tensorrt import tensorrt_version

RANDOM_8 = ("--parity-data", "random", "--parity-images", "8")  # a quick parity batch without a data set
COMMITTED = Path(__file__).resolve().parents[2] / "model_repository"  # what the quick start serves

# export.json's parity entries, keys in order (export.parity): what was compared, the metrics, the
# tolerance, the verdict, the enhancer's blend weights, then batch independence
RECOGNIZER_PARITY = ["model", "images", "data", "max_abs_logit_diff", "max_abs_logit", "top1_agreement"]
RECOGNIZER_PARITY += ["tolerance", "passed", "batch_independence_max_diff"]
ENHANCER_PARITY = ["model", "images", "data", "max_abs_pixel_diff", "fraction_pixels_differing", "tolerance"]
ENHANCER_PARITY += ["passed", "max_abs_op_weight_diff", "op_weights", "batch_independence_max_diff"]
ENHANCER_PARITY += ["op_weights_batch_independence_max_diff"]
PIPELINE_PARITY = ["model", "images", "max_abs_logit_diff", "top1_agreement"]
IDENTITY_PARITY = ["model", "identity", "passed", "note"]


def parity_keys(repository: Path) -> dict[str, list[str]]:
    """The keys, in order, of each parity entry in ``repository``'s ``export.json`` files."""
    recognizer = json.loads((repository / "recognizer" / "export.json").read_text())
    enhancer = json.loads((repository / "enhancer" / "export.json").read_text())
    pipeline = enhancer["pipeline_parity"]
    return {
        "recognizer": list(recognizer["parity"]),
        "enhancer": list(enhancer["parity"]),
        "pipeline": list(pipeline) if pipeline is not None else [],
    }


def run_export(recognizer: Path, out: Path, *extra: str) -> int:
    """``python -m export --recognizer RECOGNIZER --out OUT EXTRA...``: its exit code."""
    return main(["--recognizer", str(recognizer), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def checkpoint(tiny_recognizer, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt")
    save_recognizer(tiny_recognizer, out, recipe={"data": "fashion-mnist"}, metrics={"test_accuracy": 0.1})
    return out


def test_cli_writes_a_repository_and_reports_parity(checkpoint: Path, tmp_path: Path, capsys):
    out = tmp_path / "model_repository"
    code = run_export(checkpoint, out, "--parity-images", "64")
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    parity = summary["recognizer_parity"]
    assert parity["passed"] and parity["top1_agreement"] >= 0.99
    assert parity["data"] == "fashion-mnist test[:64]"
    report = json.loads((out / "recognizer" / "export.json").read_text())
    assert report["source"]["checkpoint"] == str(checkpoint)
    assert report["source"]["metrics"] == {"test_accuracy": 0.1}
    assert report["produced_by"]["command"].startswith("python -m export --recognizer")
    assert json.loads((out / "enhancer" / "export.json").read_text())["identity"] is True
    assert parity_keys(out) == {"recognizer": RECOGNIZER_PARITY, "enhancer": IDENTITY_PARITY, "pipeline": []}
    assert "python -m export" in (out / "dyntta" / "config.pbtxt").read_text()
    # the identity enhancer serves no OP_WEIGHTS; every model carries the (legacy resize) policy
    enhancer = parse_config(out / "enhancer" / "config.pbtxt")
    assert [o.name for o in enhancer.output] == [ENHANCED_IMAGE] and OP_NAMES_PARAMETER not in enhancer.parameters
    for model in ("dyntta", "recognizer", "enhancer"):
        policy = parse_config(out / model / "config.pbtxt").parameters[PREPROCESS_PARAMETER].string_value
        assert Preprocess.from_json(policy) == RESIZE


def test_cli_fails_loudly_past_tolerance(checkpoint: Path, tmp_path: Path, capsys):
    code = run_export(checkpoint, tmp_path / "r", *RANDOM_8, "--atol", "-1")
    assert code == 1  # the export failed (a runtime failure), not the arguments
    assert "PARITY FAILED" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(tensorrt_version() is not None, reason="TensorRT is installed here")
def test_tensorrt_without_tensorrt_is_a_clear_error(checkpoint: Path, tmp_path: Path, capsys):
    code = run_export(checkpoint, tmp_path / "r", "--flavour", "gpu", "--tensorrt", *RANDOM_8)
    assert code == 1
    assert "--tensorrt needs the TensorRT Python package" in capsys.readouterr().err


def test_tensorrt_needs_the_gpu_flavour(checkpoint: Path, tmp_path: Path, capsys):
    """A contradictory flag is a usage error: exit code 2 and one line saying why, no traceback."""
    code = run_export(checkpoint, tmp_path / "r", "--tensorrt")
    assert code == 2
    err = capsys.readouterr().err
    assert "python -m export: error: --tensorrt builds plans for the gpu flavour" in err and "Traceback" not in err
    assert "usage: python -m export" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-batch-size", "0"], "max_batch_size must be >= 1"),
        (["--version", "0"], "model versions start at 1"),
    ],
)
def test_bad_serving_options_are_usage_errors(checkpoint: Path, tmp_path: Path, capsys, extra, message):
    assert run_export(checkpoint, tmp_path / "r", *extra) == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_is_a_clear_failure(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.delenv("DYNTTA_TRACEBACK", raising=False)
    code = run_export(tmp_path / "nope", tmp_path / "r")
    assert code == 1  # dyntta.cli: a missing file is a runtime failure the user can act on
    err = capsys.readouterr().err
    assert "python -m export: error: " in err and "nope" in err and "Traceback" not in err


def test_enhancer_at_another_size_is_a_usage_error(checkpoint: Path, tmp_path: Path, capsys):
    from dyntta.enhancer import DynTTAEnhancer, EnhancerConfig, save_enhancer

    enhancer_dir = save_enhancer(DynTTAEnhancer(EnhancerConfig(input_size=64)).eval(), tmp_path / "enhancer")
    code = run_export(checkpoint, tmp_path / "r", "--enhancer", str(enhancer_dir))
    assert code == 2 and "the enhancer works at 64 px but the recognizer at 32 px" in capsys.readouterr().err


def test_missing_parity_data_is_a_runtime_failure(checkpoint: Path, tmp_path: Path, capsys):
    code = run_export(checkpoint, tmp_path / "r", "--data-dir", str(tmp_path / "no-data"))
    assert code == 1
    err = capsys.readouterr().err
    assert "parity data" in err and "--parity-data random" in err
    assert not (tmp_path / "r").exists()


def test_cli_exports_the_dyntta_enhancer_checkpoint(checkpoint: Path, tmp_path: Path, capsys):
    from dyntta.enhancer import DynTTAEnhancer, EnhancerConfig, save_enhancer

    torch.manual_seed(0)
    enhancer_dir = save_enhancer(DynTTAEnhancer(EnhancerConfig(input_size=32)).eval(), tmp_path / "enhancer")
    out = tmp_path / "model_repository"
    code = run_export(
        checkpoint, out, "--enhancer", str(enhancer_dir), "--parity-data", "random", "--parity-images", "16"
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["enhancer_parity"]["passed"] and summary["enhancer_parity"]["batch_independence_max_diff"] <= 1
    assert summary["pipeline_parity"]["top1_agreement"] >= 0.99
    report = json.loads((out / "enhancer" / "export.json").read_text())
    assert report["identity"] is False and report["source"]["checkpoint"] == str(enhancer_dir)
    # OP_WEIGHTS [K] beside the image, named by op_names and checked like it; the ensemble ignores it
    names = DynTTAEnhancer().op_names()
    config = parse_config(out / "enhancer" / "config.pbtxt")
    assert [(o.name, list(o.dims)) for o in config.output][1] == (OP_WEIGHTS, [len(names)])
    assert config.parameters[OP_NAMES_PARAMETER].string_value.split(",") == names == report["op_names"]
    assert summary["enhancer_parity"]["max_abs_op_weight_diff"] <= 1e-3
    assert summary["enhancer_parity"]["op_weights_batch_independence_max_diff"] <= 1e-3
    # export.json keeps its format: the same keys in the same order as the committed repository's
    expected = {"recognizer": RECOGNIZER_PARITY, "enhancer": ENHANCER_PARITY, "pipeline": PIPELINE_PARITY}
    assert parity_keys(out) == parity_keys(COMMITTED) == expected
    assert [o.name for o in parse_config(out / "dyntta" / "config.pbtxt").output] == [LOGITS]
