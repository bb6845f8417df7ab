"""JSON, Markdown and PNG outputs are written and readable."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dyntta.data import LabelledImages
from dyntta.evaluate import FORMAT, ReportOptions, read_json, run_report, write_outputs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def brightness_rule(images: torch.Tensor) -> torch.Tensor:
    means = images.float().mean(dim=(1, 2, 3))
    return torch.nn.functional.one_hot((means / 256 * 2).long().clamp(0, 1), 2).float()


def test_outputs_are_written(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    data = LabelledImages(
        "toy",
        "test",
        torch.randint(0, 256, (10, 3, 32, 32), generator=g, dtype=torch.uint8),
        torch.arange(10) % 2,
        ["dark", "light"],
    )
    run = run_report(
        {"plain": brightness_rule, "other": brightness_rule},
        data,
        ReportOptions(corruptions=["gaussian_noise", "glass_blur", "fog", "speckle_noise"], severities=[1, 3, 5]),
        reference=brightness_rule,
        header={"model": {"name": "plain", "sha256": "ab" * 32}},
    )
    paths = write_outputs(run, tmp_path / "out", title="Toy report")
    assert set(paths) == {"json", "markdown", "heatmap", "curves", "samples"}
    report = read_json(paths["json"])
    assert report == run.report  # the file reads back as the very report that was written
    raw = json.loads(paths["json"].read_text())
    assert raw["format"] == FORMAT and raw["models"]["plain"]["ce"]["mce"] == 1.0
    text = paths["markdown"].read_text()
    assert text.startswith("# Toy report") and "| plain |" in text and "heatmap.png" in text
    assert "Difference to `plain`" in text and "Extra corruptions" in text and "abababababababab" in text
    for kind in ("heatmap", "curves", "samples"):
        assert paths[kind].read_bytes()[:8] == PNG_MAGIC and paths[kind].stat().st_size < 200_000


def test_markdown_with_alexnet_reference() -> None:
    import numpy as np

    from dyntta.contract import BENCHMARK_CORRUPTIONS
    from dyntta.evaluate import ModelPredictions, PredictionTable, alexnet_imagenet_c_reference, build_report
    from dyntta.evaluate.report import CLEAN
    from dyntta.evaluate.writers import render_markdown

    labels = np.zeros(4, dtype=np.int64)
    table = PredictionTable(labels, BENCHMARK_CORRUPTIONS, (1, 2, 3, 4, 5))
    table.models["m"] = ModelPredictions({c: np.array([0, 0, 0, 1]) for c in [CLEAN, *table.conditions()]})
    report = build_report(table, reference=alexnet_imagenet_c_reference())
    ce = report.models["m"].ce
    assert ce is not None and ce.complete is True
    text = render_markdown(report)
    assert "AlexNet" in text and "| gaussian_noise | 69.53 | 82.54 |" in text
