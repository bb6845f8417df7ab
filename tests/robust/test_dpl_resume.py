"""A resumed DPL run continues from the amended set kept in train_state.pt instead of amending again."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from dyntta.data import LabelledImages
from dyntta.models import Recognizer
from dyntta.robust.dpl import DPL
from dyntta.train.loop import STATE_FILE, LoopConfig, fit


class CountingDPL(DPL):
    """DPL that counts its amendments."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.amendments = 0

    def amend(self, model, train, guide=None):
        self.amendments += 1
        return super().amend(model, train, guide)


SETTINGS = {"fraction": 0.1, "hvp_images": 32, "max_iterations": 3, "batch_size": 128}


def test_resume_restores_the_amended_set(trained: Recognizer, fmnist_train: LabelledImages, tmp_path: Path) -> None:
    data = fmnist_train.subset(torch.arange(200))
    first = CountingDPL(**SETTINGS)
    config = LoopConfig(epochs=1, batch_size=64, lr=0.01, warmup_epochs=0, seed=0, device="cpu")
    fit(copy.deepcopy(trained), first, data, None, config, tmp_path)
    assert first.amendments == 1
    saved = torch.load(tmp_path / STATE_FILE, weights_only=False)["strategy"]
    assert torch.equal(saved["amended_indices"][0], first.amended_indices[0])

    # the same run, now 2 epochs long, resumed: no second amendment, the same amended set and record
    resumed = CountingDPL(**SETTINGS)
    _, history = fit(copy.deepcopy(trained), resumed, data, None, replace(config, epochs=2), tmp_path)
    assert resumed.amendments == 0 and len(history) == 2
    assert torch.equal(resumed.amended_indices[0], first.amended_indices[0])
    assert torch.equal(resumed.added_images[0], first.added_images[0])
    assert resumed.log == first.log
    assert resumed.describe()["amendment_log"] == first.describe()["amendment_log"]

    # a different training set cannot reuse that amendment
    with pytest.raises(ValueError, match="same data"):
        fit(
            copy.deepcopy(trained),
            CountingDPL(**SETTINGS),
            fmnist_train.subset(torch.arange(300)),
            None,
            config,
            tmp_path,
        )
