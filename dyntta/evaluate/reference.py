"""A deliberately simple CE reference model: softmax regression on grey pixels, exported as ONNX.

CE and mCE divide a model's errors by a reference model's errors on the same corrupted images. For
ImageNet-C the reference is AlexNet with published errors; for other data sets there is none, so we need
our own. This one is meant as a fixed yardstick rather than a competitor: one linear layer on the 32 x 32
grey image (the mean of the RGB channels), fitted by full-batch L-BFGS, so it is deterministic, trains in
seconds on a CPU and is easy to describe.

    python -m dyntta.evaluate.reference --data fashion-mnist --out docs/reports/fashion-mnist-default/reference.onnx

The ONNX graph follows the export contract (input ``IMAGE`` uint8 [N, S, S, 3], output logits), so
``--reference FILE.onnx`` evaluates it with onnxruntime like any exported recognizer.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

from dyntta import cli
from dyntta.contract import IMAGE, LOGITS
from dyntta.data import LabelledImages, load_dataset
from dyntta.version import __version__

NAME = "softmax-regression-grey"


class GreySoftmaxRegression(nn.Module):
    """uint8 NHWC RGB -> grey (channel mean) in [0, 1] -> one linear layer -> logits."""

    def __init__(self, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(image_size * image_size, num_classes)

    def features(self, images_nhwc: torch.Tensor) -> torch.Tensor:
        return images_nhwc.float().mean(dim=-1).flatten(1) / 255.0

    def forward(self, images_nhwc: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(images_nhwc))


def fit(data: LabelledImages, l2: float = 1e-4, iterations: int = 300) -> GreySoftmaxRegression:
    """Full-batch L-BFGS on mean cross-entropy + ``l2`` x squared weights (the bias is not penalised)."""
    torch.manual_seed(0)
    model = GreySoftmaxRegression(data.image_size, len(data.classes))
    nn.init.zeros_(model.linear.weight)
    nn.init.zeros_(model.linear.bias)  # a convex problem: start at zero so the result is reproducible
    x = model.features(data.images.permute(0, 2, 3, 1))
    y = data.labels
    optimizer = torch.optim.LBFGS(
        model.parameters(),
        lr=1.0,
        max_iter=iterations,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model.linear(x), y) + l2 * model.linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return model.eval()


@torch.no_grad()
def accuracy(model: GreySoftmaxRegression, data: LabelledImages) -> float:
    logits = model(data.images.permute(0, 2, 3, 1))
    return float((logits.argmax(1) == data.labels).float().mean())


def export_onnx(model: GreySoftmaxRegression, path: Path, image_size: int, metadata: dict[str, str]) -> Path:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, image_size, image_size, 3, dtype=torch.uint8)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        input_names=[IMAGE],
        output_names=[LOGITS],
        dynamic_axes={IMAGE: {0: "batch"}, LOGITS: {0: "batch"}},
    )
    graph = onnx.load(str(path))
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = cli.ArgumentParser(prog="python -m dyntta.evaluate.reference", description=__doc__)
    parser.add_argument("--data", default="fashion-mnist", help="data set to fit on (its train split)")
    parser.add_argument("--data-dir", default=None, help="where the data set's files are")
    parser.add_argument("--image-size", type=int, default=32, help="image size the reference works at")
    parser.add_argument("--l2", type=float, default=1e-4, help="weight decay (squared weights, bias free)")
    parser.add_argument("--iterations", type=int, default=300, help="L-BFGS iterations")
    parser.add_argument("--out", required=True, help="output .onnx file")
    return parser


def fit_and_export(args: argparse.Namespace, argv: list[str] | None) -> None:
    train = load_dataset(args.data, "train", image_size=args.image_size, root=args.data_dir)
    test = load_dataset(args.data, "test", image_size=args.image_size, root=args.data_dir)
    started = time.perf_counter()
    model = fit(train, args.l2, args.iterations)
    seconds = time.perf_counter() - started
    recipe = {
        "model": NAME,
        "data": args.data,
        "train_images": len(train),
        "image_size": args.image_size,
        "l2": args.l2,
        "iterations": args.iterations,
        "optimizer": "full-batch L-BFGS (strong Wolfe), zero init",
        "train_seconds": round(seconds, 1),
        "train_accuracy": round(accuracy(model, train), 4),
        "test_accuracy": round(accuracy(model, test), 4),
        "dyntta_version": __version__,
        "command": "python -m dyntta.evaluate.reference " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    export_onnx(
        model,
        Path(args.out),
        args.image_size,
        {"dyntta.reference": json.dumps(recipe), "classes": json.dumps(train.classes)},
    )
    print(json.dumps({"out": args.out, **recipe}))


def main(argv: list[str] | None = None) -> int:
    """Exit codes (:mod:`dyntta.cli`): 0 written, 2 usage error, 1 runtime failure (e.g. no data set)."""
    return cli.run(build_parser(), lambda args: fit_and_export(args, argv), argv)


if __name__ == "__main__":
    sys.exit(main())
