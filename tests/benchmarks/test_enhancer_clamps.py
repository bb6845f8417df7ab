"""Published per-op clamps swapped into a loaded enhancer (benchmarks/enhancer_clamps.py)."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.enhancer_clamps import PUBLISHED_CLAMPED, compare, out_of_range, per_op_clamps
from dyntta.data import LabelledImages, to_float
from dyntta.enhancer import DynTTAEnhancer, load_enhancer, ops
from dyntta.enhancer.ops import OPS
from dyntta.models import load_recognizer


def _brightening_enhancer(shift: float = 0.3) -> DynTTAEnhancer:
    """A fresh enhancer that gives every image the same brightness shift and a real share of the blend; its other
    magnitudes stay 0, where every op is the identity."""
    model = DynTTAEnhancer().eval()
    last = model.predictor.head[-1]
    assert isinstance(last, torch.nn.Linear)
    bias = last.bias
    with torch.no_grad():
        bias[model.num_blend + model.param_slot["brightness"]] = math.atanh(shift / 0.6)
        bias[[op.name for op in OPS].index("brightness")] = 4.0  # as much as the identity op
    return model


def test_clamps_change_exactly_the_images_an_op_pushes_out_of_range(fmnist_test: LabelledImages) -> None:
    x = to_float(fmnist_test.images[:8])
    dim, bright = 0.5 * x[:4], 0.5 + 0.5 * x[4:]  # +0.3 keeps the first in [0, 1], pushes the second out
    batch = torch.cat([dim, bright])
    model = _brightening_enhancer()
    flags = out_of_range(model, batch)
    assert set(flags) == set(PUBLISHED_CLAMPED)
    assert flags["brightness"].tolist() == [False] * 4 + [True] * 4
    assert not any(f.any() for name, f in flags.items() if name != "brightness")
    with torch.no_grad():
        plain = model(batch)
        with per_op_clamps(model) as clamped_model:
            clamped = clamped_model(batch)
            _, magnitudes = model.blend_parameters(batch)
            for op in model.ops:
                if op.name in PUBLISHED_CLAMPED:
                    y = op.fn(batch, magnitudes[:, model.param_slot[op.name]])
                    assert y.min() >= 0 and y.max() <= 1, op.name
    assert torch.equal(clamped[:4], plain[:4])  # no op saturates: the same image, bit for bit
    for i in range(4, 8):
        assert not torch.equal(clamped[i], plain[i])


def test_the_swap_is_local_and_undone_even_on_error(fmnist_test: LabelledImages) -> None:
    model = _brightening_enhancer()
    other = _brightening_enhancer()
    x = 0.5 + 0.5 * to_float(fmnist_test.images[:4])
    with torch.no_grad():
        before = model(x)
        with pytest.raises(RuntimeError, match="inside"), per_op_clamps(model):
            assert torch.equal(other(x), before)  # another instance keeps the blend-only clamp
            assert not torch.equal(model(x), before)
            raise RuntimeError("inside")
        assert model.ops is OPS and torch.equal(model(x), before)
    assert all(op.fn is getattr(ops, op.name) for op in OPS)  # the library's bank is untouched
    with pytest.raises(ValueError, match="no such ops"), per_op_clamps(model, ["brightness", "blur"]):
        pass
    assert model.ops is OPS


def test_compare_on_the_committed_models(fmnist_test: LabelledImages) -> None:
    recognizer = load_recognizer("checkpoints/fashion-mnist/recognizer").eval()
    enhancer = load_enhancer("checkpoints/fashion-mnist/enhancer").eval()
    images, labels = fmnist_test.images[:8], fmnist_test.labels[:8]
    rows = compare(recognizer, enhancer, images, labels, ["clean", "brightness"], severity=3, batch=5)
    assert [r.condition for r in rows] == ["clean", "brightness"]
    for r in rows:
        for value in (r.accuracy_blend_clamp, r.accuracy_per_op_clamps, r.agreement, r.out_of_range):
            assert 0 <= value <= 100 and (value / 12.5) == pytest.approx(round(value / 12.5))  # k of 8 images
        # images predicted alike count the same either way: the accuracies differ by no more than the rest
        assert abs(r.accuracy_blend_clamp - r.accuracy_per_op_clamps) <= 100 - r.agreement + 1e-9
        assert r.mean_change >= 0 and (r.mean_change == 0 or r.out_of_range > 0)  # nothing out of range: no change
        # kornia's gamma clamps its own output, and saturation leaves grey images grey: only these two can bite
        assert r.out_of_range_by_op["gamma"] == r.out_of_range_by_op["saturation"] == 0
        by_op = r.out_of_range_by_op.values()
        assert max(by_op) <= r.out_of_range <= sum(by_op)
    assert enhancer.ops is OPS
