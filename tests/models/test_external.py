"""The bring-your-own recognizer loader (dyntta.models.external) on small real models with untrained
weights: what each kind of spec resolves to, where its preprocessing comes from, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from torchvision import models

from dyntta.models import create_recognizer, save_recognizer
from dyntta.models.external import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FrozenRecognizer,
    Kind,
    PreprocessingOverrides,
    RecognizerSpec,
    load_external_recognizer,
    parse_classes,
    spec_kind,
)


def test_spec_kinds(tmp_path: Path) -> None:
    assert spec_kind("timm:resnet50") is Kind.TIMM and spec_kind("torchvision:resnet18") is Kind.TORCHVISION
    assert spec_kind(str(tmp_path)) is Kind.CHECKPOINT
    assert spec_kind("model.onnx") is Kind.ONNX and spec_kind("onnx:model.bin") is Kind.ONNX
    assert spec_kind("model.pt") is Kind.TORCHSCRIPT
    with pytest.raises(ValueError, match="name the timm architecture"):
        spec_kind("timm:")


def test_timm_preprocessing_from_pretrained_cfg_and_flags(tmp_path: Path) -> None:
    network = timm.create_model("test_resnet", num_classes=7)
    # a trainer's container with DataParallel's prefix: unwrapped on load
    torch.save({"model": {f"module.{k}": v for k, v in network.state_dict().items()}}, tmp_path / "w.pth")
    loaded = load_external_recognizer(RecognizerSpec("timm:test_resnet", str(tmp_path / "w.pth")))
    p = loaded.preprocessing
    assert (p.input_size, p.crop_pct, p.interpolation, p.mean, p.std) == (160, 0.95, "bilinear", (0.5,) * 3, (0.5,) * 3)
    assert loaded.num_classes == 7 and loaded.classes is None  # the head follows the weights
    overrides = PreprocessingOverrides(input_size=32, mean=(0.2, 0.3, 0.4))
    spec = RecognizerSpec("timm:test_resnet", str(tmp_path / "w.pth"), overrides, classes=tuple("abcdefg"))
    loaded = load_external_recognizer(spec)
    assert loaded.preprocessing.input_size == 32 and loaded.preprocessing.mean == (0.2, 0.3, 0.4)
    assert "flags (input_size, mean)" in loaded.preprocessing.source and loaded.classes == list("abcdefg")
    # the normalisation is folded in; the network stays frozen and in eval mode whatever train() says
    module = loaded.module.train()
    assert isinstance(module, FrozenRecognizer) and not module.training and not module.network.training
    assert not any(p.requires_grad for p in module.parameters())
    x = torch.rand(2, 3, 32, 32)
    network.eval()
    with torch.no_grad():
        mean = torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
        assert torch.allclose(module(x), network((x - mean) / 0.5), atol=1e-5)


def test_torchvision_preprocessing_from_its_weights_entry(tmp_path: Path) -> None:
    network = models.get_model("squeezenet1_1", num_classes=5)
    save_file(network.state_dict(), str(tmp_path / "w.safetensors"))
    loaded = load_external_recognizer(RecognizerSpec("torchvision:squeezenet1_1", str(tmp_path / "w.safetensors")))
    p = loaded.preprocessing
    assert (p.input_size, p.crop_pct, p.interpolation) == (224, 0.875, "bilinear")  # crop 224 of resize 256
    assert p.mean == pytest.approx(IMAGENET_MEAN) and p.std == pytest.approx(IMAGENET_STD)
    assert loaded.num_classes == 5 and "SqueezeNet1_1_Weights" in p.source


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    save_file(models.get_model("squeezenet1_1").state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="does not fit timm:test_resnet"):
        load_external_recognizer(RecognizerSpec("timm:test_resnet", str(tmp_path / "w.safetensors")))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="is not a state dict"):
        load_external_recognizer(RecognizerSpec("timm:test_resnet", str(tmp_path / "junk.pt")))
    with pytest.raises(ValueError, match="needs --recognizer-weights"):
        load_external_recognizer(RecognizerSpec("torchvision:squeezenet1_1"))


def test_torchscript_needs_an_input_size_and_uses_imagenet_statistics(tmp_path: Path) -> None:
    network = timm.create_model("test_resnet", num_classes=3).eval()
    torch.jit.save(torch.jit.trace(network, torch.zeros(1, 3, 32, 32)), str(tmp_path / "net.pt"))
    with pytest.raises(ValueError, match="pass --recognizer-input-size"):
        load_external_recognizer(RecognizerSpec(str(tmp_path / "net.pt")))
    loaded = load_external_recognizer(RecognizerSpec(str(tmp_path / "net.pt"), None, PreprocessingOverrides(32)))
    assert loaded.num_classes == 3 and loaded.preprocessing.mean == IMAGENET_MEAN
    torch.save(network.state_dict(), tmp_path / "state.pt")
    with pytest.raises(ValueError, match="not a TorchScript file .* timm:ARCH or torchvision:ARCH"):
        load_external_recognizer(RecognizerSpec(str(tmp_path / "state.pt")))


def test_dyntta_checkpoint_keeps_its_own_preprocessing_and_classes(tmp_path: Path) -> None:
    save_recognizer(create_recognizer("test_resnet", ["a", "b"]), tmp_path / "ckpt")
    loaded = load_external_recognizer(RecognizerSpec(str(tmp_path / "ckpt")))
    assert loaded.kind is Kind.CHECKPOINT and loaded.classes == ["a", "b"] and loaded.preprocessing.input_size == 32
    with pytest.raises(ValueError, match="records its own preprocessing"):
        load_external_recognizer(RecognizerSpec(str(tmp_path / "ckpt"), overrides=PreprocessingOverrides(64)))


def test_parse_classes(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("cat\ndog\n\nbird\n")
    assert parse_classes(str(tmp_path / "labels.txt")) == ("cat", "dog", "bird")
    assert parse_classes("cat, dog") == ("cat", "dog") and parse_classes(None) is None
    with pytest.raises(ValueError, match="repeats"):
        parse_classes("cat,cat")
