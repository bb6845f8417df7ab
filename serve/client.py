"""Batch inference straight to Triton over gRPC: classify a folder of images.

    python -m serve.client DIR [--url localhost:8001] [--batch-size 64] [--model dyntta|recognizer] \\
        [--out predictions.csv | predictions.jsonl] [--top-k 1]

Images (JPEG, PNG, WebP, BMP, found recursively) go through the same preprocessing contract as training
and the gateway (:func:`dyntta.data.to_model_input` under the policy in the model's ``preprocess`` config
parameter: resize, center-crop or letterbox), are sent as uint8 [N, S, S, 3] batches, and the
results are written as CSV or JSON lines (by the output's suffix). The input size and labels come from
Triton (model metadata and the classification extension). Files that fail to decode are reported in the
output with an ``error`` and do not stop the run. The next batch is decoded while Triton works on the
current one.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image
from tqdm import tqdm
from tritonclient.utils import InferenceServerException

from dyntta.cli import EXIT_FAILURE, ArgumentParser
from dyntta.contract import IMAGE_SUFFIXES as SUFFIXES
from dyntta.contract import LOGITS, PREPROCESS_PARAMETER, find_images, parse_classification, softmax
from dyntta.data.preprocess import RESIZE, Preprocess, to_model_input
from serve.triton.errors import TritonError
from serve.triton.urls import parse_triton_url


@dataclass(frozen=True)
class Model:
    name: str
    input_name: str
    output_name: str
    size: int
    max_batch_size: int
    labels: list[str]
    preprocess: Preprocess = RESIZE


def describe(client: grpcclient.InferenceServerClient, name: str) -> Model:
    """Input, output, batch limit, preprocessing policy (the config's ``preprocess`` parameter; plain
    resize when absent) and labels of a served classifier."""
    meta = client.get_model_metadata(name, as_json=True)
    config = client.get_model_config(name, as_json=True)["config"]
    inp = meta["inputs"][0]
    out = next((o for o in meta["outputs"] if o["name"] == LOGITS), meta["outputs"][0])
    size, classes = int(inp["shape"][-2]), int(out["shape"][-1])
    parameter = (config.get("parameters") or {}).get(PREPROCESS_PARAMETER) or {}
    model = Model(
        name,
        inp["name"],
        out["name"],
        size,
        int(config.get("max_batch_size", 0) or 0),
        [str(i) for i in range(classes)],
        Preprocess.from_json(parameter.get("string_value")),
    )
    # labels: one request through the classification extension returns "score:index:label" for each class
    probe = grpcclient.InferInput(model.input_name, [1, size, size, 3], "UINT8")
    probe.set_data_from_numpy(np.zeros((1, size, size, 3), np.uint8))
    result = client.infer(
        name, [probe], outputs=[grpcclient.InferRequestedOutput(model.output_name, class_count=classes)]
    )
    model.labels[:] = parse_classification(result.as_numpy(model.output_name).reshape(-1), classes)
    return model


def decode(
    paths: Sequence[Path], size: int, policy: Preprocess = RESIZE
) -> tuple[np.ndarray[Any, Any], list[str | None]]:
    """Paths -> uint8 (N, size, size, 3) and an error (or None) per path; failed images are zeros."""
    pixels = np.zeros((len(paths), size, size, 3), np.uint8)
    errors: list[str | None] = []
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                pixels[i] = to_model_input(image, size, policy)
            errors.append(None)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            errors.append(f"{exc.__class__.__name__}: {exc}")
    return pixels, errors


Decoded = tuple[np.ndarray[Any, Any], list[str | None]]


def batches(
    paths: Sequence[Path], size: int, batch_size: int, pool: ThreadPoolExecutor, policy: Preprocess = RESIZE
) -> Iterator[tuple[Sequence[Path], np.ndarray[Any, Any], list[str | None]]]:
    """Decoded batches, one batch ahead (decoding overlaps inference)."""
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    pending: Future[Decoded] | None = pool.submit(decode, chunks[0], size, policy) if chunks else None
    for i, chunk in enumerate(chunks):
        assert pending is not None
        pixels, errors = pending.result()
        pending = pool.submit(decode, chunks[i + 1], size, policy) if i + 1 < len(chunks) else None
        yield chunk, pixels, errors


class Writer:
    def __init__(self, path: Path | None, top_k: int) -> None:
        self.jsonl = path is not None and path.suffix.lower() in (".jsonl", ".json", ".ndjson")
        self.handle = open(path, "w", newline="") if path is not None else sys.stdout  # noqa: SIM115
        self.top_k = top_k
        self.csv = None if self.jsonl else csv.writer(self.handle)
        if self.csv is not None:
            self.csv.writerow(["path", "label", "index", "probability", "top_k", "error"])

    def write(self, path: Path, probs: np.ndarray[Any, Any] | None, labels: list[str], error: str | None) -> None:
        top: list[dict[str, Any]] = []
        if probs is not None:
            order = np.argsort(-probs, kind="stable")[: self.top_k]
            top = [{"label": labels[j], "index": int(j), "probability": round(float(probs[j]), 6)} for j in order]
        if self.jsonl:
            self.handle.write(json.dumps({"path": str(path), "top_k": top, "error": error}) + "\n")
        else:
            best = top[0] if top else {"label": "", "index": "", "probability": ""}
            assert self.csv is not None
            self.csv.writerow(
                [
                    str(path),
                    best["label"],
                    best["index"],
                    best["probability"],
                    json.dumps(top) if top else "",
                    error or "",
                ]
            )

    def close(self) -> None:
        if self.handle is not sys.stdout:
            self.handle.close()


def run(directory: Path, url: str, model_name: str, batch_size: int, out: Path | None, top_k: int) -> dict[str, int]:
    paths = find_images(directory)
    if not paths:
        raise SystemExit(f"no images ({', '.join(sorted(SUFFIXES))}) under {directory}")
    client = grpcclient.InferenceServerClient(parse_triton_url(url).grpc_address)
    model = describe(client, model_name)
    step = min(batch_size, model.max_batch_size) if model.max_batch_size > 0 else 1
    writer = Writer(out, top_k)
    counts = {"images": len(paths), "classified": 0, "failed": 0}
    try:
        with (
            ThreadPoolExecutor(max_workers=1) as pool,
            tqdm(total=len(paths), unit="img", desc=model_name, file=sys.stderr) as bar,
        ):
            for chunk, pixels, errors in batches(paths, model.size, step, pool, model.preprocess):
                tensor = grpcclient.InferInput(model.input_name, list(pixels.shape), "UINT8")
                tensor.set_data_from_numpy(pixels)
                result = client.infer(
                    model.name, [tensor], outputs=[grpcclient.InferRequestedOutput(model.output_name)]
                )
                probs = softmax(result.as_numpy(model.output_name).astype(np.float64))
                for path, p, error in zip(chunk, probs, errors, strict=True):
                    writer.write(path, None if error else p, model.labels, error)
                    counts["failed" if error else "classified"] += 1
                bar.update(len(chunk))
    finally:
        writer.close()
        client.close()
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m serve.client", description=__doc__)
    parser.add_argument("directory", type=Path, help="folder of images (searched recursively) or one image")
    parser.add_argument(
        "--url",
        default="localhost:8001",
        help="Triton: host:port or grpc://host:port (gRPC), or http://host:port (gRPC on port + 1); "
        "the rule of serve.triton.urls (default: %(default)s)",
    )
    parser.add_argument(
        "--model", default="dyntta", help="dyntta (enhancer + recognizer) or recognizer (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=64, help="images per request, capped by the model (default: %(default)s)"
    )
    parser.add_argument("--top-k", type=int, default=1, help="classes listed per image (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None, help="output file: .csv or .jsonl (default: CSV on stdout)")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.top_k < 1:
        parser.error("--batch-size and --top-k must be positive")
    try:
        parse_triton_url(args.url)
    except TritonError as exc:
        parser.error(str(exc))
    try:
        counts = run(args.directory, args.url, args.model, args.batch_size, args.out, args.top_k)
    except InferenceServerException as exc:  # a runtime failure: exit 1 (dyntta.cli's rule)
        print(f"{parser.prog}: error: Triton at {args.url}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(counts), file=sys.stderr)
    return 0 if counts["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
