"""Recognizer factory and checkpoint format."""

from __future__ import annotations

import json

import pytest
import torch

from dyntta.models import create_recognizer, load_recognizer, read_checkpoint_meta, save_recognizer


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
