"""Where a recognizer comes from, one loader per source: a dyntta checkpoint directory, ``timm:ARCH`` or
``torchvision:ARCH`` with a weights file, a TorchScript file (ONNX: :mod:`.onnx_source`). Each returns the
network in eval mode and the preprocessing its source records."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dyntta.models.checkpoint import CONFIG_FILE, load_recognizer
from dyntta.models.external.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, as_triple, square_size
from dyntta.models.external.recognizer import LoadedRecognizer
from dyntta.models.external.spec import RecognizerSpec


def from_checkpoint(spec: RecognizerSpec) -> LoadedRecognizer:
    """A dyntta recognizer checkpoint directory (``config.json`` + ``model.safetensors``): it records its own
    preprocessing and classes, so no ``--recognizer-*`` flag applies."""
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


def load_weights(build: Callable[[int | None], nn.Module], weights: str, what: str) -> nn.Module:
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


def from_timm(arch: str, weights: str) -> tuple[nn.Module, Preprocessing]:
    """``timm:ARCH`` with a weights file (state dict ``.pt``/``.pth`` or ``.safetensors``); input size, mean/std,
    interpolation and crop come from the architecture's ``pretrained_cfg``."""
    import timm
    from timm.data import resolve_data_config

    if not timm.is_model(arch):
        raise ValueError(f"unknown timm architecture {arch!r} (see timm.list_models())")

    def build(num_classes: int | None) -> nn.Module:
        if num_classes is None:
            return timm.create_model(arch, pretrained=False)
        return timm.create_model(arch, pretrained=False, num_classes=num_classes)

    model = load_weights(build, weights, f"timm:{arch}")
    cfg = resolve_data_config(model=model)
    return model, Preprocessing(
        input_size=square_size(cfg["input_size"][1:], f"timm:{arch}"),
        mean=as_triple(cfg["mean"], "mean") or IMAGENET_MEAN,
        std=as_triple(cfg["std"], "std") or IMAGENET_STD,
        interpolation=str(cfg.get("interpolation", "bilinear")),
        crop_pct=float(cfg.get("crop_pct", 1.0)),
        source=f"timm pretrained_cfg of {arch}",
    )


def from_torchvision(arch: str, weights: str) -> tuple[nn.Module, Preprocessing]:
    """``torchvision:ARCH`` with a weights file; input size, mean/std, interpolation and crop come from the
    architecture's default weights entry (``ResNet18_Weights.DEFAULT.transforms()``: resize, crop, mean/std,
    interpolation), ImageNet's defaults where it has none."""
    from torchvision import models

    if arch not in models.list_models(module=models):
        raise ValueError(f"unknown torchvision classification model {arch!r} (see torchvision.models.list_models())")

    def build(num_classes: int | None) -> nn.Module:
        extra = {} if num_classes is None else {"num_classes": num_classes}
        return models.get_model(arch, weights=None, **extra)

    model = load_weights(build, weights, f"torchvision:{arch}")
    try:
        transform = models.get_model_weights(arch).DEFAULT.transforms()  # type: ignore[attr-defined]
        size, resize = int(transform.crop_size[0]), int(transform.resize_size[0])
        base = Preprocessing(
            input_size=size,
            mean=as_triple(transform.mean, "mean") or IMAGENET_MEAN,
            std=as_triple(transform.std, "std") or IMAGENET_STD,
            interpolation=str(transform.interpolation.value),
            crop_pct=round(size / resize, 4),
            source=f"torchvision {models.get_model_weights(arch).DEFAULT}",
        )
    except (ValueError, AttributeError, KeyError):  # no weights enum for this architecture
        base = Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD, "bilinear", 0.875, source="ImageNet defaults")
    return model, base


def from_torchscript(path: Path) -> tuple[nn.Module, Preprocessing]:
    """A TorchScript file (``torch.jit.save``), or ``torchscript:PATH``. It carries no preprocessing: mean/std are
    ImageNet's and the input size comes from ``--recognizer-input-size``."""
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
