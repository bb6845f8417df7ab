"""A small residual U-Net: the learned image-to-image branch of the enhancer (URIE's role, much lighter).

Two resolutions, BatchNorm (eval mode at serving, so images stay independent), and a global residual
so a zero-initialised last layer starts as the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.1, inplace=True),
    )


class ResidualUNet(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.encode = _block(3, width)
        self.down = _block(width, 2 * width)
        self.decode = _block(3 * width, width)
        self.out = nn.Conv2d(width, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        assert self.out.bias is not None  # Conv2d(bias=True)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.encode(x)
        low = self.down(F.max_pool2d(skip, 2))
        up = F.interpolate(low, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return x + self.out(self.decode(torch.cat([skip, up], dim=1)))
