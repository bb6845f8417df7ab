"""Fixtures shared by the strategy and DPL tests: a small real training set and a briefly trained recognizer."""

from __future__ import annotations

import pytest
import torch

from dyntta.data import LabelledImages, load_dataset, to_float
from dyntta.models import Recognizer, create_recognizer
from dyntta.robust.strategy import TrainingStrategy


def tiny(classes: list[str], seed: int = 0) -> Recognizer:
    torch.manual_seed(seed)
    return create_recognizer("test_resnet", classes, input_size=32, small_input=False)


@pytest.fixture(scope="module")
def fmnist_train() -> LabelledImages:
    return load_dataset("fashion-mnist", "train").subset(torch.arange(600))


@pytest.fixture(scope="module")
def trained(fmnist_train: LabelledImages) -> Recognizer:
    """A tiny recognizer after 3 epochs of ERM on the 600 images (well above chance)."""
    model = tiny(fmnist_train.classes)
    strategy = TrainingStrategy()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(3):
        for s in range(0, 600, 100):
            strategy.training_step(
                model, to_float(fmnist_train.images[s : s + 100]), fmnist_train.labels[s : s + 100], opt
            )
    return model.eval()
