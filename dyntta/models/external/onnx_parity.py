"""The ONNX parity check: the onnx2torch module against onnxruntime on the same real images, normalised as
the user's own network takes them (:func:`normalise`); past tolerance
(:mod:`~dyntta.models.external.onnx_tolerance`) nothing is trained through it."""

from __future__ import annotations

import numpy as np
import torch

from dyntta.models.external.onnx_tolerance import ONNX_RTOL, OnnxParity, OnnxParityError
from dyntta.models.external.preprocessing import Preprocessing
from dyntta.models.external.recognizer import LoadedRecognizer


def normalise(images: torch.Tensor, preprocessing: Preprocessing) -> np.ndarray:
    """uint8 (N, 3, S, S) -> the float32 NCHW array the user's own network (ONNX) takes."""
    mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
    return ((images.float() / 255.0 - mean) / std).numpy().astype(np.float32)


@torch.no_grad()
def check_onnx_parity(loaded: LoadedRecognizer, images: torch.Tensor) -> OnnxParity:
    """The converted module against onnxruntime on ``images`` (uint8 NCHW); :class:`OnnxParityError` past
    ``atol + rtol * max|logit|``."""
    import onnxruntime as ort

    path = loaded.spec.path
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = normalise(images, loaded.preprocessing)
    expected = session.run(None, {session.get_inputs()[0].name: feed})[0]
    converted = loaded.module(images.float() / 255.0).numpy()
    scale = float(np.abs(expected).max())
    parity = OnnxParity(
        images=len(images),
        max_abs_logit_diff=float(np.abs(converted - expected).max()),
        max_abs_logit=scale,
        top1_agreement=float((converted.argmax(1) == expected.argmax(1)).mean()),
        allowed=loaded.spec.onnx_atol + ONNX_RTOL * scale,
    )
    if not parity.passed:
        raise OnnxParityError(
            f"onnx2torch's conversion of {path} disagrees with onnxruntime on {parity.images} real images: "
            f"max |logit diff| {parity.max_abs_logit_diff:.3g} > allowed {parity.allowed:.3g} (top-1 agreement "
            f"{parity.top1_agreement:.3f}); not training through it (--onnx-atol raises the tolerance)"
        )
    return parity
