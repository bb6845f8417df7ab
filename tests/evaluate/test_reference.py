"""The softmax-regression CE reference: fits, exports to the uint8 NHWC ONNX contract, runs in ORT."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dyntta.data import LabelledImages
from dyntta.evaluate.classifiers import OnnxClassifier
from dyntta.evaluate.reference import accuracy, export_onnx, fit


def test_fit_and_export(fmnist_test: LabelledImages, tmp_path: Path) -> None:
    train, held_out = fmnist_test.subset(torch.arange(200, 1000)), fmnist_test.subset(torch.arange(200))
    model = fit(train, iterations=40)
    assert accuracy(model, held_out) > 0.6  # chance is 0.1
    path = export_onnx(model, tmp_path / "ref.onnx", 32, {"dyntta.reference": json.dumps({"l2": 1e-4})})
    onnx_model = OnnxClassifier(path)
    assert onnx_model.info.num_parameters == 32 * 32 * 10 + 10
    assert json.loads(onnx_model.info.metadata["dyntta.reference"]) == {"l2": 1e-4}
    with torch.no_grad():
        expected = model(held_out.images[:50].permute(0, 2, 3, 1))
    torch.testing.assert_close(onnx_model(held_out.images[:50]), expected, atol=1e-4, rtol=1e-4)
