"""The light predictor: a small CNN mapping an image to blend-weight logits and op magnitudes."""

from __future__ import annotations

import torch
from torch import nn


def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class Predictor(nn.Module):
    """Input (B, 3, H, W) in [0, 1] -> (weight logits (B, K), raw magnitudes (B, P)). Called once per pass.

    Works on the full input, downsampling 8x in three strided stages; the head sees global statistics
    (average and max pooled) because corruptions are global properties of an image.
    """

    def __init__(self, num_weights: int, num_magnitudes: int, width: int = 32) -> None:
        super().__init__()
        self.num_weights, self.num_magnitudes = num_weights, num_magnitudes
        self.features = nn.Sequential(
            _conv(3, width, 2),
            _conv(width, 2 * width, 2),
            _conv(2 * width, 4 * width, 2),
        )
        self.head = nn.Sequential(
            nn.Linear(8 * width, 4 * width), nn.ReLU(inplace=True), nn.Linear(4 * width, num_weights + num_magnitudes)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x - 0.5)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        out = self.head(pooled)
        return out[:, : self.num_weights], out[:, self.num_weights :]

    def init_identity(self, identity_index: int, identity_logit: float) -> None:
        """Start from the identity: zero last layer, so magnitudes are 0 (identity for every op) and the
        blend puts most weight on the identity op."""
        last = self.head[-1]
        assert isinstance(last, nn.Linear)  # built in __init__
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        with torch.no_grad():
            last.bias[identity_index] = identity_logit
