"""Time the inference pipeline per detection: coarse only, 1 hypothesis, 5 hypotheses; and onboarding per object.

Uses the bundled checkpoints when present (or --checkpoints DIR), else randomly initialised networks of
the same size (timings do not depend on the weights). The scene is the bundled duck rendered into a
640x480 image. Targets on a 2-core CPU: coarse < 0.3 s, 1 hypothesis < 1 s, 5 hypotheses < 3 s.

    python benchmarks/bench_pipeline.py [--size tiny] [--repeats 5] [--depth] [--json out.json]
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


def timed(fn, repeats: int) -> list[float]:
    """Wall times (s) of `repeats` calls after one warm-up call."""
    fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark and print (and optionally save) the median times."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny")
    ap.add_argument("--checkpoints", default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--depth", action="store_true", help="RGB-D pipeline")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)

    renderer = Renderer()
    obj = load_mesh(bundled_mesh_path("duck"))
    rgb, depth, box = scene(renderer, obj)
    depth = depth if args.depth else None
    with tempfile.TemporaryDirectory() as cache:
        est, weights = make_estimator(args.size, args.checkpoints, renderer, cache)
        onboard_s = []
        for i in range(max(1, args.repeats // 2)):
            est._templates.clear()
            est.coarse._tokens.clear()
            with tempfile.TemporaryDirectory() as fresh:  # no template cache: render + encode from scratch
                est.cache_dir = fresh
                t0 = time.perf_counter()
                est.onboard(obj)
                onboard_s.append(time.perf_counter() - t0)
        results = {"weights": weights, "size": args.size, "mode": "rgbd" if args.depth else "rgb",
                   "renderer": renderer.name, "torch_threads": torch.get_num_threads(),
                   "load_average_1min": os.getloadavg()[0], "onboard_s": statistics.median(onboard_s)}
        selector = est.selector
        est.selector = None
        results["coarse_s"] = statistics.median(timed(lambda: est.estimate(rgb, K, obj, box=box, depth=depth, n_refine=0), args.repeats))
        est.selector = selector
        for k in (1, 5):
            times = timed(lambda: est.estimate(rgb, K, obj, box=box, depth=depth, n_hypotheses=k, n_refine=3), args.repeats)
            results[f"hyp{k}_s"] = statistics.median(times)
        hyp = est.estimate(rgb, K, obj, box=box, depth=depth, n_hypotheses=5, n_refine=3)[0]
        results["stage_split_5hyp_s"] = hyp.timings
    for key in ("onboard_s", "coarse_s", "hyp1_s", "hyp5_s"):
        print(f"{key:>10}: {1000 * results[key]:8.0f} ms")
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
