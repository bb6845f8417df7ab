"""The command-line side of a bring-your-own recognizer: the flags (:func:`add_recognizer_arguments`, shared
by training and export), the :class:`~dyntta.models.external.spec.RecognizerSpec` they describe
(:func:`spec_from_args`) and ``--classes`` (:func:`parse_classes`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dyntta.models.external.onnx_tolerance import ONNX_ATOL, ONNX_PARITY_IMAGES, ONNX_RTOL
from dyntta.models.external.preprocessing import PreprocessingOverrides, as_triple
from dyntta.models.external.spec import RecognizerSpec


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
        mean=as_triple(pick("recognizer_mean", "mean"), "mean"),
        std=as_triple(pick("recognizer_std", "std"), "std"),
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
