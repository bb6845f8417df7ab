"""``--train-shifts``: novel shifts of dyntta.shifts added to what an enhancer is fitted on (issue 13 section 3,
leave one novel family out), drawn as deterministically as the corruptions, and recorded in the recipe."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from dyntta.corruptions import BENCHMARK_NAMES, corrupt
from dyntta.enhancer import load_enhancer
from dyntta.enhancer.warp import WARP_PARAMETERS
from dyntta.models import read_checkpoint_meta
from dyntta.shifts import NOVEL_FAMILIES, NOVEL_SHIFTS, shift
from dyntta.train.__main__ import main
from dyntta.train.corruption_augment import (
    EitherShift,
    RandomAugMix,
    RandomCorruption,
    apply_conditions,
    sample_conditions,
    training_shift,
)
from dyntta.train.enhancer import EnhancerTrainConfig, describe_shift, training_shifts
from tests.train.helpers import recognizer_argv

sys.path.insert(0, str(Path(__file__).parent))
from train_folders import make_image_folder  # noqa: E402


def test_names_and_families_expand_in_the_suite_order() -> None:
    assert training_shifts([]) == ()
    assert training_shifts(["invert", "geometric"]) == (*NOVEL_FAMILIES["geometric"], "invert")
    assert training_shifts(["occlusion", "lines"]) == NOVEL_FAMILIES["occlusion"]  # no duplicates
    assert training_shifts(list(NOVEL_FAMILIES)) == NOVEL_SHIFTS


def test_an_unknown_shift_is_an_error_listing_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown --train-shifts rotat") as error:
        training_shifts(["geometric", "rotat"])
    assert all(name in str(error.value) for name in (*NOVEL_SHIFTS, *NOVEL_FAMILIES))


def test_the_default_recipe_is_unchanged() -> None:
    assert EnhancerTrainConfig(recognizer="r", out="o").train_shifts == ()
    plain = describe_shift(BENCHMARK_NAMES, ())
    assert plain.startswith("one of 15 corruptions (gaussian_noise,") and "novel" not in plain
    assert "and 2 novel shifts (edges, invert)" in describe_shift(BENCHMARK_NAMES, NOVEL_FAMILIES["appearance"])


def test_only_novel_shifts_drawn_are_the_shift_modules_own_results() -> None:
    """With probability 1, each image is exactly dyntta.shifts.shift of its drawn (name, severity), keyed by
    the batch's seed and the image's index; the same global seed replays the same batch."""
    names = NOVEL_SHIFTS
    images = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(5)
    out = RandomCorruption(1.0, names)(images)
    torch.manual_seed(5)  # replay RandomCorruption's draws from the global RNG: the conditions, then the seed
    which, severity = sample_conditions(len(images), 1.0, names=names)
    seed = int(torch.randint(2**31 - 1, (1,)))
    for i in range(len(images)):
        name, level = names[int(which[i])], int(severity[i])
        expected = shift(images[i : i + 1], name, level, seed=seed, indices=torch.tensor([i]))
        torch.testing.assert_close(out[i : i + 1], expected, atol=1e-6, rtol=0)
        assert not torch.equal(out[i], images[i]), (name, level)
    torch.manual_seed(5)
    assert torch.equal(RandomCorruption(1.0, names)(images), out)


class _Plus(torch.nn.Module):
    def __init__(self, amount: float) -> None:
        super().__init__()
        self.amount = amount

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images + self.amount


def test_either_shift_gives_each_image_exactly_one_of_the_two() -> None:
    images = torch.zeros(400, 1, 2, 2)
    assert torch.equal(EitherShift(_Plus(1), _Plus(2), 0.0)(images), images + 1)
    assert torch.equal(EitherShift(_Plus(1), _Plus(2), 1.0)(images), images + 2)
    torch.manual_seed(0)
    mixed = EitherShift(_Plus(1), _Plus(2), 0.25)(images)
    per_image = mixed.flatten(1)
    assert torch.equal(per_image.min(1).values, per_image.max(1).values)  # one shift per whole image
    second = (per_image[:, 0] == 2).float().mean().item()
    assert set(per_image[:, 0].tolist()) == {1.0, 2.0} and 0.18 < second < 0.32
    with pytest.raises(ValueError, match="probability in"):
        EitherShift(_Plus(1), _Plus(2), 1.5)


def test_composed_draws_apply_two_corruptions_in_a_row() -> None:
    """Contrast scales each image's deviation from its mean by a factor < 1 (by severity): two draws in a row
    leave about the square of one draw's factor."""
    images = torch.rand(64, 3, 32, 32)
    torch.manual_seed(0)
    once = training_shift(["contrast"], 1.0)(images).flatten(1).std(1)
    torch.manual_seed(0)
    twice = training_shift(["contrast"], 1.0, compose_probability=1.0)(images).flatten(1).std(1)
    assert twice.mean() < 0.7 * once.mean()
    mixed = training_shift(["contrast"], 1.0, compose_probability=0.5, augmix_probability=0.5)
    assert isinstance(mixed, EitherShift) and isinstance(mixed.second, RandomAugMix)
    assert isinstance(mixed.first, EitherShift) and len(mixed.first.second) == 2
    assert isinstance(training_shift(["contrast"], 1.0, blind=True), RandomAugMix)


def test_the_draw_covers_the_union_of_corruptions_and_shifts() -> None:
    names = ("contrast", "fog", *NOVEL_FAMILIES["appearance"], "rotate")
    which, severity = sample_conditions(2000, 1.0, torch.Generator().manual_seed(0), names)
    assert set(which.tolist()) == set(range(len(names)))
    images = torch.rand(len(names), 3, 32, 32, generator=torch.Generator().manual_seed(2))
    which, level, index = torch.arange(len(names)), torch.full((len(names),), 3), torch.arange(len(names))
    out = apply_conditions(images, which, level, 7, index, names)
    for i, name in enumerate(names):  # each its own module's result for its (seed, index)
        apply = shift if name in NOVEL_SHIFTS else corrupt
        torch.testing.assert_close(out[i : i + 1], apply(images[i : i + 1], name, 3, seed=7, indices=index[i : i + 1]))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """120 training images of 3 classes at 32 px and a recognizer trained one epoch on them."""
    data = make_image_folder(tmp_path_factory.mktemp("small"), per_class=40, size=32, splits=("train",))
    recognizer = tmp_path_factory.mktemp("recognizer")
    argv = recognizer_argv(data, recognizer, "--batch-size", "32", "--image-size", "32", "--val-fraction", "0")
    assert main(argv) == 0
    return data, recognizer


def enhancer_argv(recognizer: Path, data: Path, out: Path, *extra: str) -> list[str]:
    flags = ["--data", "imagefolder", "--data-dir", str(data), "--epochs", "1", "--batch-size", "32"]
    return ["enhancer", "--recognizer", str(recognizer), *flags, "--device", "cpu", "--out", str(out), *extra]


def test_the_flag_reaches_the_recipe(small: tuple[Path, Path], tmp_path: Path) -> None:
    data, recognizer = small
    out = tmp_path / "enhancer"
    extra = ["--train-subset", "64", "--val-size", "16", "--augment", "none", "--train-corruptions", "contrast"]
    shifts = ["--train-shifts", "invert", "geometric", "--warp", "--warp-alignment", "2", "--augmix-probability", "0.5"]
    shifts += ["--compose-probability", "0.25"]
    assert main(enhancer_argv(recognizer, data, out, *extra, *shifts)) == 0
    meta = read_checkpoint_meta(out)
    recipe = meta["recipe"]
    assert recipe["train_shifts"] == ["invert", "geometric"]
    assert recipe["warp"] is True and meta["model"]["warp"] is True  # the fitted enhancer warps its output
    assert load_enhancer(out).num_warp == WARP_PARAMETERS
    novel = "5 novel shifts (rotate, shear, scale, translate, invert)"
    assert recipe["augmix_probability"] == 0.5 and recipe["warp_alignment"] == 2
    assert recipe["loss"].endswith("plus 2 * MSE(warp(c(x)), x), the output warp alone on the shifted image")
    drawn = f"1 corruptions (contrast) and {novel}"
    assert recipe["compose_probability"] == 0.25
    assert recipe["shift"] == (
        "AugMix (torchvision, severity 5) with probability 0.5, else "
        f"two of the {drawn} in sequence, each severity U{{1..5}}, with probability 0.25; else "
        f"one of {drawn}, severity U{{1..5}}, with the given probability"
    )


def test_unknown_shift_or_blind_is_a_usage_error(tmp_path: Path, capsys) -> None:
    # all are refused before any recognizer or data is loaded, so none needs to exist
    def refused(*flags: str, code: int = 2) -> str:
        assert main(enhancer_argv(tmp_path / "none", tmp_path / "none", tmp_path / "out", *flags)) == code
        return capsys.readouterr().err

    err = refused("--train-shifts", "rotat")
    assert err.startswith("error: unknown --train-shifts rotat") and "Traceback" not in err
    assert all(name in err for name in NOVEL_SHIFTS)
    assert "--blind" in refused("--blind", "--train-shifts", "edges")
    assert "--augmix-probability mixes AugMix into the corruption recipe" in refused(
        "--blind", "--augmix-probability", "1"
    )
    assert "--augmix-probability must be in [0, 1], got 1.5" in refused("--augmix-probability", "1.5")
    assert "--compose-probability must be in [0, 1], got -0.1" in refused("--compose-probability", "-0.1")
    assert "--compose-probability composes the corruption recipe's draws" in refused(
        "--blind", "--compose-probability=1"
    )
    assert "--warp-alignment trains an output warp: give --warp" in refused("--warp-alignment", "1")
    assert "--warp builds a new enhancer" in refused("--warp", "--init", str(tmp_path))
    assert "--unet-width builds a new enhancer" in refused("--unet-width", "16", "--init", str(tmp_path))
    assert "--unet-width must be >= 1, got 0" in refused("--unet-width", "0")
    # a missing --init is reported before the data or the recognizer are read; 1: FileNotFoundError, as for a
    # missing recognizer checkpoint
    err = refused("--init", str(tmp_path / "gone"), code=1)
    assert err.startswith("error: not a dyntta checkpoint:") and "gone" in err
