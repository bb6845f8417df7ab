"""What DPL's amendment costs against ERM training, measured in one process on the same core (issue 14).

The amendment = the guide set's gradient + the inverse-HVP solve (power iteration for the top eigenvalue,
MINRES, two residual HVPs) + the influence (u_i, v_i) of every candidate training image. With
``--influence-params head`` (DPL's default) the solve is cheap (cached pre-logit features of the whole
training split) and is run for real and timed; with ``all`` its cost is estimated from one timed HVP at the
iteration cap (``--solve`` runs it). The ERM baseline is
the real training step of the default recognizer (train mode, standard augmentation, SGD with Nesterov
momentum, batch 128), timed on a few batches and scaled to the 54,000-image split; the influence is timed on
``--candidates`` images and scaled to the candidates of a full amendment. ``--compare`` also times the
previous implementation (forward-over-reverse influence and double-backward HVPs without BatchNorm folding).
``--solve`` runs the real solve on the default recognizer and prints its record (residual, damping).

    uv run python -m benchmarks.dpl_amendment [--threads 1]                  # head: the default
    uv run python -m benchmarks.dpl_amendment --influence-params all [--compare] [--solve --hvp-images 512]
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Callable
from dataclasses import asdict

import torch
from torch.func import functional_call, grad, jvp

from dyntta.data import LabelledImages, load_dataset, to_float
from dyntta.models import load_recognizer
from dyntta.robust.dpl import DPL, INFLUENCE_PARAMS, guide_statistics, hessian_operator, influence
from dyntta.train.augment import standard_augmentation

TRAIN_SPLIT = 54_000  # the recognizer's training split (Fashion-MNIST's 60,000 less 10 % validation)


def per_10k(seconds: float, images: int) -> float:
    return 1e4 * seconds / images


def timed(run: Callable[[int], object], repeats: int, images_each: int) -> float:
    """Seconds per 10,000 images of ``run(k)`` for k = 1..repeats, after one untimed warm-up run."""
    run(0)
    started = time.perf_counter()
    for k in range(1, repeats + 1):
        run(k)
    return per_10k(time.perf_counter() - started, repeats * images_each)


def erm_step_cost(model: torch.nn.Module, data: LabelledImages, batches: int, batch: int = 128) -> float:
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    augment = standard_augmentation(32)

    def step(k: int) -> None:
        x = augment(to_float(data.images[k * batch : (k + 1) * batch]))
        y = data.labels[k * batch : (k + 1) * batch]
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.1).backward()
        optimizer.step()

    return timed(step, batches, batch)


def previous_influence(model, x, y, s, loss_fn):  # the former implementation, for --compare
    params = {n: p.detach() for n, p in model.named_parameters()}
    tangents = dict(zip(params, s, strict=True))

    def losses_and_input_gradients(p):
        def total(inputs):
            per_sample = loss_fn(functional_call(model, p, (inputs,)), y, reduction="none")
            return per_sample.sum(), per_sample

        input_gradients, per_sample = grad(total, has_aux=True)(x)
        return per_sample, input_gradients

    return jvp(losses_and_input_gradients, (params,), (tangents,))[1]


def previous_hvp(model, x, y, vector, loss_fn):  # the former implementation, for --compare
    params = list(model.parameters())
    grads = torch.autograd.grad(loss_fn(model(x), y, reduction="sum"), params, create_graph=True)
    return torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vector, strict=True)), params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recognizer", default="checkpoints/fashion-mnist/recognizer")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--erm-batches", type=int, default=6, help="timed ERM steps of 128 images")
    parser.add_argument("--candidates", type=int, default=1024, help="images whose influence is timed")
    parser.add_argument("--batch-size", type=int, default=256, help="DPL's influence and HVP batch")
    parser.add_argument("--influence-params", choices=INFLUENCE_PARAMS, default="head")
    parser.add_argument("--hvp-images", type=int, default=0, help="0: DPL's default for --influence-params")
    parser.add_argument("--guide", type=int, default=2700, help="guide images (DPL's default: 5 %% of 54,000)")
    parser.add_argument("--max-iterations", type=int, default=0, help="MINRES iterations (0: DPL's default)")
    parser.add_argument("--tolerance", type=float, default=0.0, help="0: DPL's default")
    parser.add_argument("--damping", type=float, default=1e-4)
    parser.add_argument("--compare", action="store_true", help="also time the previous implementation")
    parser.add_argument("--solve", action="store_true", help="run the real solve and print its record")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()}  threads: {args.threads}", flush=True)

    model = load_recognizer(args.recognizer).float().eval()
    train = load_dataset("fashion-mnist", "train")
    strategy = DPL(
        label_smoothing=0.1,
        influence_params=args.influence_params,
        hvp_images=args.hvp_images,
        batch_size=args.batch_size,
        max_iterations=args.max_iterations,
        tolerance=args.tolerance,
        damping=args.damping,
    )
    criterion = strategy.criterion
    guide = train.subset(torch.arange(args.guide))
    pool = train.subset(torch.arange(args.guide, len(train)))
    candidates_full = TRAIN_SPLIT - args.guide  # candidates of a full amendment (guide held out)

    erm = erm_step_cost(model, pool, args.erm_batches)
    erm_epoch = erm * TRAIN_SPLIT / 1e4
    print(f"ERM training step: {erm:.1f} s per 10k images -> one epoch of {TRAIN_SPLIT}: {erm_epoch:.0f} s", flush=True)

    started = time.perf_counter()
    head = strategy.influenced(model)
    v_guide, _, guide_accuracy = guide_statistics(model, guide, criterion, args.batch_size, head)
    guide_seconds = time.perf_counter() - started
    print(f"guide gradient + loss + accuracy ({args.guide} images): {guide_seconds:.1f} s", flush=True)

    if head is not None:  # the real solve: features of the whole split once, then products on the head alone
        started = time.perf_counter()
        _, record = strategy.inverse_hvp(model, pool, v_guide)
        solve_cost = time.perf_counter() - started
        print(f"solve (head {head}, guide accuracy {guide_accuracy:.4f}): {solve_cost:.1f} s  {asdict(record)}")
    else:
        hvp_data = pool.subset(torch.arange(strategy.hvp_images))
        hvp = hessian_operator(model, hvp_data, criterion, args.batch_size)
        hvp(v_guide)  # warm-up, as for every other timing
        started = time.perf_counter()
        hvp(v_guide)
        hvp_seconds = time.perf_counter() - started
        hvps = 10 + strategy.max_iterations + 2  # power iteration, MINRES at its cap, the two residuals
        solve_cost = hvps * hvp_seconds
        print(f"one HVP on {strategy.hvp_images} images: {hvp_seconds:.2f} s; solve at most {hvps} HVPs", flush=True)

    torch.manual_seed(0)
    s = [torch.randn_like(t) * 1e-3 for t in v_guide]
    b = args.batch_size
    repeats = max(1, args.candidates // b)

    def batch(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_float(pool.images[k * b : (k + 1) * b]), pool.labels[k * b : (k + 1) * b]

    inf = timed(lambda k: influence(model, *batch(k), s, criterion, only=head), repeats, b)
    print(f"influence: {inf:.1f} s per 10k candidates ({inf / erm:.2f} ERM steps per image)", flush=True)
    if args.compare and head is None:
        old_inf = timed(lambda k: previous_influence(model, *batch(k), s, criterion), repeats, b)
        old_hvp = timed(lambda k: previous_hvp(model, *batch(k), s, criterion), 1, b)
        new_hvp = per_10k(hvp_seconds, strategy.hvp_images)
        print(f"previous influence: {old_inf:.1f} s per 10k ({old_inf / inf:.2f}x the new)", flush=True)
        print(f"HVP: previous {old_hvp:.1f} s per 10k images, new {new_hvp:.1f} ({old_hvp / new_hvp:.2f}x)")

    influence_full = inf * candidates_full / 1e4
    total = guide_seconds + solve_cost + influence_full
    print(
        f"\nfull amendment ({candidates_full} candidates): guide {guide_seconds:.0f} s + solve {solve_cost:.0f} s "
        f"+ influence {influence_full:.0f} s = {total:.0f} s = {total / erm_epoch:.2f} ERM epochs "
        f"(influence alone {influence_full / erm_epoch:.2f}; per 10k training images: influence {inf:.1f} s, "
        f"whole amendment {per_10k(total, candidates_full):.1f} s vs ERM {erm:.1f} s)",
        flush=True,
    )
    if args.solve and head is None:
        originals = pool.subset(torch.arange(len(pool)))
        _, record = strategy.inverse_hvp(model, originals, v_guide)
        print(f"solve (guide accuracy {guide_accuracy:.4f}): {asdict(record)}", flush=True)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
