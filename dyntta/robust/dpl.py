"""DPL: Deep Perturbation Learning (Song et al., ICML 2023).

Influence functions (Koh & Liang) tell which additive pixel perturbation of each training image most
lowers the loss on a guide set G. They assume a converged model, so the amendment runs once, at the start
of training, on the model training starts from: a converged recognizer given with ``--init`` (a starting
model near chance is refused). Several rounds are several fine-tunes, each starting from the previous
one's annealed result (``--init`` of the previous output). Because the amended set exists before the
optimizer is built, the learning-rate schedule's step count covers it.

    s   = (H + lambda I)^-1 grad_theta R_G(theta)     H: training-loss Hessian on ``hvp_images`` images,
                                                      lambda = ``damping`` x its largest eigenvalue
    u_i = s . grad_theta L(z_i)                       up-weighting influence
    v_i = grad_x u_i                                  both: one JVP along s over the input gradient (torch.func)
    x_i' = x_i + delta_i,  delta_i = alpha v_i        (``normalize``: alpha v_i / max|v_i|, alpha in pixels)
    Delta_i = (u_i + delta_i . v_i) / N               predicted decrease of R_G when (x_i', y_i) is added

The ``fraction`` (epsilon) * N original samples with the largest positive Delta_i are added to the training
set (augmentation mode). Perturbations are computed on the un-augmented [0, 1] pixels that the amended set
stores (the recognizer normalises inside), so they are applied in the space they were computed in. HVPs and
gradients use BatchNorm in eval mode, which keeps samples independent.

The inverse-Hessian product is solved to a recorded tolerance on a fixed sample of training images, with
MINRES (``solver="minres"``, default) or the paper's LiSSA recursion (``solver="lissa"``,
h <- v + (1 - lambda/scale) h - H h / scale, s = h / scale, run until the same residual is reached or
``max_iterations``). Both aim at (H + lambda I)^-1 v. The Hessian of a trained network is indefinite:
LiSSA (and conjugate gradients) then diverge unless lambda exceeds the most negative eigenvalue, while
MINRES minimises the residual over its Krylov space whatever the signs, in far fewer HVPs. The record
kept in the checkpoint's strategy description holds the effective damping lambda and the undamped
residual ||H s - grad R_G|| / ||grad R_G|| (target < 0.1).

The guide set is the first ``guide_fraction`` of the (already shuffled) training split; with
``guide_holdout`` it is held out of training, otherwise it is also trained on (as in the official code).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp
from tqdm import tqdm

from dyntta.data import LabelledImages, to_float
from dyntta.robust.registry import register_strategy
from dyntta.robust.strategy import TrainingStrategy

SOLVERS = ("minres", "lissa")
Vector = list[torch.Tensor]


def _params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _dot(a: Vector, b: Vector) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b, strict=True))


def _norm(a: Vector) -> float:
    return _dot(a, a).sqrt().item()


def _axpy(alpha: float | torch.Tensor, x: Vector, y: Vector) -> Vector:
    """alpha x + y."""
    return [alpha * a + b for a, b in zip(x, y, strict=True)]


def mean_gradient(model: nn.Module, data: LabelledImages, loss_fn, batch_size: int = 500) -> Vector:
    """Gradient of the mean loss over ``data`` (model in its current mode)."""
    params = _params(model)
    device = params[0].device
    total = [torch.zeros_like(p) for p in params]
    for start in range(0, len(data), batch_size):
        x = to_float(data.images[start : start + batch_size]).to(device)
        y = data.labels[start : start + batch_size].to(device)
        grads = torch.autograd.grad(loss_fn(model(x), y, reduction="sum"), params)
        for t, g in zip(total, grads, strict=True):
            t += g
    return [t / len(data) for t in total]


def mean_loss(model: nn.Module, data: LabelledImages, loss_fn, batch_size: int = 500) -> float:
    device = next(model.parameters()).device
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = to_float(data.images[start : start + batch_size]).to(device)
            y = data.labels[start : start + batch_size].to(device)
            total += loss_fn(model(x), y, reduction="sum").item()
    return total / max(1, len(data))


def accuracy(model: nn.Module, data: LabelledImages, batch_size: int = 500) -> float:
    device = next(model.parameters()).device
    correct = 0
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = to_float(data.images[start : start + batch_size]).to(device)
            correct += (model(x).argmax(1).cpu() == data.labels[start : start + batch_size]).sum().item()
    return correct / max(1, len(data))


def hessian_operator(
    model: nn.Module, data: LabelledImages, loss_fn, batch_size: int = 256
) -> Callable[[Vector], Vector]:
    """v -> H v for the Hessian of the mean loss over ``data`` (all of it, in chunks; double backward)."""
    params = _params(model)
    device = params[0].device
    batches = [
        (to_float(data.images[s : s + batch_size]).to(device), data.labels[s : s + batch_size].to(device))
        for s in range(0, len(data), batch_size)
    ]

    def apply(vector: Vector) -> Vector:
        total = [torch.zeros_like(p) for p in params]
        for x, y in batches:
            grads = torch.autograd.grad(loss_fn(model(x), y, reduction="sum"), params, create_graph=True)
            hv = torch.autograd.grad(_dot(list(grads), vector), params)
            for t, h in zip(total, hv, strict=True):
                t += h
        return [t / len(data) for t in total]

    return apply


def top_eigenvalue(hvp: Callable[[Vector], Vector], like: Vector, iterations: int = 20, seed: int = 0) -> float:
    """Power-iteration estimate of the largest |eigenvalue| of the operator ``hvp``."""
    generator = torch.Generator().manual_seed(seed)
    v = [torch.randn(t.shape, generator=generator).to(t) for t in like]
    value = 0.0
    for _ in range(iterations):
        norm = _norm(v)
        v = [t / norm for t in v]
        hv = hvp(v)
        value = _dot(hv, v).item()
        v = [t.detach() for t in hv]
    return abs(value)


@dataclass
class SolveRecord:
    """How an inverse-Hessian product was solved (kept in the checkpoint's strategy description)."""

    solver: str
    iterations: int
    damping: float  # lambda in (H + lambda I)^-1
    damped_residual: float  # ||(H + lambda I) s - v|| / ||v||: the solver's own convergence
    residual: float  # ||H s - v|| / ||v||: distance from the undamped inverse (target < 0.1)
    converged: bool
    hvp_images: int
    seconds: float
    scale: float | None = None  # LiSSA only
    stopped: str = ""
    independent_residual: float | None = None  # ||H' s - v|| / ||v|| with H' on other images
    top_eigenvalue: float | None = None  # of H (power iteration); damping = relative damping x this


def _minres(
    op: Callable[[Vector], Vector], b: Vector, tolerance: float, max_iterations: int, bar: tqdm
) -> tuple[Vector, int, str]:
    """MINRES (Paige & Saunders) for a symmetric, possibly indefinite operator: Lanczos vectors, the
    tridiagonal's QR by Givens rotations, and the iterate minimising ||op(x) - b|| over the Krylov space."""
    beta1 = _norm(b)
    x = [torch.zeros_like(t) for t in b]
    if beta1 == 0:
        return x, 0, "zero right-hand side"
    v_prev, v = [torch.zeros_like(t) for t in b], [t / beta1 for t in b]
    w_prev2, w_prev = [torch.zeros_like(t) for t in b], [torch.zeros_like(t) for t in b]
    beta = 0.0  # superdiagonal entry of the current column (none for the first)
    c_prev2, s_prev2, c_prev, s_prev = 1.0, 0.0, 1.0, 0.0  # rotations G_{k-2}, G_{k-1}
    phibar = beta1  # norm of the current residual
    for k in range(1, max_iterations + 1):
        p = op(v)
        alpha = _dot(v, p).item()
        p = [pp - alpha * vv - beta * vp for pp, vv, vp in zip(p, v, v_prev, strict=True)]
        beta_next = _norm(p)
        bar.update()
        epsilon, delta_hat = s_prev2 * beta, c_prev2 * beta
        delta = c_prev * delta_hat + s_prev * alpha
        gamma_bar = -s_prev * delta_hat + c_prev * alpha
        gamma = (gamma_bar**2 + beta_next**2) ** 0.5
        if gamma == 0:
            return x, k, "breakdown"
        c, s = gamma_bar / gamma, beta_next / gamma
        phi, phibar = c * phibar, -s * phibar
        w = [(vv - delta * wp - epsilon * wp2) / gamma for vv, wp, wp2 in zip(v, w_prev, w_prev2, strict=True)]
        x = _axpy(phi, w, x)
        if abs(phibar) / beta1 < tolerance:
            return x, k, "tolerance"
        if beta_next == 0:
            return x, k, "invariant subspace"
        w_prev2, w_prev = w_prev, w
        c_prev2, s_prev2, c_prev, s_prev = c_prev, s_prev, c, s
        v_prev, v, beta = v, [t / beta_next for t in p], beta_next
    return x, max_iterations, "max_iterations"


def solve_inverse_hvp(
    hvp: Callable[[Vector], Vector],
    vector: Vector,
    *,
    damping: float,
    solver: str = "minres",
    tolerance: float = 0.01,
    max_iterations: int = 200,
    scale: float | None = None,
    check_every: int = 10,
    hvp_images: int = 0,
    progress: bool = False,
) -> tuple[Vector, SolveRecord]:
    """Solve (H + damping I) s = vector to the relative ``tolerance``; returns s and the record.

    ``minres``: MINRES, which needs no definiteness (the Hessian of a trained network has negative
    eigenvalues, which stop conjugate gradients and make LiSSA diverge unless damping exceeds them).
    ``lissa``: the recursion h <- v + (1 - damping/scale) h - H h / scale, s = h / scale; ``scale`` must
    exceed the largest eigenvalue of H (diverges otherwise).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown inverse-HVP solver {solver!r}; expected one of {SOLVERS}")
    started = time.perf_counter()
    v_norm = max(_norm(vector), 1e-30)

    def damped(x: Vector) -> Vector:
        return _axpy(damping, x, hvp(x))

    stopped = "max_iterations"
    iterations = 0
    bar = tqdm(total=max_iterations, desc=f"inverse HVP ({solver})", unit="hvp", leave=False, disable=not progress)
    if solver == "minres":
        s, iterations, stopped = _minres(damped, vector, tolerance, max_iterations, bar)
    else:
        if scale is None or scale <= 0:
            raise ValueError("LiSSA needs a scale above the Hessian's largest eigenvalue")
        h = [t.clone() for t in vector]
        for iterations in range(1, max_iterations + 1):
            hv = hvp(h)
            h = [v + (1 - damping / scale) * hh - hvv / scale for v, hh, hvv in zip(vector, h, hv, strict=True)]
            bar.update()
            norm = _norm(h)
            if not torch.isfinite(torch.tensor(norm)) or norm > 1e6 * scale * v_norm:
                raise FloatingPointError(
                    f"LiSSA diverged at step {iterations} (|h| = {norm:.3g}): the Hessian has eigenvalues "
                    f"above scale={scale}"
                )
            if iterations % check_every == 0:
                s = [hh / scale for hh in h]
                if _norm(_axpy(-1.0, vector, damped(s))) / v_norm < tolerance:
                    stopped = "tolerance"
                    break
        s = [hh / scale for hh in h]
    bar.close()
    hs = hvp(s)
    residual = _norm(_axpy(-1.0, vector, hs)) / v_norm
    damped_residual = _norm(_axpy(-1.0, vector, _axpy(damping, s, hs))) / v_norm
    record = SolveRecord(
        solver=solver,
        iterations=iterations,
        damping=damping,
        damped_residual=damped_residual,
        residual=residual,
        converged=damped_residual < tolerance,
        hvp_images=hvp_images,
        seconds=round(time.perf_counter() - started, 2),
        scale=scale if solver == "lissa" else None,
        stopped=stopped,
    )
    return s, record


def influence(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    s: Vector,
    loss_fn,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: u_i = s . grad_theta L(z_i) and v_i = grad_x u_i, for a whole batch at once.

    Both are derivatives along s in parameter space: of the per-sample losses (u) and of their input
    gradients (v). One forward-mode JVP over the reverse-mode input gradient (torch.func) gives both; no
    per-sample parameter gradient is materialised. v is per sample because BatchNorm is in eval mode (the
    caller's job), so samples do not interact.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p.detach() for n, p in named}
    tangents = {n: t.detach() for (n, _), t in zip(named, s, strict=True)}
    x = images.detach()

    def losses_and_input_gradients(p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        def total(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            per_sample = loss_fn(functional_call(model, p, (inputs,)), labels, reduction="none")
            return per_sample.sum(), per_sample

        input_gradients, per_sample = grad(total, has_aux=True)(x)
        return per_sample, input_gradients

    _, (u, v) = jvp(losses_and_input_gradients, (params,), (tangents,))
    return u.detach(), v.detach()


@register_strategy("dpl")
class DPL(TrainingStrategy):
    """Influence-guided training-set amendment at the start of a fine-tune (``fraction = 0`` is ERM)."""

    name = "dpl"

    def __init__(
        self,
        label_smoothing: float = 0.0,
        fraction: float = 0.04,
        alpha: float = 8 / 255,
        normalize: bool = True,
        guide_fraction: float = 0.05,
        guide_holdout: bool = True,
        solver: str = "minres",
        damping: float = 1e-4,
        tolerance: float = 0.05,
        max_iterations: int = 100,
        lissa_scale: float = 0.0,
        hvp_images: int = 512,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(label_smoothing)
        if not 0 <= fraction <= 1 or not 0 < guide_fraction < 1:
            raise ValueError("DPL needs 0 <= fraction <= 1 and 0 < guide_fraction < 1")
        if solver not in SOLVERS:
            raise ValueError(f"DPL solver must be one of {SOLVERS}, got {solver!r}")
        if damping < 0 or tolerance <= 0 or max_iterations < 1 or hvp_images < 1:
            raise ValueError("DPL needs damping >= 0, tolerance > 0, max_iterations >= 1, hvp_images >= 1")
        self.fraction, self.alpha, self.normalize = fraction, alpha, normalize
        self.guide_fraction, self.guide_holdout = guide_fraction, guide_holdout
        self.solver, self.damping, self.tolerance = solver, damping, tolerance
        self.max_iterations, self.lissa_scale, self.hvp_images = max_iterations, lissa_scale, hvp_images
        self.batch_size, self.seed = batch_size, seed
        self.guide: LabelledImages | None = None
        self.original: int | None = None  # the first `original` training samples are un-amended ones
        self.model: nn.Module | None = None
        self.log: list[dict[str, Any]] = []
        self.amended_indices: list[torch.Tensor] = []

    def criterion(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing, reduction=reduction)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        self.model = model  # amended in bind_data, once the loop has moved it to its device
        return model

    def bind_data(self, train: LabelledImages, val: LabelledImages | None) -> LabelledImages:
        n_guide = max(1, int(round(self.guide_fraction * len(train))))
        self.guide = train.subset(torch.arange(n_guide))
        self.guide.split = "guide"
        if self.guide_holdout:
            train = train.subset(torch.arange(n_guide, len(train)))
        self.original = len(train)
        if self.fraction == 0 or self.model is None:
            return train
        model, was_training = self.model, self.model.training
        model.eval()
        try:
            start_accuracy = accuracy(model, self.guide)
            chance = 1.0 / max(2, int(train.labels.max().item()) + 1)
            if start_accuracy < 2 * chance:
                raise ValueError(
                    f"DPL amends the model training starts from, and influence functions assume a converged "
                    f"one; this one classifies {100 * start_accuracy:.1f} % of the guide set. Start from a "
                    "trained recognizer: --init CKPT"
                )
            amended, record = self.amend(model, train)
        finally:
            model.train(was_training)
        record.update(guide_accuracy=start_accuracy)
        self.log.append(record)
        tqdm.write(
            "DPL " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
        )
        return amended

    def inverse_hvp(self, model: nn.Module, originals: LabelledImages, vector: Vector) -> tuple[Vector, SolveRecord]:
        """(H + lambda I)^-1 vector with H on a fixed random sample of ``hvp_images`` training images and
        lambda = ``damping`` x H's largest eigenvalue (power iteration); the
        record adds the undamped residual on an independent sample of the same size (how well the sample's
        Hessian stands for the training set's)."""
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(originals), generator=generator)
        sample, other = order[: self.hvp_images], order[self.hvp_images : 2 * self.hvp_images]
        hvp = hessian_operator(model, originals.subset(sample), self.criterion, self.batch_size)
        # Damping relative to the spectrum, so that it means the same for any model and loss scale.
        top = top_eigenvalue(hvp, vector, iterations=10, seed=self.seed)
        # LiSSA's recursion converges only if scale exceeds the Hessian's largest eigenvalue.
        scale = (self.lissa_scale or 1.5 * top) if self.solver == "lissa" else None
        s, record = solve_inverse_hvp(
            hvp,
            vector,
            damping=self.damping * top,
            solver=self.solver,
            tolerance=self.tolerance,
            max_iterations=self.max_iterations,
            scale=scale,
            hvp_images=len(sample),
            progress=True,
        )
        record.top_eigenvalue = top
        if len(other):
            other_hvp = hessian_operator(model, originals.subset(other), self.criterion, self.batch_size)
            record.independent_residual = _norm(_axpy(-1.0, vector, other_hvp(s))) / max(_norm(vector), 1e-30)
        return s, record

    def amend(self, model: nn.Module, train: LabelledImages) -> tuple[LabelledImages, dict[str, Any]]:
        """One amendment: the top-epsilon perturbed samples appended to ``train`` (model in eval mode)."""
        if self.guide is None:
            raise RuntimeError("DPL.amend needs a guide set: call bind_data first or set .guide")
        device = next(model.parameters()).device
        original = self.original if self.original is not None else len(train)
        guide_loss = mean_loss(model, self.guide, self.criterion)
        v_guide = mean_gradient(model, self.guide, self.criterion)
        originals = train.subset(torch.arange(original))
        s, solve = self.inverse_hvp(model, originals, v_guide)
        candidates = torch.arange(original)
        if self.amended_indices:  # samples amended earlier are not amended again
            candidates = candidates[~torch.isin(candidates, torch.cat(self.amended_indices))]
        scores = torch.empty(len(candidates))
        deltas = torch.empty((len(candidates), *train.images.shape[1:]), dtype=torch.float16)
        started = time.perf_counter()
        for start in tqdm(range(0, len(candidates), self.batch_size), desc="DPL influence", unit="batch", leave=False):
            index = candidates[start : start + self.batch_size]
            x = to_float(train.images[index]).to(device)
            y = train.labels[index].to(device)
            u, v = influence(model, x, y, s, self.criterion)
            delta = self.perturbation(v)
            # predicted decrease of R_G (times N) from adding (x + delta, y), after rounding to pixel levels
            stored = ((x + delta).clamp(0, 1) * 255).round() / 255 - x
            scores[start : start + len(index)] = (u + (stored * v).flatten(1).sum(1)).cpu()
            deltas[start : start + len(index)] = delta.cpu().half()
        influence_seconds = time.perf_counter() - started
        n = int(round(self.fraction * original))
        order = torch.argsort(scores, descending=True)[:n]
        order = order[scores[order] > 0]
        chosen = candidates[order]
        x = to_float(train.images[chosen]) + deltas[order].float()
        new_images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
        changed = (new_images.int() - train.images[chosen].int()).abs()
        self.amended_indices.append(chosen)
        amended = LabelledImages(
            train.name,
            train.split,
            torch.cat([train.images, new_images]),
            torch.cat([train.labels, train.labels[chosen]]),
            train.classes,
        )
        record = {
            "guide_loss": guide_loss,
            "inverse_hvp": asdict(solve),
            "added": len(chosen),
            "candidates": len(candidates),
            "influence_seconds_per_10k": round(1e4 * influence_seconds / max(1, len(candidates)), 1),
            "predicted_guide_decrease": scores[order].sum().item() / len(train),
            "mean_abs_change_levels": changed.float().mean().item() if len(chosen) else 0.0,
            "train_size": len(amended),
        }
        return amended, record

    def perturbation(self, v: torch.Tensor) -> torch.Tensor:
        if not self.normalize:
            return self.alpha * v
        peak = v.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))
        return self.alpha * v / peak

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "fraction": self.fraction,
            "alpha": self.alpha,
            "normalize": self.normalize,
            "mode": "augmentation",
            "amended": "once, at the start, on the model training starts from (--init: a converged model)",
            "guide_fraction": self.guide_fraction,
            "guide_holdout": self.guide_holdout,
            "inverse_hvp": {
                "solver": self.solver,
                "damping": f"{self.damping} x the Hessian's top eigenvalue",
                "tolerance": self.tolerance,
                "max_iterations": self.max_iterations,
                "hvp_images": self.hvp_images,
                "lissa_scale": self.lissa_scale or "1.5 x top eigenvalue",
            },
            "amendment_log": self.log,
        }
