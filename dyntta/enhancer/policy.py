"""Estimating training-time augmentations from an enhancer (DynTTA's "estimate, then retrain").

Run the enhancer over a shifted data set, average its blend weights per operation family (the 19 low-pass
rings pooled into ``lowpass``, the high-pass rings into ``highpass``), rank them and keep the top ones as an
augmentation policy. :class:`PolicyAugment` then applies AugMix-style chains of only those operations,
reusing the enhancer's own batched ops with random magnitudes, when a recognizer is retrained.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dyntta.enhancer.frequency import RadialFrequencyFilter
from dyntta.enhancer.model import DynTTAEnhancer, blend_names
from dyntta.enhancer.ops import OPS

POLICY_FORMAT = "dyntta.augment-policy/1"
#: Families that cannot be used as augmentations: the identity does nothing, the U-Net is learned.
NOT_AUGMENTATIONS = {"identity", "unet"}


def family(blend_name: str) -> str:
    return blend_name.split("_")[0] if blend_name.startswith(("lowpass_", "highpass_")) else blend_name


@torch.no_grad()
def mean_blend_weights(enhancer: DynTTAEnhancer, images: torch.Tensor, batch_size: int = 500) -> dict[str, float]:
    """Average blend weight per op family over float (N, 3, S, S) images."""
    enhancer.eval()
    totals = torch.zeros(enhancer.num_blend)
    for start in range(0, len(images), batch_size):
        weights, _ = enhancer.blend_parameters(images[start : start + batch_size])
        totals += weights.sum(0)
    means = (totals / max(1, len(images))).tolist()
    pooled: dict[str, float] = defaultdict(float)
    for name, value in zip(blend_names(), means, strict=True):
        pooled[family(name)] += value
    return dict(pooled)


def make_policy(weights: dict[str, float], top_k: int, source: dict[str, Any]) -> dict[str, Any]:
    ranked = sorted(weights.items(), key=lambda item: -item[1])
    usable = [name for name, _ in ranked if name not in NOT_AUGMENTATIONS]
    return {
        "format": POLICY_FORMAT,
        "source": source,
        "ranking": [{"rank": i + 1, "op": name, "mean_weight": round(w, 5)} for i, (name, w) in enumerate(ranked)],
        "ops": usable[:top_k],
        "augmix": {"width": 3, "max_depth": 3, "probability": 0.5},
    }


def save_policy(policy: dict[str, Any], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(policy, indent=2) + "\n")
    return path


def load_policy(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"augmentation policy {path} does not exist")
    policy = json.loads(path.read_text())
    if policy.get("format") != POLICY_FORMAT:
        raise ValueError(f"{path} is not an augmentation policy ({POLICY_FORMAT})")
    unknown = set(policy["ops"]) - set(_augmentation_ops())
    if unknown:
        raise ValueError(f"policy {path} names unknown ops {sorted(unknown)}")
    return policy


def _augmentation_ops() -> list[str]:
    return [op.name for op in OPS if op.name not in NOT_AUGMENTATIONS] + ["lowpass", "highpass"]


class PolicyAugment(nn.Module):
    """AugMix-style augmentation restricted to a policy's ops, drawn independently per image.

    For each image: ``width`` chains of 1..``max_depth`` ops with random magnitudes (uniform raw magnitude
    in [-1.5, 1.5], squashed by each op), mixed with Dirichlet(1) weights, then blended with the original
    by Beta(1, 1); applied with ``probability``. Every op runs batched; per-image choices are masks.
    """

    def __init__(self, policy: dict[str, Any], image_size: int) -> None:
        super().__init__()
        self.ops = list(policy["ops"])
        settings = policy.get("augmix", {})
        self.width, self.max_depth = int(settings.get("width", 3)), int(settings.get("max_depth", 3))
        self.probability = float(settings.get("probability", 0.5))
        self.by_name = {op.name: op.fn for op in OPS}
        self.frequency = RadialFrequencyFilter(image_size) if {"lowpass", "highpass"} & set(self.ops) else None

    def _augment(self, name: str, x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        if name in ("lowpass", "highpass"):
            assert self.frequency is not None
            bands = self.frequency.num_bands
            ring = torch.zeros(n, bands, device=x.device)
            # keep at least a third of the spectrum (low-pass) or drop at most a third (high-pass)
            choice = torch.randint(bands // 3, bands, (n,)) if name == "lowpass" else torch.randint(0, bands // 3, (n,))
            ring[torch.arange(n), choice] = 1.0
            zeros = torch.zeros_like(ring)
            low, high = (ring, zeros) if name == "lowpass" else (zeros, ring)
            out = self.frequency(x, low, high)
            return out + x.mean(dim=(2, 3), keepdim=True) * (name == "highpass")  # keep the DC level
        magnitude = torch.rand(n, device=x.device) * 3 - 1.5
        return self.by_name[name](x, magnitude)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.ops:
            return x
        n = len(x)
        chain_weights = torch.distributions.Dirichlet(torch.ones(self.width)).sample((n,)).to(x)
        mixed = torch.zeros_like(x)
        for chain in range(self.width):
            depth = torch.randint(1, self.max_depth + 1, (n,))
            y = x
            for step in range(self.max_depth):
                active = (depth > step).to(x).view(-1, 1, 1, 1)
                which = torch.randint(len(self.ops), (n,))
                stepped = torch.zeros_like(y)
                for k, name in enumerate(self.ops):
                    chosen = (which == k).to(x).view(-1, 1, 1, 1)
                    if chosen.any():
                        stepped = stepped + chosen * self._augment(name, y)
                y = (active * stepped + (1 - active) * y).clamp(0, 1)
            mixed = mixed + chain_weights[:, chain].view(-1, 1, 1, 1) * y
        beta = torch.rand(n, 1, 1, 1, device=x.device)
        out = (1 - beta) * x + beta * mixed
        apply = (torch.rand(n, 1, 1, 1, device=x.device) < self.probability).to(x)
        return apply * out + (1 - apply) * x
