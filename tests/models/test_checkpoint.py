"""Recognizer factory and checkpoint format."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from dyntta.data import RESIZE, Preprocess
from dyntta.models import create_recognizer, load_recognizer, read_checkpoint_meta, read_preprocess, save_recognizer


def test_factory_adapts_small_inputs() -> None:
    model = create_recognizer("resnet18_half", [str(i) for i in range(10)], input_size=32)
    assert model.backbone.conv1.stride == (1, 1)
    assert 2.5e6 < model.num_parameters() < 3e6
    large = create_recognizer("resnet18_half", ["a", "b"], input_size=224)
    assert large.backbone.conv1.stride == (2, 2)


def test_any_timm_architecture() -> None:
    model = create_recognizer("mobilenetv3_small_050", ["a", "b", "c"]).eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3)
    with pytest.raises(ValueError, match="unknown timm architecture"):
        create_recognizer("not_a_model", ["a"])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_checkpoint_round_trip_same_logits(tmp_path, dtype) -> None:
    torch.manual_seed(0)
    model = create_recognizer("test_resnet", ["a", "b", "c"], mean=(0.3, 0.3, 0.3), std=(0.2, 0.2, 0.2)).eval()
    x = torch.rand(4, 3, 32, 32)
    save_recognizer(model, tmp_path / "ckpt", recipe={"epochs": 1}, metrics={"test_accuracy": 0.5}, weights_dtype=dtype)
    loaded = load_recognizer(tmp_path / "ckpt")
    with torch.no_grad():
        want, got = model(x), loaded(x)
    tolerance = 1e-6 if dtype == "float32" else 5e-2
    assert (want - got).abs().max() < tolerance
    meta = read_checkpoint_meta(tmp_path / "ckpt")
    assert meta["model"]["arch"] == "test_resnet" and meta["model"]["classes"] == ["a", "b", "c"]
    assert meta["model"]["mean"] == [0.3, 0.3, 0.3] and meta["metrics"]["test_accuracy"] == 0.5
    assert meta["recipe"] == {"epochs": 1} and meta["weights_dtype"] == dtype
    json.dumps(meta)


def test_missing_checkpoint_is_clear(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not a dyntta checkpoint"):
        load_recognizer(tmp_path)


def test_checkpoint_records_the_preprocessing_policy_and_old_ones_mean_resize(tmp_path) -> None:
    policy = Preprocess("center_crop", crop_pct=0.875)
    model = create_recognizer("test_resnet", ["a", "b"], preprocess=policy)
    save_recognizer(model, tmp_path / "ckpt")
    assert load_recognizer(tmp_path / "ckpt").config.preprocess == policy == read_preprocess(tmp_path / "ckpt")
    config = tmp_path / "ckpt" / "config.json"
    meta = json.loads(config.read_text())
    del meta["model"]["preprocess"]  # a checkpoint written before the policy existed
    config.write_text(json.dumps(meta))
    assert load_recognizer(tmp_path / "ckpt").config.preprocess == RESIZE == read_preprocess(tmp_path / "ckpt")


def test_checkpoint_files_are_renamed_into_place_with_normal_permissions(tmp_path) -> None:
    umask = os.umask(0o022)
    try:
        save_recognizer(create_recognizer("test_resnet", ["a", "b"]), tmp_path / "ckpt")
    finally:
        os.umask(umask)
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == ["config.json", "model.safetensors"]  # no temporary file left behind
    for name in files:
        assert stat.S_IMODE((tmp_path / "ckpt" / name).stat().st_mode) == 0o644, name
