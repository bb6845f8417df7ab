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
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper
from torch import nn

# The tensor names every layer agrees on (IMAGE uint8 NHWC in; LOGITS / ENHANCED_IMAGE [+ OP_WEIGHTS] out).
from dyntta.contract import ENHANCED_IMAGE, IMAGE, LOGITS, OP_WEIGHTS, sha256_file

# The reports and their criteria (also importable from here, where the checks are).
from export.parity import EnhancerParity, ParityError, PipelineParity, RecognizerParity, Tolerance

BATCH = "batch"
OPSET = 17


class RecognizerForServing(nn.Module):
    """uint8 NHWC pixels -> float32 logits, around a recognizer taking float NCHW in [0, 1]."""

    def __init__(self, recognizer: nn.Module, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.recognizer = recognizer
        self.dtype = dtype  # float16 runs the network in half precision; I/O types stay the same

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        pixels = image.permute(0, 3, 1, 2).to(self.dtype) / 255.0
        return self.recognizer(pixels).float()


def op_names(enhancer: nn.Module) -> list[str] | None:
    """The names of an enhancer's K blended operations, if it has them (``DynTTAEnhancer.op_names()``);
    such an enhancer returns ``(image, weights)`` from ``forward(x, return_weights=True)``."""
    names = getattr(enhancer, "op_names", None)
    return list(names()) if callable(names) else None


class EnhancerForServing(nn.Module):
    """uint8 NHWC pixels -> enhanced uint8 NHWC pixels, around an enhancer on float NCHW in [0, 1].

    ``op_weights=True`` (an enhancer with :func:`op_names`): also float32 ``[N, K]``, each image's blend
    weight per operation, the second output ``OP_WEIGHTS`` of the served enhancer."""

    def __init__(self, enhancer: nn.Module, dtype: torch.dtype = torch.float32, *, op_weights: bool = False) -> None:
        super().__init__()
        if op_weights and op_names(enhancer) is None:
            raise ValueError(f"{type(enhancer).__name__} has no op_names(): it has no blend weights to serve")
        self.enhancer = enhancer
        self.dtype = dtype
        self.op_weights = op_weights

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        pixels = image.permute(0, 3, 1, 2).to(self.dtype) / 255.0
        if self.op_weights:
            enhanced, weights = self.enhancer(pixels, return_weights=True)
        else:
            enhanced, weights = self.enhancer(pixels), None
        enhanced = enhanced.float().clamp(0.0, 1.0)
        # Round half away from zero is what a reader of the bytes expects; values are >= 0 so floor(x + .5).
        served = torch.floor(enhanced * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1)
        return served if weights is None else (served, weights.float())


def served_image(output: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The image of an enhancer wrapper's output (the first of several)."""
    return output[0] if isinstance(output, tuple) else output


def export_module(
    module: nn.Module,
    path: str | os.PathLike[str],
    input_size: int,
    output_name: str | Sequence[str],
    *,
    opset: int = OPSET,
) -> Path:
    """Export a uint8-NHWC serving wrapper to ``path`` with a dynamic batch dimension; run the checker.
    ``output_name``: one name, or one per output of a wrapper returning a tuple (in its order)."""
    names = [output_name] if isinstance(output_name, str) else list(output_name)
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
            output_names=names,
            dynamic_axes={IMAGE: {0: BATCH}, **{name: {0: BATCH} for name in names}},
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


def _chunks(images: np.ndarray, size: int = 64) -> list[np.ndarray]:
    return [images[i : i + size] for i in range(0, len(images), size)]


def _outputs(
    module: nn.Module, onnx_path: str | os.PathLike[str], images: np.ndarray, outputs: Sequence[str]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(module's, ONNX graph's)`` value of each of ``outputs`` (the module's outputs, in its order) on
    uint8 NHWC ``images``, in chunks."""
    session = cpu_session(onnx_path)
    reference: list[list[np.ndarray]] = [[] for _ in outputs]
    exported: list[list[np.ndarray]] = [[] for _ in outputs]
    for chunk in _chunks(images):
        with torch.no_grad():
            result = module(torch.from_numpy(chunk))
        for i, tensor in enumerate(result if isinstance(result, tuple) else (result,)):
            reference[i].append(tensor.numpy())
        for i, array in enumerate(session.run(list(outputs), {IMAGE: chunk})):
            exported[i].append(array)
    return [(np.concatenate(r), np.concatenate(e)) for r, e in zip(reference, exported, strict=True)]


def recognizer_parity(
    module: nn.Module,
    onnx_path: str | os.PathLike[str],
    images: np.ndarray,
    tolerance: Tolerance,
    *,
    data: str = "",
    raise_on_failure: bool = True,
) -> RecognizerParity:
    """Compare the ONNX recognizer with ``module`` (the serving wrapper) on uint8 NHWC ``images``."""
    ((reference, exported),) = _outputs(module, onnx_path, images, [LOGITS])
    report = RecognizerParity(
        images=len(images),
        data=data,
        tolerance=replace(tolerance),
        max_abs_logit_diff=float(np.abs(exported - reference).max()),
        max_abs_logit=float(np.abs(reference).max()),
        top1_agreement=float((exported.argmax(1) == reference.argmax(1)).mean()),
    )
    if raise_on_failure:
        report.check(onnx_path)
    return report


def enhancer_parity(
    module: nn.Module,
    onnx_path: str | os.PathLike[str],
    images: np.ndarray,
    tolerance: Tolerance,
    *,
    data: str = "",
    raise_on_failure: bool = True,
) -> EnhancerParity:
    """Compare the ONNX enhancer with ``module`` (the serving wrapper): uint8 outputs, in levels; with
    ``OP_WEIGHTS`` (a wrapper with ``op_weights``), the blend weights too, within ``tolerance.atol``."""
    weights = bool(getattr(module, "op_weights", False))
    results = _outputs(module, onnx_path, images, [ENHANCED_IMAGE, OP_WEIGHTS] if weights else [ENHANCED_IMAGE])
    reference, exported = results[0]
    if exported.dtype != np.uint8 or exported.shape != images.shape:
        raise ParityError(f"enhancer output is {exported.dtype} {exported.shape}, expected uint8 {images.shape}")
    diff = np.abs(exported.astype(np.int16) - reference.astype(np.int16))
    report = EnhancerParity(
        images=len(images),
        data=data,
        tolerance=replace(tolerance),
        max_abs_pixel_diff=int(diff.max()),
        fraction_pixels_differing=float((diff > 0).mean()),
    )
    if weights:
        report = _with_op_weights(report, *results[1])
    if raise_on_failure:
        report.check(onnx_path)
    return report


def _with_op_weights(report: EnhancerParity, want: np.ndarray, got: np.ndarray) -> EnhancerParity:
    """``report`` with the served blend weights ``got`` compared with PyTorch's ``want``."""
    if got.dtype != np.float32 or got.shape != want.shape:
        raise ParityError(f"{OP_WEIGHTS} is {got.dtype} {got.shape}, expected float32 {want.shape}")
    return replace(report, max_abs_op_weight_diff=float(np.abs(got - want).max()), op_weights=int(want.shape[1]))


def pipeline_parity(
    enhancer: nn.Module,
    recognizer: nn.Module,
    enhancer_onnx: str | os.PathLike[str],
    recognizer_onnx: str | os.PathLike[str],
    images: np.ndarray,
) -> PipelineParity:
    """Enhancer then recognizer, ONNX chain vs PyTorch chain (what the ``dyntta`` ensemble computes).

    Reported, not enforced on its own: a one-level pixel difference after the enhancer can legitimately
    move logits more than the per-model tolerances allow; each model is checked separately above.
    """
    enh, rec = cpu_session(enhancer_onnx), cpu_session(recognizer_onnx)
    with torch.no_grad():
        reference = np.concatenate(
            [recognizer(served_image(enhancer(torch.from_numpy(c)))).numpy() for c in _chunks(images)]
        )
    exported = np.concatenate(
        [rec.run([LOGITS], {IMAGE: enh.run([ENHANCED_IMAGE], {IMAGE: c})[0]})[0] for c in _chunks(images)]
    )
    return PipelineParity(
        images=len(images),
        max_abs_logit_diff=float(np.abs(exported - reference).max()),
        top1_agreement=float((exported.argmax(1) == reference.argmax(1)).mean()),
    )


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
