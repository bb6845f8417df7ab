"""benchmarks.warp_response reads the warp's raw outputs back as degrees, log2 scale and side fractions."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks.warp_response import warp_summary
from dyntta.enhancer.warp import warp_matrix


def test_the_summary_reads_the_warp_as_warp_matrix_builds_it():
    raw = torch.zeros(2, 6)
    raw[:, 0] = torch.tensor([math.atanh(0.5), -math.atanh(0.5)])  # +-30 degrees
    raw[:, 2] = math.atanh(1 / 3)  # x scale 2^(1/3)
    raw[:, 4] = math.atanh(0.5)  # x translation 0.3 normalised = 15 % of the side
    summary = warp_summary(raw)
    assert summary["abs_angle_deg"] == pytest.approx(30.0, abs=1e-3)
    assert summary["abs_log2_scale"] == pytest.approx((1 / 3) / 2, abs=1e-4)  # mean over the two axes
    assert summary["abs_translation"] == pytest.approx(0.15 / 2, abs=1e-4)
    a, t = warp_matrix(raw)
    assert math.degrees(math.atan2(a[0, 1, 0].item(), a[0, 0, 0].item())) == pytest.approx(30.0, abs=1e-3)
    assert t[0, 0].item() == pytest.approx(0.3, abs=1e-5)
