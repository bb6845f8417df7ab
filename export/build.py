"""Export modules to ONNX, check them, and write the Triton repositories: the API behind ``python -m export``.

:func:`export_repository` takes modules, not checkpoints, so any recognizer (float NCHW [0, 1] -> logits)
and any enhancer (float NCHW [0, 1] -> float NCHW [0, 1]) plug in; ``enhancer=None`` exports the identity.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from dyntta.version import __version__
from export import onnx as onnx_export
from export import repository
from export.onnx import (
    EnhancerForServing,
    RecognizerForServing,
    Tolerance,
    cpu_session,
    describe_onnx,
    enhancer_parity,
    export_identity_enhancer,
    export_module,
    pipeline_parity,
    recognizer_parity,
)
from export.repository import Flavour, ServingOptions


@dataclass
class ExportResult:
    repositories: dict[str, Path]  # flavour -> directory
    reports: dict[str, dict[str, Any]]  # model name -> export report (also in <model>/export.json)
    pipeline: dict[str, Any] | None = None


@dataclass
class Source:
    """Where a module came from, recorded in its export report."""

    checkpoint: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        meta = self.meta
        metrics = {k: v for k, v in (meta.get("metrics") or {}).items() if k != "history"}
        return {
            "checkpoint": self.checkpoint,
            "format": meta.get("format"),
            "model": meta.get("model"),
            "created": meta.get("created"),
            "metrics": metrics,
            "recipe_command": (meta.get("recipe") or {}).get("command"),
        }


def random_images(count: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def batch_independence(onnx_path: Path, images: np.ndarray, output: str) -> float:
    """Max difference between outputs computed in one batch and one image at a time.

    Triton's dynamic batcher merges different clients' requests, so an output must not depend on the
    batch it was computed in (notes, rule 1).
    """
    session = cpu_session(onnx_path)
    together = session.run([output], {onnx_export.IMAGE: images})[0].astype(np.float64)
    alone = np.concatenate(
        [session.run([output], {onnx_export.IMAGE: images[i : i + 1]})[0] for i in range(len(images))]
    ).astype(np.float64)
    return float(np.abs(together - alone).max())


def export_repository(
    recognizer: nn.Module,
    classes: Sequence[str],
    input_size: int,
    out: str | Path,
    *,
    enhancer: nn.Module | None = None,
    flavours: Sequence[Flavour] = ("cpu",),
    gpu_out: str | Path | None = None,
    fp16: bool = False,
    tensorrt: bool = False,
    options: ServingOptions | None = None,
    parity_images: np.ndarray | None = None,
    parity_data: str = "",
    tolerance: Tolerance | None = None,
    command: str | None = None,
    recognizer_source: Source | None = None,
    enhancer_source: Source | None = None,
    log: Any = None,
) -> ExportResult:
    """Export, check and write. ``out`` receives the first flavour; with both, the gpu one goes to
    ``gpu_out`` (default ``<out>_gpu``). Raises :class:`export.onnx.ParityError` past tolerance."""
    options = options or ServingOptions()
    dtype = torch.float16 if fp16 else torch.float32
    tolerance = tolerance or Tolerance.for_dtype(dtype)
    command = command or "export.build.export_repository(...)"
    images = parity_images if parity_images is not None else random_images(256, input_size)
    parity_data = parity_data or ("random uint8" if parity_images is None else "given")
    if images.dtype != np.uint8 or images.shape[1:] != (input_size, input_size, 3):
        raise ValueError(
            f"parity images must be uint8 (N, {input_size}, {input_size}, 3), got {images.dtype} {images.shape}"
        )
    if tensorrt and "gpu" not in flavours:
        raise ValueError("--tensorrt builds plans for the gpu flavour: use --flavour gpu or both")
    say = log or (lambda message: print(message, file=sys.stderr))
    produced_by = {
        "command": command,
        "dyntta_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
    }
    precision = "fp16" if fp16 else "fp32"

    with tempfile.TemporaryDirectory(prefix="dyntta-export-") as work:
        work_dir = Path(work)
        # Reference wrappers stay float32: fp16 graphs are judged against the model as trained.
        rec_ref = RecognizerForServing(recognizer.eval()).eval()
        rec_net = RecognizerForServing(copy.deepcopy(recognizer).eval().to(dtype), dtype)
        rec_onnx = export_module(rec_net, work_dir / "recognizer.onnx", input_size, onnx_export.LOGITS)
        rec_parity = recognizer_parity(rec_ref, rec_onnx, images, tolerance, data=parity_data)
        rec_parity["batch_independence_max_diff"] = batch_independence(rec_onnx, images[:8], onnx_export.LOGITS)
        say(
            f"recognizer parity ({precision}, {len(images)} {parity_data} images): max |logit diff| "
            f"{rec_parity['max_abs_logit_diff']:.3g}, top-1 agreement {rec_parity['top1_agreement']:.4f}"
        )

        pipeline = None
        if enhancer is None:
            enh_onnx = export_identity_enhancer(work_dir / "enhancer.onnx", input_size)
            enh_parity = {
                "model": "enhancer",
                "identity": True,
                "passed": True,
                "note": "pass-through ONNX graph (one Identity node); no enhancer checkpoint given",
            }
            enh_ref = None
        else:
            enh_ref = EnhancerForServing(enhancer.eval()).eval()
            enh_net = EnhancerForServing(copy.deepcopy(enhancer).eval().to(dtype), dtype)
            enh_onnx = export_module(enh_net, work_dir / "enhancer.onnx", input_size, onnx_export.ENHANCED_IMAGE)
            enh_parity = enhancer_parity(enh_ref, enh_onnx, images, tolerance, data=parity_data)
            enh_parity["batch_independence_max_diff"] = batch_independence(
                enh_onnx, images[:8], onnx_export.ENHANCED_IMAGE
            )
            pipeline = pipeline_parity(enh_ref, rec_ref, enh_onnx, rec_onnx, images)
            say(
                f"enhancer parity: max |pixel diff| {enh_parity['max_abs_pixel_diff']} levels, "
                f"{enh_parity['fraction_pixels_differing']:.2e} of pixels differ; pipeline top-1 agreement "
                f"{pipeline['top1_agreement']:.4f}"
            )
        for name, report in (("recognizer", rec_parity), ("enhancer", enh_parity)):
            gap = report.get("batch_independence_max_diff")
            allowed = tolerance.max_pixel_diff if name == "enhancer" else tolerance.atol
            if gap is not None and gap > allowed:
                raise onnx_export.ParityError(
                    f"{name} output depends on batch composition (max diff {gap}); "
                    "Triton's dynamic batching would change results"
                )

        rec_model = repository.recognizer_model(rec_onnx, input_size, classes)
        enh_model = repository.enhancer_model(enh_onnx, input_size, identity=enhancer is None)
        plans: dict[str, Path] = {}
        if tensorrt:
            from export.tensorrt import build_plan

            for model in (rec_model, enh_model):
                if model.identity:
                    continue  # a pass-through needs no engine; it stays on onnxruntime
                plans[model.name] = build_plan(
                    model.onnx_path, work_dir / f"{model.name}.plan", input_size, options.max_batch_size, fp16=fp16
                )
                say(f"built TensorRT plan for {model.name}")

        reports = {
            "recognizer": {
                "produced_by": produced_by,
                "source": (recognizer_source or Source()).summary(),
                "precision": precision,
                "onnx": describe_onnx(rec_onnx),
                "parity": rec_parity,
                "serving": asdict(options),
            },
            "enhancer": {
                "produced_by": produced_by,
                "source": (enhancer_source or Source()).summary(),
                "identity": enhancer is None,
                "precision": "uint8" if enhancer is None else precision,
                "onnx": describe_onnx(enh_onnx),
                "parity": enh_parity,
                "pipeline_parity": pipeline,
                "serving": asdict(options),
            },
        }
        out = Path(out)
        targets: dict[str, Path] = {}
        for i, flavour in enumerate(flavours):
            targets[flavour] = out if i == 0 else Path(gpu_out or f"{out}_gpu")
        for flavour, target in targets.items():
            for model in (rec_model, enh_model):
                model.plan_path = plans.get(model.name) if flavour == "gpu" else None
            repository.write_repository(
                target, enh_model, rec_model, flavour, options, command=command, reports=reports
            )
            say(f"wrote the {flavour} flavour to {target}")
    return ExportResult(targets, reports, pipeline)
