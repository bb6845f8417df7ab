"""The ``DPL`` TrainingStrategy: the guide set, the one amendment at the start of training, and resume.

The guide set is the first ``guide_fraction`` of the (already shuffled) training split; with
``guide_holdout`` it is held out of training, otherwise it is also trained on (as in the official code).

The amended set is kept in ``train_state.pt`` (:meth:`DPL.state_dict`), so a resumed run does not amend again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dyntta import distributed
from dyntta.data import LabelledImages, to_float
from dyntta.robust.dpl.head import classifier_head, head_features, head_hessian_operator
from dyntta.robust.dpl.objective import ParameterObjective, fixed_chunks, guide_statistics, hessian_operator
from dyntta.robust.dpl.scoring import Candidates, influence, rank_candidates
from dyntta.robust.dpl.solve import SOLVE_DEFAULTS, SOLVERS, SolveRecord, solve_inverse_hvp, top_eigenvalue
from dyntta.robust.dpl.vectors import Vector, axpy, l2_norm
from dyntta.robust.registry import register_strategy
from dyntta.robust.strategy import TrainingStrategy

INFLUENCE_PARAMS = ("head", "all")


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
        influence_params: str = "head",
        solver: str = "minres",
        damping: float = 1e-4,
        tolerance: float = 0.0,
        max_iterations: int = 0,
        lissa_scale: float = 0.0,
        hvp_images: int = 0,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__(label_smoothing)
        if not 0 <= fraction <= 1 or not 0 < guide_fraction < 1:
            raise ValueError("DPL needs 0 <= fraction <= 1 and 0 < guide_fraction < 1")
        if solver not in SOLVERS:
            raise ValueError(f"DPL solver must be one of {SOLVERS}, got {solver!r}")
        if influence_params not in INFLUENCE_PARAMS:
            raise ValueError(f"DPL influence_params must be one of {INFLUENCE_PARAMS}, got {influence_params!r}")
        if damping < 0 or tolerance < 0 or max_iterations < 0 or hvp_images < 0:
            raise ValueError("DPL needs damping, tolerance, max_iterations and hvp_images >= 0 (0: the default)")
        defaults = SOLVE_DEFAULTS[influence_params]
        self.fraction, self.alpha, self.normalize = fraction, alpha, normalize
        self.guide_fraction, self.guide_holdout = guide_fraction, guide_holdout
        self.influence_params, self.solver, self.damping = influence_params, solver, damping
        self.tolerance = tolerance or defaults.tolerance
        self.max_iterations = max_iterations or defaults.max_iterations
        self.hvp_images = hvp_images or defaults.hvp_images
        self.lissa_scale = lissa_scale
        self.batch_size, self.seed = batch_size, seed
        self.guide: LabelledImages | None = None
        self.original: int | None = None  # the first `original` training samples are un-amended ones
        self.model: nn.Module | None = None
        self.log: list[dict[str, Any]] = []
        self.amended_indices: list[torch.Tensor] = []
        self.added_images: list[torch.Tensor] = []  # each amendment's added uint8 images, in order
        self.restored: dict[str, Any] | None = None  # state from train_state.pt (resume)

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
        if self.restored is not None:  # a resumed run: the amended set from train_state.pt, not recomputed
            return self._restore(train)
        if self.fraction == 0 or self.model is None:
            return train
        model, was_training = self.model, self.model.training
        model.eval()
        try:
            guide = guide_statistics(model, self.guide, self.criterion, self.batch_size, self.influenced(model))
            chance = 1.0 / max(2, int(train.labels.max().item()) + 1)
            if guide[2] < 2 * chance:
                raise ValueError(
                    f"DPL amends the model training starts from, and influence functions assume a converged "
                    f"one; this one classifies {100 * guide[2]:.1f} % of the guide set. Start from a "
                    "trained recognizer: --init CKPT"
                )
            amended, record = self.amend(model, train, guide)
        finally:
            model.train(was_training)
        record.update(guide_accuracy=guide[2])
        self.log.append(record)
        if distributed.current().is_main:
            tqdm.write(
                "DPL " + "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())
            )
        return amended

    # -- resume: the amended set travels in train_state.pt ------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if not self.amended_indices:
            return {}
        return {
            "original": self.original,
            "amended_indices": [t.clone() for t in self.amended_indices],
            "added_images": [t.clone() for t in self.added_images],
            "log": self.log,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.restored = state or None

    def _restore(self, train: LabelledImages) -> LabelledImages:
        state = self.restored
        assert state is not None
        if state["original"] != len(train):
            raise ValueError(
                f"the saved DPL amendment was made on {state['original']} training images, this run has "
                f"{len(train)}: resume with the same data and --method-args, or start a new --out"
            )
        self.amended_indices = list(state["amended_indices"])
        self.added_images, self.log = list(state["added_images"]), list(state["log"])
        chosen = torch.cat(self.amended_indices)
        if distributed.current().is_main:
            tqdm.write(f"DPL: the amended set ({len(chosen)} added samples) restored from the saved state")
        return LabelledImages(
            train.name,
            train.split,
            torch.cat([train.images, *self.added_images]),
            torch.cat([train.labels, train.labels[chosen]]),
            train.classes,
        )

    def influenced(self, model: nn.Module) -> str | None:
        """The module whose parameters the influence is taken with respect to (None: the whole model)."""
        return classifier_head(model) if self.influence_params == "head" else None

    def _hessian(self, model: nn.Module, data: LabelledImages) -> Callable[[Vector], Vector]:
        head = self.influenced(model)
        if head is None:
            return hessian_operator(model, data, self.criterion, self.batch_size)
        features = head_features(model, head, data, self.batch_size)
        return head_hessian_operator(model, head, features, data.labels, self.criterion)

    def inverse_hvp(self, model: nn.Module, originals: LabelledImages, vector: Vector) -> tuple[Vector, SolveRecord]:
        """(H + lambda I)^-1 vector with H on a fixed random sample of ``hvp_images`` training images and
        lambda = ``damping`` x H's largest eigenvalue (power iteration); the
        record adds the undamped residual on an independent sample of the same size (how well the sample's
        Hessian stands for the training set's)."""
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(originals), generator=generator)
        sample, other = order[: self.hvp_images], order[self.hvp_images : 2 * self.hvp_images]
        hvp = self._hessian(model, originals.subset(sample))
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
            progress=distributed.current().is_main,
        )
        record.top_eigenvalue = top
        if len(other):
            other_hvp = self._hessian(model, originals.subset(other))
            record.independent_residual = l2_norm(axpy(-1.0, vector, other_hvp(s))) / max(l2_norm(vector), 1e-30)
        return s, record

    def amend(
        self, model: nn.Module, train: LabelledImages, guide: tuple[Vector, float, float] | None = None
    ) -> tuple[LabelledImages, dict[str, Any]]:
        """One amendment: the top-epsilon perturbed samples appended to ``train`` (model in eval mode).

        ``guide``: the guide set's (gradient, loss, accuracy) when already computed. Under torchrun every
        part is shared out between ranks (guide chunks, Hessian chunks, candidate batches) and combined so
        that each rank ends with the single-process result: the same solve, scores and chosen samples.
        """
        if self.guide is None:
            raise RuntimeError("DPL.amend needs a guide set: call bind_data first or set .guide")
        world = distributed.current()
        original = self.original if self.original is not None else len(train)
        influenced = self.influenced(model)
        if guide is None:
            guide = guide_statistics(model, self.guide, self.criterion, self.batch_size, influenced)
        v_guide, guide_loss, _ = guide
        originals = train.subset(torch.arange(original))
        s, solve = self.inverse_hvp(model, originals, v_guide)
        candidates = torch.arange(original)
        if self.amended_indices:  # samples amended earlier are not amended again
            candidates = candidates[~torch.isin(candidates, torch.cat(self.amended_indices))]
        n = int(round(self.fraction * original))
        device = next(model.parameters()).device
        chunks = fixed_chunks(len(candidates), self.batch_size)
        best = Candidates(
            torch.empty(0, dtype=torch.long),
            torch.empty(0),
            torch.empty((0, *train.images.shape[1:]), dtype=torch.uint8),
        )
        objective = ParameterObjective(model, self.criterion, influenced)
        started = time.perf_counter()
        mine = range(world.rank, len(chunks), world.size)  # batch k on rank k % world
        for k in tqdm(mine, desc="DPL influence", unit="batch", leave=False, disable=not world.is_main):
            lo, hi = chunks[k]
            index = candidates[lo:hi]
            x = to_float(train.images[index]).to(device)
            u, v = influence(model, x, train.labels[index].to(device), s, self.criterion, objective)
            # the sample as stored (uint8), and its predicted decrease of R_G (times N) when added
            images = ((x + self.perturbation(v)).clamp(0, 1) * 255).round()
            scores = u + ((images / 255 - x) * v).flatten(1).sum(1)
            best = best.merge(torch.arange(lo, hi), scores.cpu(), images.to(torch.uint8).cpu(), keep=n)
        influence_seconds = time.perf_counter() - started
        # The global top n is among the ranks' local top n; every rank ranks the union the same way.
        merged = distributed.all_gather_objects(best)
        pool = Candidates(
            torch.cat([c.positions for c in merged]),
            torch.cat([c.scores for c in merged]),
            torch.cat([c.images for c in merged]),
        )
        order = rank_candidates(pool.scores, pool.positions)[:n]
        order = order[pool.scores[order] > 0]
        chosen = candidates[pool.positions[order]]
        new_images = pool.images[order]
        changed = (new_images.int() - train.images[chosen].int()).abs()
        self.amended_indices.append(chosen)
        self.added_images.append(new_images)
        amended = LabelledImages(
            train.name,
            train.split,
            torch.cat([train.images, new_images]),
            torch.cat([train.labels, train.labels[chosen]]),
            train.classes,
        )
        # wall-clock seconds (mean over ranks, each of which did ~1/world of the candidates)
        influence_seconds = distributed.all_reduce_sum([influence_seconds])[0] / world.size
        record = {
            "guide_loss": guide_loss,
            "inverse_hvp": asdict(solve),
            "added": len(chosen),
            "candidates": len(candidates),
            "world_size": world.size,
            "influence_seconds_per_10k": round(1e4 * influence_seconds / max(1, len(candidates)), 1),
            "predicted_guide_decrease": pool.scores[order].sum().item() / len(train),
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
            "influence_params": self.influence_params,
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
