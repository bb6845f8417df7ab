"""What the ONNX parity check allows (:data:`ONNX_ATOL`, :data:`ONNX_RTOL`, on :data:`ONNX_PARITY_IMAGES`
real images), what it measures (:class:`OnnxParity`) and how it refuses (:class:`OnnxParityError`); the
check itself is :func:`~dyntta.models.external.onnx_parity.check_onnx_parity`."""

from __future__ import annotations

from dataclasses import dataclass

#: ONNX parity before training: ``max |torch - onnxruntime| <= atol + rtol * max |logit|``.
ONNX_ATOL = 1e-3
ONNX_RTOL = 1e-4
#: How many real images the ONNX parity check runs.
ONNX_PARITY_IMAGES = 64


class OnnxParityError(ValueError):
    """The onnx2torch conversion disagrees with onnxruntime beyond tolerance; nothing is trained on it."""


@dataclass
class OnnxParity:
    """The onnx2torch module against onnxruntime on the same normalised real images."""

    images: int
    max_abs_logit_diff: float
    max_abs_logit: float
    top1_agreement: float
    allowed: float

    @property
    def passed(self) -> bool:
        return self.max_abs_logit_diff <= self.allowed
