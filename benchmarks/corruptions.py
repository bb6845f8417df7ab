"""Corruption suite benchmarks: speed vs the reference, Fashion-MNIST-C generation time, fidelity at 224 px.

    uv run python -m benchmarks.corruptions speed     # 19 x 5 conditions, same 32 px images, vs reference
    uv run python -m benchmarks.corruptions fmnist-c  # time to build the 75-condition Fashion-MNIST-C (10k)
    uv run python -m benchmarks.corruptions fidelity  # 224 px, ImageNet table: per-condition closeness table

The reference is ``imagecorruptions-imaug`` (a dev dependency), called image by image as it must be.
``--threads`` fixes torch's intra-op threads (default 2, the project's CPU machines).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dyntta.corruptions import (
    BENCHMARK_NAMES,
    NAMES,
    _ops,
    corrupt,
    describe,
    set_frost_textures,
)
from dyntta.corruptions.tables import IMAGENET
from dyntta.data import load_dataset

RANDOM = {
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "speckle_noise",
    "glass_blur",
    "motion_blur",
    "snow",
    "frost",
    "fog",
    "elastic_transform",
    "spatter",
}


def _reference():
    import imagecorruptions

    return imagecorruptions


def _fmnist(n: int) -> torch.Tensor:
    return load_dataset("fashion-mnist", "test").images[:n].float() / 255


def _to_uint8_hwc(x: torch.Tensor) -> list[np.ndarray]:
    return list(torch.round(x * 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy())


def speed(args: argparse.Namespace) -> None:
    ref = _reference()
    x = _fmnist(args.n)
    arrays = _to_uint8_hwc(x)
    t0 = time.perf_counter()
    ref.corrupt(arrays[0], 1, "glass_blur", seed=0)  # numba JIT compile, excluded like any warm-up
    t_ref_setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    for name in NAMES:  # one-time caches: frost textures, zoom operators, filter matrices
        for s in range(1, 6):
            corrupt(x[:2], name, s)
    print(
        f"one-time setup excluded below: ours {time.perf_counter() - t0:.1f} s (95 conditions on 2 images, "
        f"incl. frost textures), reference {t_ref_setup:.1f} s (numba JIT)"
    )
    print(
        f"{args.n} Fashion-MNIST test images at 32 px, torch threads {torch.get_num_threads()}; "
        f"ours: {describe()}; reference: imagecorruptions-imaug (ImageNet table, its only one)"
    )
    print("ours: default table (cifar at 32 px) and, for an equal-parameters comparison, the imagenet table")
    print(
        f"{'corruption':18s} {'ours img/s':>11s} {'ref img/s':>10s} {'ratio':>7s} {'ours-IN img/s':>14s} {'ratio':>7s}"
    )
    total_ours = total_ref = total_in = 0.0
    cpu_ours = cpu_ref = 0.0
    for name in NAMES:
        t0, c0 = time.perf_counter(), time.process_time()
        for s in range(1, 6):
            corrupt(x, name, s, seed=0)
        t_ours = time.perf_counter() - t0
        cpu_ours += time.process_time() - c0
        t0 = time.perf_counter()
        for s in range(1, 6):
            corrupt(x, name, s, seed=0, table="imagenet")
        t_in = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        for s in range(1, 6):
            for i, a in enumerate(arrays):
                kwargs = {"seed": i} if name in ("glass_blur", "impulse_noise") else {}
                ref.corrupt(a, s, name, **kwargs)
        t_ref = time.perf_counter() - t0
        cpu_ref += time.process_time() - c0
        total_ours += t_ours
        total_ref += t_ref
        total_in += t_in
        print(
            f"{name:18s} {5 * args.n / t_ours:11.0f} {5 * args.n / t_ref:10.0f} {t_ref / t_ours:7.1f}x "
            f"{5 * args.n / t_in:14.0f} {t_ref / t_in:7.1f}x"
        )
    print(
        f"{'all 95 conditions':18s} {95 * args.n / total_ours:11.0f} {95 * args.n / total_ref:10.0f} "
        f"{total_ref / total_ours:7.1f}x {95 * args.n / total_in:14.0f} {total_ref / total_in:7.1f}x"
    )
    print(
        f"wall time: ours {total_ours:.1f} s (imagenet table {total_in:.1f} s), reference {total_ref:.1f} s; "
        f"CPU time (all threads): ours {cpu_ours:.1f} s, reference {cpu_ref:.1f} s "
        f"(ratio {cpu_ref / cpu_ours:.1f}x); load average {os.getloadavg()[0]:.1f}"
    )


def fmnist_c(args: argparse.Namespace) -> None:
    data = load_dataset("fashion-mnist", "test")
    x = data.images.float() / 255
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    print(
        f"Fashion-MNIST-C: {len(x)} test images at {x.shape[-1]} px x {len(BENCHMARK_NAMES)} corruptions "
        f"x 5; torch threads {torch.get_num_threads()}; {describe()}"
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    for name in BENCHMARK_NAMES:
        t0, c0 = time.perf_counter(), time.process_time()
        stack = []
        for s in range(1, 6):
            for i in range(0, len(x), args.batch):  # batches share nothing: results do not depend on them
                y = corrupt(
                    x[i : i + args.batch], name, s, seed=args.seed, indices=torch.arange(i, min(i + args.batch, len(x)))
                )
                if out:  # CIFAR-10-C storage: uint8 by truncation, as np.uint8 in make_cifar_c.py
                    stack.append(torch.floor(y * 255 + 1e-4).to(torch.uint8).permute(0, 2, 3, 1).numpy())
        if out:
            np.save(out / f"{name}.npy", np.concatenate(stack))
        print(f"  {name:18s} {time.perf_counter() - t0:6.1f} s wall {time.process_time() - c0:6.1f} s CPU")
    if out:
        np.save(out / "labels.npy", np.tile(data.labels.numpy().astype(np.uint8), 5))
    print(
        f"total {time.perf_counter() - start:.1f} s wall, {time.process_time() - cpu_start:.1f} s CPU "
        f"(all threads) for {75 * len(x)} corrupted images; load average {os.getloadavg()[0]:.1f}"
    )


def _natural_images(size: int) -> list[np.ndarray]:
    import skimage.data as sd

    images = []
    for array in (sd.astronaut(), sd.chelsea(), sd.coffee(), sd.rocket()):
        h, w = array.shape[:2]
        m = min(h, w)
        crop = array[(h - m) // 2 : (h - m) // 2 + m, (w - m) // 2 : (w - m) // 2 + m]
        images.append(np.asarray(Image.fromarray(crop).resize((size, size), Image.Resampling.BILINEAR)))
    return images


def fidelity_rows(repeats: int = 3, size: int = 224) -> list[dict]:
    """Per condition: mean |ours - ref| (0-255) and the strength mean |y - x| of both (12 samples each)."""
    ref = _reference()
    arrays = _natural_images(size)
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    base = np.stack(arrays).astype(np.float64)
    rows = []
    for name in NAMES:
        for s in range(1, 6):
            ours, refs = [], []
            # frost's strength is dominated by which of the 5 textures is drawn: sample it 8x more
            for r in range(repeats * (8 if name == "frost" else 1)):
                y = corrupt(x, name, s, seed=r, table="imagenet")
                ours.append(torch.floor(y * 255 + 1e-3).permute(0, 2, 3, 1).numpy().astype(np.float64))
                outs = []
                for i, a in enumerate(arrays):
                    np.random.seed(1000 * r + i)
                    kwargs = {"seed": 1000 * r + i} if name in ("glass_blur", "impulse_noise") else {}
                    outs.append(ref.corrupt(a, s, name, **kwargs).astype(np.float64))
                refs.append(np.stack(outs))
                if name not in RANDOM:
                    break
            o, f = np.stack(ours), np.stack(refs)
            row = {
                "name": name,
                "severity": s,
                "random": name in RANDOM,
                "mad": float(np.abs(o - f).mean()) if name not in RANDOM else None,
                "strength_ours": float(np.abs(o - base).mean()),
                "strength_ref": float(np.abs(f - base).mean()),
                "std_ours": float((o - base).std()),
                "std_ref": float((f - base).std()),
            }
            if name == "motion_blur":  # same angle as the reference drew: isolates the kernel emulation
                row["mad_same_angle"] = _motion_same_angle(x, arrays, s, ref)
            rows.append(row)
    return rows


def _motion_same_angle(x: torch.Tensor, arrays: list[np.ndarray], severity: int, ref) -> float:
    radius, sigma = IMAGENET["motion_blur"][severity - 1]
    diffs = []
    for i, a in enumerate(arrays):
        np.random.seed(7 + i)
        angle = np.random.uniform(-45, 45)
        np.random.seed(7 + i)
        r = ref.corrupt(a, severity, "motion_blur").astype(np.float64)
        o = _ops.motion_blur(x[i : i + 1], radius, sigma, torch.tensor([angle])).clamp(0, 1)
        diffs.append(np.abs(torch.floor(o * 255 + 1e-3)[0].permute(1, 2, 0).numpy() - r).mean())
    return float(np.mean(diffs))


def fidelity(args: argparse.Namespace) -> None:
    print(f"224 px, ImageNet table, 4 skimage photos; {describe('imagenet')}")
    for textures in ["procedural", "imagecorruptions"] if args.frost_both else ["procedural"]:
        set_frost_textures(textures)
        rows = fidelity_rows(args.repeats)
        if textures == "imagecorruptions":
            rows = [r for r in rows if r["name"] == "frost"]
            print("\nfrost with the reference's own textures:")
        print("| corruption | kind | s1 | s2 | s3 | s4 | s5 |\n|---|---|---|---|---|---|---|")
        for name in NAMES:
            sub = [r for r in rows if r["name"] == name]
            if not sub:
                continue
            if not sub[0]["random"]:
                cells = [f"{r['mad']:.3f}" for r in sub]
                print(f"| {name} | mean abs diff | " + " | ".join(cells) + " |")
            cells = [f"{r['strength_ours']:.1f} / {r['strength_ref']:.1f}" for r in sub]
            print(f"| {name} | strength ours / ref | " + " | ".join(cells) + " |")
            if name in ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"):
                cells = [f"{r['std_ours']:.1f} / {r['std_ref']:.1f}" for r in sub]
                print(f"| {name} | residual std ours / ref | " + " | ".join(cells) + " |")
            if name == "motion_blur":
                cells = [f"{r['mad_same_angle']:.3f}" for r in sub]
                print(f"| {name} | mean abs diff, same angle | " + " | ".join(cells) + " |")
    set_frost_textures(None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--n", type=int, default=200, help="32 px images (same for ours and the reference)")
    p = sub.add_parser("fmnist-c")
    p.add_argument("--batch", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write CIFAR-10-C style .npy files here")
    p = sub.add_parser("fidelity")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--frost-both", action="store_true", help="also compare frost with the reference textures")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    {"speed": speed, "fmnist-c": fmnist_c, "fidelity": fidelity}[args.command](args)


if __name__ == "__main__":
    main()
