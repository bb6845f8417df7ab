"""Label-free against labelled enhancer fitting with the same budget (issue 13 section 2).

Both fits use the real command, ``python -m dyntta.train enhancer``, on the same training images, epochs,
batch, learning rate and seed, for the committed default recognizer; one with the data set's labels
(cross-entropy), one with ``--labels none`` (the recognizer's softened clean prediction as target). Each is
then evaluated with ``python -m dyntta.evaluate`` on the first ``--limit`` Fashion-MNIST test images: clean,
the 15 benchmark corruptions x 5 severities (the target's "15 x 5 mean") and the 4 extra ones.
Target: label-free within 1 point of labelled on the 15 x 5 mean.

    nice uv run python -m benchmarks.label_free                                  # 12,000 images x 2 epochs
    uv run python -m benchmarks.label_free --train-subset 512 --epochs 1 --limit 100 --root var/lf-smoke

Finished fits and reports are reused (delete ``--root`` to start over); the table goes to
``benchmarks/results/label_free.json`` (with ``--results``) and is printed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from benchmarks.enhancer_runs import Comparison, parser_with_budget, points

FITS = {"labelled": ["--labels", "dataset"], "label-free": ["--labels", "none"]}


@dataclass(frozen=True)
class Row:
    fit: str
    fit_seconds: float
    clean: float
    benchmark_15x5: float
    extra_4x5: float | None
    recognizer_clean: float
    recognizer_15x5: float


def measure(name: str, run: Comparison) -> Row:
    enhancer = run.root / f"enhancer-{name}"
    seconds = run.fit(enhancer, *FITS[name])
    alone, enhanced = run.evaluate(run.root / f"report-{name}", enhancer)
    assert alone.core is not None and enhanced.core is not None  # all 19 corruptions were evaluated
    return Row(
        fit=name,
        fit_seconds=round(seconds, 1),
        clean=points(enhanced.clean.accuracy),
        benchmark_15x5=points(enhanced.core.mean),
        extra_4x5=points(enhanced.extras.mean) if enhanced.extras else None,
        recognizer_clean=points(alone.clean.accuracy),
        recognizer_15x5=points(alone.core.mean),
    )


def main() -> None:
    parser = parser_with_budget(__doc__, "var/label-free")
    run = Comparison.start("benchmarks.label_free", parser.parse_args())
    labelled, label_free = rows = [measure(name, run) for name in FITS]
    gap = round(label_free.benchmark_15x5 - labelled.benchmark_15x5, 2)
    result = {
        **run.header(),
        "rows": [asdict(r) for r in rows],
        "label_free_minus_labelled_15x5": gap,
        "target_within_1_point": gap >= -1.0,
    }
    run.write(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
