"""One per-image radial frequency filter that stands for DynTTA's bank of ideal low-/high-pass filters.

The filters are linear and their blend weights are per-image scalars, so the weighted sum of the 19
low-pass and 19 high-pass ideal filters equals ONE filter whose response is piecewise constant on rings:
H(rho) = sum_{r >= rho} w_lpf[r] + sum_{r < rho} w_hpf[r]. We apply it with one forward and one inverse
2-D DFT. The DFT is written as real matrix products (cos/sin matrices) rather than ``torch.fft`` because
the ONNX exporter has no FFT and the matrices are small at classifier input sizes (32-224 px).
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: Ring radii of the ideal filters, as fractions of the half-diagonal of the spectrum (0.05 ... 0.95).
RADII = tuple(round(0.05 * i, 2) for i in range(1, 20))


def _dft_matrices(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    k = torch.arange(n, dtype=torch.float64)
    angle = 2 * math.pi * torch.outer(k, k) / n
    return torch.cos(angle).float(), torch.sin(angle).float()


def radial_distance(size: int) -> torch.Tensor:
    """Distance of each DFT bin from the zero frequency divided by the half-diagonal (0 ... 1)."""
    freq = torch.fft.fftfreq(size, dtype=torch.float64)
    rho = torch.sqrt(freq[:, None] ** 2 + freq[None, :] ** 2) / math.sqrt(0.5)
    return rho.float()


class RadialFrequencyFilter(nn.Module):
    """Apply per-image radial masks built from low-pass / high-pass ring weights. Input (B, C, S, S)."""

    cos: torch.Tensor  # buffers, declared for type checkers (nn.Module.__getattr__ returns Tensor | Module)
    sin: torch.Tensor
    lowpass_bands: torch.Tensor
    highpass_bands: torch.Tensor

    def __init__(self, size: int, radii: tuple[float, ...] = RADII) -> None:
        super().__init__()
        self.size = size
        cos, sin = _dft_matrices(size)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        rho = radial_distance(size)
        radius = torch.tensor(radii).view(-1, 1, 1)
        # (R, S, S) indicator of each ideal filter's pass band.
        self.register_buffer("lowpass_bands", (rho[None] <= radius).float(), persistent=False)
        self.register_buffer("highpass_bands", (rho[None] > radius).float(), persistent=False)

    @property
    def num_bands(self) -> int:
        return int(self.lowpass_bands.shape[0])

    def mask(self, lowpass_weights: torch.Tensor, highpass_weights: torch.Tensor) -> torch.Tensor:
        """(B, R) ring weights -> (B, 1, S, S) frequency response."""
        response = torch.einsum("br,rhw->bhw", lowpass_weights, self.lowpass_bands)
        response = response + torch.einsum("br,rhw->bhw", highpass_weights, self.highpass_bands)
        return response.unsqueeze(1)

    def forward(
        self, images: torch.Tensor, lowpass_weights: torch.Tensor, highpass_weights: torch.Tensor
    ) -> torch.Tensor:
        if images.shape[-1] != self.size or images.shape[-2] != self.size:
            raise ValueError(f"frequency filter built for {self.size}x{self.size}, got {tuple(images.shape[-2:])}")
        c, s = self.cos, self.sin
        # Forward DFT of a real image: Y = D X D with D = C - iS.
        cx, sx = c @ images, s @ images
        real = cx @ c - sx @ s
        imag = -(cx @ s + sx @ c)
        m = self.mask(lowpass_weights, highpass_weights)
        real, imag = real * m, imag * m
        # Real part of the inverse DFT: (1/N^2) Re(D* Z D*) with D* = C + iS.
        a, b = c @ real - s @ imag, c @ imag + s @ real
        return (a @ c - b @ s) / (self.size * self.size)
