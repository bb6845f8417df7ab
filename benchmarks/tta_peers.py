"""Test-time adaptation peers on the same recognizer and data, in one run.

Methods: no adaptation, classic TTA (ttach: flips x brightness), BatchNorm-statistics adaptation, TENT
(entropy minimisation of BN affine parameters, one Adam step per batch), and the DynTTA enhancer.

Settings:
- serving, single images: a stream of single images whose corruption changes from image to image;
- serving, mixed batches of 64: the same stream batched, as a server's dynamic batcher would;
- homogeneous batches of 200 from one corruption and severity (what BN adaptation and TENT assume;
  their state is reset per condition, as in the TENT paper).
Accuracy is over (image, corruption, severity) triples of the 15 benchmark corruptions; cost is wall time
per image on this machine, measured in the same run.

    uv run python benchmarks/tta_peers.py --images 400
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable

import torch
import ttach
from torch import nn
from tqdm import tqdm

from dyntta.corruptions import BENCHMARK_NAMES, corrupt
from dyntta.data import load_dataset, to_float
from dyntta.enhancer import load_enhancer
from dyntta.models import load_recognizer

Predict = Callable[[torch.Tensor], torch.Tensor]


def bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class BatchNormAdapt:
    """Normalise with the statistics of the incoming batch instead of the training statistics."""

    def __init__(self, model: nn.Module) -> None:
        self.model = copy.deepcopy(model).eval()
        for bn in bn_layers(self.model):
            bn.train()
            bn.track_running_stats = False
            bn.running_mean = bn.running_var = None

    def reset(self) -> None:
        pass

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Tent:
    """TENT (Wang et al., ICLR 2021): batch statistics + one entropy-minimisation step on BN affine params."""

    def __init__(self, model: nn.Module, lr: float = 1e-3) -> None:
        self.source = copy.deepcopy(model)
        self.lr = lr
        self.reset()

    def reset(self) -> None:
        self.model = BatchNormAdapt(self.source).model
        for p in self.model.parameters():
            p.requires_grad_(False)
        params = []
        for bn in bn_layers(self.model):
            for p in (bn.weight, bn.bias):
                p.requires_grad_(True)
                params.append(p)
        self.optimizer = torch.optim.Adam(params, lr=self.lr, betas=(0.9, 0.999))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        entropy = -(logits.softmax(1) * logits.log_softmax(1)).sum(1).mean()
        self.optimizer.zero_grad()
        entropy.backward()
        self.optimizer.step()
        return logits.detach()


class Stateless:
    def __init__(self, fn: Predict) -> None:
        self.fn = fn

    def reset(self) -> None:
        pass

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def build_methods(recognizer: nn.Module, enhancer: nn.Module) -> dict[str, Callable[[], object]]:
    tta = ttach.ClassificationTTAWrapper(
        recognizer, ttach.Compose([ttach.HorizontalFlip(), ttach.Multiply([0.9, 1.0, 1.1])]), merge_mode="mean"
    )
    return {
        "none": lambda: Stateless(recognizer),
        "ttach (flip x brightness, 6 passes)": lambda: Stateless(tta),
        "BN adaptation": lambda: BatchNormAdapt(recognizer),
        "TENT": lambda: Tent(recognizer),
        "DynTTA enhancer (ours)": lambda: Stateless(lambda x: recognizer(enhancer(x))),
    }


def corrupted_stream(images: torch.Tensor, severities: list[int], seed: int) -> tuple[torch.Tensor, ...]:
    """All (image, corruption, severity) triples: uint8 images and their condition ids."""
    out, image_ids, conditions = [], [], []
    x = to_float(images)
    for c, name in enumerate(tqdm(BENCHMARK_NAMES, desc="corrupting")):
        for s in severities:
            out.append((corrupt(x, name, s, seed=seed) * 255).round().to(torch.uint8))
            image_ids.append(torch.arange(len(images)))
            conditions.append(torch.full((len(images),), c * 10 + s))
    return torch.cat(out), torch.cat(image_ids), torch.cat(conditions)


def run_setting(
    method, images: torch.Tensor, labels: torch.Tensor, batches: list[torch.Tensor], reset_each_batch: bool, desc: str
) -> tuple[float, float]:
    correct, seen, elapsed = 0, 0, 0.0
    for index in tqdm(batches, desc=desc, leave=False):
        if reset_each_batch:
            method.reset()
        x = to_float(images[index])
        started = time.perf_counter()
        logits = method(x)
        elapsed += time.perf_counter() - started
        correct += (logits.argmax(1) == labels[index]).sum().item()
        seen += len(index)
    return correct / seen, 1000 * elapsed / seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recognizer", default="checkpoints/fashion-mnist/recognizer")
    parser.add_argument("--enhancer", default="checkpoints/fashion-mnist/enhancer")
    parser.add_argument("--images", type=int, default=400, help="test images per condition")
    parser.add_argument("--severities", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    parser.add_argument("--single", type=int, default=1500, help="stream length for the single-image setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    recognizer = load_recognizer(args.recognizer).eval()
    enhancer = load_enhancer(args.enhancer).eval()
    test = load_dataset("fashion-mnist", "test", image_size=recognizer.config.input_size)
    images, image_ids, conditions = corrupted_stream(test.images[: args.images], args.severities, args.seed)
    labels = test.labels[image_ids]
    shuffled = torch.randperm(len(images))
    settings = {
        "serving: single images": ([shuffled[i : i + 1] for i in range(args.single)], False),
        "serving: mixed batches of 64": (list(shuffled.split(64)), False),
        "homogeneous batches of 200": (
            [idx for c in conditions.unique() for idx in torch.nonzero(conditions == c).flatten().split(200)],
            True,
        ),
    }
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, factory in build_methods(recognizer, enhancer).items():
        results[name] = {}
        for setting, (batches, reset) in settings.items():
            method = factory()
            accuracy, ms = run_setting(method, images, labels, batches, reset, f"{name} / {setting}")
            results[name][setting] = {"accuracy": round(100 * accuracy, 2), "ms_per_image": round(ms, 3)}
            print(f"{name:40s} {setting:32s} acc {100 * accuracy:6.2f} %   {ms:8.3f} ms/image", flush=True)
    header = "| method | " + " | ".join(f"{s} acc % | ms/img" for s in settings) + " |"
    print("\n" + header + "\n|" + "---|" * (1 + 2 * len(settings)))
    for name, row in results.items():
        cells = " | ".join(f"{row[s]['accuracy']:.2f} | {row[s]['ms_per_image']:.2f}" for s in settings)
        print(f"| {name} | {cells} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
