"""``python -m export --recognizer SPEC`` for a bring-your-own recognizer (:mod:`dyntta.models.external`).

- ``timm:ARCH``, ``torchvision:ARCH`` and TorchScript recognizers are exported like a dyntta checkpoint:
  the frozen module (its normalisation folded in) behind the uint8 NHWC serving wrapper.
- An ONNX recognizer is served as given: its graph, nodes and weights unchanged, behind a small prefix
  (``IMAGE`` uint8 NHWC -> float NCHW / 255 -> the recognizer's mean/std) composed in front of it with
  :func:`onnx.compose.merge_models`, its output renamed ``LOGITS``. Two checks before anything is written:
  the served graph against the user's file under onnxruntime on the same images (``served_as_given``),
  and the export's usual parity against the PyTorch module the enhancer was fitted through (the
  onnx2torch conversion).

Preprocessing values, class names and weights the command line leaves out come from the enhancer's recipe
when it was fitted through the same recognizer, so ``--recognizer model.onnx --enhancer DIR`` is enough.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from dyntta.cli import UsageError
from dyntta.contract import IMAGE, LOGITS, sha256_file
from dyntta.models.external import (
    Kind,
    LoadedRecognizer,
    Preprocessing,
    add_recognizer_arguments,
    is_dyntta_checkpoint,
    load_external_recognizer,
    normalise,
    spec_from_args,
)
from export.build import ExportResult
from export.onnx import ParityError, cpu_session
from export.parity import AsGivenParity

_PREFIX = "dyntta_preprocess_"  # names of the prefix graph's nodes and tensors


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_recognizer_arguments(parser)


def is_external(spec: str) -> bool:
    """Anything but a dyntta recognizer checkpoint directory."""
    return not is_dyntta_checkpoint(spec)


def _graph_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    initialisers = {i.name for i in model.graph.initializer}
    (image,) = [i for i in model.graph.input if i.name not in initialisers]
    return image


def serving_graph(source: Path, preprocessing: Preprocessing, out: Path) -> Path:
    """The user's ONNX graph unchanged behind ``IMAGE`` uint8 NHWC -> normalised float NCHW, output ``LOGITS``."""
    user = onnx.load(str(source))
    image = _graph_input(user)
    batch = image.type.tensor_type.shape.dim[0]
    if batch.HasField("dim_value"):
        raise ValueError(
            f"{source} has a fixed batch size {batch.dim_value}; Triton batches requests: export it with a "
            "dynamic first axis"
        )
    size = preprocessing.input_size
    mean = np.asarray(preprocessing.mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(preprocessing.std, dtype=np.float32).reshape(1, 3, 1, 1)
    p = _PREFIX
    nodes = [
        helper.make_node("Cast", [IMAGE], [p + "float"], to=TensorProto.FLOAT, name=p + "cast"),
        helper.make_node("Transpose", [p + "float"], [p + "nchw"], perm=[0, 3, 1, 2], name=p + "nchw"),
        helper.make_node("Div", [p + "nchw", p + "255"], [p + "unit"], name=p + "unit"),
        helper.make_node("Sub", [p + "unit", p + "mean"], [p + "centred"], name=p + "centre"),
        helper.make_node("Div", [p + "centred", p + "std"], [p + "out"], name=p + "scale"),
    ]
    constants = [
        helper.make_tensor(p + "255", TensorProto.FLOAT, [], [255.0]),
        helper.make_tensor(p + "mean", TensorProto.FLOAT, mean.shape, mean.ravel().tolist()),
        helper.make_tensor(p + "std", TensorProto.FLOAT, std.shape, std.ravel().tolist()),
    ]
    graph = helper.make_graph(
        nodes,
        "dyntta_preprocess",
        [helper.make_tensor_value_info(IMAGE, TensorProto.UINT8, ["batch", size, size, 3])],
        [helper.make_tensor_value_info(p + "out", TensorProto.FLOAT, ["batch", 3, size, size])],
        initializer=constants,
    )
    prefix = helper.make_model(graph, opset_imports=list(user.opset_import), producer_name="dyntta.export")
    prefix.ir_version = user.ir_version
    merged = onnx.compose.merge_models(prefix, user, io_map=[(p + "out", image.name)])
    (output,) = merged.graph.output
    merged.graph.node.append(helper.make_node("Identity", [output.name], [LOGITS], name=p + "logits"))
    logits = onnx.ValueInfoProto()
    logits.CopyFrom(output)
    logits.name = LOGITS
    del merged.graph.output[:]
    merged.graph.output.append(logits)
    onnx.checker.check_model(merged, full_check=True)
    onnx.save(merged, str(out))
    return out


def served_as_given(served: Path, loaded: LoadedRecognizer, images: np.ndarray, atol: float) -> AsGivenParity:
    """The served graph on uint8 NHWC ``images`` against the user's file on the same images normalised in
    numpy, both under onnxruntime: the same network, so the same logits."""
    source = loaded.spec.path
    original = cpu_session(source)
    feed = normalise(torch.from_numpy(images).permute(0, 3, 1, 2), loaded.preprocessing)
    expected = original.run(None, {original.get_inputs()[0].name: feed})[0]
    got = cpu_session(served).run([LOGITS], {IMAGE: images})[0]
    report = AsGivenParity(
        source=str(source),
        source_sha256=sha256_file(source),
        source_nodes=len(onnx.load(str(source), load_external_data=False).graph.node),
        images=len(images),
        max_abs_logit_diff=float(np.abs(got - expected).max()),
        top1_agreement=float((got.argmax(1) == expected.argmax(1)).mean()),
        atol=atol,
    )
    if not report.passed:
        raise ParityError(f"the served ONNX recognizer differs from {source}: {report.to_json()}")
    return report


def run(args: argparse.Namespace, command: str) -> ExportResult:
    """``python -m export`` with a recognizer that is not a dyntta checkpoint (see the module doc)."""
    # export.__main__ holds the command's option handling; imported here, where it is already loaded
    from export.__main__ import _options, check_sizes, load_enhancer_checkpoint, parity_batch
    from export.build import export_repository

    enhancer, enh_meta = load_enhancer_checkpoint(args.enhancer) if args.enhancer else (None, {})
    recipe = enh_meta.get("recipe") or {}
    recorded = recipe.get("recognizer_spec") or {}
    spec = spec_from_args(args, recorded if recorded.get("spec") == args.recognizer else None)
    data = args.parity_data or recipe.get("data") or "fashion-mnist"
    # the recipe's folder belongs to the recipe's data set, not to one named with --parity-data
    data_dir = args.data_dir or (None if args.parity_data else recipe.get("data_dir"))

    def images_nchw(preprocessing: Preprocessing, count: int) -> torch.Tensor:
        return torch.from_numpy(parity_batch(data, count, preprocessing.input_size, data_dir)[0]).permute(0, 3, 1, 2)

    loaded = load_external_recognizer(spec, images_nchw)
    size = loaded.preprocessing.input_size
    classes = loaded.classes or recipe.get("classes")
    if not classes or len(classes) != loaded.num_classes:
        raise UsageError(f"name the recognizer's {loaded.num_classes} classes with --classes (a file or a,b,c)")
    check_sizes(size, enh_meta)
    description = loaded.describe()
    rec_meta = {"format": f"external ({loaded.kind})", "model": description, "recipe": {"command": command}}
    options = _options(args, command, rec_meta, enh_meta)
    images, options.parity_data = parity_batch(data, args.parity_images, size, data_dir)
    with tempfile.TemporaryDirectory(prefix="dyntta-external-") as tmp:
        served = None
        if loaded.kind is Kind.ONNX:
            if args.fp16:
                raise UsageError("an ONNX recognizer is served as given; --fp16 does not apply to it")
            served = serving_graph(spec.path, loaded.preprocessing, Path(tmp) / "recognizer.onnx")
            as_given = served_as_given(served, loaded, images, options.parity_tolerance().atol)
            description["served_as_given"] = as_given.to_json()
        return export_repository(
            loaded.module,
            classes,
            size,
            args.out,
            options,
            enhancer=enhancer,
            parity_images=images,
            preprocess=loaded.policy,
            recognizer_onnx=served,
        )
