"""Onboarding time of the bundled duck (42 templates at 160 x 160) and the cache-hit time.

Usage: python benchmarks/bench_onboard.py [--backend auto|gl|torch] [--size 160] [--level 0] [--repeat 3]
Target: < 10 s per object on a 2-core CPU machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from cooppose.objects import bundled_mesh_path, load_mesh
from cooppose.onboarding import onboard
from cooppose.render import Renderer


def main() -> None:
    """Print the onboarding time (best of --repeat cold runs, each in a fresh cache) and the cache-hit time."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="auto", choices=["auto", "gl", "torch"])
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--level", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    t = time.perf_counter()
    obj = load_mesh(bundled_mesh_path("duck"))
    load_s = time.perf_counter() - t
    renderer = Renderer(args.backend)
    t = time.perf_counter()
    gl_info = renderer.backend.ensure_context() if renderer.name == "gl" else "torch rasterizer"
    init_s = time.perf_counter() - t

    cold, hit = [], []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as cache:
            t = time.perf_counter()
            templates = onboard(obj, size=args.size, level=args.level, cache_dir=cache, renderer=renderer)
            cold.append(time.perf_counter() - t)
            t = time.perf_counter()
            onboard(obj, size=args.size, level=args.level, cache_dir=cache, renderer=renderer)
            hit.append(time.perf_counter() - t)
            size_mb = templates.cache_path.stat().st_size / 1e6
    n = len(templates)
    print(f"backend: {renderer.name} ({gl_info}); mesh: {obj.name}, {len(obj.faces)} faces, load {load_s:.2f} s; renderer init {init_s:.2f} s")
    print(f"onboarding: {n} templates at {args.size}x{args.size}: best {min(cold):.2f} s, median {sorted(cold)[len(cold) // 2]:.2f} s "
          f"({1000 * min(cold) / n:.1f} ms/template incl. cache write, {size_mb:.1f} MB)")
    print(f"cache hit: best {min(hit):.3f} s, median {sorted(hit)[len(hit) // 2]:.3f} s")


if __name__ == "__main__":
    main()
