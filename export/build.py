"""Export modules to ONNX, check them, and write the Triton repositories: the API behind ``python -m export``.

:func:`export_repository` takes modules, not checkpoints, so any recognizer (float NCHW [0, 1] -> logits)
and any enhancer (float NCHW [0, 1] -> float NCHW [0, 1]) plug in; ``enhancer=None`` exports the identity.
How to export is an :class:`ExportOptions`; each step (export + parity per model, batch independence,
TensorRT plans, the ``export.json`` reports, writing each flavour) is one function below.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from dyntta.contract import ENHANCER, OP_WEIGHTS, RECOGNIZER, Training
from dyntta.data.preprocess import RESIZE, Preprocess
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
    op_names,
    pipeline_parity,
    recognizer_parity,
)
from export.parity import EnhancerParity, IdentityParity, ModelParity, PipelineParity, RecognizerParity
from export.repository import FLAVOURS, Flavour, ServedModel, ServingOptions


@dataclass
class ExportResult:
    repositories: dict[Flavour, Path]  # flavour -> directory
    reports: dict[str, dict[str, Any]]  # model name -> export report (also in <model>/export.json)
    recognizer_parity: RecognizerParity
    enhancer_parity: EnhancerParity | IdentityParity
    pipeline_parity: PipelineParity | None = None  # None with the identity enhancer


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

    def training(self) -> Training | None:
        """How the module was trained (its checkpoint's recipe), for the served config; None without one."""
        return Training.from_recipe(self.meta.get("recipe"))


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


#: Where progress lines go: a callable taking one line of text (``print`` to stderr by default).
Log = Callable[[str], None]


def stderr_log(message: str) -> None:
    print(message, file=sys.stderr)


def silent_log(message: str) -> None:
    """For tests and benchmarks that do not want the progress lines."""


@dataclass
class ExportOptions:
    """How to export: flavours and where they go, precision, TensorRT plans, the served models' batching
    and instances, the parity criteria and the provenance recorded in each model's ``export.json``."""

    flavours: Sequence[Flavour] = ("cpu",)
    gpu_out: str | Path | None = None  # the gpu flavour's directory when both are written (<out>_gpu)
    fp16: bool = False  # half-precision networks; I/O types unchanged
    tensorrt: bool = False  # tensorrt_plan models for the gpu flavour
    serving: ServingOptions = field(default_factory=ServingOptions)
    tolerance: Tolerance | None = None  # None: the default for the precision
    parity_data: str = ""  # what the parity images are, for the reports ("" -> "random uint8" / "given")
    command: str = "export.build.export_repository(...)"
    recognizer_source: Source = field(default_factory=Source)
    enhancer_source: Source = field(default_factory=Source)

    def __post_init__(self) -> None:
        unknown = [f for f in self.flavours if f not in FLAVOURS]
        if not self.flavours or unknown:
            raise ValueError(f"flavours must be a non-empty subset of {FLAVOURS}, got {list(self.flavours)}")
        if self.tensorrt and "gpu" not in self.flavours:
            raise ValueError("--tensorrt builds plans for the gpu flavour: use --flavour gpu or both")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.fp16 else torch.float32

    @property
    def precision(self) -> str:
        return "fp16" if self.fp16 else "fp32"

    def parity_tolerance(self) -> Tolerance:
        return self.tolerance or Tolerance.for_dtype(self.dtype)


Report = TypeVar("Report", bound=ModelParity | IdentityParity)
Checked = TypeVar("Checked", bound=ModelParity)


@dataclass
class _Exported(Generic[Report]):
    """One model's ONNX file, its parity report and (not the identity enhancer) its float32 reference."""

    onnx: Path
    parity: Report
    reference: nn.Module | None = None
    op_names: list[str] | None = None  # an enhancer serving OP_WEIGHTS: its operations, in column order


def _parity_images(images: np.ndarray | None, input_size: int, options: ExportOptions) -> tuple[np.ndarray, str]:
    batch = images if images is not None else random_images(256, input_size)
    described = options.parity_data or ("random uint8" if images is None else "given")
    if batch.dtype != np.uint8 or batch.shape[1:] != (input_size, input_size, 3):
        raise ValueError(
            f"parity images must be uint8 (N, {input_size}, {input_size}, 3), got {batch.dtype} {batch.shape}"
        )
    return batch, described


def _produced_by(command: str) -> dict[str, Any]:
    return {
        "command": command,
        "dyntta_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
    }


@dataclass(frozen=True)
class _Kind(Generic[Checked]):
    """What differs between exporting the recognizer and the enhancer."""

    name: str
    wrapper: Callable[[nn.Module, torch.dtype], nn.Module]  # the serving wrapper (uint8 NHWC in)
    output: str
    parity: Callable[..., Checked]


def _enhancer_wrapper(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    # An enhancer that names its operations also serves their per-image weights (OP_WEIGHTS).
    return EnhancerForServing(module, dtype, op_weights=op_names(module) is not None)


_RECOGNIZER: _Kind[RecognizerParity] = _Kind(RECOGNIZER, RecognizerForServing, onnx_export.LOGITS, recognizer_parity)
_ENHANCER: _Kind[EnhancerParity] = _Kind(ENHANCER, _enhancer_wrapper, onnx_export.ENHANCED_IMAGE, enhancer_parity)


def _export_checked(
    kind: _Kind[Checked],
    module: nn.Module,
    work: Path,
    input_size: int,
    images: np.ndarray,
    data: str,
    options: ExportOptions,
    given: Path | None = None,  # a serving graph made elsewhere (export.external), checked like an export
) -> _Exported[Checked]:
    """Wrap, export at the chosen precision, compare with PyTorch, measure batch dependence."""
    # The reference wrapper stays float32: an fp16 graph is judged against the model as trained.
    reference = kind.wrapper(module.eval(), torch.float32).eval()
    net = kind.wrapper(copy.deepcopy(module).eval().to(options.dtype), options.dtype)
    names = op_names(module) if getattr(net, "op_weights", False) else None
    outputs = [kind.output] if names is None else [kind.output, OP_WEIGHTS]
    path = given or export_module(net, work / f"{kind.name}.onnx", input_size, outputs)
    parity = kind.parity(reference, path, images, options.parity_tolerance(), data=data)
    gap = batch_independence(path, images[:8], kind.output)
    weights_gap = None if names is None else batch_independence(path, images[:8], OP_WEIGHTS)
    return _Exported(path, parity.with_batch_independence(gap, weights_gap), reference, names)


def _export_enhancer(
    enhancer: nn.Module | None, work: Path, input_size: int, images: np.ndarray, data: str, options: ExportOptions
) -> _Exported[EnhancerParity] | _Exported[IdentityParity]:
    if enhancer is None:
        path = export_identity_enhancer(work / "enhancer.onnx", input_size)
        note = "pass-through ONNX graph (one Identity node); no enhancer checkpoint given"
        return _Exported(path, IdentityParity(note))
    return _export_checked(_ENHANCER, enhancer, work, input_size, images, data, options)


def _build_plans(models: Sequence[ServedModel], work: Path, options: ExportOptions, log: Log) -> dict[str, Path]:
    if not options.tensorrt:
        return {}
    from export.tensorrt import build_plan

    plans: dict[str, Path] = {}
    for model in models:
        if model.identity:
            continue  # a pass-through needs no engine; it stays on onnxruntime
        plans[model.name] = build_plan(
            model.onnx_path,
            work / f"{model.name}.plan",
            model.input_size,
            options.serving.max_batch_size,
            fp16=options.fp16,
        )
        log(f"built TensorRT plan for {model.name}")
    return plans


def _pipeline(
    rec: _Exported[RecognizerParity],
    enh: _Exported[EnhancerParity] | _Exported[IdentityParity],
    images: np.ndarray,
    log: Log,
) -> PipelineParity | None:
    """The ensemble's chain, ONNX against PyTorch, logged with the enhancer's own parity; None through the
    identity enhancer."""
    if not isinstance(enh.parity, EnhancerParity) or enh.reference is None or rec.reference is None:
        return None
    pipeline = pipeline_parity(enh.reference, rec.reference, enh.onnx, rec.onnx, images)
    log(
        f"enhancer parity: max |pixel diff| {enh.parity.max_abs_pixel_diff} levels, "
        f"{enh.parity.fraction_pixels_differing:.2e} of pixels differ; pipeline top-1 agreement "
        f"{pipeline.top1_agreement:.4f}"
    )
    return pipeline


def _export_reports(
    recognizer: _Exported[RecognizerParity],
    enhancer: _Exported[EnhancerParity] | _Exported[IdentityParity],
    identity: bool,
    pipeline: PipelineParity | None,
    options: ExportOptions,
    preprocess: Preprocess,
) -> dict[str, dict[str, Any]]:
    """Each model's ``export.json``: provenance, precision, the ONNX file, parity, serving options."""
    produced_by, serving = _produced_by(options.command), asdict(options.serving)
    return {
        RECOGNIZER: {
            "produced_by": produced_by,
            "source": options.recognizer_source.summary(),
            "precision": options.precision,
            "preprocess": preprocess.to_dict(),
            "onnx": describe_onnx(recognizer.onnx),
            "parity": recognizer.parity.to_json(),
            "serving": serving,
        },
        ENHANCER: {
            "produced_by": produced_by,
            "source": options.enhancer_source.summary(),
            "identity": identity,
            "precision": "uint8" if identity else options.precision,
            "op_names": enhancer.op_names,
            "onnx": describe_onnx(enhancer.onnx),
            "parity": enhancer.parity.to_json(),
            "pipeline_parity": None if pipeline is None else pipeline.to_json(),
            "serving": serving,
        },
    }


def _targets(out: Path, options: ExportOptions) -> dict[Flavour, Path]:
    """The first flavour goes to ``out``, a second one to ``gpu_out`` (default ``<out>_gpu``)."""
    return {
        flavour: out if i == 0 else Path(options.gpu_out or f"{out}_gpu") for i, flavour in enumerate(options.flavours)
    }


def export_repository(
    recognizer: nn.Module,
    classes: Sequence[str],
    input_size: int,
    out: str | Path,
    options: ExportOptions | None = None,
    *,
    enhancer: nn.Module | None = None,
    parity_images: np.ndarray | None = None,
    preprocess: Preprocess | None = None,
    recognizer_onnx: Path | None = None,
    log: Log = stderr_log,
) -> ExportResult:
    """Export, check and write the repositories; ``enhancer=None`` exports the identity enhancer.

    ``parity_images`` (uint8 NHWC at ``input_size``; default 256 random images) are what the ONNX graphs
    are compared with PyTorch on. ``preprocess``: how clients bring images to ``input_size``, written to
    every model's config (the ``preprocess`` parameter); default the recognizer's
    ``config.preprocess``, else plain resize. An enhancer with ``op_names()`` (the DynTTA enhancer) also
    serves ``OP_WEIGHTS``. ``recognizer_onnx``: a serving graph to use instead of exporting ``recognizer``
    (a user's own ONNX, :mod:`export.external`), checked against it the same way. Raises
    :class:`export.onnx.ParityError` past tolerance, before anything is written.
    """
    options = options or ExportOptions()
    if preprocess is None:
        preprocess = getattr(getattr(recognizer, "config", None), "preprocess", None) or RESIZE
    images, data = _parity_images(parity_images, input_size, options)
    with tempfile.TemporaryDirectory(prefix="dyntta-export-") as tmp:
        work = Path(tmp)
        rec = _export_checked(_RECOGNIZER, recognizer, work, input_size, images, data, options, recognizer_onnx)
        log(
            f"recognizer parity ({options.precision}, {len(images)} {data} images): max |logit diff| "
            f"{rec.parity.max_abs_logit_diff:.3g}, top-1 agreement {rec.parity.top1_agreement:.4f}"
        )
        enh = _export_enhancer(enhancer, work, input_size, images, data, options)
        pipeline = _pipeline(rec, enh, images, log)
        # Triton's dynamic batcher merges clients' requests: no output may depend on its batch
        rec.parity.check_batch_independence()
        enh.parity.check_batch_independence()

        rec_model = repository.recognizer_model(
            rec.onnx, input_size, classes, preprocess=preprocess, training=options.recognizer_source.training()
        )
        enh_model = repository.enhancer_model(
            enh.onnx,
            input_size,
            identity=enhancer is None,
            op_names=enh.op_names,
            preprocess=preprocess,
            training=options.enhancer_source.training(),
        )
        plans = _build_plans((rec_model, enh_model), work, options, log)
        reports = _export_reports(rec, enh, enhancer is None, pipeline, options, preprocess)
        targets = _targets(Path(out), options)
        for flavour, target in targets.items():
            for model in (rec_model, enh_model):
                model.plan_path = plans.get(model.name) if flavour == "gpu" else None
            repository.write_repository(
                target, enh_model, rec_model, flavour, options.serving, command=options.command, reports=reports
            )
            log(f"wrote the {flavour} flavour to {target}")
    return ExportResult(targets, reports, rec.parity, enh.parity, pipeline)
