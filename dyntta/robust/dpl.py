"""DPL: Deep Perturbation Learning (Song et al., ICML 2023).

Training runs in rounds (``rounds``; the loop splits its epochs evenly and keeps one schedule). Between
rounds, influence functions (Koh & Liang) tell which additive pixel perturbation of each training image
most lowers the loss on a guide set G:

    s   = H^-1 grad_theta R_G(theta)                  LiSSA: h <- v + (1 - damp) h - H h / scale, s = h/scale
    u_i = s . grad_theta L(z_i)                       up-weighting influence (one double backward per batch:
    v_i = grad_x (s . grad_theta L(z_i))              d/dw_i and d/dx_i of s . grad_theta sum_i w_i L(z_i))
    x_i' = x_i + delta_i,  delta_i = alpha v_i        (``normalize``: alpha v_i / max|v_i|, alpha in pixels)
    Delta_i = (u_i + delta_i . v_i) / N               predicted decrease of R_G when (x_i', y_i) is added

The ``fraction`` (epsilon) * N original samples with the largest positive Delta_i are added to the training
set (augmentation mode); training resumes from the current weights. Perturbations are computed on the
un-augmented [0, 1] pixels that the amended set stores (the recognizer normalises inside), so they are
applied in the space they were computed in. HVPs and gradients use BatchNorm in eval mode, which keeps
samples independent. Amendment stops for good once validation accuracy stops improving between rounds
(the validation split, never the test set); the remaining epochs then train on the current set.

The guide set is the first ``guide_fraction`` of the (already shuffled) training split; with
``guide_holdout`` it is held out of training, otherwise it is also trained on (as in the official code).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dyntta.data import LabelledImages, to_float
from dyntta.robust.registry import register_strategy
from dyntta.robust.strategy import TrainingStrategy


def _params(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def mean_gradient(
    model: nn.Module,
    data: LabelledImages,
    loss_fn,
    batch_size: int = 500,
) -> list[torch.Tensor]:
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


def _hvp(
    model: nn.Module, params: list[nn.Parameter], x: torch.Tensor, y: torch.Tensor, loss_fn, vector: list[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    return torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, vector, strict=True)), params)


def top_eigenvalue(
    model: nn.Module,
    train: LabelledImages,
    loss_fn,
    *,
    batch_size: int,
    iterations: int = 10,
    generator: torch.Generator | None = None,
) -> float:
    """Power-iteration estimate of the training-loss Hessian's largest |eigenvalue| on one mini-batch."""
    params = _params(model)
    index = torch.randint(len(train), (batch_size,), generator=generator)
    x, y = to_float(train.images[index]).to(params[0].device), train.labels[index].to(params[0].device)
    v = [torch.randn(p.shape, generator=generator).to(p.device) for p in params]
    value = 0.0
    for _ in range(iterations):
        norm = torch.sqrt(sum((t * t).sum() for t in v))
        v = [t / norm for t in v]
        hv = _hvp(model, params, x, y, loss_fn, v)
        value = sum((a * b).sum() for a, b in zip(hv, v, strict=True)).item()
        v = [t.detach() for t in hv]
    return abs(value)


def inverse_hvp(
    model: nn.Module,
    train: LabelledImages,
    vector: list[torch.Tensor],
    loss_fn,
    *,
    depth: int,
    damping: float,
    scale: float,
    batch_size: int,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> list[torch.Tensor]:
    """LiSSA estimate of H^-1 v for the training loss's Hessian H (HVPs by double backward on random
    mini-batches). ``depth = 0`` returns v / scale (identity Hessian)."""
    params = _params(model)
    device = params[0].device
    h = [v.clone() for v in vector]
    start_norm = torch.sqrt(sum((v * v).sum() for v in vector)).item()
    for step in tqdm(range(depth), desc="LiSSA", unit="hvp", leave=False, disable=not progress):
        index = torch.randint(len(train), (batch_size,), generator=generator)
        x = to_float(train.images[index]).to(device)
        y = train.labels[index].to(device)
        hv = _hvp(model, params, x, y, loss_fn, h)
        h = [v + (1 - damping) * hh - hvv / scale for v, hh, hvv in zip(vector, h, hv, strict=True)]
        norm = torch.sqrt(sum((hh * hh).sum() for hh in h)).item()
        if not torch.isfinite(torch.tensor(norm)) or norm > 1e6 * max(start_norm, 1e-12):
            raise FloatingPointError(
                f"LiSSA diverged at step {step + 1} (|h| = {norm:.3g}): the Hessian has "
                f"eigenvalues above scale={scale}; raise lissa_scale or damping"
            )
    return [hh / scale for hh in h]


def influence(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    s: list[torch.Tensor],
    loss_fn,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: u_i = s . grad_theta L(z_i) and v_i = grad_x u_i, from one double backward of the
    weighted batch loss sum_i w_i L(z_i) (w = 1): d/dw_i gives u_i, d/dx_i gives v_i (BN in eval mode)."""
    params = _params(model)
    x = images.detach().clone().requires_grad_(True)
    w = torch.ones(len(x), device=x.device, requires_grad=True)
    losses = loss_fn(model(x), labels, reduction="none")
    grads = torch.autograd.grad((w * losses).sum(), params, create_graph=True)
    dot = sum((g * si).sum() for g, si in zip(grads, s, strict=True))
    u, v = torch.autograd.grad(dot, [w, x])
    return u.detach(), v.detach()


@register_strategy("dpl")
class DPL(TrainingStrategy):
    """Influence-guided training-set amendment between rounds (``fraction = 0`` is plain training)."""

    name = "dpl"

    def __init__(
        self,
        label_smoothing: float = 0.0,
        rounds: int = 2,
        fraction: float = 0.04,
        alpha: float = 8 / 255,
        normalize: bool = True,
        guide_fraction: float = 0.05,
        guide_holdout: bool = True,
        lissa_depth: int = 100,
        lissa_damping: float = 0.01,
        lissa_scale: float = 25.0,
        lissa_batch: int = 128,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(label_smoothing)
        if rounds < 1:
            raise ValueError(f"DPL rounds must be >= 1, got {rounds}")
        if not 0 <= fraction <= 1 or not 0 < guide_fraction < 1:
            raise ValueError("DPL needs 0 <= fraction <= 1 and 0 < guide_fraction < 1")
        self.rounds, self.fraction, self.alpha, self.normalize = rounds, fraction, alpha, normalize
        self.guide_fraction, self.guide_holdout = guide_fraction, guide_holdout
        self.lissa_depth, self.lissa_damping, self.lissa_scale = lissa_depth, lissa_damping, lissa_scale
        self.lissa_batch, self.batch_size, self.seed = lissa_batch, batch_size, seed
        self.guide: LabelledImages | None = None
        self.val: LabelledImages | None = None
        self.original: int | None = None  # the first `original` training samples are un-amended ones
        self.best_val = -1.0
        self.stopped = False
        self.log: list[dict[str, Any]] = []
        self.amended_indices: list[torch.Tensor] = []

    def criterion(self, logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing, reduction=reduction)

    def bind_data(self, train: LabelledImages, val: LabelledImages | None) -> LabelledImages:
        n_guide = max(1, int(round(self.guide_fraction * len(train))))
        self.guide = train.subset(torch.arange(n_guide))
        self.guide.split = "guide"
        self.val = val
        if self.guide_holdout:
            train = train.subset(torch.arange(n_guide, len(train)))
        self.original = len(train)
        return train

    def _val_accuracy(self, model: nn.Module) -> float | None:
        if self.val is None or not len(self.val):
            return None
        device = next(model.parameters()).device
        correct = 0
        with torch.no_grad():
            for start in range(0, len(self.val), 500):
                x = to_float(self.val.images[start : start + 500]).to(device)
                correct += (model(x).argmax(1).cpu() == self.val.labels[start : start + 500]).sum().item()
        return correct / len(self.val)

    def amend_data(self, round_index: int, model: nn.Module, train: LabelledImages) -> LabelledImages:
        if self.fraction == 0 or self.stopped:
            return train
        if self.guide is None:
            self.bind_data(train, None)  # used outside the loop: guide taken from (and kept in) train
        was_training = model.training
        model.eval()
        try:
            val_acc = self._val_accuracy(model)
            if val_acc is not None and val_acc <= self.best_val:
                self.stopped = True
                tqdm.write(
                    f"DPL round {round_index}: validation accuracy {val_acc:.4f} did not improve on "
                    f"{self.best_val:.4f}; no further amendment"
                )
                return train
            self.best_val = val_acc if val_acc is not None else self.best_val
            amended, record = self.amend(model, train)
            record.update(round=round_index, val_accuracy=val_acc)
            self.log.append(record)
            tqdm.write(
                "DPL " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
            )
            return amended
        finally:
            model.train(was_training)

    def amend(self, model: nn.Module, train: LabelledImages) -> tuple[LabelledImages, dict[str, Any]]:
        """One amendment: the top-epsilon perturbed samples appended to ``train`` (model in eval mode)."""
        device = next(model.parameters()).device
        generator = torch.Generator().manual_seed(self.seed + len(self.log))
        original = self.original if self.original is not None else len(train)
        guide_loss = mean_loss(model, self.guide, self.criterion)
        v_guide = mean_gradient(model, self.guide, self.criterion)
        originals = train.subset(torch.arange(original))
        # LiSSA converges only if scale exceeds the Hessian's largest eigenvalue (the paper's 25 is too
        # small for sharp small networks): raise it to twice a power-iteration estimate when needed.
        top = top_eigenvalue(model, originals, self.criterion, batch_size=self.lissa_batch, generator=generator)
        scale = max(self.lissa_scale, 2.0 * top)
        s = inverse_hvp(
            model,
            originals,
            v_guide,
            self.criterion,
            depth=self.lissa_depth,
            damping=self.lissa_damping,
            scale=scale,
            batch_size=self.lissa_batch,
            generator=generator,
        )
        candidates = torch.arange(original)
        if self.amended_indices:  # samples amended in earlier rounds are not amended again
            candidates = candidates[~torch.isin(candidates, torch.cat(self.amended_indices))]
        scores = torch.empty(len(candidates))
        deltas = torch.empty((len(candidates), *train.images.shape[1:]), dtype=torch.float16)
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
            "hessian_top_eigenvalue": top,
            "lissa_scale": scale,
            "added": len(chosen),
            "candidates": len(candidates),
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
            "rounds": self.rounds,
            "fraction": self.fraction,
            "alpha": self.alpha,
            "normalize": self.normalize,
            "mode": "augmentation",
            "guide_fraction": self.guide_fraction,
            "guide_holdout": self.guide_holdout,
            "lissa": {
                "depth": self.lissa_depth,
                "damping": self.lissa_damping,
                "scale": self.lissa_scale,
                "batch": self.lissa_batch,
            },
            "stopping": "no further amendment once validation accuracy stops improving",
            "rounds_log": self.log,
        }
