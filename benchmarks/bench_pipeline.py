"""Time the inference pipeline per detection: coarse only, 1 hypothesis, 5 hypotheses; and onboarding per object.

Uses the bundled checkpoints when present (or --checkpoints DIR), else randomly initialised networks of
the same size (timings do not depend on the weights). The scene is the bundled duck rendered into a
640x480 image. Targets on a 2-core CPU: coarse < 0.3 s, 1 hypothesis < 1 s, 5 hypotheses < 3 s.

    python benchmarks/bench_pipeline.py [--size tiny] [--repeats 5] [--depth] [--threads N] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from cooppose.errors import CheckpointError
from cooppose.geometry.transforms import make_pose, so3_exp
from cooppose.models import build_model
from cooppose.objects import bundled_mesh_path, load_mesh
from cooppose.pipeline import PoseEstimator
from cooppose.render import Renderer

K = np.array([[600.0, 0.0, 320.0], [0.0, 600.0, 240.0], [0.0, 0.0, 1.0]])
T_GT = make_pose(so3_exp(np.array([0.4, -1.2, 2.0])), np.array([30.0, -20.0, 600.0]))


def make_estimator(size: str, checkpoints: str | None, renderer: Renderer, cache_dir: str) -> tuple[PoseEstimator, str]:
    """The estimator from checkpoints when they exist, else from random networks; and which one it is."""
    try:
        return PoseEstimator.from_pretrained(checkpoints, size=size, renderer=renderer, cache_dir=cache_dir), "checkpoints"
    except CheckpointError:
        torch.manual_seed(0)
        nets = {kind: build_model(kind, size) for kind in ("coarse", "refiner", "selection")}
        est = PoseEstimator.from_pretrained(coarse=nets["coarse"], refiner=nets["refiner"], selection=nets["selection"],
                                            renderer=renderer, cache_dir=cache_dir)
        return est, "random weights"


def scene(renderer: Renderer, obj) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float, float]]:
    """The object over a noise background: rgb (480, 640, 3), depth (mm) and its box."""
    r = renderer.render(obj, K, T_GT, (480, 640))
    rng = np.random.default_rng(0)
    rgb = np.where(r.mask[..., None], r.rgb, rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    depth = np.where(r.mask, r.depth, 1000.0).astype(np.float32)
    ys, xs = np.nonzero(r.mask)
    return rgb, depth, (xs.min() - 0.5, ys.min() - 0.5, xs.max() + 0.5, ys.max() + 0.5)


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall time and median process CPU time (s) of `repeats` calls after one warm-up call.

    On a shared machine the wall time grows with the load; with --threads 1 the CPU time is what the
    call would take on an idle core.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print (and optionally save) the median times."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--checkpoints", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--depth", action="store_true", help="RGB-D pipeline")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    renderer = Renderer()
    obj = load_mesh(bundled_mesh_path("duck"))
    rgb, depth, box = scene(renderer, obj)
    depth = depth if args.depth else None
    with tempfile.TemporaryDirectory() as cache:
        est, weights = make_estimator(args.size, args.checkpoints, renderer, cache)

        def onboard_fresh():  # no template or token cache: render 42 views and encode them
            est._templates.clear()
            est.coarse._tokens.clear()
            with tempfile.TemporaryDirectory() as fresh:
                est.cache_dir = fresh
                est.onboard(obj)

        results = {"weights": weights, "size": args.size, "mode": "rgbd" if args.depth else "rgb",
                   "renderer": renderer.name, "torch_threads": torch.get_num_threads(),
                   "load_average_1min": os.getloadavg()[0]}
        results["onboard_s"], results["onboard_cpu_s"] = timed(onboard_fresh, max(1, args.repeats // 2))
        selector = est.selector
        est.selector = None
        results["coarse_s"], results["coarse_cpu_s"] = timed(
            lambda: est.estimate(rgb, K, obj, box=box, depth=depth, n_refine=0), args.repeats)
        est.selector = selector
        for k in (1, 5):
            results[f"hyp{k}_s"], results[f"hyp{k}_cpu_s"] = timed(
                lambda: est.estimate(rgb, K, obj, box=box, depth=depth, n_hypotheses=k, n_refine=3), args.repeats)
        hyp = est.estimate(rgb, K, obj, box=box, depth=depth, n_hypotheses=5, n_refine=3)[0]
        results["stage_split_5hyp_s"] = hyp.timings
    for key in ("onboard", "coarse", "hyp1", "hyp5"):
        print(f"{key:>8}: {1000 * results[key + '_s']:7.0f} ms wall, {1000 * results[key + '_cpu_s']:7.0f} ms CPU")
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
