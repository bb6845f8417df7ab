"""Leave-one-family-out: does the enhancer help on corruption families it never saw? (issue 13 section 3)

For each family F of the benchmark corruptions (noise, blur, weather, digital) an enhancer is fitted on the
other families only (``--exclude-corruptions F``), and a reference enhancer on all 15; every fit gets the
same budget (``--train-subset`` images x ``--epochs``, seed, for the committed default recognizer). The
reference is evaluated on all 19 corruptions, each held-out fit on its own family, on the first ``--limit``
test images, every image enhanced independently. Per family the
table gives the recognizer alone, the enhancer that saw the family, and the one that did not (the held-out
figure); the 4 extra corruptions are held out from every fit and reported as their own family. Issue 13's
targets: no family worse than the recognizer alone by more than 0.5 point; held-out families >= +3 points
on average; the 4 extras >= +2 points.

    nice uv run python -m benchmarks.shift_families --results benchmarks/results/shift_families.json
    uv run python -m benchmarks.shift_families --train-subset 256 --epochs 1 --limit 50 --root var/sf-smoke

``--extra-fit-args`` goes to every fit (e.g. ``--clean-weight 1`` or ``--blind``), to compare recipes.
Finished fits and reports are reused (see benchmarks/enhancer_runs.py).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass

from benchmarks.enhancer_runs import Comparison, parser_with_budget, points
from dyntta.corruptions import GROUPS
from dyntta.evaluate.schema import ModelResults

FAMILIES = ("noise", "blur", "weather", "digital")
ALL = "all-15"


@dataclass(frozen=True)
class FamilyRow:
    family: str
    recognizer: float
    seen: float  # the enhancer fitted on all 15 (for "extra": never seen by any fit)
    held_out: float | None  # the enhancer fitted without this family
    held_out_gain: float | None
    seen_gain: float


def family_mean(results: ModelResults, family: str) -> float:
    """Mean accuracy over the family's corruptions and the evaluated severities."""
    means = results.block_means()
    return statistics.fmean(means[name] for name in GROUPS[family])


def main() -> None:
    parser = parser_with_budget(__doc__, "var/shift-families")
    run = Comparison.start("benchmarks.shift_families", parser.parse_args())

    fits: dict[str, tuple[ModelResults, ModelResults]] = {}
    seconds: dict[str, float] = {}
    for left_out in (ALL, *FAMILIES):
        enhancer = run.root / f"enhancer-without-{left_out}"
        seconds[left_out] = run.fit(enhancer, *([] if left_out == ALL else ["--exclude-corruptions", left_out]))
        only = [] if left_out == ALL else ["--corruptions", left_out]  # a held-out fit: its own family only
        fits[left_out] = run.evaluate(run.root / f"report-without-{left_out}", enhancer, *only)

    alone = fits[ALL][0]
    rows = []
    for family in (*FAMILIES, "extra"):
        recognizer = family_mean(alone, family)
        seen = family_mean(fits[ALL][1], family)
        held_out = family_mean(fits[family][1], family) if family in fits else None
        rows.append(
            FamilyRow(
                family=family,
                recognizer=points(recognizer),
                seen=points(seen),
                held_out=None if held_out is None else points(held_out),
                held_out_gain=None if held_out is None else points(held_out - recognizer),
                seen_gain=points(seen - recognizer),
            )
        )
    held = [r.held_out_gain for r in rows if r.held_out_gain is not None]
    worst = min(min(r.seen_gain, r.held_out_gain if r.held_out_gain is not None else r.seen_gain) for r in rows)
    extra = next(r for r in rows if r.family == "extra")
    result = {
        **run.header(),
        "fit_seconds": seconds,
        "rows": [asdict(r) for r in rows],
        "held_out_mean_gain": round(statistics.fmean(held), 2),
        "targets": {
            "no_family_worse_than_-0.5": worst >= -0.5,
            "held_out_mean_gain_>=_+3": statistics.fmean(held) >= 3.0,
            "extras_gain_>=_+2": extra.seen_gain >= 2.0,
        },
    }
    run.write(result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
