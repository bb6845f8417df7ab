"""Triton python-backend model hosting one ONNX file with onnxruntime (CPU).

Copied by ``export`` as ``<model>/<version>/model.py`` beside ``model.onnx``; the same file serves every
model, since input and output names come from the ONNX graph. Used with the Triton bundled in the
``nvidia-pytriton`` wheel, which has no onnxruntime backend.

Config ``parameters`` (strings): ``onnx_file`` (default ``model.onnx``), ``intra_op_thread_count``
(0 = onnxruntime's default, one per core), ``inter_op_thread_count``: the names the
onnxruntime backend uses, so both flavours read the same keys.

Requests gathered by Triton's dynamic batcher arrive together in ``execute``; they are concatenated into one
onnxruntime call, because the python backend does not batch by itself.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        onnx_file = params.get("onnx_file") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], onnx_file)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_thread_count") or 0)
        options.inter_op_num_threads = int(params.get("inter_op_thread_count") or 1)
        # Spinning worker threads would steal the cores that Triton and the other model's stub need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests: list[Any]) -> list[Any]:
        try:
            arrays = {n: [pb_utils.get_input_tensor_by_name(r, n).as_numpy() for r in requests] for n in self.inputs}
            sizes = [len(a) for a in arrays[self.inputs[0]]]
            feeds = {n: a[0] if len(a) == 1 else np.concatenate(a) for n, a in arrays.items()}
            results = self.session.run(self.outputs, feeds)
        except Exception as exc:  # one failed batch answers every request with the error, not a crash
            error = pb_utils.TritonError(f"onnxruntime: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(n, np.ascontiguousarray(r[start : start + size]))
                for n, r in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
