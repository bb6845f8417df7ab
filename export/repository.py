"""Triton model repository writer: ``enhancer``, ``recognizer`` and the ``dyntta`` ensemble, two flavours.

::

    <out>/enhancer/config.pbtxt  export.json  1/model.onnx [1/model.py | 1/model.plan]
    <out>/recognizer/config.pbtxt  labels.txt  export.json  1/model.onnx [...]
    <out>/dyntta/config.pbtxt  labels.txt  1/          # ensemble: enhancer -> recognizer

Every model takes ``IMAGE`` uint8 ``[S, S, 3]`` (plus the batch dimension). ``recognizer`` and ``dyntta``
return ``LOGITS`` fp32 ``[num_classes]`` with ``labels.txt`` (the classification extension answers
``score:index:label``); ``enhancer`` returns ``ENHANCED_IMAGE`` uint8 ``[S, S, 3]`` and, for an enhancer
that blends named operations, ``OP_WEIGHTS`` fp32 ``[K]`` with the names in its ``op_names`` parameter
(the ensemble uses ``ENHANCED_IMAGE`` only). Every config carries the ``preprocess`` parameter: the JSON of
the recognizer's :class:`dyntta.data.Preprocess`, how a client brings an image of any shape to ``S``.

Flavours, from the same ONNX files:

* ``cpu``: ``backend: "python"`` with ``model.py`` (:mod:`export.triton_onnx_host`) hosting onnxruntime, for
  the Triton bundled in the ``nvidia-pytriton`` wheel (python backend only).
* ``gpu``: ``backend: "onnxruntime"`` with ``KIND_GPU`` instances for the NGC ``tritonserver:<yy.mm>-py3``
  image, optionally with the TensorRT execution accelerator (FP16, engine cache), or ``tensorrt_plan``
  models when plans were built.

Configs are built as Triton ``ModelConfig`` protobuf messages (from tritonclient) and written in text
format, so every file written is known to parse.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from dyntta.contract import (
    ENHANCED_IMAGE,
    ENHANCER,
    ENSEMBLE,
    IMAGE,
    LOGITS,
    OP_NAMES_PARAMETER,
    OP_WEIGHTS,
    PREPROCESS_PARAMETER,
    RECOGNIZER,
    TRAINING_PARAMETER,
    Training,
)
from dyntta.data.preprocess import RESIZE, Preprocess

Flavour = Literal["cpu", "gpu"]
FLAVOURS: tuple[Flavour, ...] = ("cpu", "gpu")
LABELS_FILE = "labels.txt"
REPORT_FILE = "export.json"
HOST_SOURCE = Path(__file__).with_name("triton_onnx_host.py")


@dataclass
class ServingOptions:
    """Batching, instances and threads; defaults suit the 2-core CPU machines and one GPU."""

    max_batch_size: int = 128
    version: int = 1
    # cpu flavour: one instance per model, each onnxruntime session using both cores without spinning.
    cpu_instances: int = 1
    cpu_threads: int = 2
    cpu_queue_delay_us: int = 0  # the batcher still merges whatever queued while the instance was busy
    # gpu flavour: two instances overlap copies with compute.
    gpu_instances: int = 2
    gpu_queue_delay_us: int = 100
    ort_tensorrt: bool = False  # TensorRT execution accelerator inside the onnxruntime backend
    ort_tensorrt_precision: str = "FP16"
    trt_cache_dir: str = "/tmp/dyntta-trt-cache"  # the repository may be mounted read-only

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if self.version < 1:
            raise ValueError("model versions start at 1 (Triton ignores 0)")


@dataclass
class ServedModel:
    """One exported model: its ONNX file and what the config needs to know about it."""

    name: str
    onnx_path: Path
    input_size: int
    output_name: str
    output_dims: list[int]
    output_type: int  # mc.TYPE_*
    labels: list[str] | None = None
    identity: bool = False  # the pass-through enhancer: nothing to accelerate
    plan_path: Path | None = None  # a TensorRT plan for the gpu flavour
    report: dict[str, Any] = field(default_factory=dict)
    op_names: list[str] | None = None  # an enhancer with a second output OP_WEIGHTS [K]: its K names
    preprocess: Preprocess = RESIZE
    training: Training | None = None  # how it was trained (its checkpoint's recipe), for clients to read

    @property
    def image_dims(self) -> list[int]:
        return [self.input_size, self.input_size, 3]


def recognizer_model(onnx_path: Path, input_size: int, classes: Sequence[str], **kw: Any) -> ServedModel:
    return ServedModel(
        RECOGNIZER, onnx_path, input_size, LOGITS, [len(classes)], mc.TYPE_FP32, labels=list(classes), **kw
    )


def enhancer_model(onnx_path: Path, input_size: int, **kw: Any) -> ServedModel:
    return ServedModel(
        ENHANCER, onnx_path, input_size, ENHANCED_IMAGE, [input_size, input_size, 3], mc.TYPE_UINT8, **kw
    )


def _io(config: mc.ModelConfig, model: ServedModel, *, labels: bool) -> None:
    config.input.add(name=IMAGE, data_type=mc.TYPE_UINT8, dims=model.image_dims)
    output = config.output.add(name=model.output_name, data_type=model.output_type, dims=model.output_dims)
    if labels and model.labels:
        output.label_filename = LABELS_FILE


def _param(config: mc.ModelConfig, key: str, value: Any) -> None:
    config.parameters[key].string_value = str(value)


def _contract(config: mc.ModelConfig, model: ServedModel) -> None:
    """What clients read from the config: the preprocessing policy; how the model was trained; OP_WEIGHTS
    and its op names."""
    _param(config, PREPROCESS_PARAMETER, model.preprocess.to_json())
    if model.training is not None:
        _param(config, TRAINING_PARAMETER, model.training.to_json())
    if model.op_names:
        if any("," in name for name in model.op_names):
            raise ValueError(f"operation names must not contain commas: {model.op_names}")
        config.output.add(name=OP_WEIGHTS, data_type=mc.TYPE_FP32, dims=[len(model.op_names)])
        _param(config, OP_NAMES_PARAMETER, ",".join(model.op_names))


def _warmup(config: mc.ModelConfig, model: ServedModel, batch_sizes: Sequence[int]) -> None:
    # READY then means the session (and, on GPU, the TensorRT engines) exists and has run once.
    for batch in dict.fromkeys(batch_sizes):
        warmup = config.model_warmup.add(name=f"zeros_batch_{batch}", batch_size=batch, count=1)
        tensor = warmup.inputs[IMAGE]
        tensor.data_type = mc.TYPE_UINT8
        tensor.dims.extend(model.image_dims)
        tensor.zero_data = True


def model_config(model: ServedModel, flavour: Flavour, options: ServingOptions) -> mc.ModelConfig:
    config = mc.ModelConfig(name=model.name, max_batch_size=options.max_batch_size)
    config.version_policy.latest.num_versions = 1
    _io(config, model, labels=True)
    _contract(config, model)
    if flavour == "cpu":
        config.backend = "python"
        config.instance_group.add(count=options.cpu_instances, kind=mc.ModelInstanceGroup.KIND_CPU)
        config.dynamic_batching.max_queue_delay_microseconds = options.cpu_queue_delay_us
        _param(config, "onnx_file", "model.onnx")
        _param(config, "intra_op_thread_count", options.cpu_threads)
        _param(config, "inter_op_thread_count", 1)
        _warmup(config, model, [1])
        return config
    if model.plan_path is not None:
        config.platform = "tensorrt_plan"
    else:
        config.backend = "onnxruntime"
        if options.ort_tensorrt and not model.identity:
            accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
            size = model.input_size
            profile = {"min": 1, "opt": options.max_batch_size, "max": options.max_batch_size}
            for key, value in {
                "precision_mode": options.ort_tensorrt_precision,
                "max_workspace_size_bytes": str(1 << 30),
                "trt_engine_cache_enable": "1",
                "trt_engine_cache_path": f"{options.trt_cache_dir}/{model.name}",
                # One profile over the whole batch range, so no engine is rebuilt for a new batch size.
                **{f"trt_profile_{k}_shapes": f"{IMAGE}:{b}x{size}x{size}x3" for k, b in profile.items()},
            }.items():
                accelerator.parameters[key] = value
    config.instance_group.add(count=options.gpu_instances, kind=mc.ModelInstanceGroup.KIND_GPU)
    config.dynamic_batching.max_queue_delay_microseconds = options.gpu_queue_delay_us
    _warmup(config, model, [1, options.max_batch_size])
    return config


def ensemble_config(
    enhancer: ServedModel, recognizer: ServedModel, options: ServingOptions, name: str = ENSEMBLE
) -> mc.ModelConfig:
    """``IMAGE`` -> enhancer -> ``enhanced_image`` -> recognizer -> ``LOGITS``.

    In the maps the key is the composing model's tensor, the value the ensemble's name for it. The ensemble
    has no batcher or instances of its own; each step batches on its own.
    """
    if enhancer.input_size != recognizer.input_size:
        raise ValueError(f"enhancer input {enhancer.input_size} != recognizer's {recognizer.input_size}")
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=options.max_batch_size)
    _io(config, recognizer, labels=True)
    first = config.ensemble_scheduling.step.add(model_name=enhancer.name, model_version=-1)
    first.input_map[IMAGE] = IMAGE
    first.output_map[ENHANCED_IMAGE] = "enhanced_image"
    second = config.ensemble_scheduling.step.add(model_name=recognizer.name, model_version=-1)
    second.input_map[IMAGE] = "enhanced_image"
    second.output_map[LOGITS] = LOGITS
    # A client of the ensemble preprocesses as the recognizer does (OP_WEIGHTS is not an ensemble output).
    _param(config, PREPROCESS_PARAMETER, recognizer.preprocess.to_json())
    return config


def render(config: mc.ModelConfig, header: str) -> str:
    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.strip().splitlines())
    return comments + "\n" + text_format.MessageToString(config)


def parse_config(path: str | Path) -> mc.ModelConfig:
    """Parse a ``config.pbtxt`` against Triton's ModelConfig protobuf (raises on any unknown field)."""
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


_HEADERS = {
    "cpu": "Flavour cpu: python backend hosting onnxruntime (1/model.py), for the tritonserver\n"
    "bundled in the nvidia-pytriton wheel (serve/triton.py starts it).",
    "gpu": "Flavour gpu: onnxruntime / tensorrt_plan on KIND_GPU instances, for the NGC\n"
    "tritonserver:<yy.mm>-py3 image (which has the onnxruntime and tensorrt backends).",
}


def _header(flavour: Flavour, what: str, command: str) -> str:
    return f"{what}\n{_HEADERS[flavour]}\nGenerated by: {command}\nDo not edit: re-run the export."


def write_model(
    out: Path, model: ServedModel, flavour: Flavour, options: ServingOptions, command: str, report: dict[str, Any]
) -> Path:
    directory = out / model.name
    if directory.exists():
        shutil.rmtree(directory)  # stale versions or files of another flavour must not survive
    version = directory / str(options.version)
    version.mkdir(parents=True)
    shutil.copyfile(model.onnx_path, version / "model.onnx")
    if flavour == "cpu":
        shutil.copyfile(HOST_SOURCE, version / "model.py")
    elif model.plan_path is not None:
        shutil.copyfile(model.plan_path, version / "model.plan")
    if model.labels:
        (directory / LABELS_FILE).write_text("\n".join(model.labels) + "\n")
    what = (
        "Recognizer: IMAGE uint8 [S,S,3] -> LOGITS fp32 [classes] (uint8->float/255, NHWC->NCHW and "
        "normalisation in the graph)."
        if model.name == RECOGNIZER
        else "Enhancer: IMAGE uint8 [S,S,3] -> ENHANCED_IMAGE uint8 [S,S,3]"
        + (f", OP_WEIGHTS fp32 [{len(model.op_names)}] (names: op_names)" if model.op_names else "")
        + (" (identity: pass-through graph, no enhancer checkpoint given)." if model.identity else ".")
    )
    (directory / "config.pbtxt").write_text(
        render(model_config(model, flavour, options), _header(flavour, what, command))
    )
    (directory / REPORT_FILE).write_text(json.dumps({**report, "flavour": flavour}, indent=2) + "\n")
    return directory


def write_repository(
    out: str | Path,
    enhancer: ServedModel,
    recognizer: ServedModel,
    flavour: Flavour,
    options: ServingOptions,
    *,
    command: str,
    reports: dict[str, dict[str, Any]],
) -> Path:
    """Write (or overwrite) the three models of one flavour under ``out``; other directories are kept."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for model in (enhancer, recognizer):
        write_model(out, model, flavour, options, command, reports.get(model.name, {}))
    directory = out / ENSEMBLE
    if directory.exists():
        shutil.rmtree(directory)
    (directory / str(options.version)).mkdir(parents=True)
    # An ensemble needs an (empty) version directory; git keeps no empty directory, hence the marker.
    (directory / str(options.version) / ".gitkeep").write_text("")
    assert recognizer.labels is not None
    (directory / LABELS_FILE).write_text("\n".join(recognizer.labels) + "\n")
    what = "Ensemble dyntta: IMAGE uint8 [S,S,3] -> enhancer -> recognizer -> LOGITS fp32 [classes]."
    (directory / "config.pbtxt").write_text(
        render(ensemble_config(enhancer, recognizer, options), _header(flavour, what, command))
    )
    for config_path in sorted(out.glob("*/config.pbtxt")):
        parse_config(config_path)  # what was written reads back
    return out
