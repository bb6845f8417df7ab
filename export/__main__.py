"""``python -m export``: checkpoints -> ONNX (checked) -> Triton model repository.

Examples::

    # the committed CPU repository (identity enhancer until an enhancer checkpoint exists)
    python -m export --recognizer checkpoints/fashion-mnist/recognizer \\
        [--enhancer checkpoints/fashion-mnist/enhancer] --out model_repository

    # both flavours; the GPU one (NGC image, onnxruntime backend, TensorRT accelerator) beside it
    python -m export --recognizer CKPT --out model_repository --flavour both --ort-tensorrt
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from dyntta import cli
from dyntta.cli import CommandError, UsageError
from dyntta.data import DatasetNotFoundError
from dyntta.models import Recognizer, load_recognizer, read_checkpoint_meta
from export import external
from export.build import ExportOptions, ExportResult, Source, export_repository, random_images
from export.onnx import ParityError, Tolerance, to_nhwc_uint8
from export.repository import FLAVOURS, Flavour, ServingOptions
from export.tensorrt import TensorRTUnavailableError


def load_enhancer_checkpoint(directory: str) -> tuple[nn.Module, dict[str, Any]]:
    from dyntta.enhancer import load_enhancer

    meta = read_checkpoint_meta(directory)
    return load_enhancer(directory).eval(), meta


def check_sizes(recognizer_size: int, enhancer_meta: dict[str, Any]) -> None:
    size = (enhancer_meta.get("model") or {}).get("input_size")
    if size is not None and size != recognizer_size:
        raise UsageError(
            f"the enhancer works at {size} px but the recognizer at {recognizer_size} px; "
            "both models of the ensemble take the same IMAGE tensor"
        )


def parity_batch(data: str, count: int, size: int, data_dir: str | None) -> tuple[np.ndarray, str]:
    """The first ``count`` test images of ``data`` (uint8 NHWC), or seeded random pixels for ``random``."""
    if data == "random":
        return random_images(count, size), f"random uint8 (seed 0, {count})"
    from dyntta.data import load_dataset

    test = load_dataset(data, "test", image_size=size, root=data_dir)  # DatasetNotFoundError: see main
    return to_nhwc_uint8(test.images[:count]), f"{data} test[:{count}]"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m export", description=__doc__.splitlines()[0], epilog=__doc__)
    parser.add_argument(
        "--recognizer",
        required=True,
        help="recognizer checkpoint directory, or your own (export/external.py): timm:ARCH or torchvision:ARCH "
        "with --recognizer-weights, a TorchScript file, an ONNX file (served as given)",
    )
    external.add_arguments(parser)
    parser.add_argument("--enhancer", help="enhancer checkpoint directory; without it, the identity enhancer")
    parser.add_argument("--out", default="model_repository", help="repository to write (first flavour)")
    parser.add_argument(
        "--flavour",
        default="cpu",
        choices=[*FLAVOURS, "both"],
        help="cpu: python backend (bundled Triton); gpu: onnxruntime/tensorrt backends (NGC "
        "image); both: cpu to --out, gpu to --gpu-out",
    )
    parser.add_argument("--gpu-out", help="the gpu flavour's directory with --flavour both; default <out>_gpu")
    parser.add_argument("--fp16", action="store_true", help="half-precision networks (I/O types unchanged)")
    parser.add_argument("--tensorrt", action="store_true", help="build tensorrt_plan models (gpu flavour)")
    parser.add_argument(
        "--ort-tensorrt",
        action="store_true",
        help="gpu flavour: onnxruntime's TensorRT execution accelerator (FP16, engine cache)",
    )
    parser.add_argument(
        "--parity-data", help="data set for the parity batch, or 'random'; default the checkpoint's training data set"
    )
    parser.add_argument("--data-dir", help="where the parity data set's files are")
    parser.add_argument("--parity-images", type=int, default=512, help="how many images the parity checks use")
    parser.add_argument("--atol", type=float, help="max |logit diff| allowed; default 1e-3, with --fp16 5e-2")
    parser.add_argument(
        "--min-top1-agreement", type=float, help="least top-1 agreement with PyTorch; default 0.99, with --fp16 0.98"
    )
    defaults = ServingOptions()
    parser.add_argument(
        "--max-batch-size", type=int, default=defaults.max_batch_size, help="Triton max_batch_size of every model"
    )
    parser.add_argument("--version", type=int, default=defaults.version, help="model version folder")
    parser.add_argument(
        "--cpu-instances", type=int, default=defaults.cpu_instances, help="instances per model (cpu flavour)"
    )
    parser.add_argument(
        "--cpu-threads",
        type=int,
        default=defaults.cpu_threads,
        help="onnxruntime intra-op threads per cpu instance (0: one per core)",
    )
    parser.add_argument(
        "--gpu-instances", type=int, default=defaults.gpu_instances, help="instances per model (gpu flavour)"
    )
    return parser


def _checkpoints(args: argparse.Namespace) -> tuple[Recognizer, dict[str, Any], nn.Module | None, dict[str, Any]]:
    """The recognizer and (optionally) the enhancer with their metadata. A missing or wrong checkpoint
    raises FileNotFoundError / ValueError: a runtime failure for :func:`dyntta.cli.run` (exit 1)."""
    recognizer = load_recognizer(args.recognizer)
    rec_meta = read_checkpoint_meta(args.recognizer)
    enhancer, enh_meta = load_enhancer_checkpoint(args.enhancer) if args.enhancer else (None, {})
    check_sizes(recognizer.config.input_size, enh_meta)
    return recognizer, rec_meta, enhancer, enh_meta


def _options(
    args: argparse.Namespace, command: str, rec_meta: dict[str, Any], enh_meta: dict[str, Any]
) -> ExportOptions:
    tolerance = Tolerance.for_dtype(torch.float16 if args.fp16 else torch.float32)
    if args.atol is not None:
        tolerance.atol = args.atol
    if args.min_top1_agreement is not None:
        tolerance.min_top1_agreement = args.min_top1_agreement
    try:
        return ExportOptions(
            flavours=cast(tuple[Flavour, ...], FLAVOURS if args.flavour == "both" else (args.flavour,)),
            gpu_out=args.gpu_out,
            fp16=args.fp16,
            tensorrt=args.tensorrt,
            serving=ServingOptions(
                max_batch_size=args.max_batch_size,
                version=args.version,
                cpu_instances=args.cpu_instances,
                cpu_threads=args.cpu_threads,
                gpu_instances=args.gpu_instances,
                ort_tensorrt=args.ort_tensorrt,
            ),
            tolerance=tolerance,
            command=command,
            recognizer_source=Source(str(Path(args.recognizer)), rec_meta),
            enhancer_source=Source(args.enhancer, enh_meta) if args.enhancer else Source(),
        )
    except ValueError as exc:  # contradictory flags (--tensorrt without the gpu flavour, batch size < 1, ...)
        raise UsageError(str(exc)) from None


def _summary(result: ExportResult) -> dict[str, Any]:
    recognizer, pipeline = result.recognizer_parity, result.pipeline_parity
    return {
        "repositories": {k: str(v) for k, v in result.repositories.items()},
        "recognizer_parity": {
            "max_abs_logit_diff": recognizer.max_abs_logit_diff,
            "top1_agreement": recognizer.top1_agreement,
            "images": recognizer.images,
            "data": recognizer.data,
            "passed": recognizer.passed,
        },
        "enhancer_parity": result.enhancer_parity.to_json(),
        "pipeline_parity": None if pipeline is None else pipeline.to_json(),
    }


def run(args: argparse.Namespace, command: str) -> ExportResult:
    if external.is_external(args.recognizer):
        return external.run(args, command)
    recognizer, rec_meta, enhancer, enh_meta = _checkpoints(args)
    options = _options(args, command, rec_meta, enh_meta)
    recipe = rec_meta.get("recipe") or {}
    config = recognizer.config
    images, described = parity_batch(
        args.parity_data or recipe.get("data") or "fashion-mnist",
        args.parity_images,
        config.input_size,
        args.data_dir or recipe.get("data_dir"),
    )
    options.parity_data = described
    return export_repository(
        recognizer, config.classes, config.input_size, args.out, options, enhancer=enhancer, parity_images=images
    )


def _handle(args: argparse.Namespace, argv: Sequence[str] | None) -> None:
    command = "python -m export " + shlex.join(list(argv) if argv is not None else sys.argv[1:])
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    try:
        result = run(args, command)
    except ParityError as exc:
        raise CommandError(f"PARITY FAILED: {exc}") from None
    except DatasetNotFoundError as exc:
        raise CommandError(f"parity data: {exc}\n(or pass --parity-data random)") from None
    except TensorRTUnavailableError as exc:
        raise CommandError(str(exc)) from None
    print(json.dumps(_summary(result), indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    """Exit codes (:mod:`dyntta.cli`): 0 written; 2 a usage error (bad or contradictory arguments); 1 the
    export failed (a missing checkpoint or parity data set, parity past tolerance, no TensorRT), one
    ``error:`` line and never a traceback. Nothing is written unless every check passed."""
    return cli.run(build_parser(), lambda args: _handle(args, argv), argv)


if __name__ == "__main__":
    raise SystemExit(main())
