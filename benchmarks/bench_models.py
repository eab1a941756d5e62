"""Training samples/s and inference ms per pair of the coarse, refiner and selection networks (tiny and paper).

Usage: python benchmarks/bench_models.py [--sizes tiny paper] [--kinds coarse refiner selection]
                                          [--batch 16] [--reps 5] [--threads N] [--device cpu|cuda]

Training = one full step of cooppose.train.steps (forward, losses, the refiner's LM PnP, backward,
AdamW) on a synthetic batch at the model's input size. Inference = forward without gradients at batch
1 ("pair") and the per-pair time at batch --batch ("batched"); the coarse line also gives the per-pair
time of the split path used at inference (42 templates encoded once, then decoder + head per pair;
4 templates for paper sizes on CPU).
Wall times are the median and the best of --reps repetitions after one warm-up; "cpu" is process CPU
time per sample, which on a shared, loaded machine tells how much work a step is (with T threads an
idle machine needs about cpu / T of wall time). Paper sizes train at batch 2 and infer batched at 4 on
CPU to bound memory and time.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from cooppose.models import build_model
from cooppose.train.steps import STEPS, resolve_loss_config


def synthetic_batch(kind: str, B: int, S: int, device: torch.device, seed: int = 0) -> dict[str, torch.Tensor]:
    """A batch following docs/design.md "Training batches" with random content (geometry plausible for the refiner)."""
    g = torch.Generator().manual_seed(seed)
    img = lambda: torch.randn(B, 3, S, S, generator=g)  # noqa: E731
    Np = (S // 16) ** 2
    if kind == "coarse":
        batch = {"query": img(), "template": img(), "labels": torch.randint(0, Np + 1, (B, Np), generator=g),
                 "offsets": torch.rand(B, Np, 2, generator=g) - 0.5}
    elif kind == "selection":
        batch = {"query": img(), "render": img(), "label": (torch.rand(B, generator=g) > 0.5).float()}
    else:
        f, c = 1.5 * S, (S - 1) / 2
        K = torch.tensor([[f, 0, c], [0, f, c], [0, 0, 1.0]]).expand(B, 3, 3).clone()
        T = torch.eye(4).expand(B, 4, 4).clone()
        T[:, 2, 3] = 500.0
        mask = torch.zeros(B, S, S, dtype=torch.bool)
        mask[:, S // 4: 3 * S // 4, S // 4: 3 * S // 4] = True
        batch = {"query": img(), "render": img(), "K": K, "T_init": T, "T_gt": T.clone(),
                 "render_xyz": torch.randn(B, S, S, 3, generator=g) * 50, "render_mask": mask,
                 "flow": torch.randn(B, 2, S, S, generator=g), "flow_valid": mask,
                 "certainty": torch.ones(B, S, S), "points": torch.randn(B, 512, 3, generator=g) * 50}
        batch["T_gt"][:, 0, 3] += 5.0
    return {k: v.to(device) for k, v in batch.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, reps: int, device: torch.device) -> tuple[float, float, float]:
    """Median and best wall seconds and mean CPU seconds of fn() over reps runs after one warm-up."""
    fn()
    _sync(device)
    wall, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        fn()
        _sync(device)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return float(np.median(wall)), float(min(wall)), float(np.mean(cpu))


def bench_train(kind: str, size: str, B: int, reps: int, device: torch.device) -> dict:
    """Training samples/s of one network."""
    torch.manual_seed(0)
    model = build_model(kind, size).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batch = synthetic_batch(kind, B, model.cfg.img_size, device)
    loss_cfg = resolve_loss_config(kind, None)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def step() -> None:
        with amp:
            loss, _ = STEPS[kind](model, batch, loss_cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    med, best, cpu = timed(step, reps, device)
    return {"samples_per_s": B / med, "best_samples_per_s": B / best, "cpu_ms_per_sample": 1000 * cpu / B}


def bench_infer(kind: str, size: str, B: int, reps: int, device: torch.device, n_templates: int = 42) -> dict:
    """Inference ms per pair at batch 1 and batched (plus the coarse split path: n_templates encoded once, then matched)."""
    torch.manual_seed(0)
    model = build_model(kind, size).to(device).eval()
    S = model.cfg.img_size
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    one = [torch.randn(1, 3, S, S, device=device) for _ in range(2)]
    many = [torch.randn(B, 3, S, S, device=device) for _ in range(2)]
    out = {}
    with torch.no_grad(), amp:
        out["pair_ms"] = 1000 * timed(lambda: model(*one), reps, device)[0]
        out["batched_ms_per_pair"] = 1000 * timed(lambda: model(*many), reps, device)[0] / B
        if kind == "coarse":
            templates = model.encode_image(torch.randn(n_templates, 3, S, S, device=device))
            query = model.encode_image(one[0]).expand(n_templates, -1, -1)
            out["split_ms_per_template"] = 1000 * timed(lambda: model.match(query, templates), reps, device)[0] / n_templates
    return out


def main() -> None:
    """Parse the arguments and print one line per (device, size, kind)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "paper"])
    ap.add_argument("--kinds", nargs="+", default=["coarse", "refiner", "selection"])
    ap.add_argument("--batch", type=int, default=16, help="training batch of tiny models and inference batch")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--device", nargs="+", default=["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")
    for dev in args.device:
        device = torch.device(dev)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        for size in args.sizes:
            for kind in args.kinds:
                small = size == "tiny" or device.type == "cuda"
                B_train = args.batch if small else 2
                reps = args.reps if small else 2
                tr = bench_train(kind, size, B_train, reps, device)
                inf = bench_infer(kind, size, args.batch if small else 4, reps, device, n_templates=42 if small else 4)
                n_params = sum(p.numel() for p in build_model(kind, size).parameters()) / 1e6
                extra = f"  split {inf['split_ms_per_template']:.1f} ms/template" if "split_ms_per_template" in inf else ""
                print(
                    f"{name:>10} {size:>5} {kind:>9} {n_params:7.1f} M params | train batch {B_train:>2}: "
                    f"{tr['samples_per_s']:6.2f} samples/s (best {tr['best_samples_per_s']:6.2f}, cpu {tr['cpu_ms_per_sample']:7.1f} ms/sample)"
                    f" | infer {inf['pair_ms']:7.1f} ms/pair, batched {inf['batched_ms_per_pair']:6.1f} ms/pair{extra}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
