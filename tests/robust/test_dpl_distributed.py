"""DPL's amendment sharded over 2 gloo ranks (issue 12) equals the single-process amendment exactly.

Two real processes (``torch.multiprocessing.spawn``, ``file://`` rendezvous: no port to collide on), each
running :meth:`DPL.amend` on its share of the guide chunks, Hessian chunks and candidate batches; the test
process computes the same amendment alone. Chunk sizes are chosen so the shares are uneven. Both influence
parameter choices: the whole network's sharded HVPs, and the head's features gathered from the ranks.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dyntta.data import LabelledImages
from dyntta.models import create_recognizer
from dyntta.robust.dpl import DPL

CLASSES = ["a", "b", "c"]


def problem(influence_params: str) -> tuple[torch.nn.Module, DPL, LabelledImages]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8, generator=generator)
    labels = torch.arange(64) % len(CLASSES)
    for k in range(len(CLASSES)):  # something to learn: class k has a dimmed channel k
        images[labels == k, k] //= 4
    torch.manual_seed(0)
    model = create_recognizer("test_resnet", CLASSES, input_size=16).eval()
    # guide: 13 images (2 chunks of 8); hvp sample: 20 images (3 chunks); 51 candidates (7 batches)
    strategy = DPL(
        fraction=0.2,
        hvp_images=20,
        max_iterations=4,
        batch_size=8,
        guide_fraction=0.2,
        influence_params=influence_params,
    )
    # no prepare_model: bind_data only sets the guide set aside, amend() below does the work
    train = strategy.bind_data(LabelledImages("synthetic", "train", images, labels, list(CLASSES)), None)
    return model, strategy, train


def amend(influence_params: str) -> dict[str, Any]:
    model, strategy, train = problem(influence_params)
    amended, record = strategy.amend(model, train)
    return {"indices": strategy.amended_indices[0], "images": amended.images, "labels": amended.labels, **record}


INFLUENCE_PARAMS = ("head", "all")


def worker(rank: int, world_size: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size, timeout=timedelta(seconds=30)
    )
    try:
        for influence_params in INFLUENCE_PARAMS:  # both modes in one spawn: the ranks start once
            torch.save(amend(influence_params), Path(out) / f"rank{rank}-{influence_params}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dpl-ranks")
    mp.spawn(worker, args=(2, str(out / "rendezvous"), str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("influence_params", INFLUENCE_PARAMS)
def test_two_ranks_amend_exactly_like_one_process(ranks_out: Path, influence_params: str) -> None:
    ranks = [torch.load(ranks_out / f"rank{r}-{influence_params}.pt", weights_only=False) for r in range(2)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: the same kernels, hence the same bits
    try:
        single = amend(influence_params)
    finally:
        torch.set_num_threads(threads)
    assert single["added"] > 0 and single["candidates"] == 51
    for rank in ranks:
        assert rank["world_size"] == 2
        assert torch.equal(rank["indices"], single["indices"])
        assert torch.equal(rank["images"], single["images"])
        assert torch.equal(rank["labels"], single["labels"])
        # the same solve on every rank: iterations, damping and residuals bit for bit
        for key in ("iterations", "damping", "residual", "damped_residual", "top_eigenvalue"):
            assert rank["inverse_hvp"][key] == single["inverse_hvp"][key], key
        assert rank["predicted_guide_decrease"] == single["predicted_guide_decrease"]
