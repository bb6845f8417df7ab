"""Classifiers: anything that maps a uint8 (N, 3, S, S) batch to logits (N, classes).

Reports only ever see this callable, so one report code path serves torch checkpoints, ONNX files
(onnxruntime) and, in the gateway, models behind Triton. uint8 in is the serving contract: the export
graphs take ``IMAGE`` uint8 [N, S, S, 3], and the gateway sends decoded uploads as uint8.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from dyntta.contract import IMAGE, sha256_file


class ClassifyFn(Protocol):
    def __call__(self, images: torch.Tensor) -> torch.Tensor | np.ndarray: ...


@dataclass
class ModelInfo:
    """What the report header says about a model."""

    name: str
    path: str
    kind: str  # "torch" | "onnx" | "torch (enhancer + recognizer)"
    sha256: str | None = None  # of the weights file(s)
    arch: str | None = None
    num_parameters: int | None = None
    input_size: int | None = None
    classes: list[str] | None = None
    components: list[dict[str, Any]] | None = None  # for composed models: each part's info
    metadata: dict[str, str] | None = None  # e.g. an ONNX graph's metadata_props (how it was made)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class Classifier:
    """Base: ``classifier(uint8 NCHW batch) -> float logits`` plus :attr:`info` for the report header."""

    info: ModelInfo

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class TorchClassifier(Classifier):
    """A torch module taking float [0, 1] NCHW (a Recognizer, or enhancer -> recognizer)."""

    def __init__(
        self, module: nn.Module, info: ModelInfo, device: str | torch.device = "cpu", optimize: bool = False
    ) -> None:
        """``optimize``: trace, freeze (BatchNorm folded into convolutions) and ``optimize_for_inference``
        on the first batch: about 2x faster on CPU, logits equal to ~1e-5. Only for graphs without
        data-dependent control flow (a plain recognizer); ``info.kind`` records that it was used."""
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.info = info
        self.optimize = optimize
        self._compiled: torch.jit.ScriptModule | None = None
        if optimize:
            self.info.kind = f"{info.kind} (traced, frozen)"

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.to(self.device, non_blocking=True).float().div_(255.0)
        if not self.optimize:
            return self.module(pixels).float().cpu()
        if self._compiled is None:
            traced = torch.jit.trace(self.module, pixels[:2], check_trace=False)
            self._compiled = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
        return self._compiled(pixels).float().cpu()


class OnnxClassifier(Classifier):
    """An exported graph run with onnxruntime: uint8 NCHW batches are transposed to the graph's NHWC."""

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort  # only needed for ONNX models

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        inputs = self.session.get_inputs()
        names = [i.name for i in inputs]
        found = next((i for i in inputs if i.name == IMAGE), inputs[0] if len(inputs) == 1 else None)
        if found is None:
            raise ValueError(f"{path}: expected one input or one named {IMAGE!r}, found {names}")
        self.input = found
        if self.input.type != "tensor(uint8)" or len(self.input.shape) != 4:
            raise ValueError(
                f"{path}: input {self.input.name!r} is {self.input.type} {self.input.shape}; "
                "expected uint8 [N, S, S, 3] (NHWC)"
            )
        batch, height, _, channels = self.input.shape
        if channels not in (3, None) and not isinstance(channels, str):
            raise ValueError(f"{path}: input has {channels} channels, expected 3 (NHWC)")
        # A graph exported with a fixed batch size is fed in chunks of exactly that size.
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        size = height if isinstance(height, int) else None
        self.info = ModelInfo(
            name=Path(path).stem,
            path=str(path),
            kind="onnx",
            sha256=sha256_file(path),
            input_size=size,
            num_parameters=onnx_parameter_count(path),
            metadata=dict(self.session.get_modelmeta().custom_metadata_map) or None,
        )

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        nhwc = images.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        if nhwc.dtype != np.uint8:
            raise TypeError(f"expected uint8 images, got {nhwc.dtype}")
        if self.fixed_batch is None:
            return torch.from_numpy(self.session.run(None, {self.input.name: nhwc})[0])
        outputs = []
        for start in range(0, len(nhwc), self.fixed_batch):
            chunk = nhwc[start : start + self.fixed_batch]
            pad = self.fixed_batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.uint8)])
            outputs.append(self.session.run(None, {self.input.name: chunk})[0][: len(chunk) - pad])
        return torch.from_numpy(np.concatenate(outputs))


# --- Loading --------------------------------------------------------------------------------------------


def directory_weights_sha256(directory: str | os.PathLike) -> str:
    """Hash of a checkpoint directory's weights: the one weights file's sha256, or a hash over the
    (name, sha256) of every weights file if there are several."""
    directory = Path(directory)
    files = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".pt", ".pth", ".bin"))
    if not files:
        files = sorted(p for p in directory.iterdir() if p.is_file())
    if len(files) == 1:
        return sha256_file(files[0])
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}:{sha256_file(f)}\n".encode())
    return digest.hexdigest()


def onnx_parameter_count(path: str | os.PathLike) -> int | None:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))
    except Exception:  # the count is informative only; a graph onnx cannot parse still runs in ORT
        return None


def torch_recognizer_info(directory: str | os.PathLike) -> tuple[nn.Module, ModelInfo]:
    from dyntta.models import load_recognizer

    model = load_recognizer(directory)
    config = model.config
    info = ModelInfo(
        name=Path(directory).name,
        path=str(directory),
        kind="torch",
        sha256=directory_weights_sha256(directory),
        arch=config.arch,
        num_parameters=model.num_parameters(),
        input_size=config.input_size,
        classes=list(config.classes),
    )
    return model, info


def torch_enhancer_info(directory: str | os.PathLike) -> tuple[nn.Module, ModelInfo]:
    from dyntta.enhancer import load_enhancer  # imported only when an enhancer is asked for

    module = load_enhancer(directory)
    info = ModelInfo(
        name=Path(directory).name,
        path=str(directory),
        kind="torch",
        sha256=directory_weights_sha256(directory),
        num_parameters=sum(p.numel() for p in module.parameters()),
    )
    return module, info


def is_onnx(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ".onnx"


def load_classifier(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    optimize: bool = False,
) -> Classifier:
    """A torch checkpoint directory or an ``.onnx`` file as a :class:`Classifier`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model {path} does not exist")
    if is_onnx(path):
        providers = ["CPUExecutionProvider"] if torch.device(device).type == "cpu" else None
        return OnnxClassifier(path, providers=providers, threads=threads)
    if path.is_dir():
        module, info = torch_recognizer_info(path)
        return TorchClassifier(module, info, device, optimize=optimize)
    raise ValueError(f"model {path} is neither a checkpoint directory nor an .onnx file")


def load_enhanced_classifier(
    enhancer: str | os.PathLike, recognizer: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> TorchClassifier:
    """``enhancer -> recognizer`` as one classifier, both torch checkpoints (float [0, 1] between them,
    as in the training graph; an exported composition is evaluated as a single ``.onnx`` ``--model``).
    ``.module[0]`` is the enhancer alone."""
    if is_onnx(enhancer) or is_onnx(recognizer):
        raise ValueError(
            "--enhancer composes torch checkpoints; to evaluate an exported enhancer + recognizer, "
            "pass the composed .onnx graph as --model"
        )
    enhancer_module, enhancer_info = torch_enhancer_info(enhancer)
    recognizer_module, recognizer_info = torch_recognizer_info(recognizer)
    composed = nn.Sequential(enhancer_module, recognizer_module)
    params = (enhancer_info.num_parameters or 0) + (recognizer_info.num_parameters or 0)
    info = ModelInfo(
        name=f"{enhancer_info.name} + {recognizer_info.name}",
        path=str(recognizer),
        kind="torch (enhancer + recognizer)",
        arch=recognizer_info.arch,
        num_parameters=params,
        input_size=recognizer_info.input_size,
        classes=recognizer_info.classes,
        components=[
            {"role": "enhancer", **enhancer_info.to_dict()},
            {"role": "recognizer", **recognizer_info.to_dict()},
        ],
    )
    return TorchClassifier(composed, info, device)


__all__ = [
    "ClassifyFn",
    "Classifier",
    "ModelInfo",
    "OnnxClassifier",
    "TorchClassifier",
    "directory_weights_sha256",
    "is_onnx",
    "load_classifier",
    "load_enhanced_classifier",
]
