"""The augmentation policy module behaves as an nn.Module (device/dtype moves) and augments per image."""

from __future__ import annotations

import torch

from dyntta.enhancer.policy import PolicyAugment


def test_policy_augment_moves_like_a_module() -> None:
    # nn.Module.to() goes through Module._apply; a method of that name on the subclass broke it
    augment = PolicyAugment({"ops": ["lowpass", "highpass"], "augmix": {"probability": 1.0}}, 32)
    augment = augment.to(torch.device("cpu")).float()
    images = torch.rand(4, 3, 32, 32)
    torch.manual_seed(0)
    out = augment(images)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert not torch.equal(out, images)
