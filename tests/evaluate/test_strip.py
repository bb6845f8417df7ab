"""The enhancer strip: the images it shows are the ones the models saw, its predictions are theirs, its
figure has one tile per (corruption, image, stage), and it reaches report.json and report.md."""

from __future__ import annotations

from pathlib import Path

import torch

from dyntta.data import LabelledImages
from dyntta.evaluate import ReportOptions, read_json, run_report, write_outputs
from dyntta.evaluate.plots import strip_figure
from dyntta.evaluate.predictions import corrupt_uint8, quantise
from dyntta.evaluate.strip import StripSpec, first_of_each_class, middle_severity
from dyntta.evaluate.writers import render_markdown

CORRUPTIONS = ["gaussian_noise", "impulse_noise", "fog", "saturate"]  # groups noise, weather, extra
SEVERITIES = [1, 3, 5]
SEED = 4


def recognizer(images: torch.Tensor) -> torch.Tensor:
    """Three classes by mean brightness (dark, mid, light): a corruption or an enhancer can change them."""
    means = images.float().mean(dim=(1, 2, 3))
    return torch.nn.functional.one_hot((means / 256 * 3).long().clamp(0, 2), 3).float()


def enhance(images: torch.Tensor) -> torch.Tensor:
    """A contrast stretch around mid-grey, uint8 in and out (as the served enhancer)."""
    return quantise((images.float() / 255 - 0.5) * 1.5 + 0.5)


def enhanced_recognizer(images: torch.Tensor) -> torch.Tensor:
    return recognizer(enhance(images))


def toy_data() -> LabelledImages:
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 256, (12, 1, 1, 1), generator=g)
    images = (levels + torch.randint(-30, 31, (12, 3, 32, 32), generator=g)).clamp(0, 255).to(torch.uint8)
    labels = recognizer(images).argmax(1)
    return LabelledImages("toy", "test", images, labels, ["dark", "mid", "light"])


def test_strip_shows_what_the_models_saw_and_predicted(tmp_path: Path) -> None:
    data = toy_data()
    run = run_report(
        {"recognizer": recognizer, "enhancer + recognizer": enhanced_recognizer},
        data,
        ReportOptions(corruptions=CORRUPTIONS, severities=SEVERITIES, seed=SEED, batch_size=5),
        strip=StripSpec(enhance=enhance, enhanced_by="a toy contrast stretch"),
    )
    strip, images = run.report.enhancer_strip, run.strip_images
    assert strip is not None and images is not None
    assert strip.severity == middle_severity(SEVERITIES) == 3
    assert strip.indices == first_of_each_class(data.labels.numpy(), 3) and len(set(data.labels[strip.indices])) == 3
    assert [row.corruption for row in strip.rows] == CORRUPTIONS
    index = torch.tensor(strip.indices)
    for row in strip.rows:
        # re-made independently: the same pixels the report's batches had, and the classifiers' own answers
        corrupted = corrupt_uint8(data.images[index], (row.corruption, 3), index, seed=SEED, table=None, device="cpu")
        assert torch.equal(images.corrupted[row.corruption], corrupted)
        assert torch.equal(images.enhanced[row.corruption], enhance(corrupted))
        alone, enhanced = recognizer(corrupted).argmax(1).tolist(), enhanced_recognizer(corrupted).argmax(1).tolist()
        assert [s.predicted["recognizer"] for s in row.samples] == alone
        assert [s.predicted["enhancer + recognizer"] for s in row.samples] == enhanced
        assert [s.label for s in row.samples] == data.labels[index].tolist()

    figure = strip_figure(strip, images, strip.rows[:2], "noise")
    tiles = [ax for ax in figure.axes if ax.images]
    assert len(tiles) == 2 * 3 * 3  # corruptions x images x (clean, corrupted, enhanced)
    shown = tiles[3 * 1 + 2].images[0].get_array()  # first row, second image, enhanced
    assert (shown == images.enhanced["gaussian_noise"][1].permute(1, 2, 0).numpy()).all()

    paths = write_outputs(run, tmp_path / "out")
    report = read_json(paths["json"])
    assert report == run.report and report.enhancer_strip is not None
    assert report.enhancer_strip.files() == [f"enhancer_strip_{g}.png" for g in ("noise", "weather", "extra")]
    assert report.enhancer_strip.curves_file == "enhancer_curves.png"
    for name in [*report.enhancer_strip.files(), "enhancer_curves.png"]:
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    text = paths["markdown"].read_text()
    assert "## The enhancer at work" in text and "](enhancer_strip_weather.png)" in text
    assert "](enhancer_curves.png)" in text and "a toy contrast stretch" in text


def test_without_figures_the_strip_is_a_table() -> None:
    run = run_report(
        {"recognizer": recognizer, "enhancer + recognizer": enhanced_recognizer},
        toy_data(),
        ReportOptions(corruptions=["fog"], severities=[2], seed=SEED),
        strip=StripSpec(enhance=enhance, enhanced_by="toy", count=2),
    )
    assert run.report.enhancer_strip is not None and len(run.report.enhancer_strip.indices) == 2
    text = render_markdown(run.report)
    assert "| corruption | image " in text and "→" in text and "enhancer_strip_" not in text
