"""``python -m dyntta.evaluate`` end to end on a tiny checkpoint, torch and ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from dyntta.evaluate.__main__ import main
from dyntta.models import load_recognizer

ARGS = [
    "--data",
    "fashion-mnist",
    "--limit",
    "48",
    "--corruptions",
    "gaussian_noise",
    "contrast",
    "saturate",
    "--severities",
    "1",
    "5",
    "--batch-size",
    "20",
    "--no-cache",  # a real run keeps predictions in runs/evaluate-cache; tests must not
]


def test_cli_torch_checkpoint_with_self_reference(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "report"
    code = main(["--model", str(tiny_checkpoint), "--reference", str(tiny_checkpoint), *ARGS, "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    res = report["models"][tiny_checkpoint.name]
    assert report["header"]["data"]["n"] == 48 and report["header"]["model"]["arch"] == "test_efficientnet"
    assert len(report["header"]["model"]["sha256"]) == 64 and "--limit 48" in report["header"]["command"]
    # the model is its own reference: every CE is exactly 1
    assert all(v == pytest.approx(1.0) for v in res["ce"]["per_corruption"].values())
    assert set(res["accuracy"]) == {"gaussian_noise", "contrast", "saturate"}
    assert {p.name for p in out.iterdir()} == {
        "report.json",
        "report.md",
        "heatmap.png",
        "severity_curves.png",
        "samples.png",
    }


class Uint8NHWC(nn.Module):
    """The export contract: "IMAGE" uint8 [N, S, S, 3] -> logits."""

    def __init__(self, recognizer: nn.Module) -> None:
        super().__init__()
        self.recognizer = recognizer

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.recognizer(image.permute(0, 3, 1, 2).float() / 255.0)


def test_cli_onnx_matches_torch(tiny_checkpoint: Path, tmp_path: Path) -> None:
    model = Uint8NHWC(load_recognizer(tiny_checkpoint)).eval()
    onnx_path = tmp_path / "recognizer.onnx"
    torch.onnx.export(
        model,
        (torch.zeros(2, 32, 32, 3, dtype=torch.uint8),),
        str(onnx_path),
        dynamo=False,
        input_names=["IMAGE"],
        output_names=["LOGITS"],
        dynamic_axes={"IMAGE": {0: "n"}},
    )
    args = [*ARGS, "--no-figures"]
    assert main(["--model", str(onnx_path), *args, "--out", str(tmp_path / "onnx")]) == 0
    assert main(["--model", str(tiny_checkpoint), *args, "--optimize", "--out", str(tmp_path / "torch")]) == 0
    onnx_res = json.loads((tmp_path / "onnx" / "report.json").read_text())
    torch_res = json.loads((tmp_path / "torch" / "report.json").read_text())
    assert onnx_res["header"]["model"]["kind"] == "onnx"
    a, b = onnx_res["models"]["recognizer"], torch_res["models"][tiny_checkpoint.name]
    assert a["clean"]["accuracy"] == b["clean"]["accuracy"]
    for c, by_s in a["accuracy"].items():  # float rounding may flip at most one image of 48
        assert all(abs(v - b["accuracy"][c][s]) <= 1 / 48 + 1e-9 for s, v in by_s.items())


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--corruptions", "gausian_noise"], "did you mean 'gaussian_noise'"),
        (["--severities", "6"], "severities are integers 1 to 5"),
        (["--reference", "alexnet"], "only for true ImageNet-C"),
        (["--limit", "0"], "--limit must be a positive"),
    ],
)
def test_cli_errors(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, extra: list[str], message: str
) -> None:
    code = main(["--model", str(tiny_checkpoint), "--data", "fashion-mnist", *extra, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "usage: python -m dyntta.evaluate" in err and "Traceback" not in err


def test_cli_missing_model(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    monkeypatch.delenv("DYNTTA_TRACEBACK", raising=False)
    assert main(["--model", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 1  # dyntta.cli: runtime failure
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_cli_enhancer_comparison(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from dyntta.enhancer import DynTTAEnhancer, EnhancerConfig, save_enhancer

    torch.manual_seed(0)
    enhancer_dir = save_enhancer(DynTTAEnhancer(EnhancerConfig(input_size=32)).eval(), tmp_path / "enhancer")
    args = ["--limit", "24", "--corruptions", "fog", "--severities", "3", "--no-cache", "--no-figures"]
    assert (
        main(["--model", str(tiny_checkpoint), "--enhancer", str(enhancer_dir), *args, "--out", str(tmp_path / "r")])
        == 0
    )
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert list(report["models"]) == ["recognizer", "enhancer + recognizer"]
    assert report["header"]["enhancer"]["role"] == "enhancer" and len(report["header"]["enhancer"]["sha256"]) == 64
    assert "Difference to `recognizer`" in (tmp_path / "r" / "report.md").read_text()


def test_optimized_torch_classifier_matches_eager(tiny_checkpoint: Path, fmnist_test) -> None:
    from dyntta.evaluate import load_classifier

    eager = load_classifier(tiny_checkpoint)
    fast = load_classifier(tiny_checkpoint, optimize=True)
    images = fmnist_test.images[:64]
    torch.testing.assert_close(fast(images), eager(images), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast(images[:5]), eager(images[:5]), atol=1e-4, rtol=1e-4)  # any batch size
    assert "traced" in fast.info.kind
