"""Bring your own recognizer: one typed loader for every frozen classifier an enhancer can be fitted through.

A recognizer spec is one of

- a dyntta recognizer checkpoint directory (``config.json`` + ``model.safetensors``);
- ``timm:ARCH`` with a weights file (state dict ``.pt``/``.pth`` or ``.safetensors``); input size, mean/std,
  interpolation and crop come from the architecture's ``pretrained_cfg``;
- ``torchvision:ARCH`` with a weights file; the same values come from the architecture's default weights
  entry (``ResNet18_Weights.DEFAULT.transforms()``: resize, crop, mean/std, interpolation);
- a TorchScript file (``torch.jit.save``), or ``torchscript:PATH``;
- an ONNX file (``*.onnx`` or ``onnx:PATH``), converted to a differentiable module with ``onnx2torch`` and
  checked for logit parity against onnxruntime on real images (:func:`check_onnx_parity`) before use.

Flags override any of the preprocessing values; a TorchScript or ONNX file carries none, so its mean/std
default to ImageNet's and its input size comes from the ONNX input shape or ``--recognizer-input-size``.

Whatever the source, :func:`load_external_recognizer` returns a frozen module with the dyntta image
contract (float ``(N, 3, S, S)`` in [0, 1], i.e. ``to_model_input`` bytes / 255, in; logits out): the
recognizer's own normalisation is folded inside, so the enhancer in front of it always works on plain pixels.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dyntta.data.preprocess import INTERPOLATIONS, Preprocess
from dyntta.models.checkpoint import CONFIG_FILE, load_recognizer

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ONNX parity before training: ``max |torch - onnxruntime| <= atol + rtol * max |logit|``.
ONNX_ATOL = 1e-3
ONNX_RTOL = 1e-4
#: How many real images the ONNX parity check runs.
ONNX_PARITY_IMAGES = 64

Triple = tuple[float, float, float]


class Kind(StrEnum):
    CHECKPOINT = "checkpoint"
    TIMM = "timm"
    TORCHVISION = "torchvision"
    TORCHSCRIPT = "torchscript"
    ONNX = "onnx"


class OnnxParityError(ValueError):
    """The onnx2torch conversion disagrees with onnxruntime beyond tolerance; nothing is trained on it."""


@dataclass(frozen=True)
class Preprocessing:
    """How images reach the recognizer: brought to ``input_size`` x ``input_size`` (``interpolation``,
    ``crop_pct`` of the resized image kept around its centre), scaled to [0, 1], normalised with mean/std.
    ``source`` says where the values came from."""

    input_size: int
    mean: Triple
    std: Triple
    interpolation: str = "bilinear"
    crop_pct: float = 1.0
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def policy(self) -> Preprocess:
        """The :class:`~dyntta.data.Preprocess` that brings any image to this input: timm's and
        torchvision's evaluation transform, a centre crop of ``crop_pct`` of the shorter side."""
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        return Preprocess("center_crop", self.crop_pct, self.interpolation)  # type: ignore[arg-type]


@dataclass(frozen=True)
class PreprocessingOverrides:
    """Values given on the command line; ``None`` keeps the recognizer's own."""

    input_size: int | None = None
    mean: Triple | None = None
    std: Triple | None = None
    interpolation: str | None = None
    crop_pct: float | None = None

    def apply(self, base: Preprocessing) -> Preprocessing:
        given = {k: v for k, v in asdict(self).items() if v is not None}
        if not given:
            return base
        for name in ("mean", "std"):
            if name in given:
                given[name] = _triple(given[name], name)
        source = f"{base.source} + flags ({', '.join(given)})" if base.source else f"flags ({', '.join(given)})"
        return replace(base, **given, source=source)


@dataclass(frozen=True)
class RecognizerSpec:
    """What the user named: the spec string, a weights file, overrides, class names, the ONNX tolerance."""

    spec: str
    weights: str | None = None
    overrides: PreprocessingOverrides = field(default_factory=PreprocessingOverrides)
    classes: tuple[str, ...] | None = None
    onnx_atol: float = ONNX_ATOL

    @property
    def kind(self) -> Kind:
        return spec_kind(self.spec)

    @property
    def path(self) -> Path:
        """The file or directory of a checkpoint, TorchScript or ONNX spec (its ``kind:`` prefix removed)."""
        head, _, rest = self.spec.partition(":")
        return Path(rest if head in (Kind.TORCHSCRIPT, Kind.ONNX) and rest else self.spec)

    @property
    def arch(self) -> str:
        return self.spec.partition(":")[2]

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "weights": self.weights,
            "overrides": {k: v for k, v in asdict(self.overrides).items() if v is not None},
            "classes": list(self.classes) if self.classes is not None else None,
            "onnx_atol": self.onnx_atol,
        }


@dataclass
class OnnxParity:
    """The onnx2torch module against onnxruntime on the same normalised real images."""

    images: int
    max_abs_logit_diff: float
    max_abs_logit: float
    top1_agreement: float
    allowed: float

    @property
    def passed(self) -> bool:
        return self.max_abs_logit_diff <= self.allowed


@dataclass
class LoadedRecognizer:
    """The frozen module (float [0, 1] NCHW in, logits out), how to feed it, and what its outputs are."""

    module: nn.Module
    spec: RecognizerSpec
    preprocessing: Preprocessing
    num_classes: int
    classes: list[str] | None  # None: neither the checkpoint nor --classes names them (use the data set's)
    onnx_parity: OnnxParity | None = None
    policy: Preprocess | None = None  # how images of any shape reach input_size; None: preprocessing.policy()

    def __post_init__(self) -> None:
        if self.policy is None:
            self.policy = self.preprocessing.policy()

    @property
    def kind(self) -> Kind:
        return self.spec.kind

    def describe(self) -> dict[str, Any]:
        """For recipes and export reports."""
        return {
            "kind": str(self.kind),
            **self.spec.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "policy": self.policy.to_dict() if self.policy else None,
            "num_classes": self.num_classes,
            "num_parameters": sum(p.numel() for p in self.module.parameters()),
            "onnx_parity": asdict(self.onnx_parity) if self.onnx_parity else None,
        }


class FrozenRecognizer(nn.Module):
    """``network((pixels - mean) / std)`` with every parameter frozen and the network always in eval mode
    (BatchNorm statistics and dropout never change, whatever ``train()`` the caller sets)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, network: nn.Module, mean: Triple, std: Triple) -> None:
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenRecognizer:
        super().train(False)
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.network((pixels - self.mean) / self.std)
        return out


# --- parsing -----------------------------------------------------------------------------------------------


def spec_kind(spec: str) -> Kind:
    head, sep, rest = spec.partition(":")
    if sep and head in (Kind.TIMM, Kind.TORCHVISION, Kind.TORCHSCRIPT, Kind.ONNX):
        if not rest:
            what = "file" if head in (Kind.TORCHSCRIPT, Kind.ONNX) else "architecture"
            raise ValueError(f"--recognizer {spec!r}: name the {head} {what} after the colon")
        return Kind(head)
    path = Path(spec)
    if path.is_dir():
        return Kind.CHECKPOINT
    if path.suffix.lower() == ".onnx":
        return Kind.ONNX
    return Kind.TORCHSCRIPT


def is_dyntta_checkpoint(spec: str) -> bool:
    return spec_kind(spec) is Kind.CHECKPOINT


def parse_classes(value: str | None) -> tuple[str, ...] | None:
    """``--classes``: a file with one name per line, or names separated by commas."""
    if not value:
        return None
    path = Path(value)
    names = path.read_text().splitlines() if path.is_file() else value.split(",")
    classes = tuple(n.strip() for n in names if n.strip())
    if len(classes) < 2:
        raise ValueError(f"--classes {value!r} names {len(classes)} class(es); a classifier has at least 2")
    if len(set(classes)) != len(classes):
        raise ValueError(f"--classes {value!r} repeats a name")
    return classes


def add_recognizer_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that describe a bring-your-own recognizer (shared by training and export)."""
    parser.add_argument(
        "--recognizer-weights",
        metavar="FILE",
        help="weights for timm:ARCH / torchvision:ARCH: a state dict (.pt/.pth) or .safetensors",
    )
    parser.add_argument(
        "--classes",
        help="the recognizer's class names in output order: a file (one per line) or comma-separated; "
        "default the checkpoint's, else the data set's",
    )
    parser.add_argument(
        "--recognizer-input-size",
        type=int,
        metavar="S",
        help="side of the square input; default the model's pretrained_cfg / weights / ONNX input shape",
    )
    parser.add_argument(
        "--recognizer-mean",
        type=float,
        nargs=3,
        metavar="M",
        help="normalisation mean; default the model's pretrained_cfg / weights, ImageNet's for TorchScript and ONNX",
    )
    parser.add_argument(
        "--recognizer-std", type=float, nargs=3, metavar="S", help="normalisation std (defaults as for the mean)"
    )
    parser.add_argument(
        "--recognizer-interpolation", help="resize interpolation (bilinear, bicubic, ...); default the model's"
    )
    parser.add_argument(
        "--recognizer-crop-pct", type=float, help="centre-crop fraction of the resized image; default the model's"
    )
    parser.add_argument(
        "--onnx-atol",
        type=float,
        default=ONNX_ATOL,
        help=f"ONNX recognizers: most |logit| difference allowed between onnx2torch and onnxruntime on "
        f"{ONNX_PARITY_IMAGES} real images (plus {ONNX_RTOL:g} x the largest |logit|)",
    )


def spec_from_args(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> RecognizerSpec:
    """The spec from parsed flags; ``defaults`` (a recorded :meth:`RecognizerSpec.to_dict`, e.g. from an
    enhancer's recipe) fills what the command line leaves out."""
    recorded = defaults or {}
    kept = recorded.get("overrides") or {}

    def pick(flag: str, key: str) -> Any:
        value = getattr(args, flag, None)
        return value if value is not None else kept.get(key)

    overrides = PreprocessingOverrides(
        input_size=pick("recognizer_input_size", "input_size"),
        mean=_triple(pick("recognizer_mean", "mean"), "mean"),
        std=_triple(pick("recognizer_std", "std"), "std"),
        interpolation=pick("recognizer_interpolation", "interpolation"),
        crop_pct=pick("recognizer_crop_pct", "crop_pct"),
    )
    classes = parse_classes(getattr(args, "classes", None))
    if classes is None and recorded.get("classes"):
        classes = tuple(recorded["classes"])
    return RecognizerSpec(
        spec=args.recognizer,
        weights=getattr(args, "recognizer_weights", None) or recorded.get("weights"),
        overrides=overrides,
        classes=classes,
        onnx_atol=getattr(args, "onnx_atol", None) or recorded.get("onnx_atol") or ONNX_ATOL,
    )


def _triple(value: Sequence[float] | None, name: str) -> Triple | None:
    if value is None:
        return None
    if len(value) != 3:
        raise ValueError(f"{name} needs 3 values (R G B), got {list(value)}")
    return (float(value[0]), float(value[1]), float(value[2]))


# --- loading -----------------------------------------------------------------------------------------------

#: ``images(preprocessing, count)``: real uint8 (count, 3, S, S) images, brought to the recognizer's input
#: by its own preprocessing, for the ONNX parity check.
ImageSource = Callable[[Preprocessing, int], torch.Tensor]


def load_external_recognizer(spec: RecognizerSpec, images: ImageSource | None = None) -> LoadedRecognizer:
    """Load and freeze the recognizer ``spec`` names. An ONNX spec needs ``images``: its conversion is
    checked against onnxruntime on them and refused (:class:`OnnxParityError`) past tolerance."""
    kind = spec.kind
    if kind in (Kind.TIMM, Kind.TORCHVISION) and not spec.weights:
        raise ValueError(f"--recognizer {spec.spec} needs --recognizer-weights FILE (a state dict or .safetensors)")
    if kind not in (Kind.TIMM, Kind.TORCHVISION) and spec.weights:
        raise ValueError(f"--recognizer-weights is for timm:ARCH and torchvision:ARCH, not a {kind} recognizer")
    if kind is Kind.CHECKPOINT:
        return _from_checkpoint(spec)
    network: nn.Module
    if kind is Kind.TIMM:
        network, base = _timm(spec.arch, spec.weights or "")
    elif kind is Kind.TORCHVISION:
        network, base = _torchvision(spec.arch, spec.weights or "")
    elif kind is Kind.TORCHSCRIPT:
        network, base = _torchscript(spec.path)
    else:
        network, base = _onnx(spec.path)
    preprocessing = spec.overrides.apply(base)
    if preprocessing.input_size < 1:
        raise ValueError(f"the {kind} recognizer {spec.spec} does not say its input size: pass --recognizer-input-size")
    module = FrozenRecognizer(network, preprocessing.mean, preprocessing.std)
    loaded = LoadedRecognizer(module, spec, preprocessing, _num_classes(module, preprocessing.input_size), None)
    loaded.classes = _check_classes(spec.classes, loaded.num_classes)
    if kind is Kind.ONNX:
        if images is None:
            raise ValueError("an ONNX recognizer is checked against onnxruntime on real images: pass images")
        loaded.onnx_parity = check_onnx_parity(loaded, images(preprocessing, ONNX_PARITY_IMAGES))
    return loaded


def _from_checkpoint(spec: RecognizerSpec) -> LoadedRecognizer:
    if any(v is not None for v in asdict(spec.overrides).values()):
        raise ValueError("a dyntta checkpoint records its own preprocessing; drop the --recognizer-* flags")
    model = load_recognizer(spec.path)
    config = model.config
    for p in model.parameters():
        p.requires_grad_(False)
    preprocessing = Preprocessing(config.input_size, config.mean, config.std, source=str(spec.path / CONFIG_FILE))
    if spec.classes is not None and list(spec.classes) != config.classes:
        raise ValueError(f"--classes differ from the checkpoint's classes {config.classes[:5]}...")
    return LoadedRecognizer(
        model.eval(), spec, preprocessing, config.num_classes, list(config.classes), policy=config.preprocess
    )


def _check_classes(classes: tuple[str, ...] | None, num_classes: int) -> list[str] | None:
    if classes is not None and len(classes) != num_classes:
        raise ValueError(f"--classes names {len(classes)} classes but the recognizer has {num_classes} outputs")
    return list(classes) if classes is not None else None


@torch.no_grad()
def _num_classes(module: nn.Module, size: int) -> int:
    logits = module(torch.full((2, 3, size, size), 0.5))
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"the recognizer must return logits (N, classes); it returned {shape}")
    return int(logits.shape[1])


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file (unwrapping ``{"state_dict": ...}``-style
    containers and DataParallel's ``module.`` prefix); torch files are read with ``weights_only``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--recognizer-weights {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle with code, a TorchScript archive, not a torch file at all
        raise ValueError(f"--recognizer-weights {path} is not a state dict: {str(error).splitlines()[0]}") from None
    for key in ("state_dict", "model_state_dict", "model", "state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--recognizer-weights {path} does not hold a state dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load_weights(build: Callable[[int | None], nn.Module], weights: str, what: str) -> nn.Module:
    """Build ``what`` with its default head, resize the head to the weights' class count, load strictly."""
    state = read_state_dict(weights)
    model = build(None)
    expected = model.state_dict()
    # the classifier is where the weights' shapes differ from the default 1000-class build
    resized = {k: v.shape[0] for k, v in state.items() if k in expected and v.shape != expected[k].shape}
    if resized:
        counts = set(resized.values())
        if len(counts) != 1:
            raise ValueError(f"{weights} does not fit {what}: shapes differ at {sorted(resized)[:4]}")
        model = build(counts.pop())
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise ValueError(f"{weights} does not fit {what}: {detail}") from None
    return model.eval()


def _timm(arch: str, weights: str) -> tuple[nn.Module, Preprocessing]:
    import timm
    from timm.data import resolve_data_config

    if not timm.is_model(arch):
        raise ValueError(f"unknown timm architecture {arch!r} (see timm.list_models())")

    def build(num_classes: int | None) -> nn.Module:
        if num_classes is None:
            return timm.create_model(arch, pretrained=False)
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)

    model = _load_weights(build, weights, f"timm:{arch}")
    cfg = resolve_data_config(model=model)
    return model, Preprocessing(
        input_size=_square(cfg["input_size"][1:], f"timm:{arch}"),
        mean=_triple(cfg["mean"], "mean") or IMAGENET_MEAN,
        std=_triple(cfg["std"], "std") or IMAGENET_STD,
        interpolation=str(cfg.get("interpolation", "bilinear")),
        crop_pct=float(cfg.get("crop_pct", 1.0)),
        source=f"timm pretrained_cfg of {arch}",
    )


def _torchvision(arch: str, weights: str) -> tuple[nn.Module, Preprocessing]:
    from torchvision import models

    if arch not in models.list_models(module=models):
        raise ValueError(f"unknown torchvision classification model {arch!r} (see torchvision.models.list_models())")

    def build(num_classes: int | None) -> nn.Module:
        extra = {} if num_classes is None else {"num_classes": num_classes}
        return models.get_model(arch, weights=None, **extra)

    model = _load_weights(build, weights, f"torchvision:{arch}")
    try:
        transform = models.get_model_weights(arch).DEFAULT.transforms()  # type: ignore[attr-defined]
        size, resize = int(transform.crop_size[0]), int(transform.resize_size[0])
        base = Preprocessing(
            input_size=size,
            mean=_triple(transform.mean, "mean") or IMAGENET_MEAN,
            std=_triple(transform.std, "std") or IMAGENET_STD,
            interpolation=str(transform.interpolation.value),
            crop_pct=round(size / resize, 4),
            source=f"torchvision {models.get_model_weights(arch).DEFAULT}",
        )
    except (ValueError, AttributeError, KeyError):  # no weights enum for this architecture
        base = Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear", 0.875, source="ImageNet defaults")
    return model, base


def _torchscript(path: Path) -> tuple[nn.Module, Preprocessing]:
    if not path.is_file():
        raise ValueError(f"--recognizer {path}: no such file or checkpoint directory")
    try:
        network = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError:
        raise ValueError(
            f"--recognizer {path} is not a TorchScript file (a state dict needs timm:ARCH or torchvision:ARCH "
            "with --recognizer-weights; an ONNX file needs the .onnx suffix or onnx:PATH)"
        ) from None
    return network.eval(), Preprocessing(0, IMAGENET_MEAN, IMAGENET_STD, source="ImageNet mean/std (TorchScript)")


def _onnx_input(model: Any, path: Path) -> tuple[str, int]:
    """The ONNX graph's one image input: its name and (when static and square) its side."""
    from onnx import TensorProto

    initialisers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialisers]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ValueError(f"{path}: a recognizer ONNX graph has one input (images) and one output (logits)")
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != TensorProto.FLOAT:
        raise ValueError(f"{path}: the input must be float32 NCHW, not {TensorProto.DataType.Name(tensor.elem_type)}")
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
    if len(dims) != 4 or dims[1] not in (0, 3):
        raise ValueError(f"{path}: the input must be NCHW with 3 channels, got dims {dims}")
    return inputs[0].name, _square(dims[2:], str(path)) if dims[2] and dims[3] else 0


def _onnx(path: Path) -> tuple[nn.Module, Preprocessing]:
    import onnx

    if not path.is_file():
        raise ValueError(f"--recognizer {path}: no such ONNX file")
    try:
        from onnx2torch import convert
    except ImportError:
        raise ValueError("ONNX recognizers are converted with onnx2torch: install it (uv add onnx2torch)") from None
    model = onnx.load(str(path))
    _, size = _onnx_input(model, path)
    try:
        network = convert(_inline_initializer_aliases(model))
    except Exception as error:  # onnx2torch raises NotImplementedError and others for unsupported nodes
        raise ValueError(f"onnx2torch cannot convert {path}: {error}") from None
    return network.eval(), Preprocessing(size, IMAGENET_MEAN, IMAGENET_STD, source="ImageNet mean/std (ONNX)")


def _inline_initializer_aliases(model: Any) -> Any:
    """A copy of ``model`` whose ``Identity(initializer)`` nodes are gone, their consumers reading the
    initializer itself: torch's exporter shares equal weights that way, and onnx2torch's converters look
    weights up among the initializers (the served graph stays the user's file, untouched)."""
    from onnx import ModelProto

    copy = ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    weights = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Identity" and n.input[0] in weights and n.output[0] not in outputs
    }
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output and n.output[0] in alias)]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(kept)
    return copy


def _square(dims: Sequence[int], what: str) -> int:
    if len(dims) != 2 or dims[0] != dims[1]:
        raise ValueError(f"{what} takes {tuple(dims)} inputs; dyntta images are square: pass --recognizer-input-size")
    return int(dims[0])


def normalise(images: torch.Tensor, preprocessing: Preprocessing) -> np.ndarray:
    """uint8 (N, 3, S, S) -> the float32 NCHW array the user's own network (ONNX) takes."""
    mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    return ((images.float() / 255.0 - mean) / std).numpy().astype(np.float32)


@torch.no_grad()
def check_onnx_parity(loaded: LoadedRecognizer, images: torch.Tensor) -> OnnxParity:
    """The converted module against onnxruntime on ``images`` (uint8 NCHW); :class:`OnnxParityError` past
    ``atol + rtol * max|logit|``."""
    import onnxruntime as ort

    path = loaded.spec.path
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = normalise(images, loaded.preprocessing)
    expected = session.run(None, {session.get_inputs()[0].name: feed})[0]
    converted = loaded.module(images.float() / 255.0).numpy()
    scale = float(np.abs(expected).max())
    parity = OnnxParity(
        images=len(images),
        max_abs_logit_diff=float(np.abs(converted - expected).max()),
        max_abs_logit=scale,
        top1_agreement=float((converted.argmax(1) == expected.argmax(1)).mean()),
        allowed=loaded.spec.onnx_atol + ONNX_RTOL * scale,
    )
    if not parity.passed:
        raise OnnxParityError(
            f"onnx2torch's conversion of {path} disagrees with onnxruntime on {parity.images} real images: "
            f"max |logit diff| {parity.max_abs_logit_diff:.3g} > allowed {parity.allowed:.3g} (top-1 agreement "
            f"{parity.top1_agreement:.3f}); not training through it (--onnx-atol raises the tolerance)"
        )
    return parity
