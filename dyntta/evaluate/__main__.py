"""``python -m dyntta.evaluate``: the corruption-robustness report of a model (torch checkpoint or ONNX).

Example::

    python -m dyntta.evaluate --model checkpoints/fashion-mnist/recognizer --data fashion-mnist \\
        --reference REF_CKPT --out docs/reports/fashion-mnist-default
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from dyntta import cli
from dyntta.cli import UsageError
from dyntta.contract import SELECTION_GROUPS, resolve_conditions
from dyntta.corruptions import TABLE_NAMES
from dyntta.data import load_dataset
from dyntta.evaluate import sharded
from dyntta.evaluate.classifiers import Classifier, load_classifier, load_enhanced_classifier
from dyntta.evaluate.outputs import write_outputs
from dyntta.evaluate.report import ReferenceErrors, alexnet_imagenet_c_reference
from dyntta.evaluate.runner import ReportOptions
from dyntta.evaluate.schema import Report
from dyntta.evaluate.strip import StripSpec, module_enhancer

ALEXNET = "alexnet"


@dataclass
class ReportConfig:
    """Everything the command was asked to do; saved in the report header."""

    model: str
    data: str = "fashion-mnist"
    enhancer: str | None = None
    reference: str | None = None
    data_dir: str | None = None
    split: str = "test"
    image_size: int | None = None
    limit: int | None = None
    corruptions: list[str] | None = None
    severities: list[int] | None = None
    seed: int = 0
    table: str | None = None
    out: str = "runs/report"
    batch_size: int = 500
    device: str = "auto"
    threads: int | None = None
    sample_index: int = 0
    title: str | None = None
    no_figures: bool = False
    cache_dir: str = "runs/evaluate-cache"
    no_cache: bool = False
    optimize: bool = False


def classifier_key(classifier: Classifier) -> str:
    """Identifies a model's predictions in the prediction cache: its kind and weights hash(es)."""
    info = classifier.info
    hashes = [c.get("sha256", "") for c in info.components] if info.components else [info.sha256 or ""]
    return f"{info.kind}:{'+'.join(h[:16] for h in hashes)}"


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m dyntta.evaluate", description=__doc__)
    parser.add_argument("--model", required=True, help="recognizer checkpoint directory or exported .onnx file")
    parser.add_argument(
        "--enhancer",
        default=None,
        help="enhancer checkpoint: report 'recognizer' and 'enhancer + recognizer' side by side",
    )
    parser.add_argument(
        "--reference",
        default=None,
        help="CE/mCE reference: a recognizer checkpoint or .onnx evaluated on the same corrupted "
        "images, or 'alexnet' (published errors; only for true ImageNet-C data)",
    )
    parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist | cifar10 | cifar100 | imagefolder")
    parser.add_argument("--data-dir", default=None, help="where the data set's files are")
    parser.add_argument("--split", default="test", choices=["train", "test"], help="which split to evaluate")
    parser.add_argument("--image-size", type=int, default=None, help="image size; default the model's input size")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument(
        "--corruptions",
        nargs="+",
        default=None,
        help=f"names or groups ({', '.join(SELECTION_GROUPS)}); default all 19",
    )
    parser.add_argument("--severities", nargs="+", type=int, default=None, help="subset of 1 2 3 4 5; default all")
    parser.add_argument("--seed", type=int, default=0, help="corruption seed")
    parser.add_argument(
        "--table",
        default=None,
        choices=TABLE_NAMES,
        help="corruption parameter table; default cifar up to 64 px, imagenet above",
    )
    parser.add_argument("--out", default="runs/report", help="output directory")
    parser.add_argument("--batch-size", type=int, default=500, help="images per batch (corrupted once, every model)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (models and corruptions)")
    parser.add_argument("--threads", type=int, default=None, help="torch / onnxruntime CPU threads")
    parser.add_argument("--sample-index", type=int, default=0, help="test image shown in the sample grid")
    parser.add_argument("--title", default=None, help="Markdown title")
    parser.add_argument("--no-figures", action="store_true", help="write JSON and Markdown only")
    parser.add_argument(
        "--cache-dir",
        default="runs/evaluate-cache",
        help="predictions are kept here as they are made; a rerun resumes from them",
    )
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the prediction cache")
    parser.add_argument(
        "--optimize",
        action="store_true",
        help="trace + freeze torch recognizers (BatchNorm folded): ~2x faster on CPU, logits equal to ~1e-5",
    )
    return parser


def run(config: ReportConfig, argv: list[str] | None = None) -> Report | None:
    try:  # fail before loading anything
        names, levels = resolve_conditions(config.corruptions, config.severities)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if config.limit is not None and config.limit < 1:
        raise UsageError("--limit must be a positive number of images")
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(
        "cuda"
        if config.device == "auto" and torch.cuda.is_available()
        else ("cpu" if config.device == "auto" else config.device)
    )

    primary = load_classifier(config.model, device=device, threads=config.threads, optimize=config.optimize)
    classifiers: dict[str, Classifier] = {}
    header: dict = {"model": primary.info.to_dict()}
    strip: StripSpec | None = None
    if config.enhancer:
        classifiers["recognizer"] = primary
        enhanced = load_enhanced_classifier(config.enhancer, config.model, device=device)
        classifiers["enhancer + recognizer"] = enhanced
        header["enhancer"] = enhanced.info.components[0] if enhanced.info.components else enhanced.info.to_dict()
        header["tta"] = "DynTTA enhancer before the recognizer (second model); the first model has none"
        assert isinstance(enhanced.module, torch.nn.Sequential)  # (enhancer, recognizer), see the loader
        strip = StripSpec(
            enhance=module_enhancer(enhanced.module[0], device),
            enhanced_by=f"the enhancer checkpoint `{config.enhancer}`, its output rounded to uint8 "
            "(the prediction is of its float output, as in training)",
        )
    else:
        classifiers[primary.info.name] = primary
        header["tta"] = "none"

    size = config.image_size or primary.info.input_size or 32
    # a recognizer checkpoint's preprocessing policy (issue 16.3); an .onnx model records none: resize
    from dyntta.models.checkpoint import read_preprocess  # timm: only when a model is evaluated

    policy = read_preprocess(config.model) if Path(config.model).is_dir() else None
    data = load_dataset(config.data, config.split, image_size=size, root=config.data_dir, preprocess=policy)
    if config.limit:
        data = data.subset(torch.arange(min(config.limit, len(data))))
    if primary.info.classes and len(primary.info.classes) != len(data.classes):
        raise UsageError(f"model has {len(primary.info.classes)} classes, {config.data} has {len(data.classes)}")

    reference: Classifier | ReferenceErrors | None = None
    if config.reference and config.reference.lower() == ALEXNET:
        if config.data != "imagefolder":
            raise UsageError(
                "AlexNet's published errors are a valid CE reference only for true ImageNet-C; "
                "for other data pass a reference checkpoint (evaluated on the same corrupted images)"
            )
        reference = alexnet_imagenet_c_reference()
        header["reference_note"] = (
            "AlexNet errors were measured on the released ImageNet-C JPEG files; this run "
            "corrupts in memory, so CE/mCE are ImageNet-C-style approximations"
        )
    elif config.reference:
        reference_classifier = load_classifier(
            config.reference, device=device, threads=config.threads, optimize=config.optimize
        )
        header["reference"] = reference_classifier.info.to_dict()
        reference = reference_classifier

    reference_name = "reference"
    if isinstance(reference, Classifier):
        name = reference.info.name
        reference_name = name if name not in classifiers else f"reference: {name}"
    model_keys = {name: classifier_key(c) for name, c in classifiers.items()}
    if isinstance(reference, Classifier):
        model_keys[reference_name] = classifier_key(reference)
    header["command"] = "python -m dyntta.evaluate " + shlex.join(argv if argv is not None else sys.argv[1:])
    header["config"] = asdict(config)
    print(
        f"evaluating {', '.join(classifiers)} on {len(data)} {data.name} {data.split} images at {size} px: "
        f"{len(names)} corruptions x {len(levels)} severities, device {device}",
        file=sys.stderr,
    )
    options = ReportOptions(
        corruptions=names,
        severities=levels,
        seed=config.seed,
        table=config.table,
        batch_size=config.batch_size,
        device=device,
        sample_indices=(config.sample_index,),
        show_progress=True,
        reference_name=reference_name,
        cache_dir=None if config.no_cache else config.cache_dir,
        model_keys=model_keys,
    )
    result = sharded.run_report(classifiers, data, options, reference=reference, header=header, strip=strip)
    if result is None:  # under torchrun, rank 0 merges every rank's predictions and writes the report
        return None
    paths = write_outputs(result, config.out, title=config.title, figures=not config.no_figures)
    print(json.dumps(_summary(result.report, config.out, paths)))
    return result.report


def _summary(report: Report, out: str, paths: Mapping[str, Path]) -> dict[str, Any]:
    """The one-line JSON the command prints: files and headline numbers per model."""
    summary: dict[str, Any] = {"out": out, "files": {k: str(v) for k, v in paths.items()}}
    for name, res in report.models.items():
        summary[name] = {
            "clean": round(res.clean.accuracy, 4),
            "corrupted_mean": round(res.core.mean, 4) if res.core else None,
            "mce": round(res.ce.mce, 4) if res.ce and res.ce.mce else None,
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    """Exit codes (:mod:`dyntta.cli`): 0 done; 2 a usage error (unknown corruption, bad severity or
    --limit, a reference or data set that does not fit the model); 1 a runtime failure (missing model or
    data set files), one ``error:`` line and never a traceback."""

    def handle(args: argparse.Namespace) -> None:
        config = ReportConfig(**{k: v for k, v in vars(args).items() if k in ReportConfig.__dataclass_fields__})
        run(config, argv)

    return cli.run(build_parser(), handle, argv)


__all__ = ["ReportConfig", "build_parser", "main", "run"]

if __name__ == "__main__":
    sys.exit(main())
