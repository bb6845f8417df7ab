"""Clean accuracy of the served models, end to end, against the same models offline (issue 13 section 5).

The Fashion-MNIST test split is written as PNG files (the raw 28 x 28 grayscale images, as a user has them,
one folder per class index), the bundled Triton serves ``--repository``, and the batch client
(``python -m serve.client``'s ``run``: decode, :func:`dyntta.data.to_model_input`, uint8 batches over gRPC)
classifies every file twice: through the ensemble (``dyntta``: enhancer then recognizer) and through the
recognizer alone. The same checkpoints are evaluated offline in PyTorch on ``load_dataset`` (the training
data path). Printed: each accuracy, the served ensemble minus the served recognizer (issue 13's target:
within 0.3 point on all 10,000 images) and the per-image top-1 agreement between served and offline.

    nice uv run python -m benchmarks.served_accuracy --results benchmarks/results/served_accuracy.json
    uv run python -m benchmarks.served_accuracy --limit 200                                # a smoke run
"""

from __future__ import annotations

import argparse
import csv
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.provenance import Provenance
from dyntta import contract
from dyntta.data import load_dataset, to_float
from dyntta.data.datasets import read_idx
from dyntta.enhancer import load_enhancer
from dyntta.models import load_recognizer
from serve import client
from serve.triton import TritonServer


@dataclass(frozen=True)
class Accuracy:
    model: str
    served: float  # % through Triton and the batch client
    offline: float  # % in PyTorch on load_dataset's images
    top1_agreement: float  # % of images where served and offline predict the same class


def write_pngs(directory: Path, limit: int) -> np.ndarray:
    """The first ``limit`` raw test images as ``directory/LABEL/NNNNN.png`` (kept between runs); their labels."""
    images_file, labels_file = contract.fashion_mnist_files("test")
    raw, labels = read_idx(images_file)[:limit], read_idx(labels_file)[:limit].astype(np.int64)
    for index, (pixels, label) in enumerate(zip(raw, labels, strict=True)):
        path = directory / str(label) / f"{index:05d}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels, mode="L").save(path)
    return labels


def served_predictions(directory: Path, grpc_url: str, model: str, scratch: Path) -> np.ndarray:
    """Top-1 class index per image (in file-index order) from the batch client."""
    out = scratch / f"{model}.csv"
    counts = client.run(directory, grpc_url, model, batch_size=64, out=out, top_k=1)
    if counts["failed"]:
        raise RuntimeError(f"{counts['failed']} images failed through {model}: see {out}")
    with out.open() as handle:
        rows = {int(Path(row["path"]).stem): int(row["index"]) for row in csv.DictReader(handle)}
    return np.array([rows[i] for i in range(len(rows))])


@torch.no_grad()
def offline_predictions(recognizer_dir: str, enhancer_dir: str, limit: int) -> dict[str, np.ndarray]:
    """Top-1 class index per image of the recognizer alone and behind the enhancer, in PyTorch on
    ``load_dataset``'s images (the training data path), keyed by the served model's name."""
    recognizer = load_recognizer(recognizer_dir).eval()
    enhancer = load_enhancer(enhancer_dir).eval()
    images = load_dataset("fashion-mnist", "test", image_size=recognizer.config.input_size).images[:limit]
    alone, enhanced = [], []
    for batch in images.split(500):
        x = to_float(batch)
        alone.append(recognizer(x).argmax(1))
        enhanced.append(recognizer(enhancer(x).clamp(0, 1)).argmax(1))
    return {contract.RECOGNIZER: torch.cat(alone).numpy(), contract.ENSEMBLE: torch.cat(enhanced).numpy()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", default="model_repository")
    parser.add_argument("--recognizer", default="checkpoints/fashion-mnist/recognizer", help="offline twin")
    parser.add_argument("--enhancer", default="checkpoints/fashion-mnist/enhancer", help="offline twin")
    parser.add_argument("--limit", type=int, default=10000, help="first N test images")
    parser.add_argument("--work", default="var/served-accuracy", help="PNG files and the client's CSV files")
    parser.add_argument("--results", default=None, help="also write the figures here (JSON)")
    args = parser.parse_args()
    work = Path(args.work)
    provenance = Provenance.start("benchmarks.served_accuracy")

    labels = write_pngs(work / f"fashion-mnist-test-{args.limit}", args.limit)
    with TritonServer(Path(args.repository)) as urls:
        served = {
            model: served_predictions(work / f"fashion-mnist-test-{args.limit}", urls.grpc_url, model, work)
            for model in (contract.ENSEMBLE, contract.RECOGNIZER)
        }
    offline = offline_predictions(args.recognizer, args.enhancer, args.limit)
    rows = [
        Accuracy(
            model=model,
            served=round(100 * float((served[model] == labels).mean()), 2),
            offline=round(100 * float((offline[model] == labels).mean()), 2),
            top1_agreement=round(100 * float((served[model] == offline[model]).mean()), 2),
        )
        for model in served
    ]
    gap = round(rows[0].served - rows[1].served, 2)
    result = {
        "repository": args.repository,
        "test_images": args.limit,
        "rows": [asdict(r) for r in rows],
        "served_ensemble_minus_recognizer": gap,
        "target_within_0.3": gap >= -0.3,
    }
    provenance.write(args.results, result)


if __name__ == "__main__":
    main()
