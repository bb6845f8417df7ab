"""The dispatch: :func:`load_external_recognizer` loads the recognizer a spec names from its source, applies
the flag overrides, folds its normalisation into a :class:`~dyntta.models.external.recognizer.FrozenRecognizer`,
counts its classes and, for ONNX, checks parity against onnxruntime."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dyntta.models.external.onnx_parity import check_onnx_parity
from dyntta.models.external.onnx_source import from_onnx
from dyntta.models.external.onnx_tolerance import ONNX_PARITY_IMAGES
from dyntta.models.external.preprocessing import Preprocessing
from dyntta.models.external.recognizer import FrozenRecognizer, LoadedRecognizer
from dyntta.models.external.sources import from_checkpoint, from_timm, from_torchscript, from_torchvision
from dyntta.models.external.spec import Kind, RecognizerSpec

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
        return from_checkpoint(spec)
    network: nn.Module
    if kind is Kind.TIMM:
        network, base = from_timm(spec.arch, spec.weights or "")
    elif kind is Kind.TORCHVISION:
        network, base = from_torchvision(spec.arch, spec.weights or "")
    elif kind is Kind.TORCHSCRIPT:
        network, base = from_torchscript(spec.path)
    else:
        network, base = from_onnx(spec.path)
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
