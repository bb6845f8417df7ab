"""Bring your own recognizer (issue 13.1) and label-free fitting (13.2), with small real models trained here:
timm ``test_resnet`` and torchvision ``mobilenet_v3_small`` on 640 Fashion-MNIST images, the timm model's
TorchScript trace and its ONNX export. An enhancer fitted through each path for a few steps lowers the
recognizer's loss on corrupted held-out images."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from torchvision import models

from dyntta.data import LabelledImages, load_dataset, to_float
from dyntta.enhancer import load_enhancer
from dyntta.models import read_checkpoint_meta
from dyntta.models.external import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OnnxParityError,
    check_onnx_parity,
    load_external_recognizer,
    spec_from_args,
)
from dyntta.train import enhancer as enhancer_command
from dyntta.train.__main__ import main
from dyntta.train.corruption_augment import corrupted_copy

SIZE = 32
CLASSES = [f"c{k}" for k in range(10)]  # ImageFolder sorts class folders: c0..c9 is label order


@dataclass
class Byo:
    folder: Path  # ImageFolder c0..c9 of the training images
    flat: Path  # the same images in one folder, no classes
    timm_weights: Path  # test_resnet state dict (.safetensors), normalised with its pretrained_cfg's 0.5
    torchvision_weights: Path  # mobilenet_v3_small state dict (.pth), ImageNet mean/std
    torchscript: Path  # the timm network traced
    onnx: Path  # the timm network exported (float NCHW normalised in, logits out)


def _train(network: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean, std, steps: int) -> nn.Module:
    """A few AdamW steps on normalised images: a small but real classifier."""
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(network.parameters(), lr=3e-3)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    network.train()
    for _ in range(steps):
        index = torch.randint(len(images), (32,))
        loss = F.cross_entropy(network((to_float(images[index]) - m) / s), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return network.eval()


def _recalibrate_batchnorm(
    network: nn.Module, images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> None:
    """After 60 steps the running BatchNorm statistics still lean on their initial values (torchvision's
    MobileNetV3, momentum 0.01, was near chance in eval mode). Recompute them as a plain average."""
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batches below
    network.train()
    with torch.no_grad():
        for start in range(0, len(images), 64):
            network((to_float(images[start : start + 64]) - m) / s)
    network.eval()


@pytest.fixture(scope="module")
def byo(tmp_path_factory: pytest.TempPathFactory) -> Byo:
    root = tmp_path_factory.mktemp("byo")
    test = load_dataset("fashion-mnist", "test")
    train = test.subset(torch.arange(1000, 1640))  # disjoint from the 1,000 held-out images (fmnist_test)
    for i, (image, label) in enumerate(zip(train.images, train.labels.tolist(), strict=True)):
        pixels = image.permute(1, 2, 0).numpy()
        for path in (root / "folder" / CLASSES[label] / f"{i:04d}.png", root / "flat" / f"{i:04d}.png"):
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
    network = _train(
        timm.create_model("test_resnet", num_classes=10), train.images, train.labels, (0.5,) * 3, (0.5,) * 3, 60
    )
    save_file(network.state_dict(), str(root / "timm.safetensors"))
    example = torch.zeros(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.jit.save(torch.jit.trace(network, example), str(root / "net.pt"))
        torch.onnx.export(
            network,
            (example,),
            str(root / "net.onnx"),
            dynamo=False,
            opset_version=17,  # onnx2torch converts up to opset 17 (Identity-19 is not implemented)
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
        )
    mobilenet = models.get_model("mobilenet_v3_small", num_classes=10)
    mobilenet = _train(mobilenet, train.images, train.labels, IMAGENET_MEAN, IMAGENET_STD, 60)
    _recalibrate_batchnorm(mobilenet, train.images, IMAGENET_MEAN, IMAGENET_STD)
    torch.save({"state_dict": mobilenet.state_dict()}, root / "mobilenet.pth")  # a container, as trainers save
    return Byo(
        root / "folder",
        root / "flat",
        root / "timm.safetensors",
        root / "mobilenet.pth",
        root / "net.pt",
        root / "net.onnx",
    )


def _recognizer_flags(kind: str, byo: Byo) -> list[str]:
    half = ["--recognizer-mean", "0.5", "0.5", "0.5", "--recognizer-std", "0.5", "0.5", "0.5"]
    return {
        # pretrained_cfg says 160 px, crop 0.95 and mean/std 0.5: the size and crop are overridden
        "timm": ["timm:test_resnet", "--recognizer-weights", str(byo.timm_weights), "--recognizer-input-size", "32"],
        "torchvision": [
            "torchvision:mobilenet_v3_small",
            "--recognizer-weights",
            str(byo.torchvision_weights),
            "--recognizer-input-size",
            "32",
            "--recognizer-crop-pct",  # the weights entry's 224/256 centre crop; the held-out images are whole
            "1.0",
        ],
        "torchscript": [str(byo.torchscript), "--recognizer-input-size", "32", *half],
        "onnx": [str(byo.onnx), *half],  # the input size comes from the ONNX input shape
    }[kind]


def _spec(flags: list[str]):
    parser = argparse.ArgumentParser()
    enhancer_command.add_arguments(parser)
    return spec_from_args(parser.parse_args(["--recognizer", *flags, "--out", "unused"]))


def _held_out(fmnist_test: LabelledImages) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    data = fmnist_test.subset(torch.arange(256))
    corrupted = corrupted_copy(data, probability=1.0, seed=123)
    return to_float(data.images), to_float(corrupted.images), data.labels


def _fit(byo: Byo, flags: list[str], out: Path, *extra: str) -> None:
    argv = ["enhancer", "--recognizer", *flags, "--data", "imagefolder", "--data-dir", str(byo.folder)]
    argv += ["--epochs", "1", "--batch-size", "32", "--lr", "5e-3", "--val-size", "0", "--device", "cpu"]
    argv += ["--corruption-probability", "1.0", "--out", str(out), *extra]
    assert main(argv) == 0


@pytest.mark.parametrize(
    "kind",
    [
        "timm",
        "torchvision",
        "torchscript",
        "onnx",
    ],
)
def test_enhancer_fitted_through_each_recognizer_kind_lowers_its_loss(
    kind: str, byo: Byo, fmnist_test: LabelledImages, tmp_path: Path
) -> None:
    flags = _recognizer_flags(kind, byo)
    _fit(byo, flags, tmp_path / "enhancer")
    recognizer = load_external_recognizer(_spec(flags), lambda size, count: fmnist_test.images[:count]).module
    enhancer = load_enhancer(tmp_path / "enhancer")
    clean, corrupted, labels = _held_out(fmnist_test)
    with torch.no_grad():
        assert (recognizer(clean).argmax(1) == labels).float().mean() > 0.4  # a real, if small, classifier
        alone = F.cross_entropy(recognizer(corrupted), labels).item()
        enhanced = F.cross_entropy(recognizer(enhancer(corrupted)), labels).item()
    assert enhanced < alone - 0.01, (kind, alone, enhanced)
    recipe = read_checkpoint_meta(tmp_path / "enhancer")["recipe"]
    assert recipe["recognizer_loaded"]["kind"] == kind
    if kind == "torchvision":  # trained without flips or crops: augmenting its inputs was what stopped the fit
        assert recipe["augmentation"].startswith("none (auto"), recipe["augmentation"]
    assert recipe["recognizer_loaded"]["preprocessing"]["input_size"] == SIZE
    if kind == "onnx":
        assert recipe["recognizer_loaded"]["onnx_parity"]["max_abs_logit_diff"] < 1e-3


def test_label_free_fitting_on_a_plain_folder_matches_clean_predictions(
    byo: Byo, fmnist_test: LabelledImages, tmp_path: Path
) -> None:
    """--labels none: no class folders, no labels; the enhancer learns to bring the recognizer's
    prediction on a corrupted image back to its prediction on the clean one."""
    flags = _recognizer_flags("timm", byo)
    argv = ["enhancer", "--recognizer", *flags, "--data", "imagefolder", "--data-dir", str(byo.flat)]
    argv += ["--labels", "none", "--epochs", "1", "--batch-size", "32", "--lr", "5e-3", "--val-size", "64"]
    argv += ["--corruption-probability", "1.0", "--device", "cpu", "--out", str(tmp_path / "e")]
    assert main(argv) == 0
    recognizer = load_external_recognizer(_spec(flags)).module
    enhancer = load_enhancer(tmp_path / "e")
    clean, corrupted, labels = _held_out(fmnist_test)
    with torch.no_grad():
        target = F.softmax(recognizer(clean), 1)

        def kl(logits: torch.Tensor) -> float:
            return F.kl_div(F.log_softmax(logits, 1), target, reduction="batchmean").item()

        alone, enhanced = kl(recognizer(corrupted)), kl(recognizer(enhancer(corrupted)))
        ce_alone = F.cross_entropy(recognizer(corrupted), labels).item()
        ce_enhanced = F.cross_entropy(recognizer(enhancer(corrupted)), labels).item()
    assert enhanced < alone - 0.01, (alone, enhanced)
    assert ce_enhanced < ce_alone, (ce_alone, ce_enhanced)  # the labels it never saw agree
    meta = read_checkpoint_meta(tmp_path / "e")
    assert "KL" in meta["recipe"]["loss"] and meta["recipe"]["temperature"] == enhancer_command.DEFAULT_TEMPERATURE
    assert meta["metrics"]["val_clean_agreement_with_clean_prediction_recognizer_alone"] == 1.0


def test_onnx_conversion_off_by_a_little_is_refused_with_the_measured_difference(
    byo: Byo, fmnist_test: LabelledImages
) -> None:
    loaded = load_external_recognizer(_spec(_recognizer_flags("onnx", byo)), lambda s, n: fmnist_test.images[:n])
    assert loaded.onnx_parity is not None and loaded.onnx_parity.passed
    images = fmnist_test.images[:16]
    with torch.no_grad():  # what a faulty conversion would do: every logit 0.01 off
        last = [m for m in loaded.module.modules() if isinstance(m, nn.Linear)][-1]
        last.bias += 0.01
    with pytest.raises(OnnxParityError, match=r"max \|logit diff\| 0\.01"):
        check_onnx_parity(loaded, images)


def test_onnx_class_names_must_fit_its_outputs(byo: Byo, fmnist_test: LabelledImages, tmp_path: Path, capsys) -> None:
    flags = [*_recognizer_flags("onnx", byo), "--classes", "a,b,c"]
    argv = ["enhancer", "--recognizer", *flags, "--data", "imagefolder", "--data-dir", str(byo.folder)]
    assert main([*argv, "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "--classes names 3 classes but the recognizer has 10 outputs" in err and "Traceback" not in err


def test_images_are_the_folder_images(byo: Byo) -> None:
    config = enhancer_command.EnhancerTrainConfig(recognizer="", out="", data="imagefolder", data_dir=str(byo.flat))
    data = enhancer_command.unlabelled_images(config, SIZE)
    assert len(data) == 640 and bool((data.labels == enhancer_command.UNKNOWN).all())
    first = np.asarray(Image.open(byo.flat / "0000.png"))
    assert np.array_equal(data.images[0].permute(1, 2, 0).numpy(), first)


def test_export_serves_the_users_onnx_unchanged_behind_the_fitted_enhancer(byo: Byo, tmp_path: Path) -> None:
    import onnx

    from export.__main__ import main as export_main

    flags = _recognizer_flags("onnx", byo)
    _fit(byo, flags, tmp_path / "enhancer", "--train-subset", "64")  # what is checked here is the export
    out = tmp_path / "repo"
    # mean/std and class names come from the enhancer's recipe (fitted through the same ONNX file)
    argv = ["--recognizer", str(byo.onnx), "--enhancer", str(tmp_path / "enhancer"), "--out", str(out)]
    assert export_main([*argv, "--parity-data", "fashion-mnist", "--parity-images", "32"]) == 0
    served, user = onnx.load(str(out / "recognizer" / "1" / "model.onnx")), onnx.load(str(byo.onnx))
    # the user's nodes and weights, all of them and unchanged, behind the uint8 NHWC prefix: only the
    # graph's own input and output names are rewired (to the prefix's output and to LOGITS)
    (user_input,), (user_output,) = [i.name for i in user.graph.input], [o.name for o in user.graph.output]
    prefix_outputs = {o for n in served.graph.node if n.name not in {u.name for u in user.graph.node} for o in n.output}
    rename = {**dict.fromkeys(prefix_outputs, user_input), "LOGITS": user_output}
    kept = []
    for node in served.graph.node:
        if node.name in {u.name for u in user.graph.node}:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.input[:] = [rename.get(name, name) for name in copy.input]
            copy.output[:] = [rename.get(name, name) for name in copy.output]
            kept.append(copy)
    assert kept == list(user.graph.node)
    weights = {i.name: i for i in served.graph.initializer}
    assert all(weights[i.name] == i for i in user.graph.initializer)
    assert [i.name for i in served.graph.input] == ["IMAGE"] and [o.name for o in served.graph.output] == ["LOGITS"]
    report = json.loads((out / "recognizer" / "export.json").read_text())
    as_given = report["source"]["model"]["served_as_given"]
    assert as_given["passed"] and as_given["max_abs_logit_diff"] < 1e-4 and as_given["top1_agreement"] == 1.0
    assert report["parity"]["passed"]  # the served graph against the onnx2torch module the enhancer was fitted on
    pipeline = json.loads((out / "enhancer" / "export.json").read_text())["pipeline_parity"]
    assert pipeline["top1_agreement"] >= 0.95, pipeline
    assert (out / "recognizer" / "labels.txt").read_text().split() == CLASSES
