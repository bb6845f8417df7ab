"""The report's numbers against a hand-computed example, and condition validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dyntta.contract import BENCHMARK_CORRUPTIONS, CORRUPTIONS, EXTRA_CORRUPTIONS
from dyntta.evaluate.report import (
    ALEXNET_IMAGENET_C_ERRORS,
    CLEAN,
    FORMAT,
    ModelPredictions,
    PredictionTable,
    alexnet_imagenet_c_reference,
    build_report,
    expected_calibration_error,
    resolve_conditions,
    wilson_interval,
)

N = 10
LABELS = np.zeros(N, dtype=np.int64)


def predictions(correct_counts: dict) -> ModelPredictions:
    """Predictions with the first k of N images right (label 0) and the rest wrong (class 1)."""
    preds = ModelPredictions()
    for condition, k in correct_counts.items():
        preds.predicted[condition] = np.array([0] * k + [1] * (N - k))
        preds.confidence[condition] = np.ones(N)
    return preds


def hand_table() -> PredictionTable:
    table = PredictionTable(LABELS, ("gaussian_noise", "shot_noise", "speckle_noise"), (1, 2))
    table.models["model"] = predictions(
        {
            CLEAN: 9,
            ("gaussian_noise", 1): 8,
            ("gaussian_noise", 2): 6,
            ("shot_noise", 1): 7,
            ("shot_noise", 2): 5,
            ("speckle_noise", 1): 10,
            ("speckle_noise", 2): 9,
        }
    )
    table.models["ref"] = predictions(
        {
            CLEAN: 8,
            ("gaussian_noise", 1): 6,
            ("gaussian_noise", 2): 4,
            ("shot_noise", 1): 5,
            ("shot_noise", 2): 5,
            ("speckle_noise", 1): 3,
            ("speckle_noise", 2): 2,
        }
    )
    return table


def test_hand_computed_example() -> None:
    report = build_report(hand_table(), {"seed": 0}, reference="ref")
    assert report.format == FORMAT and report.header.model_dump() == {"seed": 0}
    assert list(report.models) == ["model"]  # the reference is reported apart
    res = report.models["model"]
    assert res.clean.accuracy == pytest.approx(0.9) and res.clean.correct == 9
    assert res.accuracy["shot_noise"] == {1: pytest.approx(0.7), 2: pytest.approx(0.5)}
    core = res.core
    assert core is not None
    assert core.mean == pytest.approx(0.65)  # (.8 + .6 + .7 + .5) / 4
    assert core.per_corruption == {"gaussian_noise": pytest.approx(0.7), "shot_noise": pytest.approx(0.6)}
    assert core.per_severity == {1: pytest.approx(0.75), 2: pytest.approx(0.55)}
    assert core.per_group == {"noise": pytest.approx(0.65)}
    assert core.severity5_mean is None  # severity 5 not evaluated
    assert core.gap == pytest.approx(0.25)
    assert (core.worst_corruption.name, core.worst_corruption.accuracy) == ("shot_noise", pytest.approx(0.6))
    assert res.extras is not None and res.extras.mean == pytest.approx(0.95)  # speckle apart, not in the core
    ce = res.ce
    assert ce is not None
    # errors: model g .2 .4, shot .3 .5; reference g .4 .6, shot .5 .5; clean errors .1 and .2, S = 2
    assert ce.per_corruption == {"gaussian_noise": pytest.approx(0.6), "shot_noise": pytest.approx(0.8)}
    assert ce.mce == pytest.approx(0.7)
    assert ce.relative_per_corruption["gaussian_noise"] == pytest.approx((0.6 - 0.2) / (1.0 - 0.4))
    assert ce.relative_per_corruption["shot_noise"] == pytest.approx((0.8 - 0.2) / (1.0 - 0.4))
    assert ce.relative_mce == pytest.approx((2 / 3 + 1.0) / 2)
    assert ce.complete is False and "speckle_noise" not in ce.per_corruption
    assert report.reference is not None and report.reference.results is not None
    assert report.reference.results.clean.accuracy == pytest.approx(0.8)
    # every prediction is made with confidence 1, so ECE = error
    assert res.calibration is not None
    assert res.calibration.ece["clean"] == pytest.approx(0.1)
    assert res.calibration.ece["2"] == pytest.approx(1 - 0.55)
    # on disk: severities are string keys, absent blocks are absent keys
    on_disk = json.loads(report.to_json())
    assert on_disk["models"]["model"]["accuracy"]["shot_noise"] == {"1": pytest.approx(0.7), "2": pytest.approx(0.5)}
    assert "per_group" not in on_disk["models"]["model"]["extras"]


def test_no_reference_means_no_ce() -> None:
    report = build_report(hand_table())
    assert set(report.models) == {"model", "ref"} and report.reference is None
    assert report.models["model"].ce is None
    on_disk = json.loads(report.to_json())
    assert "ce" not in on_disk["models"]["model"] and on_disk["reference"] is None


def test_alexnet_reference() -> None:
    table = PredictionTable(LABELS, ("gaussian_noise",), (1, 2, 3, 4, 5))
    table.models["m"] = predictions({CLEAN: 8, **{("gaussian_noise", s): 5 for s in range(1, 6)}})
    ce = build_report(table, reference=alexnet_imagenet_c_reference()).models["m"].ce
    assert ce is not None
    alex = ALEXNET_IMAGENET_C_ERRORS["gaussian_noise"]
    assert sum(alex) / 5 == pytest.approx(0.886428)
    assert ce.per_corruption["gaussian_noise"] == pytest.approx(2.5 / sum(alex))
    assert ce.relative_per_corruption["gaussian_noise"] == pytest.approx((2.5 - 5 * 0.2) / (sum(alex) - 5 * 0.4348))


def test_wilson_interval() -> None:
    low, high = wilson_interval(9, 10)
    assert (low, high) == (pytest.approx(0.5958, abs=1e-4), pytest.approx(0.9821, abs=1e-4))
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == pytest.approx(1.0)
    low, high = wilson_interval(9000, 10000)
    assert high - low == pytest.approx(2 * 1.96 * math.sqrt(0.9 * 0.1 / 10000), rel=0.01)


def test_ece() -> None:
    correct = np.array([True, False, True, True])
    assert expected_calibration_error(correct, np.full(4, 0.75)) == pytest.approx(0.0)
    assert expected_calibration_error(correct, np.array([0.95, 0.95, 0.55, 0.55])) == pytest.approx(
        0.5 * abs(0.5 - 0.95) + 0.5 * abs(1.0 - 0.55)
    )


def test_missing_predictions_are_an_error() -> None:
    table = hand_table()
    del table.models["model"].predicted[("shot_noise", 2)]
    with pytest.raises(ValueError, match="no predictions for"):
        build_report(table)


def test_resolve_conditions() -> None:
    assert resolve_conditions(None, None) == (CORRUPTIONS, (1, 2, 3, 4, 5))
    assert resolve_conditions(["contrast", "noise"], ["5", 1]) == (
        ("gaussian_noise", "shot_noise", "impulse_noise", "contrast"),
        (1, 5),
    )
    assert resolve_conditions(["extra"], [3])[0] == EXTRA_CORRUPTIONS
    assert resolve_conditions(["core"], [3])[0] == BENCHMARK_CORRUPTIONS


@pytest.mark.parametrize(
    ("names", "severities", "message"),
    [
        (["gausian_noise"], None, "did you mean 'gaussian_noise'"),
        (["fisheye"], None, "unknown corruption 'fisheye'"),
        ([], None, "no corruptions"),
        (None, [0], "severities are integers 1 to 5"),
        (None, [6], "severities are integers 1 to 5"),
        (None, ["high"], "invalid severity 'high'"),
        (None, [2.5], "invalid severity 2.5"),
    ],
)
def test_bad_conditions(names: list | None, severities: list | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_conditions(names, severities)
