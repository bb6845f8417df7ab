"""run_report on fake classifiers: hand-checkable accuracies, fairness, progress, batch-size invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dyntta.data import LabelledImages
from dyntta.evaluate import ReferenceErrors, ReportOptions, run_report
from dyntta.evaluate.report import CLEAN
from dyntta.evaluate.runner import quantise

CLASSES = ["a", "b", "c"]


def tiny_data(n: int = 12, size: int = 32) -> LabelledImages:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 3
    return LabelledImages("toy", "test", images, labels, CLASSES)


def constant(cls: int):
    def classify(images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.uint8 and images.ndim == 4
        return torch.nn.functional.one_hot(torch.full((len(images),), cls), len(CLASSES)).float()

    return classify


def brightness_rule(images: torch.Tensor) -> np.ndarray:
    """A classifier whose answer depends on the pixels (mean brightness -> class)."""
    means = images.float().mean(dim=(1, 2, 3))
    return torch.nn.functional.one_hot((means / 256 * 3).long().clamp(0, 2), 3).float().numpy()


def test_constant_classifier_gives_label_frequency() -> None:
    data = tiny_data()  # labels 0,1,2 repeating: a constant-0 classifier is right on exactly 1/3
    fractions: list[float] = []
    options = ReportOptions(
        corruptions=["gaussian_noise", "contrast", "saturate"],
        severities=[1, 5],
        seed=1,
        batch_size=5,
        sample_indices=(0, 11),
    )
    run = run_report(constant(0), data, options, progress=fractions.append)
    res = run.report.models["model"]
    assert res.clean.accuracy == pytest.approx(1 / 3)
    assert all(a == pytest.approx(1 / 3) for by_s in res.accuracy.values() for a in by_s.values())
    assert res.core is not None and res.core.mean == pytest.approx(1 / 3)
    assert res.extras is not None and res.extras.mean == pytest.approx(1 / 3)
    # 7 conditions x 3 batches; the callback sees a monotone fraction ending at 1
    assert len(fractions) == 21 and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert run.samples[("contrast", 5)].shape == (2, 3, 32, 32) and torch.equal(run.samples[CLEAN][1], data.images[11])
    header = run.report.header
    assert header.data is not None and header.data.n == 12 and header.seed == 1
    assert header.corruptions is not None and header.corruptions.version
    assert header.protocol is not None and header.protocol.jpeg_reencode is False


def shot(**kwargs) -> ReportOptions:
    return ReportOptions(corruptions=["shot_noise"], severities=[3], **kwargs)


def test_every_model_sees_the_same_images_and_batch_size_does_not_matter() -> None:
    seen: dict[str, list[torch.Tensor]] = {"a": [], "b": []}

    def recorder(name: str):
        def classify(images: torch.Tensor) -> torch.Tensor:
            seen[name].append(images.clone())
            return torch.as_tensor(brightness_rule(images))

        return classify

    data = tiny_data()
    run = run_report({"a": recorder("a"), "b": recorder("b")}, data, shot(batch_size=4))
    assert all(torch.equal(x, y) for x, y in zip(seen["a"], seen["b"], strict=True))
    assert list(run.report.models) == ["a", "b"]
    other = run_report(brightness_rule, data, shot(batch_size=7))
    for condition, predicted in run.predictions.models["a"].predicted.items():
        assert np.array_equal(predicted, other.predictions.models["model"].predicted[condition])


def test_reference_classifier_and_self_reference() -> None:
    data = tiny_data()
    options = ReportOptions(corruptions=["gaussian_noise", "fog"], severities=[2, 4])
    run = run_report(brightness_rule, data, options, reference=brightness_rule)
    ce = run.report.models["model"].ce
    assert ce is not None and all(v == pytest.approx(1.0) for v in ce.per_corruption.values() if v is not None)
    assert run.report.reference is not None and run.report.reference.name == "reference"


def test_fixed_reference_needs_every_condition() -> None:
    reference = ReferenceErrors("r", "test", 0.1, {"gaussian_noise": {1: 0.5}})
    with pytest.raises(ValueError, match="has no error for"):
        run_report(constant(0), tiny_data(), ReportOptions(["gaussian_noise"], [1, 2]), reference=reference)


def test_wrong_number_of_classes_is_an_error() -> None:
    with pytest.raises(ValueError, match="4 outputs but the data has 3 classes"):
        run_report(lambda x: torch.zeros(len(x), 4), tiny_data(), ReportOptions(["fog"], [1]))


def test_bad_condition_fails_before_any_work() -> None:
    calls = []
    with pytest.raises(ValueError, match="unknown corruption"):
        run_report(lambda x: calls.append(1), tiny_data(), ReportOptions(["fgo"], [1]))
    assert not calls


def test_quantise_rounds() -> None:
    assert quantise(torch.tensor([0.0, 0.6 / 255, 0.4 / 255, 1.2, -0.1])).tolist() == [0, 1, 0, 255, 0]


def test_prediction_store_resumes(tmp_path) -> None:
    data = tiny_data()
    calls: list[int] = []

    def counting(images: torch.Tensor) -> torch.Tensor:
        calls.append(len(images))
        return torch.as_tensor(brightness_rule(images))

    def cached(corruptions: list[str], **kwargs) -> ReportOptions:
        return ReportOptions(corruptions, [2], cache_dir=tmp_path, model_keys={"m": "k"}, **kwargs)

    first = run_report({"m": counting}, data, cached(["fog", "pixelate"]))
    assert sum(calls) == 3 * 12 and len(list(tmp_path.glob("predictions-*.npz"))) == 1
    calls.clear()
    again = run_report({"m": counting}, data, cached(["fog", "pixelate", "snow"]))
    assert sum(calls) == 12  # only the new condition (snow) was classified
    for condition, predicted in first.predictions.models["m"].predicted.items():
        assert np.array_equal(predicted, again.predictions.models["m"].predicted[condition])
    other_seed = run_report({"m": counting}, data, cached(["fog"], seed=5))
    calls.clear()
    head = data.subset(torch.arange(8))  # a --limit run reuses, and is reused by, the same batches
    by_four = ReportOptions(["fog"], [2], batch_size=4, cache_dir=tmp_path, model_keys={"m": "k2"})
    run_report({"m": counting}, head, by_four)
    run_report({"m": counting}, data, by_four)
    assert sum(calls) == 2 * 8 + 2 * 4  # clean + fog on 8 images, then only the last 4 images
    assert other_seed.report.header.run is not None and again.report.header.run is not None
    assert other_seed.report.header.run.prediction_cache != again.report.header.run.prediction_cache


def test_a_fully_cached_batch_is_not_corrupted_again(tmp_path, monkeypatch) -> None:
    """The cache wraps each model; a batch every model finds in it is never corrupted (the costly part)."""
    from dyntta.evaluate import predictions

    data = tiny_data()
    options = ReportOptions(["fog"], [2], sample_indices=(), cache_dir=tmp_path, model_keys={"a": "ka", "b": "kb"})
    models = {"a": brightness_rule, "b": brightness_rule}
    first = run_report(models, data, options)
    corrupted: list[tuple] = []
    real = predictions.corrupt_uint8
    monkeypatch.setattr(predictions, "corrupt_uint8", lambda *a, **k: corrupted.append(a[1]) or real(*a, **k))
    again = run_report(models, data, options)
    assert corrupted == []
    assert again.report.models == first.report.models
    # a model that is not cached still sees the corrupted batch, once per batch whatever the cached ones do
    run_report({**models, "c": brightness_rule}, data, options)
    assert corrupted == [CLEAN, ("fog", 2)]


def test_callers_cache_is_used_for_keyed_models() -> None:
    """A cache of the caller's (the gateway's job store) takes the place of the .npz store."""

    class Memory:
        def __init__(self) -> None:
            self.entries: dict[tuple, tuple] = {}
            self.flushes = 0

        def get(self, model_key, condition, batch):
            return self.entries.get((model_key, condition, batch))

        def put(self, model_key, condition, batch, pred, conf) -> None:
            self.entries[(model_key, condition, batch)] = (pred, conf)

        def flush(self) -> None:
            self.flushes += 1

    memory = Memory()
    options = ReportOptions(["fog"], [2], model_keys={"m": "k"})
    run = run_report({"m": brightness_rule, "free": brightness_rule}, tiny_data(), options, cache=memory)
    assert {key[0] for key in memory.entries} == {"k"} and len(memory.entries) == 2  # clean + fog, one batch
    assert memory.flushes == 1
    assert run.report.header.run is not None and run.report.header.run.prediction_cache is None
