"""Would a classical restoration operation add to the enhancer's bank? An oracle check (issue 13, the extras).

The enhancer misses the +2 target on the four held-out extras (speckle noise, gaussian blur, spatter, saturate),
and its operation bank has no deconvolution and no signal-dependent denoiser. Before a refit (hours on this
machine) this asks whether such operations could add anything: each candidate is applied *alone* to the corrupted
images with, per corruption and severity, the parameter from its grid that scores best on these same images. That
is an oracle (an upper bound for that operation with a perfectly chosen strength; no predictor chooses that well),
compared with the committed enhancer, which chooses per image. The gate is the training corruptions that are the
extras' relatives (defocus blur for gaussian blur; gaussian and shot noise for speckle): an operation whose oracle
does not beat the enhancer there is not worth a refit. ``--corruptions`` can add the extras themselves as a
diagnostic of the same bound.

Candidates (torch, not ONNX-exportable as written: an oracle, not an operation of the bank yet):
- ``wiener_deconvolution``: Wiener filter for a Gaussian point spread function of ``sigma`` px,
  ``G = (1 + K) H / (H^2 + K)`` with ``H = exp(-2 pi^2 sigma^2 |f|^2)`` and ``K = 0.01`` (normalised so that
  ``G(0) = 1``: the mean is kept, and ``sigma = 0`` is the identity);
- ``lee``: the Lee filter for multiplicative (speckle) noise of ``sigma`` on 3x3 windows,
  ``mean + max(0, var - (sigma mean)^2) / var (x - mean)``;
- ``local_wiener``: the same with additive noise of ``sigma`` (scipy.signal.wiener's rule).

Data: the first ``--images`` Fashion-MNIST test images under each corruption and severity (seed 0), rounded to 8
bits as the server receives them (dyntta.evaluate's ``quantise``).

    heavy .venv/bin/python -m benchmarks.restoration_oracle --results benchmarks/results/restoration_oracle.json
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

from benchmarks.provenance import Provenance
from dyntta.corruptions import NAMES, corrupt
from dyntta.data import load_dataset, to_float
from dyntta.enhancer import load_enhancer
from dyntta.evaluate.predictions import quantise
from dyntta.models import load_recognizer, read_preprocess

Restoration = Callable[[torch.Tensor, float], torch.Tensor]
RELATIVES = ("defocus_blur", "gaussian_noise", "shot_noise")
WIENER_K = 0.01


def wiener_deconvolution(x: torch.Tensor, sigma: float) -> torch.Tensor:
    size = x.shape[-1]
    f = torch.fft.fftfreq(size, dtype=x.dtype)
    transfer = torch.exp(-2 * math.pi**2 * sigma**2 * (f[:, None] ** 2 + f[None, :] ** 2))
    response = (1 + WIENER_K) * transfer / (transfer**2 + WIENER_K)
    return torch.fft.ifft2(torch.fft.fft2(x) * response).real.clamp(0.0, 1.0)


def _local_mean_and_variance(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    mean = F.avg_pool2d(padded, 3, 1)
    return mean, (F.avg_pool2d(padded * padded, 3, 1) - mean * mean).clamp_min(0.0)


def _shrink(x: torch.Tensor, noise_variance: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    mean, variance = _local_mean_and_variance(x)
    gain = (variance - noise_variance(mean)).clamp_min(0.0) / variance.clamp_min(1e-8)
    return mean + gain * (x - mean)


def lee(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return _shrink(x, lambda mean: (sigma * mean) ** 2)


def local_wiener(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return _shrink(x, lambda mean: torch.full_like(mean, sigma * sigma))


#: candidate -> (function, the parameter grid the oracle picks from)
CANDIDATES: dict[str, tuple[Restoration, tuple[float, ...]]] = {
    "wiener_deconvolution": (wiener_deconvolution, (0.3, 0.5, 0.7, 0.9, 1.1, 1.4)),
    "lee": (lee, (0.05, 0.1, 0.15, 0.2, 0.3, 0.45)),
    "local_wiener": (local_wiener, (0.02, 0.04, 0.06, 0.09, 0.13)),
}


@dataclass(frozen=True)
class Best:
    accuracy: float  # top-1 %, the candidate alone with the oracle's parameter
    parameter: float


@dataclass(frozen=True)
class Row:
    corruption: str
    severity: int
    recognizer: float  # top-1 %, the corrupted images as they are
    enhancer: float  # top-1 %, the committed enhancer in front
    oracle: dict[str, Best]  # candidate -> its best over the grid


def percent(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    return 100 * (predictions == labels).float().mean().item()


@torch.no_grad()
def measure(
    recognizer: torch.nn.Module,
    enhancer: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    corruptions: Sequence[str],
    *,
    seed: int = 0,
) -> list[Row]:
    """One :class:`Row` per corruption and severity for uint8 ``images`` with ``labels``."""

    def accuracy(x: torch.Tensor) -> float:
        return percent(recognizer(x).argmax(1), labels)

    x = to_float(images)
    conditions = [(name, severity) for name in corruptions for severity in range(1, 6)]
    rows = []
    for name, severity in tqdm(conditions, desc="conditions", file=sys.stderr):
        corrupted = to_float(quantise(corrupt(x, name, severity, seed=seed)))
        oracle = {}
        for candidate, (restore, grid) in CANDIDATES.items():
            accuracy_at, parameter = max((accuracy(restore(corrupted, p)), p) for p in grid)
            oracle[candidate] = Best(accuracy_at, parameter)
        rows.append(Row(name, severity, accuracy(corrupted), accuracy(enhancer(corrupted)), oracle))
    return rows


def table(rows: Sequence[Row]) -> str:
    head = ["corruption", "s", "alone", "enhancer", *CANDIDATES]
    lines = [f"{head[0]:<16}{head[1]:>3}" + "".join(f"{h:>22}" for h in head[2:])]
    for r in rows:
        cells = [f"{r.recognizer:.1f}", f"{r.enhancer:.1f}"]
        cells += [f"{b.accuracy:.1f} @{b.parameter:g}" for b in r.oracle.values()]
        lines.append(f"{r.corruption:<16}{r.severity:>3}" + "".join(f"{c:>22}" for c in cells))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.restoration_oracle",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--recognizer", default="checkpoints/fashion-mnist/recognizer")
    parser.add_argument("--enhancer", default="checkpoints/fashion-mnist/enhancer")
    parser.add_argument("--images", type=int, default=1000, help="the first N test images")
    parser.add_argument("--corruptions", nargs="+", default=list(RELATIVES), choices=NAMES, metavar="NAME")
    parser.add_argument("--seed", type=int, default=0, help="keys the corruptions' random draws")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--results", help="write the figures here (JSON)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    run = Provenance.start("benchmarks.restoration_oracle", argv)
    recognizer = load_recognizer(args.recognizer)
    enhancer = load_enhancer(args.enhancer)
    size = recognizer.config.input_size
    data = load_dataset("fashion-mnist", "test", image_size=size, preprocess=read_preprocess(args.recognizer))
    images, labels = data.images[: args.images], data.labels[: args.images]
    rows = measure(recognizer, enhancer, images, labels, args.corruptions, seed=args.seed)
    print(table(rows))
    run.write(args.results, {"images": len(labels), "wiener_k": WIENER_K, "rows": [asdict(r) for r in rows]})


if __name__ == "__main__":
    main()
