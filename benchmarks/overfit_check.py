"""Overfit check of the tiny networks (issue 4): can they fit a handful of training images?

Usage: python benchmarks/overfit_check.py [--kind coarse|refiner|both] [--images 4] [--steps 300] [--out DIR]

Makes a tiny synthetic set (procedural objects, a few scenes), trains on it with augmentation off so
each sample repeats exactly, and prints the training metrics as they go: coarse patch-classification
accuracy (all patches, incl. "no match") and match accuracy (patches with a template match); refiner
rotation/translation error before and after its PnP step. Nothing here is a unit test: it measures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from cooppose.data.datasets import build_dataset
from cooppose.data.synth import SceneConfig, generate_scenes, make_object_set
from cooppose.train import train

SCHEDULES = {
    "coarse": dict(batch_size=8, lr=5e-4),
    "refiner": dict(batch_size=4, lr=3e-4),
}


def _config(kind: str, scenes: Path, steps: int) -> dict:
    cfg = json.loads((Path(__file__).resolve().parents[1] / "configs" / f"{kind}_tiny.json").read_text())
    cfg["data"].update(scenes=str(scenes), augment=False, val_fraction=0.0)
    cfg.update(SCHEDULES[kind], steps=steps, warmup_steps=20, decay_steps=[steps], log_every=25,
               val_every=steps + 1, ckpt_every=steps, num_workers=0, amp=False)
    return cfg


def main() -> None:
    """Build the small set, train, print the metrics and the time."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", default="both", choices=["coarse", "refiner", "both"])
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temp folder)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.out or tmp)
        make_object_set(root / "models", n=6, seed=3)
        generate_scenes(root / "models", root / "scenes", args.images, seed=3,
                        cfg=SceneConfig(objects=(3, 4), distractors=(0, 1)))
        for kind in (["coarse", "refiner"] if args.kind == "both" else [args.kind]):
            t0 = time.perf_counter()
            cfg = _config(kind, root / "scenes", args.steps)
            data = (build_dataset(kind, cfg["data"], "train"), None)  # the training images are the whole point
            result = train(cfg, root / f"run_{kind}", resume=False, datasets=data, progress=False)
            rows = [json.loads(line) for line in (root / f"run_{kind}" / "metrics.jsonl").read_text().splitlines()]
            keys = ["patch_acc", "match_acc"] if kind == "coarse" else ["rot_err_before", "rot_err_after", "trans_err_before", "trans_err_after"]
            print(f"{kind}: {args.steps} steps on {args.images} images in {time.perf_counter() - t0:.0f} s")
            for r in rows:
                if r["split"] == "train":
                    print(f"  step {r['step']:4d}  loss {r['loss']:.3f}  " + "  ".join(f"{k} {r[k]:.3f}" for k in keys))
            print(f"  final: {json.dumps({k: round(result.metrics[k], 3) for k in keys})}")


if __name__ == "__main__":
    main()
