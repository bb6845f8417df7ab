"""An ONNX recognizer (``*.onnx`` or ``onnx:PATH``), converted to a differentiable module with ``onnx2torch``,
and the reading of its graph. Its conversion is checked for logit parity against onnxruntime before use
(:func:`~dyntta.models.external.onnx_parity.check_onnx_parity`); the served graph stays the user's file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from dyntta.models.external.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, square_size


def from_onnx(path: Path) -> tuple[nn.Module, Preprocessing]:
    """An ONNX file (``*.onnx`` or ``onnx:PATH``), converted to a differentiable module with ``onnx2torch``. It
    carries no preprocessing: mean/std are ImageNet's and the input size comes from the ONNX input shape or
    ``--recognizer-input-size``. Before use the conversion is checked for logit parity against onnxruntime on
    real images (:func:`~dyntta.models.external.onnx_parity.check_onnx_parity`)."""
    import onnx

    if not path.is_file():
        raise ValueError(f"--recognizer {path}: no such ONNX file")
    try:
        from onnx2torch import convert
    except ImportError:
        raise ValueError("ONNX recognizers are converted with onnx2torch: install it (uv add onnx2torch)") from None
    model = onnx.load(str(path))
    _, size = onnx_input(model, path)
    try:
        network = convert(inline_initializer_aliases(model))
    except Exception as error:  # onnx2torch raises NotImplementedError and others for unsupported nodes
        raise ValueError(f"onnx2torch cannot convert {path}: {error}") from None
    return network.eval(), Preprocessing(size, IMAGENET_MEAN, IMAGENET_STD, source="ImageNet mean/std (ONNX)")


def onnx_input(model: Any, path: Path) -> tuple[str, int]:
    """The ONNX graph's one image input: its name and (when static and square) its side."""
    from onnx import TensorProto

    initialisers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialisers]
    if len(inputs) != 1 or len(model.graph.output) != 1:
        raise ValueError(f"{path}: a recognizer ONNX graph has one input (images) and one output (logits)")
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != TensorProto.FLOAT:
        raise ValueError(f"{path}: the input must be float32 NCHW, not {TensorProto.DataType.Name(tensor.elem_type)}")
    dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
    if len(dims) != 4 or dims[1] not in (0, 3):
        raise ValueError(f"{path}: the input must be NCHW with 3 channels, got dims {dims}")
    return inputs[0].name, square_size(dims[2:], str(path)) if dims[2] and dims[3] else 0


def inline_initializer_aliases(model: Any) -> Any:
    """A copy of ``model`` whose ``Identity(initializer)`` nodes are gone, their consumers reading the
    initializer itself: torch's exporter shares equal weights that way, and onnx2torch's converters look
    weights up among the initializers (the served graph stays the user's file, untouched)."""
    from onnx import ModelProto

    copy = ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    weights = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Identity" and n.input[0] in weights and n.output[0] not in outputs
    }
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output and n.output[0] in alias)]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(kept)
    return copy
