"""What the exporter writes into the configs reaches the clients through a real Triton (issue 16 item 3,
issue 13 item 6): a recognizer checkpoint's preprocessing policy -> ``python -m export``'s repository ->
the served model configs -> the gateway's model facts (``serve.inference``) and decoding, and the batch
client; the enhancer's second output ``OP_WEIGHTS`` with its ``op_names``, while the ensemble keeps
answering from ``ENHANCED_IMAGE``."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from PIL import Image

from dyntta.contract import ENHANCED_IMAGE, ENHANCER, ENSEMBLE, LOGITS, OP_WEIGHTS, RECOGNIZER
from dyntta.data import Preprocess, to_model_input
from dyntta.models import create_recognizer, load_recognizer, save_recognizer
from export.build import export_repository, random_images, silent_log
from serve import client
from serve.imaging import Upload, decode_batch
from serve.inference import TritonBackend
from serve.triton import TritonServer
from tests.export.conftest import CLASSES, BlendingEnhancer
from tests.triton_helpers import running_triton

pytestmark = [pytest.mark.triton, pytest.mark.slow]

POLICY = Preprocess("letterbox", fill=(40, 50, 60))


@pytest.fixture(scope="module")
def repository(blending_enhancer: BlendingEnhancer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served")
    torch.manual_seed(3)
    save_recognizer(create_recognizer("test_resnet", CLASSES, preprocess=POLICY).eval(), root / "ckpt")
    recognizer = load_recognizer(root / "ckpt")  # the policy comes from the checkpoint, not from here
    out = root / "model_repository"
    export_repository(
        recognizer, CLASSES, 32, out, enhancer=blending_enhancer, parity_images=random_images(16, 32), log=silent_log
    )
    return out


@pytest.fixture(scope="module")
def server(repository: Path) -> Iterator[TritonServer]:
    yield from running_triton(repository, startup_timeout=180)


def _wide_png() -> bytes:
    pixels = np.random.default_rng(5).integers(0, 256, (20, 60, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_policy_and_op_weights_reach_the_gateway(server: TritonServer, blending_enhancer: BlendingEnhancer) -> None:
    async def facts() -> tuple[dict[str, object], dict[str, np.ndarray], np.ndarray]:
        backend = TritonBackend(server.urls.grpc_address)
        await backend.start()
        try:
            infos = {name: await backend.model_info(name) for name in (ENSEMBLE, RECOGNIZER, ENHANCER)}
            images = random_images(4, 32, seed=9)
            outputs = (await backend.infer_outputs(ENHANCER, images, [ENHANCED_IMAGE, OP_WEIGHTS])).arrays
            logits = (await backend.infer(ENSEMBLE, images)).array
            return infos, outputs, logits
        finally:
            await backend.close()

    infos, outputs, logits = asyncio.run(facts())
    assert {name: info.preprocess for name, info in infos.items()} == dict.fromkeys(infos, POLICY)
    enhancer = infos[ENHANCER]
    assert enhancer.output_name == ENHANCED_IMAGE and set(enhancer.outputs) == {ENHANCED_IMAGE, OP_WEIGHTS}
    assert enhancer.op_names == tuple(blending_enhancer.op_names())
    assert infos[ENSEMBLE].outputs == (LOGITS,) and logits.shape == (4, len(CLASSES))

    images = random_images(4, 32, seed=9)
    with torch.no_grad():
        _, want = blending_enhancer(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255, return_weights=True)
    weights = outputs[OP_WEIGHTS]
    assert weights.dtype == np.float32 and weights.shape == (4, 3)
    np.testing.assert_allclose(weights, want.numpy(), atol=1e-5)
    assert outputs[ENHANCED_IMAGE].shape == (4, 32, 32, 3)

    # the gateway decodes an upload under the served policy: letterboxed, not squashed
    png = _wide_png()
    decoded = decode_batch([Upload("wide.png", "image/png", png)], 32, 10**6, policy=infos[ENSEMBLE].preprocess)
    expected = to_model_input(Image.open(io.BytesIO(png)), 32, POLICY)
    np.testing.assert_array_equal(decoded[0], expected)
    assert (decoded[0, 0] == (40, 50, 60)).all()  # the top rows are padding


def test_batch_client_reads_the_policy(server: TritonServer) -> None:
    triton = grpcclient.InferenceServerClient(server.urls.grpc_address)
    try:
        assert client.describe(triton, ENSEMBLE).preprocess == POLICY
    finally:
        triton.close()
