"""ONNX graphs: the uint8 NHWC contract, dynamic batch, checker, parity and its failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from dyntta.data import to_float
from export.build import ExportOptions, export_repository, random_images
from export.onnx import (
    ENHANCED_IMAGE,
    IMAGE,
    LOGITS,
    EnhancerForServing,
    ParityError,
    RecognizerForServing,
    Tolerance,
    cpu_session,
    export_identity_enhancer,
    export_module,
    recognizer_parity,
)


def test_serving_wrapper_is_the_preprocessing_contract(tiny_recognizer):
    images = random_images(4, 32)
    nchw = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        expected = tiny_recognizer(to_float(nchw))
        served = RecognizerForServing(tiny_recognizer)(torch.from_numpy(images))
    torch.testing.assert_close(served, expected)


def test_recognizer_export_has_dynamic_batch_and_uint8_nhwc_input(tiny_recognizer, tmp_path: Path):
    path = export_module(RecognizerForServing(tiny_recognizer), tmp_path / "r.onnx", 32, LOGITS)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = cpu_session(path)
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, inp.type, inp.shape[1:]) == (IMAGE, "tensor(uint8)", [32, 32, 3])
    assert isinstance(inp.shape[0], str) and out.name == LOGITS
    for batch in (1, 7):
        logits = session.run([LOGITS], {IMAGE: random_images(batch, 32)})[0]
        assert logits.shape == (batch, 10) and logits.dtype == np.float32
    wrapper = RecognizerForServing(tiny_recognizer)
    report = recognizer_parity(wrapper, path, random_images(32, 32), Tolerance())
    assert report.passed and report.max_abs_logit_diff < 1e-4 and report.top1_agreement == 1.0


def test_parity_failure_is_loud(tiny_recognizer, tmp_path: Path):
    path = export_module(RecognizerForServing(tiny_recognizer), tmp_path / "r.onnx", 32, LOGITS)
    other = RecognizerForServing(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(10)))
    other(torch.zeros(1, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(ParityError, match="disagrees with PyTorch"):
        recognizer_parity(other, path, random_images(16, 32), Tolerance())


def test_identity_enhancer_passes_bytes_through(tmp_path: Path):
    path = export_identity_enhancer(tmp_path / "e.onnx", 32)
    images = random_images(5, 32)
    out = cpu_session(path).run([ENHANCED_IMAGE], {IMAGE: images})[0]
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, images)


def test_enhancer_export_rounds_to_uint8_inside_the_graph(toy_enhancer, tmp_path: Path):
    wrapper = EnhancerForServing(toy_enhancer)
    path = export_module(wrapper, tmp_path / "e.onnx", 32, ENHANCED_IMAGE)
    images = random_images(8, 32)
    out = cpu_session(path).run([ENHANCED_IMAGE], {IMAGE: images})[0]
    assert out.dtype == np.uint8 and out.shape == images.shape
    with torch.no_grad():
        float_out = toy_enhancer(to_float(torch.from_numpy(images).permute(0, 3, 1, 2)))
    expected = (float_out * 255).round().permute(0, 2, 3, 1).numpy()
    assert np.abs(out.astype(float) - expected).max() <= 1  # .5 ties may round either way
    assert not np.array_equal(out, images)  # it did enhance


def test_export_rejects_a_batch_dependent_enhancer(tiny_recognizer, batch_dependent_enhancer, tmp_path: Path):
    with pytest.raises(ParityError, match="batch composition"):
        export_repository(
            tiny_recognizer,
            tiny_recognizer.config.classes,
            32,
            tmp_path / "repo",
            enhancer=batch_dependent_enhancer,
            parity_images=random_images(16, 32),
        )


def test_fp16_variant_keeps_the_interface(tiny_recognizer, tmp_path: Path):
    result = export_repository(
        tiny_recognizer,
        tiny_recognizer.config.classes,
        32,
        tmp_path / "repo",
        ExportOptions(fp16=True),
        parity_images=random_images(32, 32),
    )
    assert result.reports["recognizer"]["precision"] == "fp16" and result.recognizer_parity.passed
    session = cpu_session(tmp_path / "repo" / "recognizer" / "1" / "model.onnx")
    assert session.get_inputs()[0].type == "tensor(uint8)"
    assert session.get_outputs()[0].type == "tensor(float)"
    # the network itself is half precision
    model = onnx.load(str(tmp_path / "repo" / "recognizer" / "1" / "model.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
