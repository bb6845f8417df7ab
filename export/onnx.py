"""ONNX export of the serving graphs and their parity checks against PyTorch.

Both served models take what a client sends: raw pixels, uint8, NHWC ``(N, S, S, 3)`` at the model's input
size. The uint8 -> float/255 and NHWC -> NCHW conversions live in the graph (the wrappers below), as the
recognizer's normalisation already does, so Triton clients never preprocess and both models accept the same
tensor. The enhancer returns uint8 NHWC too (rounded in the graph): its output is a valid recognizer input
and a valid image to return to a user.

The wrappers work on any ``nn.Module`` with the project's image contract (float ``(N, 3, H, W)`` in [0, 1]
in; logits or enhanced float images out), so a new enhancer plugs in by passing its module.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from torch import nn

# The tensor names every layer agrees on (IMAGE uint8 NHWC in; LOGITS / ENHANCED_IMAGE out).
from dyntta.contract import ENHANCED_IMAGE, IMAGE, LOGITS, sha256_file

BATCH = "batch"
OPSET = 17


class ParityError(AssertionError):
    """The exported graph disagrees with PyTorch beyond tolerance."""


class RecognizerForServing(nn.Module):
    """uint8 NHWC pixels -> float32 logits, around a recognizer taking float NCHW in [0, 1]."""

    def __init__(self, recognizer: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.recognizer = recognizer
        self.dtype = dtype  # float16 runs the network in half precision; I/O types stay the same

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pixels = image.permute(0, 3, 1, 2).to(self.dtype) / 255.0
        return self.recognizer(pixels).float()


class EnhancerForServing(nn.Module):
    """uint8 NHWC pixels -> enhanced uint8 NHWC pixels, around an enhancer on float NCHW in [0, 1]."""

    def __init__(self, enhancer: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.enhancer = enhancer
        self.dtype = dtype

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pixels = image.permute(0, 3, 1, 2).to(self.dtype) / 255.0
        enhanced = self.enhancer(pixels).float().clamp(0.0, 1.0)
        # Round half away from zero is what a reader of the bytes expects; values are >= 0 so floor(x + .5).
        return torch.floor(enhanced * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1)


def export_module(
    module: nn.Module, path: str | os.PathLike[str], input_size: int, output_name: str, *, opset: int = OPSET
) -> Path:
    """Export a uint8-NHWC serving wrapper to ``path`` with a dynamic batch dimension; run the checker."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randint(0, 256, (2, input_size, input_size, 3), dtype=torch.uint8)
    module = module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter needs no onnxscript and handles every timm CNN; torch warns it is legacy.
        warnings.simplefilter("ignore", DeprecationWarning)
        # Shape checks in traced code (kornia, timm) become constants; the parity checks run other batch
        # sizes than the example, which is what would catch a trace specialised to it.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            do_constant_folding=True,
            input_names=[IMAGE],
            output_names=[output_name],
            dynamic_axes={IMAGE: {0: BATCH}, output_name: {0: BATCH}},
        )
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    return path


def export_identity_enhancer(path: str | os.PathLike[str], input_size: int, *, opset: int = OPSET) -> Path:
    """The pass-through enhancer: one ONNX ``Identity`` node, uint8 NHWC in and out.

    Used when no enhancer checkpoint is given, so the repository layout, the ensemble and the clients are
    the same with and without enhancement (and ``dyntta`` then equals ``recognizer``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shape: list[str | int] = [BATCH, input_size, input_size, 3]
    graph = helper.make_graph(
        [helper.make_node("Identity", [IMAGE], [ENHANCED_IMAGE], name="pass_through")],
        "identity_enhancer",
        [helper.make_tensor_value_info(IMAGE, TensorProto.UINT8, shape)],
        [helper.make_tensor_value_info(ENHANCED_IMAGE, TensorProto.UINT8, shape)],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="dyntta.export",
        doc_string="identity enhancer (pass-through)",
    )
    model.ir_version = 8  # readable by every onnxruntime >= 1.10 (Triton 2.51's python host included)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def cpu_session(path: str | os.PathLike[str], threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def to_nhwc_uint8(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, 3, S, S) as stored by dyntta.data -> the served layout (N, S, S, 3)."""
    return np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())


@dataclass
class Tolerance:
    """Pass criteria: ``max|onnx - torch| <= atol + rtol * max|torch|`` and top-1 agreement."""

    atol: float = 1e-3
    rtol: float = 1e-4
    min_top1_agreement: float = 0.99  # near-ties may flip between float implementations
    max_pixel_diff: int = 1  # enhancer: one uint8 level (rounding of values at .5 boundaries)

    @classmethod
    def for_dtype(cls, dtype: torch.dtype) -> Tolerance:
        if dtype == torch.float16:
            return cls(atol=5e-2, rtol=2e-2, min_top1_agreement=0.98, max_pixel_diff=2)
        return cls()


def _chunks(images: np.ndarray, size: int = 64) -> list[np.ndarray]:
    return [images[i : i + size] for i in range(0, len(images), size)]


def _outputs(
    module: nn.Module, onnx_path: str | os.PathLike[str], images: np.ndarray, output: str
) -> tuple[np.ndarray, np.ndarray]:
    """``module``'s and the ONNX graph's ``output`` on uint8 NHWC ``images``, in chunks."""
    session = cpu_session(onnx_path)
    with torch.no_grad():
        reference = np.concatenate([module(torch.from_numpy(c)).numpy() for c in _chunks(images)])
    exported = np.concatenate([session.run([output], {IMAGE: c})[0] for c in _chunks(images)])
    return reference, exported


def recognizer_parity(
    module: nn.Module,
    onnx_path: str | os.PathLike[str],
    images: np.ndarray,
    tolerance: Tolerance,
    *,
    data: str = "",
    raise_on_failure: bool = True,
) -> dict[str, Any]:
    """Compare the ONNX recognizer with ``module`` (the serving wrapper) on uint8 NHWC ``images``."""
    reference, exported = _outputs(module, onnx_path, images, LOGITS)
    diff = float(np.abs(exported - reference).max())
    scale = float(np.abs(reference).max())
    agreement = float((exported.argmax(1) == reference.argmax(1)).mean())
    report = {
        "model": "recognizer",
        "images": int(len(images)),
        "data": data,
        "max_abs_logit_diff": diff,
        "max_abs_logit": scale,
        "top1_agreement": agreement,
        "tolerance": asdict(tolerance),
    }
    report["passed"] = diff <= tolerance.atol + tolerance.rtol * scale and agreement >= tolerance.min_top1_agreement
    if raise_on_failure and not report["passed"]:
        raise ParityError(f"ONNX recognizer {onnx_path} disagrees with PyTorch: {report}")
    return report


def enhancer_parity(
    module: nn.Module,
    onnx_path: str | os.PathLike[str],
    images: np.ndarray,
    tolerance: Tolerance,
    *,
    data: str = "",
    raise_on_failure: bool = True,
) -> dict[str, Any]:
    """Compare the ONNX enhancer with ``module`` (the serving wrapper): uint8 outputs, in levels."""
    reference, exported = _outputs(module, onnx_path, images, ENHANCED_IMAGE)
    if exported.dtype != np.uint8 or exported.shape != images.shape:
        raise ParityError(f"enhancer output is {exported.dtype} {exported.shape}, expected uint8 {images.shape}")
    diff = np.abs(exported.astype(np.int16) - reference.astype(np.int16))
    report: dict[str, Any] = {
        "model": "enhancer",
        "images": int(len(images)),
        "data": data,
        "max_abs_pixel_diff": int(diff.max()),
        "fraction_pixels_differing": float((diff > 0).mean()),
        "tolerance": asdict(tolerance),
    }
    report["passed"] = report["max_abs_pixel_diff"] <= tolerance.max_pixel_diff
    if raise_on_failure and not report["passed"]:
        raise ParityError(f"ONNX enhancer {onnx_path} disagrees with PyTorch: {report}")
    return report


def pipeline_parity(
    enhancer: nn.Module,
    recognizer: nn.Module,
    enhancer_onnx: str | os.PathLike[str],
    recognizer_onnx: str | os.PathLike[str],
    images: np.ndarray,
) -> dict[str, Any]:
    """Enhancer then recognizer, ONNX chain vs PyTorch chain (what the ``dyntta`` ensemble computes).

    Reported, not enforced on its own: a one-level pixel difference after the enhancer can legitimately
    move logits more than the per-model tolerances allow; each model is checked separately above.
    """
    enh, rec = cpu_session(enhancer_onnx), cpu_session(recognizer_onnx)
    with torch.no_grad():
        reference = np.concatenate([recognizer(enhancer(torch.from_numpy(c))).numpy() for c in _chunks(images)])
    exported = np.concatenate(
        [rec.run([LOGITS], {IMAGE: enh.run([ENHANCED_IMAGE], {IMAGE: c})[0]})[0] for c in _chunks(images)]
    )
    return {
        "model": "dyntta (enhancer -> recognizer)",
        "images": int(len(images)),
        "max_abs_logit_diff": float(np.abs(exported - reference).max()),
        "top1_agreement": float((exported.argmax(1) == reference.argmax(1)).mean()),
    }


def describe_onnx(path: str | os.PathLike[str]) -> dict[str, Any]:
    model = onnx.load(str(path), load_external_data=False)

    def io(values: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": v.name,
                "type": TensorProto.DataType.Name(v.type.tensor_type.elem_type),
                "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
            }
            for v in values
        ]

    return {
        "file": Path(path).name,
        "sha256": sha256_file(path),
        "bytes": Path(path).stat().st_size,
        "opset": max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "inputs": io(model.graph.input),
        "outputs": io(model.graph.output),
    }
