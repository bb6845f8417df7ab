"""Build TensorRT plans (``tensorrt_plan`` models) from the exported ONNX files.

A plan is tied to the GPU's compute capability and TensorRT version: build it on (or for) the serving GPU,
with the TensorRT version of the Triton image that will serve it. The optimisation profile covers batch
1..max_batch_size, which must match the config's ``max_batch_size``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dyntta.contract import IMAGE


class TensorRTUnavailableError(RuntimeError):
    pass


def _import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError as exc:
        raise TensorRTUnavailableError(
            "--tensorrt needs the TensorRT Python package and an NVIDIA GPU, and neither was found "
            f"({exc}). Run the export inside the NGC tritonserver/TensorRT image, or install a "
            "tensorrt wheel matching the serving Triton's TensorRT version; or drop --tensorrt and use the "
            "onnxruntime flavour (--ort-tensorrt builds TensorRT engines inside Triton at load time)."
        ) from exc
    return tensorrt


def tensorrt_version() -> str | None:
    try:
        return str(_import_tensorrt().__version__)
    except TensorRTUnavailableError:
        return None


def build_plan(
    onnx_path: str | Path,
    plan_path: str | Path,
    input_size: int,
    max_batch_size: int,
    *,
    fp16: bool = True,
    workspace_bytes: int = 1 << 30,
) -> Path:
    """Parse ``onnx_path`` with TensorRT's ONNX parser and serialise an engine to ``plan_path``."""
    trt = _import_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Explicit batch is the only mode in TensorRT 10; the flag is needed (and harmless) on 8.x.
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shape = (input_size, input_size, 3)
    profile.set_shape(IMAGE, (1, *shape), (max_batch_size, *shape), (max_batch_size, *shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    plan_path = Path(plan_path)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    return plan_path
