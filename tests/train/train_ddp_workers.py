"""Workers for the data-parallel tests, run by ``torch.multiprocessing.spawn`` (module level: pickled by
name). Each joins a gloo group through a ``file://`` rendezvous (no port to collide on), trains with the
real :func:`dyntta.train.loop.fit` and saves what the test compares to ``out/<task>-rank<r>.pt``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from dyntta.data import LabelledImages
from dyntta.models import create_recognizer
from dyntta.robust import STRATEGIES, TrainingStrategy, create_strategy, method_parameters
from dyntta.train.loop import LoopConfig, fit

CLASSES = ["a", "b", "c"]
#: Small settings per method so one step takes well under a second (only keys the method accepts are used).
FAST_ARGS: dict[str, dict[str, Any]] = {
    "damp": {"micro_batches": 2},
    "l2p": {"adv_steps": 1, "eval_samples": 2, "input_size": 16},
    "advbn": {"steps": 1},
    "dpl": {"fraction": 0.25, "max_iterations": 3, "hvp_images": 16, "batch_size": 16, "guide_fraction": 0.25},
}


def pretrained(work: Path) -> nn.Module:
    """A recognizer trained until it classifies the synthetic set (DPL amends converged models only)."""
    config = LoopConfig(epochs=6, batch_size=16, lr=0.05, warmup_epochs=0, seed=0, device="cpu")
    model, _ = fit(recognizer(), TrainingStrategy(), synthetic(64), None, config, work)
    return model


def synthetic(n: int, size: int = 16, seed: int = 0) -> LabelledImages:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.arange(n) % len(CLASSES)
    for k in range(len(CLASSES)):  # class k has a dimmed channel k: learnable in a few steps
        images[labels == k, k] //= 4
    return LabelledImages("synthetic", "train", images, labels, list(CLASSES))


def no_batchnorm_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, len(CLASSES))
    )


def recognizer(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return create_recognizer("test_resnet", CLASSES, input_size=16)


def flat_state(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    buffers = torch.cat([b.detach().float().flatten() for b in model.buffers()] or [torch.zeros(0)])
    return params.clone(), buffers.clone()


class Recording(TrainingStrategy):
    """ERM that keeps the parameters and buffers after every optimizer step."""

    def __init__(self) -> None:
        super().__init__()
        self.after: list[tuple[torch.Tensor, torch.Tensor]] = []

    def after_step(self, model: nn.Module) -> None:
        self.after.append(flat_state(model))


def no_bn_config(epochs: int = 1) -> LoopConfig:
    return LoopConfig(epochs=epochs, batch_size=32, lr=0.1, warmup_epochs=0, seed=0, device="cpu")


def run_task(task: str, out: Path) -> dict[str, Any]:
    """The same code for the single process (the reference) and every rank."""
    work = out / f"{task}-work"
    work.mkdir(parents=True, exist_ok=True)
    if task == "no-bn":  # 96 images, global batch 32: three steps
        model, _ = fit(no_batchnorm_model(), TrainingStrategy(), synthetic(96), None, no_bn_config(), work)
        return {"state": {k: v.clone() for k, v in model.state_dict().items()}}
    if task == "bn":
        strategy = Recording()
        fit(recognizer(), strategy, synthetic(96), None, no_bn_config(epochs=2), work)
        return {"after": strategy.after}
    if task == "strategies":
        results: dict[str, Any] = {}
        for method in sorted(STRATEGIES):
            accepted = method_parameters(method)
            kwargs = {k: v for k, v in FAST_ARGS.get(method, {}).items() if k in accepted}
            (work / method).mkdir(exist_ok=True)
            try:
                strategy = create_strategy(method, **kwargs)
                config = LoopConfig(
                    epochs=strategy.rounds, batch_size=32, lr=0.01, seed=0, device="cpu", rounds=strategy.rounds
                )
                start = pretrained(work / "pretrain") if method == "dpl" else recognizer()
                model, history = fit(start, strategy, synthetic(64), synthetic(16, seed=1), config, work / method)
                results[method] = {"state": flat_state(model), "steps": len(history), "error": None}
            except Exception as error:  # the test reports which method failed and how
                results[method] = {"state": None, "steps": 0, "error": f"{type(error).__name__}: {error}"}
        return results
    raise ValueError(task)


def worker(rank: int, world_size: int, init_file: str, tasks: str, out: str) -> None:
    """One rank: every task of the comma-separated ``tasks`` in turn (one spawn, one torch import per rank)."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size, timeout=timedelta(seconds=30)
    )
    try:
        for task in tasks.split(","):
            result = run_task(task, Path(out))
            torch.save(result, Path(out) / f"{task}-rank{rank}.pt")
    finally:
        dist.destroy_process_group()
