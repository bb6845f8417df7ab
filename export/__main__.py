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

from dyntta.models import load_recognizer, read_checkpoint_meta
from export.build import Source, export_repository, random_images
from export.onnx import ParityError, Tolerance, to_nhwc_uint8
from export.repository import FLAVOURS, Flavour, ServingOptions
from export.tensorrt import TensorRTUnavailableError


def load_enhancer_checkpoint(directory: str) -> tuple[nn.Module, dict[str, Any]]:
    try:
        from dyntta.enhancer import load_enhancer
    except ImportError as exc:
        raise SystemExit(f"--enhancer needs dyntta.enhancer.load_enhancer, not available: {exc}") from exc
    meta = read_checkpoint_meta(directory)
    return load_enhancer(directory).eval(), meta


def check_sizes(recognizer_size: int, enhancer_meta: dict[str, Any]) -> None:
    size = (enhancer_meta.get("model") or {}).get("input_size")
    if size is not None and size != recognizer_size:
        raise SystemExit(
            f"the enhancer works at {size} px but the recognizer at {recognizer_size} px; "
            "both models of the ensemble take the same IMAGE tensor"
        )


def parity_batch(data: str, count: int, size: int, data_dir: str | None) -> tuple[np.ndarray, str]:
    """The first ``count`` test images of ``data`` (uint8 NHWC), or seeded random pixels for ``random``."""
    if data == "random":
        return random_images(count, size), f"random uint8 (seed 0, {count})"
    from dyntta.data import DatasetNotFoundError, load_dataset

    try:
        test = load_dataset(data, "test", image_size=size, root=data_dir)
    except DatasetNotFoundError as exc:
        raise SystemExit(f"parity data: {exc}\n(or pass --parity-data random)") from exc
    return to_nhwc_uint8(test.images[:count]), f"{data} test[:{count}]"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m export",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--recognizer", required=True, help="recognizer checkpoint directory")
    parser.add_argument("--enhancer", help="enhancer checkpoint directory (default: identity enhancer)")
    parser.add_argument("--out", default="model_repository", help="repository to write (first flavour)")
    parser.add_argument(
        "--flavour",
        default="cpu",
        choices=[*FLAVOURS, "both"],
        help="cpu: python backend (bundled Triton); gpu: onnxruntime/tensorrt backends (NGC "
        "image); both: cpu to --out, gpu to --gpu-out",
    )
    parser.add_argument("--gpu-out", help="the gpu flavour's directory with --flavour both (<out>_gpu)")
    parser.add_argument("--fp16", action="store_true", help="half-precision networks (I/O types unchanged)")
    parser.add_argument("--tensorrt", action="store_true", help="build tensorrt_plan models (gpu flavour)")
    parser.add_argument(
        "--ort-tensorrt",
        action="store_true",
        help="gpu flavour: onnxruntime's TensorRT execution accelerator (FP16, engine cache)",
    )
    parser.add_argument(
        "--parity-data", help="data set for the parity batch (default: the checkpoint's training data set), or 'random'"
    )
    parser.add_argument("--data-dir", help="where the parity data set's files are")
    parser.add_argument("--parity-images", type=int, default=512)
    parser.add_argument("--atol", type=float, help="max |logit diff| allowed (default 1e-3, fp16 5e-2)")
    parser.add_argument("--min-top1-agreement", type=float, help="default 0.99 (fp16 0.98)")
    defaults = ServingOptions()
    parser.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    parser.add_argument("--version", type=int, default=defaults.version, help="model version folder")
    parser.add_argument("--cpu-instances", type=int, default=defaults.cpu_instances)
    parser.add_argument(
        "--cpu-threads",
        type=int,
        default=defaults.cpu_threads,
        help="onnxruntime intra-op threads per cpu instance (0: one per core)",
    )
    parser.add_argument("--gpu-instances", type=int, default=defaults.gpu_instances)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    argv_list = list(argv) if argv is not None else sys.argv[1:]
    command = "python -m export " + shlex.join(argv_list)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))

    recognizer = load_recognizer(args.recognizer)
    rec_meta = read_checkpoint_meta(args.recognizer)
    config = recognizer.config
    enhancer, enh_meta = load_enhancer_checkpoint(args.enhancer) if args.enhancer else (None, {})
    check_sizes(config.input_size, enh_meta)
    data = args.parity_data or (rec_meta.get("recipe") or {}).get("data") or "fashion-mnist"
    images, described = parity_batch(
        data, args.parity_images, config.input_size, args.data_dir or (rec_meta.get("recipe") or {}).get("data_dir")
    )
    tolerance = Tolerance.for_dtype(torch.float16 if args.fp16 else torch.float32)
    if args.atol is not None:
        tolerance.atol = args.atol
    if args.min_top1_agreement is not None:
        tolerance.min_top1_agreement = args.min_top1_agreement
    flavours = cast(tuple[Flavour, ...], FLAVOURS if args.flavour == "both" else (args.flavour,))
    options = ServingOptions(
        max_batch_size=args.max_batch_size,
        version=args.version,
        cpu_instances=args.cpu_instances,
        cpu_threads=args.cpu_threads,
        gpu_instances=args.gpu_instances,
        ort_tensorrt=args.ort_tensorrt,
    )
    try:
        result = export_repository(
            recognizer,
            config.classes,
            config.input_size,
            args.out,
            enhancer=enhancer,
            flavours=flavours,
            gpu_out=args.gpu_out,
            fp16=args.fp16,
            tensorrt=args.tensorrt,
            options=options,
            parity_images=images,
            parity_data=described,
            tolerance=tolerance,
            command=command,
            recognizer_source=Source(str(Path(args.recognizer)), rec_meta),
            enhancer_source=Source(args.enhancer, enh_meta) if args.enhancer else None,
        )
    except ParityError as exc:
        print(f"PARITY FAILED: {exc}", file=sys.stderr)
        return 2
    except TensorRTUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    summary = {
        "repositories": {k: str(v) for k, v in result.repositories.items()},
        "recognizer_parity": {
            k: result.reports["recognizer"]["parity"][k]
            for k in ("max_abs_logit_diff", "top1_agreement", "images", "data", "passed")
        },
        "enhancer_parity": result.reports["enhancer"]["parity"],
        "pipeline_parity": result.pipeline,
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
