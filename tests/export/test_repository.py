"""The Triton repository: layout, both flavours' configs parsed against Triton's ModelConfig protobuf."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.build import ExportOptions, export_repository, random_images
from export.repository import ServingOptions, enhancer_model, recognizer_model, write_repository

KIND_CPU, KIND_GPU = mc.ModelInstanceGroup.KIND_CPU, mc.ModelInstanceGroup.KIND_GPU


@pytest.fixture(scope="module")
def repositories(tiny_recognizer, toy_enhancer, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("export") / "model_repository"
    result = export_repository(
        tiny_recognizer,
        tiny_recognizer.config.classes,
        32,
        out,
        ExportOptions(flavours=("cpu", "gpu"), serving=ServingOptions(ort_tensorrt=True, max_batch_size=64)),
        enhancer=toy_enhancer,
        parity_images=random_images(32, 32),
    )
    assert result.repositories == {"cpu": out, "gpu": Path(f"{out}_gpu")}
    return result.repositories


def parse(path: Path) -> mc.ModelConfig:
    # Strict: an unknown field or a malformed value raises ParseError.
    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_every_config_parses_against_triton_model_config(repositories, flavour):
    configs = sorted(repositories[flavour].glob("*/config.pbtxt"))
    assert [p.parent.name for p in configs] == ["dyntta", "enhancer", "recognizer"]
    for path in configs:
        config = parse(path)
        assert config.name == path.parent.name
        assert config.max_batch_size == 64


@pytest.mark.parametrize("flavour", ["cpu", "gpu"])
def test_layout_and_io(repositories, flavour, tiny_recognizer):
    repo = repositories[flavour]
    labels = (repo / "recognizer" / "labels.txt").read_text().splitlines()
    assert labels == tiny_recognizer.config.classes
    assert (repo / "dyntta" / "labels.txt").read_text().splitlines() == labels
    assert (repo / "dyntta" / "1").is_dir()
    for name in ("enhancer", "recognizer"):
        version = repo / name / "1"
        assert (version / "model.onnx").is_file()
        assert (version / "model.py").is_file() == (flavour == "cpu")
        report = json.loads((repo / name / "export.json").read_text())
        assert report["flavour"] == flavour and report["parity"]["passed"]
        assert report["onnx"]["inputs"] == [{"name": "IMAGE", "type": "UINT8", "shape": ["batch", 32, 32, 3]}]
    recognizer = parse(repo / "recognizer" / "config.pbtxt")
    enhancer = parse(repo / "enhancer" / "config.pbtxt")
    for config in (recognizer, enhancer):
        assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("IMAGE", mc.TYPE_UINT8, [32, 32, 3])]
        assert config.HasField("dynamic_batching") and config.model_warmup
    assert [(o.name, o.data_type, list(o.dims), o.label_filename) for o in recognizer.output] == [
        ("LOGITS", mc.TYPE_FP32, [10], "labels.txt")
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in enhancer.output] == [
        ("ENHANCED_IMAGE", mc.TYPE_UINT8, [32, 32, 3])
    ]


def test_ensemble_maps_enhancer_into_recognizer(repositories):
    config = parse(repositories["cpu"] / "dyntta" / "config.pbtxt")
    assert config.platform == "ensemble"
    assert not config.instance_group and not config.HasField("dynamic_batching")
    first, second = config.ensemble_scheduling.step
    assert (first.model_name, dict(first.input_map), dict(first.output_map)) == (
        "enhancer",
        {"IMAGE": "IMAGE"},
        {"ENHANCED_IMAGE": "enhanced_image"},
    )
    assert (second.model_name, dict(second.input_map), dict(second.output_map)) == (
        "recognizer",
        {"IMAGE": "enhanced_image"},
        {"LOGITS": "LOGITS"},
    )
    assert config.output[0].label_filename == "labels.txt"


def test_cpu_flavour_is_python_backend_hosting_onnxruntime(repositories):
    config = parse(repositories["cpu"] / "recognizer" / "config.pbtxt")
    assert config.backend == "python" and not config.platform
    assert [(g.kind, g.count) for g in config.instance_group] == [(KIND_CPU, 1)]
    assert config.parameters["onnx_file"].string_value == "model.onnx"
    assert config.parameters["intra_op_thread_count"].string_value == "2"


def test_gpu_flavour_is_onnxruntime_on_gpu_with_tensorrt_accelerator(repositories):
    config = parse(repositories["gpu"] / "recognizer" / "config.pbtxt")
    assert config.backend == "onnxruntime"
    assert all(g.kind == KIND_GPU for g in config.instance_group)
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    assert accelerator.parameters["precision_mode"] == "FP16"
    assert accelerator.parameters["trt_engine_cache_enable"] == "1"
    assert accelerator.parameters["trt_profile_max_shapes"] == "IMAGE:64x32x32x3"
    assert sorted(w.batch_size for w in config.model_warmup) == [1, 64]  # engines built before READY
    # the same ONNX file in both flavours
    cpu = json.loads((repositories["cpu"] / "recognizer" / "export.json").read_text())["onnx"]["sha256"]
    gpu = json.loads((repositories["gpu"] / "recognizer" / "export.json").read_text())["onnx"]["sha256"]
    assert cpu == gpu


def test_rewriting_removes_stale_versions(tiny_recognizer, tmp_path: Path):
    out = tmp_path / "repo"
    classes, images = tiny_recognizer.config.classes, random_images(8, 32)
    export_repository(
        tiny_recognizer, classes, 32, out, ExportOptions(serving=ServingOptions(version=3)), parity_images=images
    )
    export_repository(tiny_recognizer, classes, 32, out, parity_images=images)
    assert sorted(p.name for p in (out / "recognizer").iterdir() if p.is_dir()) == ["1"]


def test_gpu_flavour_with_tensorrt_plans(tmp_path: Path, tiny_recognizer):
    # The config side of --tensorrt, without TensorRT: a plan file is only copied.
    onnx_file = tmp_path / "r.onnx"
    onnx_file.write_bytes(b"onnx")
    plan = tmp_path / "r.plan"
    plan.write_bytes(b"plan")
    rec = recognizer_model(onnx_file, 32, tiny_recognizer.config.classes, plan_path=plan)
    enh = enhancer_model(onnx_file, 32, identity=True)
    out = write_repository(tmp_path / "gpu", enh, rec, "gpu", ServingOptions(), command="test", reports={})
    config = parse(out / "recognizer" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and not config.backend
    assert (out / "recognizer" / "1" / "model.plan").read_bytes() == b"plan"
    assert parse(out / "enhancer" / "config.pbtxt").backend == "onnxruntime"  # identity stays on onnxruntime
    assert not parse(out / "enhancer" / "config.pbtxt").HasField("optimization")
