"""The one training loop: epochs, cosine schedule, validation, resumable checkpoints, progress bars.

Methods (ERM, DAMP, ...) plug in through :class:`~dyntta.robust.TrainingStrategy`; the loop never
branches on which one is running.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from dyntta.data import LabelledImages, to_float
from dyntta.robust import TrainingStrategy

STATE_FILE = "train_state.pt"


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class LoopConfig:
    epochs: int
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    seed: int = 0
    device: str = "auto"
    rounds: int = 1  # data-amendment rounds (DPL); epochs are split evenly between rounds


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    data: LabelledImages,
    device: torch.device,
    batch_size: int = 500,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (uint8 images); ``transform`` acts on [0, 1] batches."""
    correct = 0
    for start in range(0, len(data), batch_size):
        images = to_float(data.images[start : start + batch_size]).to(device)
        if transform is not None:
            images = transform(images)
        logits = model(images)
        correct += (logits.argmax(1).cpu() == data.labels[start : start + batch_size]).sum().item()
    return correct / max(1, len(data))


def make_optimizer(config: LoopConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, nesterov=True, weight_decay=config.weight_decay
        )
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; expected sgd or adamw")


def warmup_cosine(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def fit(
    model: nn.Module,
    strategy: TrainingStrategy,
    train: LabelledImages,
    val: LabelledImages | None,
    config: LoopConfig,
    out_dir: Path,
    augment: nn.Module | None = None,
    resume: bool = True,
) -> tuple[nn.Module, list[dict]]:
    """Train ``model`` with ``strategy``; returns the trained model and the per-epoch history.

    A ``train_state.pt`` in ``out_dir`` is written after every epoch and picked up again when ``resume``.
    """
    device = pick_device(config.device)
    seed_everything(config.seed)
    model = strategy.prepare_model(model).to(device)
    train = strategy.bind_data(train, val)  # e.g. DPL sets its guide set aside
    optimizer = make_optimizer(config, strategy.parameter_groups(model))
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(config.epochs * steps_per_epoch, int(config.warmup_epochs * steps_per_epoch))
    )
    history: list[dict] = []
    start_epoch = 0
    state_path = out_dir / STATE_FILE
    if resume and state_path.is_file():
        state = torch.load(state_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch, history = state["epoch"], state["history"]
        if state.get("train") is not None:
            train = state["train"]
        tqdm.write(f"resumed from {state_path} at epoch {start_epoch}")

    epochs_per_round = math.ceil(config.epochs / max(1, config.rounds))
    augment = augment.to(device) if augment is not None else None
    for epoch in range(start_epoch, config.epochs):
        if epoch > 0 and epoch % epochs_per_round == 0:
            train = strategy.amend_data(epoch // epochs_per_round, model, train)
        strategy.start_epoch(epoch, config.epochs)
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(train))
        running, seen = 0.0, 0
        bar = tqdm(
            range(0, len(train), config.batch_size),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            unit="batch",
            leave=False,
        )
        for start in bar:
            index = order[start : start + config.batch_size]
            images = to_float(train.images[index]).to(device, non_blocking=True)
            labels = train.labels[index].to(device, non_blocking=True)
            if augment is not None:
                images = augment(images)
            logs = strategy.training_step(model, images, labels, optimizer)
            strategy.after_step(model)
            scheduler.step()
            running += logs["loss"] * len(index)
            seen += len(index)
            bar.set_postfix(loss=f"{running / seen:.4f}", lr=f"{scheduler.get_last_lr()[0]:.4f}")
        record = {
            "epoch": epoch + 1,
            "train_loss": running / seen,
            "seconds": round(time.perf_counter() - started, 1),
            "images_per_second": round(seen / (time.perf_counter() - started), 1),
        }
        if val is not None and len(val):
            record["val_accuracy"] = evaluate_accuracy(strategy.eval_mode(model), val, device)
        history.append(record)
        tqdm.write("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "epoch": epoch + 1,
                "history": history,
                "train": train if config.rounds > 1 else None,
            },
            state_path,
        )
    return model, history
