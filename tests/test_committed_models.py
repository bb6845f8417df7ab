"""The committed models the quick start serves: ``checkpoints/`` loads, ``model_repository/`` is what the
exporter writes (host file, configs, the recorded ONNX files) and its recorded parity still holds on real
Fashion-MNIST test images with onnxruntime."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from dyntta import contract
from dyntta.data import RESIZE, Preprocess, load_dataset, to_float
from dyntta.enhancer import load_enhancer
from dyntta.evaluate.classifiers import directory_weights_sha256
from dyntta.models import load_recognizer, read_preprocess

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINTS = ROOT / "checkpoints" / "fashion-mnist"
REPOSITORY = ROOT / "model_repository"
HOSTED = (contract.ENHANCER, contract.RECOGNIZER)  # models with a 1/model.onnx (the ensemble has none)


@cache
def record(model: str) -> dict[str, Any]:
    return json.loads((REPOSITORY / model / "export.json").read_text())


def config(model: str) -> mc.ModelConfig:
    return text_format.Parse((REPOSITORY / model / "config.pbtxt").read_text(), mc.ModelConfig())


def test_repository_holds_the_three_models_of_the_contract() -> None:
    assert sorted(p.parent.name for p in REPOSITORY.glob("*/config.pbtxt")) == sorted(contract.MODEL_NAMES)
    ensemble = config(contract.ENSEMBLE)
    assert [step.model_name for step in ensemble.ensemble_scheduling.step] == [contract.ENHANCER, contract.RECOGNIZER]
    assert [i.name for i in ensemble.input] == [contract.IMAGE] and [o.name for o in ensemble.output] == [
        contract.LOGITS
    ]
    assert [o.name for o in config(contract.ENHANCER).output] == [contract.ENHANCED_IMAGE, contract.OP_WEIGHTS]


def test_configs_carry_the_preprocessing_policy_and_the_op_names() -> None:
    """Every model says how clients preprocess: the recognizer checkpoint's policy, plain resize for the
    committed one (what it was trained with); the enhancer names the columns of OP_WEIGHTS."""
    policy = read_preprocess(CHECKPOINTS / "recognizer")
    assert policy == RESIZE
    for model in contract.MODEL_NAMES:
        assert Preprocess.from_json(config(model).parameters[contract.PREPROCESS_PARAMETER].string_value) == policy
    enhancer = config(contract.ENHANCER)
    names = load_enhancer(CHECKPOINTS / "enhancer").op_names()
    assert enhancer.parameters[contract.OP_NAMES_PARAMETER].string_value.split(",") == names
    assert list(enhancer.output[1].dims) == [len(names)] and enhancer.output[1].data_type == mc.TYPE_FP32


@pytest.mark.parametrize("model", [contract.RECOGNIZER, contract.ENHANCER])
def test_configs_say_how_each_model_was_trained(model: str) -> None:
    """The committed checkpoint's recipe (method, command) is what the served config tells clients."""
    recipe = json.loads((CHECKPOINTS / model / "config.json").read_text())["recipe"]
    served = contract.Training.from_json(config(model).parameters[contract.TRAINING_PARAMETER].string_value)
    assert served == contract.Training.from_recipe(recipe)
    assert served is not None and served.command == recipe["command"]
    if model == contract.RECOGNIZER:
        # the committed default recognizer: issue 14's rule over the fair-budget grid picked DAMP (sigma 0.05)
        assert served.method == recipe["method"] == "damp" and "sigma=0.05" in served.command


@pytest.mark.parametrize("model", HOSTED)
def test_host_file_is_the_exporters(model: str) -> None:
    served = (REPOSITORY / model / "1" / "model.py").read_bytes()
    assert served == (ROOT / "export" / "triton_onnx_host.py").read_bytes(), "re-run python -m export"


@pytest.mark.parametrize("model", HOSTED)
def test_onnx_file_is_the_recorded_one(model: str) -> None:
    path = REPOSITORY / model / "1" / "model.onnx"
    onnx = record(model)["onnx"]
    assert path.stat().st_size == onnx["bytes"] and contract.sha256_file(path) == onnx["sha256"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [contract.IMAGE]


def test_checkpoints_load_as_recorded() -> None:
    recognizer = load_recognizer(CHECKPOINTS / "recognizer")
    source = record(contract.RECOGNIZER)["source"]["model"]
    assert recognizer.config.arch == source["arch"] and recognizer.config.classes == source["classes"]
    labels = (REPOSITORY / contract.RECOGNIZER / "labels.txt").read_text().splitlines()
    assert labels == recognizer.config.classes
    assert (REPOSITORY / contract.ENSEMBLE / "labels.txt").read_text().splitlines() == labels
    enhancer = load_enhancer(CHECKPOINTS / "enhancer")
    assert enhancer.config.input_size == recognizer.config.input_size == source["input_size"]


def _run(model: str, images: np.ndarray, output: int = 0) -> np.ndarray:
    session = ort.InferenceSession(str(REPOSITORY / model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return np.concatenate(
        [session.run(None, {contract.IMAGE: images[i : i + 128]})[output] for i in range(0, len(images), 128)]
    )


@pytest.mark.slow
def test_recorded_parity_still_holds() -> None:
    recognizer, enhancer = load_recognizer(CHECKPOINTS / "recognizer"), load_enhancer(CHECKPOINTS / "enhancer")
    parity = record(contract.RECOGNIZER)["parity"]
    assert parity["data"] == "fashion-mnist test[:512]" and parity["passed"]
    tolerance = parity["tolerance"]
    images = load_dataset("fashion-mnist", "test", image_size=recognizer.config.input_size).images[: parity["images"]]
    served_input = images.permute(0, 2, 3, 1).contiguous().numpy()  # the contract: uint8 NHWC

    with torch.no_grad():
        logits = recognizer(to_float(images)).numpy()
        enhanced_float, weights = enhancer(to_float(images), return_weights=True)
        enhanced = torch.floor(enhanced_float.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        pipeline_logits = recognizer(to_float(enhanced)).numpy()
    served_logits = _run(contract.RECOGNIZER, served_input)
    assert np.abs(served_logits - logits).max() <= tolerance["atol"] + tolerance["rtol"] * np.abs(logits).max()
    assert (served_logits.argmax(1) == logits.argmax(1)).mean() >= tolerance["min_top1_agreement"]

    served_enhanced = _run(contract.ENHANCER, served_input)
    pixel_diff = np.abs(served_enhanced.astype(np.int16) - enhanced.permute(0, 2, 3, 1).numpy().astype(np.int16))
    assert pixel_diff.max() <= tolerance["max_pixel_diff"] and (pixel_diff > 0).mean() < 1e-3

    served_weights = _run(contract.ENHANCER, served_input, output=1)  # OP_WEIGHTS, checked like the image
    assert np.abs(served_weights - weights.numpy()).max() <= tolerance["atol"]
    assert record(contract.ENHANCER)["parity"]["max_abs_op_weight_diff"] <= tolerance["atol"]

    # End to end, a pixel off by one level (checked above) moves the logits by more than atol, by an amount
    # that depends on which pixels round the other way; so the served recognizer is held to its tolerance on
    # the served enhancer's own output, and the whole pipeline to the recorded top-1 agreement.
    pipeline = _run(contract.RECOGNIZER, served_enhanced)
    with torch.no_grad():
        on_served = recognizer(to_float(torch.from_numpy(served_enhanced).permute(0, 3, 1, 2))).numpy()
    assert np.abs(pipeline - on_served).max() <= tolerance["atol"] + tolerance["rtol"] * np.abs(on_served).max()
    recorded = record(contract.ENHANCER)["pipeline_parity"]
    assert (pipeline.argmax(1) == pipeline_logits.argmax(1)).mean() >= min(recorded["top1_agreement"], 0.99)


REPORTS = sorted((ROOT / "docs" / "reports").glob("*/report.json"))


@pytest.mark.parametrize("report", REPORTS, ids=lambda p: p.parent.name)
def test_committed_reports_describe_the_committed_checkpoints(report: Path) -> None:
    """A robustness report in docs/reports names the weights it measured: they must be the ones committed
    (a refitted model needs its report regenerated, with the command in the report's header)."""
    header = json.loads(report.read_text())["header"]
    for part in (header["model"], header.get("enhancer")):
        if part is not None and part["path"].startswith("checkpoints/"):
            assert part["sha256"] == directory_weights_sha256(ROOT / part["path"]), (
                f"{report.parent.name} measured other {part['path']} weights: rerun `{header['command']}`"
            )
