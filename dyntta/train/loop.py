"""The one training loop: epochs, cosine schedule, validation, resumable checkpoints, progress bars.

Methods (ERM, DAMP, ...) plug in through :class:`~dyntta.robust.TrainingStrategy`; the loop never
branches on which one is running.

Under torchrun (see :mod:`dyntta.distributed`) the same loop is data-parallel: ``config.batch_size`` is the
*global* batch, each of the N ranks takes batch_size / N images of its ``DistributedSampler`` shard per step,
gradients and BatchNorm buffers are averaged before every optimizer step, and rank 0 alone logs, draws
progress bars and writes ``train_state.pt``. The learning rate is that of the global batch, so the same
flags train the same model at any world size (exactly so without BatchNorm, whose batch statistics are per
rank).
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

from dyntta import distributed
from dyntta.data import LabelledImages, to_float
from dyntta.robust import TrainingStrategy

STATE_FILE = "train_state.pt"
#: Fewer training images than this is refused: a split this small trains nothing useful.
MIN_TRAIN_IMAGES = 8


def pick_device(requested: str = "auto") -> torch.device:
    """``auto`` -> CUDA if available else CPU; under torchrun a bare CUDA device is this rank's GPU."""
    return distributed.local_device(requested)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The RNG seed of one rank's epoch (augmentation, corruption and method noise): ranks draw
    independently, and a resumed run draws what the uninterrupted one would have."""
    return ((seed * 1_000_003 + epoch) * 1009 + rank) % (2**31 - 1)


@dataclass
class LoopConfig:
    epochs: int
    batch_size: int = 128  # the global batch: per rank it is batch_size / world size
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.1  # for the global batch
    weight_decay: float = 5e-4
    momentum: float = 0.9
    warmup_epochs: float = 1.0
    schedule: str = "cosine"  # cosine | step (x0.1 at half the steps) | constant; after any warm-up
    seed: int = 0
    device: str = "auto"
    rounds: int = 1  # data-amendment rounds (DPL); epochs are split evenly between rounds


def per_rank_batch(batch_size: int, world_size: int) -> int:
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    if batch_size % world_size:
        raise ValueError(
            f"--batch-size {batch_size} is the global batch and must be divisible by the world size "
            f"{world_size} (each rank takes batch-size / world-size images per step)"
        )
    return batch_size // world_size


def check_training_set(train: LabelledImages, what: str = "training") -> None:
    """Refuse a training split that is empty, tiny, of one class, or missing a class (exit 2 in the CLIs)."""
    if len(train) < MIN_TRAIN_IMAGES:
        raise ValueError(
            f"the {what} split has {len(train)} images; at least {MIN_TRAIN_IMAGES} are needed "
            "(use more data or a smaller validation split)"
        )
    if len(train.classes) < 2:
        raise ValueError(f"the data has {len(train.classes)} class(es) {train.classes}; a classifier needs at least 2")
    counts = torch.bincount(train.labels, minlength=len(train.classes))
    empty = [c for c, n in zip(train.classes, counts.tolist(), strict=True) if n == 0]
    if empty:
        raise ValueError(
            f"class(es) {empty[:10]} have no image in the {what} split (empty or unreadable class folder?); "
            "remove the folder or add images"
        )


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    data: LabelledImages,
    device: torch.device | str,
    batch_size: int = 500,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    sharded: bool = False,
) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (uint8 images); ``transform`` acts on [0, 1] batches.

    ``sharded``: every rank classifies its contiguous 1/N of ``data`` and the counts are summed (all ranks
    must call it); the result is the same on every rank.
    """
    world = distributed.current()
    lo, hi = 0, len(data)
    if sharded and world.distributed:
        per = math.ceil(len(data) / world.size)
        lo, hi = min(len(data), world.rank * per), min(len(data), (world.rank + 1) * per)
    correct: float = 0  # a float once summed over ranks
    for start in range(lo, hi, batch_size):
        stop = min(hi, start + batch_size)
        images = to_float(data.images[start:stop]).to(device)
        if transform is not None:
            images = transform(images)
        logits = model(images)
        correct += (logits.argmax(1).cpu() == data.labels[start:stop]).sum().item()
    if sharded:
        correct = distributed.all_reduce_sum([correct])[0]
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


SCHEDULES = ("cosine", "step", "constant")


def lr_schedule(name: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The learning-rate factor per step: a linear warm-up, then ``cosine`` to 0, a ``step`` decay (x0.1 at
    half the steps; AdvBN's 20-epoch schedule decays every 10) or ``constant``."""
    if name == "cosine":
        return warmup_cosine(total_steps, warmup_steps)
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; expected one of {SCHEDULES}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return 0.1 if name == "step" and step >= total_steps // 2 else 1.0

    return factor


def batches(order: torch.Tensor, per_rank: int) -> list[torch.Tensor]:
    """``order`` cut into batches of ``per_rank``; a trailing batch of one image is dropped (BatchNorm
    cannot train on one image, and every rank's shard has the same length, so all ranks drop it)."""
    out = list(order.split(per_rank))
    if len(out) > 1 and len(out[-1]) == 1:
        out.pop()
    return out


def steps_per_epoch(n: int, per_rank: int, world_size: int) -> int:
    return len(batches(torch.empty(math.ceil(n / world_size)), per_rank))


def same_on_every_rank(data: LabelledImages) -> LabelledImages:
    """Every rank amends (e.g. DPL) the same model's same data with the same seed; should the results
    differ anyway, rank 0's set is sent to all, so ranks never train on different sets (or step counts)."""
    if not distributed.current().distributed:
        return data
    fingerprint = (len(data), int(data.labels.sum()), int(data.images.sum(dtype=torch.int64)))
    if distributed.all_same(fingerprint):
        return data
    return distributed.broadcast_object(data)


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

    A ``train_state.pt`` in ``out_dir`` is written (by rank 0, atomically) after every epoch and picked up
    again when ``resume``, at any world size.
    """
    world = distributed.current()
    device = pick_device(config.device)
    per_rank = per_rank_batch(config.batch_size, world.size)
    seed_everything(config.seed)
    model = strategy.prepare_model(model).to(device)
    distributed.broadcast_module(model)  # ranks may have initialised their copies differently
    state_path = Path(out_dir) / STATE_FILE
    saved = torch.load(state_path, map_location=device, weights_only=False) if resume and state_path.is_file() else None
    if saved is not None:  # e.g. DPL's amended set: bind_data then restores it instead of recomputing it
        strategy.load_state_dict(saved.get("strategy") or {})
    train = same_on_every_rank(strategy.bind_data(train, val))  # e.g. DPL sets its guide set aside, amends
    if len(train) == 0:
        raise ValueError("no training images left (the training split is empty)")
    optimizer = make_optimizer(config, strategy.parameter_groups(model))
    distributed.synchronise_steps(model, optimizer)
    per_epoch = steps_per_epoch(len(train), per_rank, world.size)
    schedule = lr_schedule(config.schedule, config.epochs * per_epoch, int(config.warmup_epochs * per_epoch))
    history: list[dict] = []
    start_epoch = 0
    start_step = 0
    if world.is_main:
        state_path.parent.mkdir(parents=True, exist_ok=True)
    if saved is not None:
        state = saved
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history = state["epoch"], state["history"]
        # The schedule position, rescaled when the world size (hence steps per epoch) changed.
        saved_per_epoch = state.get("steps_per_epoch", per_epoch)
        start_step = round(state["scheduler"]["last_epoch"] * per_epoch / max(1, saved_per_epoch))
        if state.get("train") is not None:
            train = state["train"]
        if world.is_main:
            tqdm.write(
                f"resumed from {state_path} at epoch {start_epoch} "
                f"(saved by {state.get('world_size', 1)} rank(s), now {world.size})"
            )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    if start_step:
        scheduler.last_epoch = start_step
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base * schedule(start_step)
    if world.is_main and world.distributed:
        tqdm.write(
            f"world size {world.size} ({world.backend}): global batch {config.batch_size} = "
            f"{world.size} x {per_rank} per rank, lr {config.lr:g} for the global batch"
        )

    epochs_per_round = math.ceil(config.epochs / max(1, config.rounds))
    augment = augment.to(device) if augment is not None else None
    for epoch in range(start_epoch, config.epochs):
        if epoch > 0 and epoch % epochs_per_round == 0:
            seed_everything(epoch_seed(config.seed, epoch, rank=0))  # the same draws on every rank
            train = same_on_every_rank(strategy.amend_data(epoch // epochs_per_round, model, train))
        strategy.start_epoch(epoch, config.epochs)
        seed_everything(epoch_seed(config.seed, epoch, world.rank))
        model.train()
        started = time.perf_counter()
        order = distributed.shard_indices(len(train), config.seed, epoch)
        running: float = 0.0
        seen: float = 0  # a float once summed over ranks
        bar = tqdm(
            batches(order, per_rank),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            unit="batch",
            leave=False,
            disable=not world.is_main,
        )
        for index in bar:
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
        running, seen = distributed.all_reduce_sum([running, seen])
        elapsed = time.perf_counter() - started
        record = {
            "epoch": epoch + 1,
            "train_loss": running / max(1, seen),
            "seconds": round(elapsed, 1),
            "images_per_second": round(seen / elapsed, 1),
        }
        if world.distributed:
            record["world_size"] = world.size
        if val is not None and len(val):
            record["val_accuracy"] = evaluate_accuracy(strategy.eval_mode(model), val, device, sharded=True)
        history.append(record)
        if world.is_main:
            tqdm.write("  ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()))
            distributed.atomic_save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "steps_per_epoch": per_epoch,
                    "world_size": world.size,
                    "global_batch": config.batch_size,
                    "epoch": epoch + 1,
                    "history": history,
                    "train": train if config.rounds > 1 else None,
                    "strategy": strategy.state_dict(),
                },
                state_path,
            )
    return model, history
