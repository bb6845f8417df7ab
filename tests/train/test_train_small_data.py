"""Own small data (issue 16 item 1): the training commands on a few hundred images, and clear errors
(exit 2, one line, no traceback) for data a classifier cannot be trained on."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from dyntta.enhancer import DynTTAEnhancer, EnhancerConfig, load_enhancer
from dyntta.models import read_checkpoint_meta
from dyntta.train.__main__ import main
from dyntta.train.enhancer import validation_size
from tests.train.helpers import recognizer_argv

sys.path.insert(0, str(Path(__file__).parent))
from train_folders import make_image_folder  # noqa: E402


def enhancer_argv(recognizer: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "enhancer",
        "--recognizer",
        str(recognizer),
        "--data",
        "imagefolder",
        "--data-dir",
        str(data),
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """300 training images of 3 classes and a recognizer trained on them."""
    data = make_image_folder(tmp_path_factory.mktemp("small"), per_class=100, size=32)  # corruptions need 32 px
    recognizer = tmp_path_factory.mktemp("recognizer")
    argv = recognizer_argv(data, recognizer, "--epochs", "3", "--batch-size", "32", "--image-size", "32")
    assert main(argv) == 0
    return data, recognizer


def test_validation_size_is_a_capped_fraction() -> None:
    assert validation_size(60000, 0.1, 2000) == 2000  # Fashion-MNIST: as before
    assert validation_size(1800, 0.1, 2000) == 180  # the 1,800-image folder of issue 16
    assert validation_size(300, 0.1, 0) == 0


def test_enhancer_fits_on_a_few_hundred_images(small: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    """Used to end in ZeroDivisionError: the default --val-size 2000 took every image for validation."""
    data, recognizer = small
    out = tmp_path / "enhancer"
    assert main(enhancer_argv(recognizer, data, out)) == 0
    err = capsys.readouterr().err
    assert "on 270 imagefolder images, validating on 30" in err
    meta = read_checkpoint_meta(out)
    assert len(meta["metrics"]["history"]) == 1
    assert meta["metrics"]["val_clean_accuracy_recognizer_alone"] is not None
    load_enhancer(out)


def test_enhancer_without_validation_and_with_a_wider_unet(small: tuple[Path, Path], tmp_path: Path) -> None:
    data, recognizer = small
    out = tmp_path / "enhancer"
    extra = ["--val-size", "0", "--train-subset", "64", "--unet-width", "16"]
    assert main(enhancer_argv(recognizer, data, out, *extra)) == 0
    assert read_checkpoint_meta(out)["metrics"]["val_clean_accuracy_enhanced"] is None
    wide, default = load_enhancer(out), DynTTAEnhancer(EnhancerConfig())
    assert wide.config.unet_width == 16 and wide.num_parameters() > default.num_parameters()


def test_enhancer_with_the_do_no_harm_term_and_a_family_left_out(small: tuple[Path, Path], tmp_path: Path) -> None:
    data, recognizer = small
    out = tmp_path / "enhancer"
    extra = ["--val-size", "0", "--train-subset", "64", "--clean-weight", "0.5", "--exclude-corruptions", "noise"]
    assert main(enhancer_argv(recognizer, data, out, *extra)) == 0
    recipe = read_checkpoint_meta(out)["recipe"]
    assert recipe["clean_weight"] == 0.5 and "0.5 * T^2 * KL" in recipe["loss"]
    assert recipe["shift"].startswith("one of 12 corruptions") and "gaussian_noise" not in recipe["shift"]
    assert recipe["augmentation"].startswith(("crop-flip", "flip", "none"))


def test_fewer_images_than_a_batch_trains(tmp_path: Path) -> None:
    data = make_image_folder(tmp_path / "data", per_class=7, splits=("train",))  # 21 images, batch 128
    out = tmp_path / "out"
    assert main(recognizer_argv(data, out, "--val-fraction", "0")) == 0
    assert read_checkpoint_meta(out)["metrics"]["history"][0]["epoch"] == 1


def _expect_clear_error(argv: list[str], capsys, *needles: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith("error: "), err
    for needle in needles:
        assert needle in err, err


def test_empty_folder_is_a_clear_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "data" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "data" / "train" / "dog").mkdir(parents=True)
    _expect_clear_error(recognizer_argv(tmp_path / "data", tmp_path / "out"), capsys, "no images")


def test_one_class_is_a_clear_error(tmp_path: Path, capsys) -> None:
    data = make_image_folder(tmp_path / "data", per_class=20, classes=1, splits=("train",))
    _expect_clear_error(recognizer_argv(data, tmp_path / "out"), capsys, "at least 2")


def test_too_few_images_is_a_clear_error(tmp_path: Path, capsys) -> None:
    data = make_image_folder(tmp_path / "data", per_class=2, splits=("train",))  # 6 images
    _expect_clear_error(recognizer_argv(data, tmp_path / "out", "--val-fraction", "0"), capsys, "at least 8")


def test_class_without_readable_image_is_a_clear_error(tmp_path: Path, capsys) -> None:
    data = make_image_folder(tmp_path / "data", per_class=20, splits=("train",))
    broken = data / "train" / "class_2"
    shutil.rmtree(broken)
    broken.mkdir()
    (broken / "0000.png").write_bytes(b"not a png at all")
    _expect_clear_error(recognizer_argv(data, tmp_path / "out", "--val-fraction", "0"), capsys, "class_2")


def test_enhancer_validation_that_leaves_too_little_is_a_clear_error(
    small: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    data, recognizer = small
    argv = enhancer_argv(recognizer, data, tmp_path / "e", "--val-fraction", "0.99", "--val-size", "100000")
    _expect_clear_error(argv, capsys, "at least 8")


def test_global_batch_must_divide_among_ranks_message() -> None:
    from dyntta.train.loop import per_rank_batch

    assert per_rank_batch(128, 2) == 64
    with pytest.raises(ValueError, match="divisible by the world size 3"):
        per_rank_batch(128, 3)
