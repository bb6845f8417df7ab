"""`python -m dyntta.train enhancer`: a short run lowers the frozen recognizer's loss on corrupted images."""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from dyntta.data import to_float
from dyntta.enhancer import load_enhancer
from dyntta.models import load_recognizer
from dyntta.train import enhancer as enhancer_command
from dyntta.train.corruption_augment import corrupted_copy


def test_short_enhancer_training_lowers_corrupted_loss(tiny_recognizer_dir, fmnist_test, tmp_path) -> None:
    recognizer = load_recognizer(tiny_recognizer_dir)
    before = {k: v.clone() for k, v in recognizer.state_dict().items()}
    parser = argparse.ArgumentParser()
    enhancer_command.add_arguments(parser)
    out = tmp_path / "enhancer"
    enhancer_command.run(
        parser.parse_args(
            [
                "--recognizer",
                str(tiny_recognizer_dir),
                "--out",
                str(out),
                "--epochs",
                "2",
                "--train-subset",
                "1536",
                "--val-size",
                "256",
                "--lr",
                "3e-3",
                "--corruption-probability",
                "1.0",
            ]
        )
    )
    enhancer = load_enhancer(out)
    held_out = corrupted_copy(fmnist_test.subset(torch.arange(500)), probability=1.0, seed=123)
    x, y = to_float(held_out.images), held_out.labels
    with torch.no_grad():
        loss_alone = F.cross_entropy(recognizer(x), y).item()
        loss_enhanced = F.cross_entropy(recognizer(enhancer(x)), y).item()
    assert loss_enhanced < loss_alone - 0.02, (loss_alone, loss_enhanced)
    # The recognizer was frozen: its checkpoint is untouched.
    after = load_recognizer(tiny_recognizer_dir).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
