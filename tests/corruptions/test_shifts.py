"""Novel shifts (dyntta.shifts): the taxonomy, per-image determinism, severity ordering, what each family does
to an image, and clear errors. Small synthetic images keep the file fast."""

from __future__ import annotations

import itertools
import math
from functools import cache

import pytest
import torch
import torch.nn.functional as F

from dyntta import shifts
from dyntta.corruptions import NAMES
from dyntta.shifts import NOVEL_FAMILIES, NOVEL_SHIFTS, SEVERITIES, shift

GEOMETRIC = NOVEL_FAMILIES["geometric"]
OCCLUSION = NOVEL_FAMILIES["occlusion"]
RANDOM = (*GEOMETRIC, *OCCLUSION)  # the shifts that draw per-image parameters


@cache
def objects(n: int = 32, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth coloured objects on a black background, like Fashion-MNIST (the warps pad with black)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.linspace(-1, 1, size)
    envelope = (1 - (r[None, :] ** 2 + r[:, None] ** 2) / 0.6).clamp(0, 1).sqrt()
    return (F.interpolate(torch.rand(n, 3, 5, 5, generator=g), size=size, mode="bilinear") * envelope).clamp(0, 1)


def test_taxonomy_is_separate_from_the_corruption_suite() -> None:
    assert tuple(n for names in NOVEL_FAMILIES.values() for n in names) == NOVEL_SHIFTS
    assert set(NOVEL_FAMILIES) == {"geometric", "occlusion", "appearance"}
    assert len(set(NOVEL_SHIFTS)) == 9 and not set(NOVEL_SHIFTS) & set(NAMES)
    assert SEVERITIES == (1, 2, 3, 4, 5)


@pytest.mark.parametrize("name", NOVEL_SHIFTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_range_and_input_untouched(name: str, dtype: torch.dtype) -> None:
    x = objects(8, 28).to(dtype)
    before = x.clone()
    for severity in (1, 5):
        out = shift(x, name, severity)
        assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
        assert float(out.min()) >= 0 and float(out.max()) <= 1
    grey = shift(x[:, :1], name, 3)  # one channel works too
    assert grey.shape == (8, 1, 28, 28)
    assert torch.equal(x, before)
    assert shift(x[:0], name, 3).shape == (0, 3, 28, 28)


@pytest.mark.parametrize("name", NOVEL_SHIFTS)
def test_an_image_gets_the_same_shift_in_any_batch_and_order(name: str) -> None:
    x = objects(8)
    whole = shift(x, name, 4, seed=3)
    order = torch.tensor([5, 2, 7, 0])
    part = shift(x[order], name, 4, seed=3, indices=order)
    rest = shift(x[6:7], name, 4, seed=3, indices=torch.tensor([6]))
    torch.testing.assert_close(part, whole[order], rtol=0, atol=1e-6)
    torch.testing.assert_close(rest, whole[6:7], rtol=0, atol=1e-6)
    if name in RANDOM:  # the seed and the image's index key the draws: another seed, other parameters
        assert not torch.equal(shift(x, name, 4, seed=4), whole)
        same_image = x[:1].expand(8, -1, -1, -1)
        outs = shift(same_image, name, 4, seed=3)
        assert any(not torch.equal(outs[0], outs[i]) for i in range(1, 8))


@pytest.mark.parametrize("name", NOVEL_SHIFTS)
def test_mean_change_grows_with_severity(name: str) -> None:
    # occluders are black or white at random: on a mid-grey background both change every pixel they cover
    x = objects() if name not in OCCLUSION else 0.3 + 0.4 * objects()
    change = [float((shift(x, name, s) - x).abs().mean()) for s in SEVERITIES]
    assert change[0] > 0
    assert all(b > a for a, b in itertools.pairwise(change)), change


def test_invert_at_severity_5_is_the_negative_and_edges_at_5_ignore_the_pixels_values() -> None:
    x = objects(8)
    assert torch.equal(shift(x, "invert", 5), 1 - x)
    torch.testing.assert_close(shift(x, "invert", 3), 0.4 * x + 0.6 * (1 - x))
    # edges only: a constant image has none, and shifting the intensities changes nothing
    assert float(shift(torch.full((2, 3, 32, 32), 0.6), "edges", 5).max()) == 0
    step = torch.zeros(1, 1, 32, 32)
    step[..., 16:] = 0.5
    torch.testing.assert_close(shift(step, "edges", 5), shift(step + 0.3, "edges", 5))
    assert float(shift(step, "edges", 5)[0, 0, 10, 15:17].min()) > 0.4  # the step's edge is bright


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_shifts_keep_a_constant_images_interior(name: str) -> None:
    flat = torch.full((8, 3, 32, 32), 0.7)
    for severity in SEVERITIES:
        out = shift(flat, name, severity)
        torch.testing.assert_close(out[..., 12:20, 12:20], flat[..., 12:20, 12:20], rtol=0, atol=1e-5)
        assert float(out.min()) < 0.1  # black where a warp leaves the image (zoom-in never does)


def occluded_bound(name: str, severity: int, side: int) -> float:
    """The most of an image the occluders can cover, from their documented sizes (plus a pixel's slack)."""
    i = severity - 1
    if name == "lines":  # a strip of width w crosses a square along at most its diagonal
        return shifts.LINE_COUNTS[i] * (shifts.LINE_WIDTH * side + 1) * math.sqrt(2) / side
    if name == "blotches":
        return shifts.BLOTCH_COUNTS[i] * math.pi * (shifts.BLOTCH_RADII[i] * side + 1) ** 2 / side**2
    return shifts.STRIPE_DUTY[i] + 0.05


@pytest.mark.parametrize("name", OCCLUSION)
def test_occluders_cover_a_bounded_fraction_that_grows_with_severity(name: str) -> None:
    grey = torch.full((16, 3, 32, 32), 0.5)
    fractions = []
    for severity in SEVERITIES:
        changed = (shift(grey, name, severity) - grey).abs() > 0.4  # occluders are pure black or white
        assert torch.equal(changed, changed[:, :1].expand_as(changed))  # all channels or none
        per_image = changed[:, 0].float().mean((1, 2))
        assert float(per_image.min()) > 0 and float(per_image.max()) <= occluded_bound(name, severity, 32)
        fractions.append(float(per_image.mean()))
    assert all(b > a for a, b in itertools.pairwise(fractions)), fractions
    if name == "stripes":  # bars of the documented duty cycle, whatever their angle and phase
        torch.testing.assert_close(torch.tensor(fractions), torch.tensor(shifts.STRIPE_DUTY), rtol=0, atol=0.03)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("blur", 3), "unknown novel shift 'blur'"),
        (("rotate", 0), "severity must be an int in"),
        (("rotate", 6), "severity must be an int in"),
        (("rotate", True), "severity must be an int in"),
        (("rotate", "3"), "severity must be an int in"),
    ],
)
def test_unknown_shift_or_severity_is_a_clear_error(args: tuple[object, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        shift(objects(2), *args)  # type: ignore[arg-type]


def test_bad_images_or_indices_are_clear_errors() -> None:
    x = objects(2)
    with pytest.raises(ValueError, match="float"):
        shift((x * 255).to(torch.uint8), "rotate", 1)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        shift(x[0], "rotate", 1)
    with pytest.raises(ValueError, match="indices"):
        shift(x, "rotate", 1, indices=torch.tensor([0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NOVEL_SHIFTS)
def test_cuda_matches_cpu(name: str) -> None:
    x = objects(8)
    torch.testing.assert_close(shift(x.cuda(), name, 4).cpu(), shift(x, name, 4), rtol=0, atol=1e-4)
