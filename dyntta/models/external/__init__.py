"""Bring your own recognizer: one typed loader for every frozen classifier an enhancer can be fitted through.

A recognizer spec is one of

- a dyntta recognizer checkpoint directory (``config.json`` + ``model.safetensors``);
- ``timm:ARCH`` with a weights file (state dict ``.pt``/``.pth`` or ``.safetensors``); input size, mean/std,
  interpolation and crop come from the architecture's ``pretrained_cfg``;
- ``torchvision:ARCH`` with a weights file; the same values come from the architecture's default weights
  entry (``ResNet18_Weights.DEFAULT.transforms()``: resize, crop, mean/std, interpolation);
- a TorchScript file (``torch.jit.save``), or ``torchscript:PATH``;
- an ONNX file (``*.onnx`` or ``onnx:PATH``), converted to a differentiable module with ``onnx2torch`` and
  checked for logit parity against onnxruntime on real images (:func:`check_onnx_parity`) before use.

Flags override any of the preprocessing values; a TorchScript or ONNX file carries none, so its mean/std
default to ImageNet's and its input size comes from the ONNX input shape or ``--recognizer-input-size``.

Whatever the source, :func:`load_external_recognizer` returns a frozen module with the dyntta image
contract (float ``(N, 3, S, S)`` in [0, 1], i.e. ``to_model_input`` bytes / 255, in; logits out): the
recognizer's own normalisation is folded inside, so the enhancer in front of it always works on plain pixels.

The modules, each with one job (the heavy optional packages, timm, torchvision, safetensors, onnx, onnx2torch
and onnxruntime, are imported inside the functions that use them):

- :mod:`~dyntta.models.external.preprocessing`: :class:`Preprocessing`, :class:`PreprocessingOverrides`,
  the ImageNet mean/std;
- :mod:`~dyntta.models.external.spec`: :class:`RecognizerSpec`, :class:`Kind`, :func:`spec_kind`;
- :mod:`~dyntta.models.external.recognizer`: :class:`LoadedRecognizer`, :class:`FrozenRecognizer`;
- :mod:`~dyntta.models.external.onnx_tolerance`: the ONNX parity tolerance, :class:`OnnxParity`,
  :class:`OnnxParityError`;
- :mod:`~dyntta.models.external.cli`: :func:`add_recognizer_arguments`, :func:`spec_from_args`,
  :func:`parse_classes`;
- :mod:`~dyntta.models.external.load`: :func:`load_external_recognizer`, the dispatch over the sources
  in :mod:`~dyntta.models.external.sources` (dyntta checkpoint, timm, torchvision, TorchScript; weights
  files) and :mod:`~dyntta.models.external.onnx_source` (ONNX through onnx2torch, its graph's input);
- :mod:`~dyntta.models.external.onnx_parity`: :func:`normalise`, :func:`check_onnx_parity`.
"""

from dyntta.models.external.cli import add_recognizer_arguments, parse_classes, spec_from_args
from dyntta.models.external.load import ImageSource, load_external_recognizer
from dyntta.models.external.onnx_parity import check_onnx_parity, normalise
from dyntta.models.external.onnx_tolerance import (
    ONNX_ATOL,
    ONNX_PARITY_IMAGES,
    ONNX_RTOL,
    OnnxParity,
    OnnxParityError,
)
from dyntta.models.external.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocessing,
    PreprocessingOverrides,
    Triple,
)
from dyntta.models.external.recognizer import FrozenRecognizer, LoadedRecognizer
from dyntta.models.external.sources import read_state_dict
from dyntta.models.external.spec import Kind, RecognizerSpec, is_dyntta_checkpoint, spec_kind

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ONNX_ATOL",
    "ONNX_PARITY_IMAGES",
    "ONNX_RTOL",
    "FrozenRecognizer",
    "ImageSource",
    "Kind",
    "LoadedRecognizer",
    "OnnxParity",
    "OnnxParityError",
    "Preprocessing",
    "PreprocessingOverrides",
    "RecognizerSpec",
    "Triple",
    "add_recognizer_arguments",
    "check_onnx_parity",
    "is_dyntta_checkpoint",
    "load_external_recognizer",
    "normalise",
    "parse_classes",
    "read_state_dict",
    "spec_from_args",
    "spec_kind",
]
