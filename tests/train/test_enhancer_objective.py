"""The enhancer's training objective: labelled or label-free main term, and the do-no-harm term."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dyntta.train.enhancer import EnhancedRecognizer, EnhancerObjective


class Darken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.5


class Noise(nn.Module):
    """A fixed 'corruption' (the objective's shift)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + 0.3 * torch.sin(17 * x)).clamp(0, 1)


def _recognizer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.rand(8, 3, 12, 12), torch.randint(5, (8,))


def test_labelled_main_term_is_the_cross_entropy_on_the_shifted_images() -> None:
    model = EnhancedRecognizer(Darken(), _recognizer())
    images, labels = _batch()
    loss = EnhancerObjective(Noise(), labelled=True).loss(model, images, labels)
    torch.testing.assert_close(loss, F.cross_entropy(model(Noise()(images)), labels))


def test_do_no_harm_term_is_zero_for_the_identity_and_positive_for_a_change() -> None:
    images, labels = _batch()
    recognizer = _recognizer()
    for labelled in (True, False):
        plain = EnhancerObjective(Noise(), labelled=labelled)
        careful = EnhancerObjective(Noise(), labelled=labelled, clean_weight=2.0)
        identity = EnhancedRecognizer(nn.Identity(), recognizer)
        torch.testing.assert_close(careful.loss(identity, images, labels), plain.loss(identity, images, labels))
        darken = EnhancedRecognizer(Darken(), recognizer)
        extra = careful.loss(darken, images, labels) - plain.loss(darken, images, labels)
        with torch.no_grad():
            targets = F.softmax(recognizer(images), dim=1)
            want = 2.0 * F.kl_div(F.log_softmax(recognizer(Darken()(images)), 1), targets, reduction="batchmean")
        assert extra.item() > 0
        torch.testing.assert_close(extra, want)


def test_the_term_trains_the_enhancer_back_towards_leaving_clean_images_alone() -> None:
    """A learnable gain starts at 0.5 (darkening); the do-no-harm term alone pulls it back towards 1."""

    class Gain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.tensor(0.5))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.gain

    enhancer = Gain()
    model = EnhancedRecognizer(enhancer, _recognizer())
    objective = EnhancerObjective(nn.Identity(), labelled=False, clean_weight=1.0)  # main term: same as the term
    optimizer = torch.optim.SGD(enhancer.parameters(), lr=5.0)
    images, labels = _batch()
    for _ in range(50):
        objective.training_step(model, images, labels, optimizer)
    assert abs(enhancer.gain.item() - 1.0) < abs(0.5 - 1.0) / 2


def test_bad_weights_and_temperatures_are_refused() -> None:
    with pytest.raises(ValueError, match="--clean-weight"):
        EnhancerObjective(Noise(), labelled=True, clean_weight=-1)
    with pytest.raises(ValueError, match="--temperature"):
        EnhancerObjective(Noise(), labelled=False, temperature=0)
