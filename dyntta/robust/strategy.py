"""The hook interface through which a training method plugs into the one training loop.

The loop calls these hooks and never asks which method is running. The base class is plain empirical
risk minimisation (ERM); robust methods override only the hooks they change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dyntta.data import LabelledImages
from dyntta.robust.registry import register_strategy


@register_strategy("erm")
class TrainingStrategy:
    """Plain training (ERM). Subclasses override hooks; each hook's default is the ERM behaviour."""

    name = "erm"
    #: Training rounds with :meth:`amend_data` between them (the loop splits its epochs evenly).
    rounds = 1
    #: The learning-rate shape after any warm-up (``cosine`` | ``step`` | ``constant``), and the method's own
    #: default learning rate (None: the trainer's); both only apply when the command line gives none.
    schedule = "cosine"
    default_lr: float | None = None

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    # -- model preparation ------------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Return the model to train (e.g. with noise modules or dual BatchNorm inserted)."""
        return model

    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    # -- data and schedule ------------------------------------------------------------------------------
    def bind_data(self, train: LabelledImages, val: LabelledImages | None) -> LabelledImages:
        """Called once before training with the training and validation splits; returns the training set
        to use (e.g. DPL sets its guide set aside here and keeps the validation split for stopping)."""
        return train

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called at the start of every epoch (0-based) with the total number of epochs (e.g. for
        Learn2Perturb's noise and adversarial-training delays)."""

    # -- loss and gradient estimation -------------------------------------------------------------------
    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(images), labels, label_smoothing=self.label_smoothing)

    def training_step(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer
    ) -> dict[str, float]:
        """Compute gradients and step the optimizer; returns the figures to log (at least ``loss``)."""
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss(model, images, labels)
        loss.backward()
        optimizer.step()
        return {"loss": loss.item()}

    def after_step(self, model: nn.Module) -> None:
        """Called after every optimizer step (e.g. to clamp learned noise scales)."""

    # -- evaluation and data ----------------------------------------------------------------------------
    def eval_mode(self, model: nn.Module) -> nn.Module:
        """Put the model in its inference behaviour; returns the module to evaluate."""
        return model.eval()

    def inference_model(self, model: nn.Module) -> nn.Module:
        """The module to save and export once training ends."""
        return model

    def amend_data(self, round_index: int, model: nn.Module, train: LabelledImages) -> LabelledImages:
        """Between training rounds, return the (possibly amended) training set."""
        return train

    def save_artifacts(self, model: nn.Module, directory: Path) -> list[str]:
        """Save what the plain checkpoint cannot hold (e.g. Learn2Perturb's noise scales) beside it, given
        the trained (not the inference) model; returns the file names written."""
        return []

    # -- resume ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs that the model and optimizer do not hold (e.g. DPL's amended set); kept
        in ``train_state.pt`` and handed to :meth:`load_state_dict` before :meth:`bind_data`."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`state_dict` gave (called before :meth:`bind_data` when resuming)."""

    def describe(self) -> dict[str, Any]:
        return {"method": self.name, "label_smoothing": self.label_smoothing}
