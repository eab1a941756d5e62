"""Per-sample cost (ms) of the coarse, refiner and selection training datasets.

Usage: python benchmarks/bench_datasets.py [--scenes DIR] [--n 40] [--size 160] [--threads 1]

Without --scenes it first makes a small synthetic set (procedural objects, 640x480 images) in a
temporary folder. Samples are read in a shuffled order, as training does. "cold" is the first
sample (meshes loaded, renderer created); "warm" the median and mean of the rest. "cpu" is the
median process CPU time per warm sample: with 1 torch thread and llvmpipe at LP_NUM_THREADS=0 (set
by the GL backend) a sample runs on one core, so on a shared, loaded machine it estimates the wall
time of an idle one. torch runs with --threads intra-op threads, 1 by default as in DataLoader workers.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_scenes(folder: Path, n_objects: int, n_images: int) -> Path:
    """A synthetic BOP set in folder/ds made from n_objects procedural objects."""
    from cooppose.data.synth.models import make_object_set
    from cooppose.data.synth.scenes import SceneConfig, generate_scenes

    make_object_set(folder / "objects", n_objects, seed=0)
    generate_scenes(folder / "objects", folder / "ds", n_images, seed=0, cfg=SceneConfig(images_per_scene=n_images))
    return folder / "ds"


def bench(kind: str, scenes: Path, n: int, size: int) -> dict:
    """Cold / warm per-sample milliseconds of one dataset kind."""
    from cooppose.data.datasets import build_dataset

    ds = build_dataset(kind, {"scenes": str(scenes), "size": size, "val_fraction": 0.0}, "train")
    order = np.random.default_rng(0).permutation(len(ds))[:n]
    times, cpu = [], []
    for i in order:
        t, c = time.perf_counter(), time.process_time()
        ds[int(i)]
        times.append(1000 * (time.perf_counter() - t))
        cpu.append(1000 * (time.process_time() - c))
    return {"kind": kind, "n": len(times), "cold_ms": times[0], "warm_ms": float(np.median(times[1:])),
            "mean_ms": float(np.mean(times[1:])), "cpu_ms": float(np.median(cpu[1:]))}


def main() -> None:
    """Parse the arguments, build or use the scenes, print one line per dataset kind."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", default=None, help="BOP scenes (default: make a temporary synthetic set)")
    ap.add_argument("--n", type=int, default=40, help="samples per dataset")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (DataLoader workers use 1)")
    ap.add_argument("--objects", type=int, default=8, help="objects of the temporary set")
    ap.add_argument("--images", type=int, default=10, help="images of the temporary set")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        scenes = Path(args.scenes) if args.scenes else make_scenes(Path(tmp), args.objects, args.images)
        print(f"scenes: {scenes if args.scenes else 'temporary synthetic set'}; S={args.size}; torch threads={args.threads}")
        for kind in ("coarse", "refiner", "selection"):
            r = bench(kind, scenes, args.n, args.size)
            print(f"{kind:9s} {r['n']:3d} samples: warm median {r['warm_ms']:6.1f} ms, mean {r['mean_ms']:6.1f} ms, "
                  f"cpu {r['cpu_ms']:6.1f} ms, cold {r['cold_ms']:6.0f} ms")


if __name__ == "__main__":
    main()
