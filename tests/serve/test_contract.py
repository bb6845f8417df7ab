"""The preprocessing contract: real Fashion-MNIST test images uploaded as PNG files are classified through
the gateway exactly as the same model classifies them offline from the training-style tensors.

Offline: raw 28x28 IDX pixels -> ``arrays_to_model_input`` (how every data set is built) -> the model.
Gateway: the same pixels written as PNG files -> upload -> Pillow decode -> ``to_model_input`` -> Triton.
Any drift (a different resize, channel order, normalisation or dtype) changes predictions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from dyntta.data import arrays_to_model_input
from tests.serve.conftest import SIZE, LinearProbe, LiveGateway
from tests.serve.helpers import fmnist_raw, png_bytes

COUNT = 1000
BATCH = 50


@pytest.fixture(scope="module")
def test_images(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], np.ndarray, np.ndarray]:
    raw, labels = fmnist_raw("test", COUNT)
    folder = tmp_path_factory.mktemp("fmnist_png")
    paths = []
    for i, image in enumerate(raw):
        path = folder / f"{i:04d}.png"
        path.write_bytes(png_bytes(image))
        paths.append(path)
    return paths, raw, labels


def test_gateway_accuracy_equals_offline_accuracy(
    gateway: LiveGateway, probe: LinearProbe, gateway_repository: Path, test_images
):
    paths, raw, labels = test_images
    tensors = arrays_to_model_input(raw, SIZE)  # uint8 (N, 3, 32, 32), as in training
    with torch.no_grad():
        torch_pred = probe(tensors.float() / 255).argmax(1).numpy()
    session = ort.InferenceSession(
        str(gateway_repository / "recognizer" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    onnx_logits = session.run(None, {"IMAGE": tensors.permute(0, 2, 3, 1).numpy()})[0]
    onnx_pred = onnx_logits.argmax(1)

    gateway_pred = np.empty(COUNT, dtype=np.int64)
    with gateway.client() as client:
        for start in range(0, COUNT, BATCH):
            chunk = paths[start : start + BATCH]
            response = client.post(
                "/v1/classify",
                params={"enhance": "false", "top_k": 1},
                files=[("files", (p.name, p.read_bytes(), "image/png")) for p in chunk],
            )
            assert response.status_code == 200, response.text
            gateway_pred[start : start + BATCH] = [r["top_k"][0]["index"] for r in response.json()["results"]]

    accuracy = {
        name: float((pred == labels).mean())
        for name, pred in (("torch", torch_pred), ("onnx", onnx_pred), ("gateway", gateway_pred))
    }
    assert accuracy["torch"] > 0.7, accuracy  # a real classifier, so drift would show
    assert accuracy["gateway"] == accuracy["onnx"] == accuracy["torch"], accuracy
    np.testing.assert_array_equal(gateway_pred, onnx_pred)


def test_wrong_preprocessing_would_be_caught(probe: LinearProbe, test_images):
    """The check has teeth: nearest-neighbour resizing instead of the contract's bilinear changes
    predictions of this model."""
    from PIL import Image

    _, raw, _ = test_images
    with torch.no_grad():
        right = probe(arrays_to_model_input(raw[:300], SIZE).float() / 255).argmax(1)
        wrong_pixels = np.stack(
            [
                np.asarray(Image.fromarray(a).convert("RGB").resize((SIZE, SIZE), Image.Resampling.NEAREST))
                for a in raw[:300]
            ]
        )
        wrong = probe(torch.from_numpy(wrong_pixels).permute(0, 3, 1, 2).float() / 255).argmax(1)
    assert (right != wrong).any()
