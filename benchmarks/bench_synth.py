"""Synthetic data throughput: objects/s of `synth objects` and images/s of `synth scenes`.

Usage: python benchmarks/bench_synth.py [--objects 10] [--images 200] [--size 640x480] [--workers 1]
                                        [--backend auto|gl|torch] [--png]

Makes --objects procedural objects and a --images scene set from them in a temporary folder, then
prints the object rate, the image rate (rendering + writing, excluding start-up), the CPU time per
image (one worker) and the size on disk.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cooppose.data.synth.models import make_object_set
from cooppose.data.synth.scenes import SceneConfig, generate_scenes


def _disk_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def main() -> None:
    """Run the benchmark and print its numbers."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=10)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--backend", default="auto", choices=["auto", "gl", "torch"])
    ap.add_argument("--png", action="store_true", help="rgb as PNG instead of JPEG")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    cfg = SceneConfig(width=width, height=height, rgb_ext=".png" if args.png else ".jpg")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        make_object_set(tmp / "models", args.objects, seed=0)
        obj_s = time.perf_counter() - t
        cpu = time.process_time()
        r = generate_scenes(tmp / "models", tmp / "ds", args.images, seed=0, cfg=cfg, workers=args.workers, backend=args.backend)
        cpu = time.process_time() - cpu  # this process only: meaningful with 1 worker
        from cooppose.render import Renderer

        backend = Renderer(args.backend).name if args.workers == 1 else f"{args.backend} (workers)"
        print(f"objects: {args.objects} in {obj_s:.2f} s ({args.objects / obj_s:.1f} objects/s), {_disk_mb(tmp / 'models'):.1f} MB")
        print(
            f"scenes: {args.images} images {width}x{height} in {r['seconds']:.1f} s with {args.workers} worker(s), "
            f"backend {backend}: {r['images_per_s']:.2f} images/s, {_disk_mb(tmp / 'ds') / args.images:.2f} MB/image"
        )
        if args.workers == 1:  # wall time is inflated when other jobs share the CPU; CPU time is not
            print(f"CPU time: {1000 * cpu / args.images:.0f} ms/image ({args.images / cpu:.2f} images per CPU-second)")


if __name__ == "__main__":
    main()
