"""torch.distributed, detected from the torchrun environment: one process per rank, or plain one process.

``torchrun --nproc_per_node=N -m dyntta.train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/
``MASTER_ADDR``/``MASTER_PORT``; :func:`init_from_env` joins that group (``nccl`` on CUDA, ``gloo`` on CPU,
with a bounded timeout so a dead peer ends the run instead of hanging it for torch's default 30 minutes).
Without those variables everything here is a no-op for a world of one, so the same code runs both ways.

Data parallelism: :func:`average_gradients` is registered as an optimizer step pre-hook, so the gradients
every strategy computes (``backward()`` or ``torch.autograd.grad`` + assignment to ``.grad``, one or two
optimizer steps per batch) are averaged over ranks right before each step. ``DistributedDataParallel``
would only average gradients that flow through ``backward()``: with ``torch.autograd.grad`` (DAMP, SAM's
ascent, DPL's influence) ranks would silently diverge. BatchNorm buffers are averaged at the same point,
so parameters and buffers stay equal on every rank after every step.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

TIMEOUT_ENV = "DYNTTA_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank 0 of 1 when not launched by torchrun."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def current() -> World:
    """The world this process is in now (after :func:`init_from_env`, or one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(
        rank=dist.get_rank(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        size=dist.get_world_size(),
        backend=str(dist.get_backend()),
    )


def timeout() -> timedelta:
    return timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))


def init_from_env(device: str = "auto") -> World:
    """Join the torchrun process group if this process was launched by torchrun; else a world of one.

    ``device`` is the user's ``--device``: CUDA (``auto`` with a GPU, or ``cuda``) selects ``nccl`` and the
    GPU ``LOCAL_RANK``; anything else ``gloo``.
    """
    if dist.is_available() and dist.is_initialized():
        return current()
    if not launched_by_torchrun():
        return World()
    cuda = local_device(device).type == "cuda"
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(
        backend,
        store=_attempt_store(),
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        timeout=timeout(),
    )
    world = current()
    if not world.is_main:
        quiet_stdout()
    return world


def _attempt_store() -> dist.Store:
    """The torchrun store, with keys private to this restart attempt.

    After ``--max-restarts`` restarts a group, torchrun's agent store still holds the previous attempt's
    keys, among them the dead worker's gloo address: a new rank could read it and fail with "connection
    refused" (observed with torch 2.15). Prefixing the keys with the restart count avoids stale reads.
    """
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)
    store = dist.TCPStore(
        host_name=os.environ["MASTER_ADDR"],
        port=int(os.environ["MASTER_PORT"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        is_master=not agent_hosts and int(os.environ["RANK"]) == 0,
        timeout=timeout(),
        multi_tenant=not agent_hosts,
    )
    return dist.PrefixStore(f"dyntta/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def local_device(requested: str | torch.device = "auto") -> torch.device:
    """``auto`` -> this rank's GPU if any, else CPU; a bare ``cuda`` -> ``cuda:LOCAL_RANK``."""
    text = str(requested)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cuda" and launched_by_torchrun():
        text = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return torch.device(text)


def quiet_stdout() -> None:
    """Ranks other than 0 print nothing to stdout (logs, JSON results); errors still reach stderr."""
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if current().distributed:
        dist.barrier()


# -- data parallelism ------------------------------------------------------------------------------------


def _flat_all_reduce_mean(tensors: Sequence[torch.Tensor]) -> None:
    """Average ``tensors`` over ranks in place with one collective per dtype (one bucket, like DDP's)."""
    world = dist.get_world_size()
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for t in group:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def average_gradients(optimizer: torch.optim.Optimizer) -> None:
    """Average every ``.grad`` the optimizer is about to use over all ranks (no-op for one process).

    A parameter with no gradient (``None``) is skipped by the optimizer and here alike; every rank runs the
    same strategy code, so the set of parameters with a gradient is the same on every rank.
    """
    if not current().distributed:
        return
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if grads:
        _flat_all_reduce_mean(grads)


def average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running statistics) over ranks; integer buffers
    (``num_batches_tracked``) advance identically on every rank and are left alone."""
    if not current().distributed:
        return
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if buffers:
        with torch.no_grad():
            _flat_all_reduce_mean(buffers)


def synchronise_steps(model: nn.Module, optimizer: torch.optim.Optimizer) -> Any:
    """Average gradients and BatchNorm buffers before every ``optimizer.step()``; returns the hook handle."""

    def hook(opt: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        average_gradients(opt)
        average_buffers(model)

    return optimizer.register_step_pre_hook(hook)


def broadcast_module(model: nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank (weights initialised or loaded per process)."""
    if not current().distributed:
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)


def shard_indices(n: int, seed: int, epoch: int, shuffle: bool = True) -> torch.Tensor:
    """This rank's sample order for an epoch: ``DistributedSampler`` (seeded, ``set_epoch``) over n items.

    Every rank gets ceil(n / world) indices (padded with repeats, so all ranks run the same number of steps);
    rank r takes every world-th index of one seeded permutation, so the union of the ranks' k-th batches
    of size B/world is the single-process k-th batch of size B.
    """
    world = current()
    sampler: torch.utils.data.DistributedSampler[int] = torch.utils.data.DistributedSampler(
        range(n),  # type: ignore[arg-type]  # any sized sequence works; only its length is read
        num_replicas=world.size,
        rank=world.rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=False,
    )
    sampler.set_epoch(epoch)
    return torch.tensor(list(iter(sampler)), dtype=torch.long)


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Sum a few numbers over ranks (e.g. loss and sample counts for the epoch log)."""
    if not current().distributed:
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.tolist()


def sum_in_order(
    n: int, compute: Callable[[int], torch.Tensor], size: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Sum of ``compute(k)`` (flat float32 tensors of ``size``) for k = 0..n-1, the same bit for bit on every
    rank and in one process: item k is computed on rank k % world only, and every rank adds the items in
    order k = 0, 1, ... (an all-reduce of slots that one rank fills and the others leave at zero is exact).
    Each rank computes ~n / world items; memory is world x size."""
    world = current()
    total = torch.zeros(size, device=device)
    for first in range(0, n, world.size):
        if not world.distributed:
            total += compute(first)
            continue
        slots = torch.zeros(world.size, size, device=device)
        if first + world.rank < n:
            slots[world.rank] = compute(first + world.rank)
        dist.all_reduce(slots)
        for r in range(min(world.size, n - first)):
            total += slots[r]
    return total


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank gets every rank's ``obj`` (in rank order)."""
    world = current()
    if not world.distributed:
        return [obj]
    everything: list[Any] = [None] * world.size
    dist.all_gather_object(everything, obj)
    return everything


def all_same(obj: Any) -> bool:
    """Whether every rank holds an equal (picklable, comparable) ``obj``."""
    if not current().distributed:
        return True
    everything: list[Any] = [None] * current().size
    dist.all_gather_object(everything, obj)
    return all(o == everything[0] for o in everything)


def gather_objects(obj: Any) -> list[Any] | None:
    """Rank 0 gets every rank's ``obj`` (in rank order); other ranks get ``None``."""
    world = current()
    if not world.distributed:
        return [obj]
    out: list[Any] | None = [None] * world.size if world.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any) -> Any:
    """Every rank gets rank 0's ``obj``."""
    if not current().distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# -- files -----------------------------------------------------------------------------------------------


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary name beside ``path``, then rename: a crash never leaves a half-written
    ``path`` (a rename within one directory is atomic on POSIX)."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        torch.save(obj, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def main_first() -> Iterator[bool]:
    """Rank 0 runs the block first (e.g. creating a directory), the others after it; yields ``is_main``."""
    world = current()
    if not world.is_main:
        barrier()
    yield world.is_main
    if world.is_main:
        barrier()


__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "World",
    "all_gather_objects",
    "all_reduce_sum",
    "all_same",
    "atomic_save",
    "average_buffers",
    "average_gradients",
    "barrier",
    "broadcast_module",
    "broadcast_object",
    "current",
    "gather_objects",
    "init_from_env",
    "launched_by_torchrun",
    "local_device",
    "main_first",
    "shard_indices",
    "shutdown",
    "sum_in_order",
    "synchronise_steps",
    "timeout",
]
