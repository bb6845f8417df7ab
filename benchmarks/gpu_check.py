"""GPU path check (issue 11 section 4): export both flavours with TensorRT plans, check ONNX-on-CUDA and
TensorRT parity against PyTorch, and measure the ensemble's in-process throughput at batch 1/64/256.

Ready to run on a machine with an NVIDIA GPU (none was available when it was written; see docs/RESULTS.md)::

    uv sync --extra gpu && uv pip install tensorrt        # onnxruntime-gpu; TensorRT matching the serving image
    uv run python -m benchmarks.gpu_check --json gpu_check.json

``--device cpu`` runs the same steps on the CPU (no TensorRT, CPUExecutionProvider): a smoke test of this
script on machines without a GPU. Steps:

1. Device: ``nvidia-smi -L``, torch's CUDA device, onnxruntime's providers, the TensorRT version.
2. ``python -m export --flavour both --tensorrt --max-batch-size 256`` from the default checkpoints
   (cpu flavour to ``OUT/cpu``, gpu flavour with ``model.plan`` files to ``OUT/gpu``); the export itself
   checks ONNX-on-CPU parity and fails on a mismatch.
3. Parity on ``--parity-images`` seeded random images: PyTorch float32 (CPU, the reference) vs onnxruntime
   with CUDAExecutionProvider on the gpu flavour's ONNX files, and vs the TensorRT plans: max |logit
   diff|, top-1 agreement, enhancer max |pixel diff|. Pass: top-1 agreement >= 0.99 and max |logit diff|
   <= 1e-2 (CUDA; TF32 convolutions) / 5e-2 (TensorRT).
4. Throughput of the ensemble (enhancer then recognizer) in-process, input uint8 on the host and logits
   back on the host, at each ``--batches`` size: PyTorch, onnxruntime-CUDA and TensorRT, images/s and p50.

Exit status 0 when every parity check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # uint8 NHWC -> (enhanced uint8, logits)


def device_report(device: str) -> dict[str, Any]:
    import onnxruntime as ort

    report: dict[str, Any] = {"onnxruntime": ort.__version__, "providers": ort.get_available_providers()}
    if shutil.which("nvidia-smi"):
        report["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
    report["torch_cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    try:
        import tensorrt

        report["tensorrt"] = tensorrt.__version__
    except ImportError:
        report["tensorrt"] = None
    if device == "cuda" and (report["torch_cuda"] is None or "CUDAExecutionProvider" not in report["providers"]):
        raise SystemExit(f"no usable GPU: {report} (install the gpu extra: uv sync --extra gpu)")
    return report


def export(args: argparse.Namespace, out: Path) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "export",
        "--recognizer",
        args.recognizer,
        "--enhancer",
        args.enhancer,
        "--flavour",
        "both",
        "--out",
        str(out / "cpu"),
        "--gpu-out",
        str(out / "gpu"),
        "--max-batch-size",
        str(max(args.batches)),
        "--parity-data",
        "random",
    ]
    if args.device == "cuda":
        command.append("--tensorrt")
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    return command


def torch_runner(args: argparse.Namespace, device: str) -> Runner:
    from dyntta.enhancer import load_enhancer
    from dyntta.models import load_recognizer
    from export.onnx import EnhancerForServing, RecognizerForServing

    enhancer = EnhancerForServing(load_enhancer(args.enhancer).eval()).to(device).eval()
    recognizer = RecognizerForServing(load_recognizer(args.recognizer).eval()).to(device).eval()

    @torch.inference_mode()
    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        enhanced = enhancer(torch.from_numpy(images).to(device))
        logits = recognizer(enhanced)
        return enhanced.cpu().numpy(), logits.float().cpu().numpy()

    return run


def ort_runner(repository: Path, device: str) -> Runner:
    import onnxruntime as ort

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    enhancer = ort.InferenceSession(str(repository / "enhancer" / "1" / "model.onnx"), providers=providers)
    recognizer = ort.InferenceSession(str(repository / "recognizer" / "1" / "model.onnx"), providers=providers)
    if device == "cuda" and "CUDAExecutionProvider" not in recognizer.get_providers():
        raise SystemExit(f"onnxruntime did not take the CUDA provider: {recognizer.get_providers()}")

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        enhanced = enhancer.run(None, {"IMAGE": images})[0]
        return enhanced, recognizer.run(None, {"IMAGE": enhanced})[0]

    return run


class TensorRTEngine:
    """One ``model.plan`` with a single input IMAGE and a single output, on torch CUDA tensors."""

    def __init__(self, plan: Path) -> None:
        import tensorrt as trt

        self.trt = trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        dtypes = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.UINT8: torch.uint8}
        self.output_dtype = dtypes[self.engine.get_tensor_dtype(self.output)]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        self.context.set_input_shape("IMAGE", tuple(image.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), dtype=self.output_dtype, device="cuda")
        self.context.set_tensor_address("IMAGE", image.data_ptr())
        self.context.set_tensor_address(self.output, out.data_ptr())
        stream = torch.cuda.current_stream()
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out


def trt_runner(repository: Path) -> Runner:
    enhancer = TensorRTEngine(repository / "enhancer" / "1" / "model.plan")
    recognizer = TensorRTEngine(repository / "recognizer" / "1" / "model.plan")

    def run(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        enhanced = enhancer(torch.from_numpy(images).cuda().contiguous())
        logits = recognizer(enhanced.contiguous())
        torch.cuda.synchronize()
        return enhanced.cpu().numpy(), logits.float().cpu().numpy()

    return run


@dataclass(frozen=True)
class RuntimeParity:
    """One runtime's ensemble against the PyTorch CPU reference (``asdict``: its entry in the results)."""

    max_abs_logit_diff: float
    top1_agreement: float
    enhancer_max_abs_pixel_diff: int
    atol: float
    passed: bool


def parity(reference: Runner, candidate: Runner, images: np.ndarray, atol: float) -> RuntimeParity:
    ref_enh, ref_logits = reference(images)
    enh, logits = candidate(images)
    diff = float(np.abs(logits - ref_logits).max())
    agreement = float((logits.argmax(1) == ref_logits.argmax(1)).mean())
    pixels = int(np.abs(enh.astype(np.int16) - ref_enh.astype(np.int16)).max())
    return RuntimeParity(diff, agreement, pixels, atol, passed=diff <= atol and agreement >= 0.99)


def throughput(run: Runner, size: int, batch: int, seconds: float) -> dict[str, float]:
    images = np.random.default_rng(batch).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    for _ in range(3):  # warm-up: kernels, engine contexts, allocator
        run(images)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        start = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - start)
    return {
        "batch": batch,
        "calls": len(times),
        "images_per_s": round(batch * len(times) / sum(times), 1),
        "p50_ms": round(statistics.median(times) * 1000, 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--recognizer", default="checkpoints/fashion-mnist/recognizer", help="default: %(default)s")
    add("--enhancer", default="checkpoints/fashion-mnist/enhancer", help="default: %(default)s")
    add("--out", default="/tmp/dyntta-gpu-check", help="export directory, replaced (default: %(default)s)")
    add("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: smoke test (default: %(default)s)")
    add("--batches", nargs="+", type=int, default=[1, 64, 256], help="default: %(default)s")
    add("--seconds", type=float, default=5.0, help="measuring time per cell (default: %(default)s)")
    add("--parity-images", type=int, default=256, help="default: %(default)s")
    add("--skip-export", action="store_true", help="reuse --out from an earlier run (default: off)")
    add("--json", default=None, help="also write the results here (default: none)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    results: dict[str, Any] = {"device": device_report(args.device)}
    print(json.dumps(results["device"]), flush=True)
    if not args.skip_export:
        shutil.rmtree(out, ignore_errors=True)
        results["export_command"] = " ".join(export(args, out))
    gpu_repo = out / "gpu"
    size = int(json.loads((gpu_repo / "recognizer" / "export.json").read_text())["onnx"]["inputs"][0]["shape"][1])
    images = np.random.default_rng(0).integers(0, 256, (args.parity_images, size, size, 3), dtype=np.uint8)

    reference = torch_runner(args, "cpu")
    runners: dict[str, Runner] = {f"torch-{args.device}": torch_runner(args, args.device)}
    runners[f"onnxruntime-{args.device}"] = ort_runner(gpu_repo, args.device)
    if args.device == "cuda":
        runners["tensorrt"] = trt_runner(gpu_repo)
    atol = {"tensorrt": 5e-2}
    checks = {
        name: parity(reference, run, images, atol.get(name, 1e-2 if args.device == "cuda" else 1e-3))
        for name, run in runners.items()
    }
    results["parity"] = {name: asdict(check) for name, check in checks.items()}
    print(json.dumps(results["parity"], indent=2), flush=True)
    results["throughput"] = {
        name: [throughput(run, size, batch, args.seconds) for batch in args.batches] for name, run in runners.items()
    }
    print(json.dumps(results["throughput"], indent=2), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all(check.passed for check in checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
