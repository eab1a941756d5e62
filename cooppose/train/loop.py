"""One training loop for the three networks: AdamW, warm-up + step decay, clipping, AMP, DDP, exact resume.

Configuration: a JSON file (configs/*.json) read by `load_train_config`:
    kind        "coarse" | "refiner" | "selection"
    model       {"size": "tiny" | "paper", <any ModelConfig field override>}
    data        passed to cooppose.data.datasets.build_dataset(kind, data, split)
    loss        loss settings (cooppose.train.steps.LOSS_DEFAULTS)
    and the optimisation / run settings of TRAIN_DEFAULTS (batch_size is the global batch).

Exact resume: the sampler is a pure function of (seed, step): epoch e uses the permutation drawn from
seed + e, and global step s takes batch s mod (batches per epoch) of it, each DDP rank a contiguous
slice. Together with the saved model, optimiser, scheduler, scaler and RNG states, a run killed
after a checkpoint and resumed reproduces the uninterrupted run, provided the dataset's sample i is a
pure function of i (as cooppose.data.datasets guarantees).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cooppose.errors import CheckpointError, ConfigError
from cooppose.fileio import remove_stale_temps
from cooppose.models import build_model, get_config, load_croco_weights
from cooppose.models.checkpoint import atomic_torch_save, export_model, load_model, load_torch_file
from cooppose.models.configs import BACKBONE_FIELDS, KINDS, config_from_dict
from cooppose.train.steps import STEPS, resolve_loss_config

TRAIN_DEFAULTS: dict[str, Any] = {
    "batch_size": 32,  # global batch, split evenly over DDP processes
    "steps": 1000,  # optimiser steps
    "lr": 2e-5,
    "weight_decay": 0.05,  # not applied to biases and norm weights
    "betas": [0.9, 0.95],
    "warmup_steps": 0,  # linear warm-up from lr / warmup_steps to lr
    "decay_steps": [],  # multiply the lr by decay_factor at each of these steps
    "decay_factor": 0.1,
    "grad_clip": None,  # max global grad norm (Co-op: 1e-2 for the refiner)
    "amp": True,  # mixed precision on CUDA (bf16 where supported, else fp16 + grad scaling)
    "seed": 0,
    "num_workers": 2,
    "log_every": 10,
    "val_every": 500,
    "val_batches": 10,
    "ckpt_every": 200,
    "croco_weights": None,  # optional CroCo v2 checkpoint to initialise the backbone
    "init_weights": None,  # optional cooppose model file: same kind and config (fine-tune) or same backbone (encoder + decoder only)
}
CHECKPOINT = "checkpoint.pt"
TRAIN_FORMAT = "cooppose-train"


def load_train_config(path: str | Path) -> dict:
    """Read a training JSON file and return the validated config (defaults filled in)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"training config {path} not found; see configs/*.json for examples.") from err
    except IsADirectoryError as err:
        raise ConfigError(f"training config {path} is a folder; give a JSON file (see configs/*.json).") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"training config {path} is not valid JSON: {err}") from err
    return resolve_train_config(raw)


def _is_int(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_types(cfg: dict) -> None:
    """Refuse values of the wrong type or range (they would fail deep inside torch otherwise)."""
    bad = [k for k in ("batch_size", "steps", "log_every", "val_every", "ckpt_every", "val_batches") if not _is_int(cfg[k], 1)]
    bad += [k for k in ("warmup_steps", "num_workers", "seed") if not _is_int(cfg[k], 0)]
    bad += [k for k in ("lr", "decay_factor") if not (_is_number(cfg[k]) and cfg[k] > 0)]
    bad += [] if _is_number(cfg["weight_decay"]) and cfg["weight_decay"] >= 0 else ["weight_decay"]
    bad += [] if cfg["grad_clip"] is None or _is_number(cfg["grad_clip"]) and cfg["grad_clip"] > 0 else ["grad_clip"]
    betas = cfg["betas"]
    bad += [] if isinstance(betas, list) and len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas) else ["betas"]
    bad += [] if isinstance(cfg["decay_steps"], list) and all(_is_int(m, 0) for m in cfg["decay_steps"]) else ["decay_steps"]
    bad += [] if isinstance(cfg["amp"], bool) else ["amp"]
    bad += [k for k in ("croco_weights", "init_weights") if not (cfg[k] is None or isinstance(cfg[k], str))]
    bad += [f"loss.{k}" for k, v in cfg["loss"].items() if not _is_number(v)]
    if bad:
        details = ", ".join(f"{k}={cfg['loss'][k[5:]] if k.startswith('loss.') else cfg[k]!r}" for k in bad)
        raise ConfigError(
            f"training config values of the wrong type or range: {details}. Integers >= 1 for batch_size, steps, "
            "*_every, val_batches; integers >= 0 for warmup_steps, num_workers, seed, decay_steps; lr, decay_factor > 0; "
            "weight_decay >= 0; grad_clip > 0 or null; betas two numbers in [0, 1); amp true/false; loss values numbers."
        )


def resolve_train_config(raw: dict) -> dict:
    """Validate a training config dict and fill in TRAIN_DEFAULTS and the loss defaults."""
    if not isinstance(raw, dict):
        raise ConfigError("a training config must be a JSON object.")
    allowed = {"kind", "model", "data", "loss", *TRAIN_DEFAULTS}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"unknown training config keys {unknown}; allowed: {sorted(allowed)}.")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"training config 'kind' must be one of {KINDS}, got {kind!r}.")
    for key in ("model", "data", "loss"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise ConfigError(f"training config {key!r} must be a JSON object, got {raw[key]!r}.")
    cfg = {**TRAIN_DEFAULTS, **raw}
    model = dict(cfg.get("model") or {"size": "tiny"})
    img_size = get_config(kind, **model).img_size  # raises ConfigError on a bad size or field
    cfg["model"] = model
    cfg["data"] = dict(cfg.get("data") or {})
    if cfg["data"].get("size", img_size) != img_size:
        raise ConfigError(f"data size {cfg['data']['size']} differs from the model input size {img_size}; make them equal.")
    cfg["loss"] = resolve_loss_config(kind, cfg.get("loss"))
    _check_types(cfg)
    return cfg


class LrSchedule:
    """lr factor at step s: linear warm-up (s+1)/warmup for s < warmup, then decay_factor^(milestones passed)."""

    def __init__(self, warmup_steps: int, decay_steps: list[int], decay_factor: float):
        self.warmup_steps = int(warmup_steps)
        self.decay_steps = sorted(int(s) for s in decay_steps)
        self.decay_factor = float(decay_factor)

    def __call__(self, step: int) -> float:
        """Multiplier of the base lr at optimiser step `step` (0-based)."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        return warm * self.decay_factor ** sum(step >= m for m in self.decay_steps)


class StepSampler:
    """Infinite batch sampler: this rank's slice of global batch `step`, a pure function of (seed, step)."""

    def __init__(self, n_items: int, global_batch: int, rank: int, world: int, seed: int, start_step: int):
        if n_items < global_batch:
            raise ConfigError(f"the dataset has {n_items} samples, fewer than one global batch of {global_batch}.")
        self.n_items, self.global_batch = n_items, global_batch
        self.local = global_batch // world
        self.rank, self.seed, self.start_step = rank, seed, start_step
        self.batches_per_epoch = n_items // global_batch

    def indices(self, step: int) -> list[int]:
        """Dataset indices of this rank for global step `step`."""
        epoch, b = divmod(step, self.batches_per_epoch)
        perm = torch.randperm(self.n_items, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        batch = perm[b * self.global_batch:(b + 1) * self.global_batch]
        return batch[self.rank * self.local:(self.rank + 1) * self.local].tolist()

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.indices(step)
            step += 1


@dataclass
class Dist:
    """Process-group facts of this process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True on the process that logs, validates and writes checkpoints."""
        return self.rank == 0


def setup_distributed() -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@dataclass
class TrainResult:
    """What `train` produced: final step, checkpoint and exported model paths, last metrics."""

    step: int
    checkpoint: Path
    model_path: Path | None
    metrics: dict[str, float]
    val_metrics: dict[str, float]


class _Logger:
    """TensorBoard scalars (when tensorboard is installed) + metrics.jsonl in the output folder."""

    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled = enabled
        self.writer = None
        self.jsonl = out_dir / "metrics.jsonl"
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("tensorboard is not installed (pip install 'cooppose[train]'); logging to metrics.jsonl only")
            else:
                self.writer = SummaryWriter(str(out_dir / "tb"))

    def log(self, step: int, prefix: str, metrics: dict[str, float]) -> None:
        """Record metrics under `prefix` at `step`."""
        if not self.enabled:
            return
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"{prefix}/{k}", v, step)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"step": step, "split": prefix, **metrics}) + "\n")

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()


def _mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}


def _autocast(device: torch.device, enabled: bool):
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def validate(model: nn.Module, kind: str, loader: DataLoader, n_batches: int, loss_cfg: dict, device: torch.device, amp: bool) -> dict[str, float]:
    """Mean metrics of the step function over the first n_batches of loader, without gradients."""
    was_training = model.training
    model.eval()
    rows = []
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i >= n_batches:
                break
            with _autocast(device, amp):
                _, metrics = STEPS[kind](model, _to_device(batch, device), loss_cfg)
            rows.append(metrics)
    model.train(was_training)
    return _mean_metrics(rows)


def _build_datasets(kind: str, cfg: dict) -> tuple[Dataset, Dataset | None]:
    from cooppose.data.datasets import (
        build_dataset,  # the data stack (renderer, meshes) loads only for training
    )

    train_set = build_dataset(kind, cfg["data"], "train")
    val_set = build_dataset(kind, cfg["data"], "val")
    return train_set, (val_set if len(val_set) else None)


def train(
    cfg: dict,
    out_dir: str | Path,
    resume: bool = True,
    datasets: tuple[Dataset, Dataset | None] | None = None,
    max_steps: int | None = None,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train the network of cfg["kind"], writing checkpoints, logs and the exported model under out_dir.

    resume: continue from out_dir/checkpoint.pt when it exists. datasets: (train, val) to use instead
    of build_dataset. max_steps: stop (after checkpointing) at this step without changing the
    schedule, as if the run were killed there. Returns a TrainResult; the shipped model file
    `<kind>_<size>.pt` is exported when the schedule completes.
    """
    cfg = resolve_train_config(cfg)
    kind = cfg["kind"]
    out_dir = Path(out_dir)
    env = setup_distributed()
    if cfg["batch_size"] % env.world:
        raise ConfigError(f"batch_size {cfg['batch_size']} must be divisible by the {env.world} processes.")
    device = torch.device(device or (f"cuda:{env.local_rank}" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    out_dir.mkdir(parents=True, exist_ok=True)
    if env.main:
        remove_stale_temps(out_dir)  # a killed run's half-written checkpoint; only the main process writes here
    ckpt_path = out_dir / CHECKPOINT

    torch.manual_seed(cfg["seed"])
    model = build_model(kind, **cfg["model"]).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg["weight_decay"]), lr=cfg["lr"], betas=tuple(cfg["betas"]))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LrSchedule(cfg["warmup_steps"], cfg["decay_steps"], cfg["decay_factor"]))
    use_scaler = device.type == "cuda" and cfg["amp"] and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    step = 0
    if resume and ckpt_path.exists():
        step = _restore(ckpt_path, model, optimizer, scheduler, scaler, kind)
    elif cfg["init_weights"]:
        message = _init_from_model_file(model, cfg["init_weights"], kind)
        if env.main:
            print(message)
    elif cfg["croco_weights"]:
        report = load_croco_weights(model, cfg["croco_weights"])
        if env.main:
            print(f"CroCo weights: {len(report.loaded)} tensors loaded, heads initialised ({len(report.missing)} tensors)")

    net = model
    if env.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    train_set, val_set = datasets if datasets is not None else _build_datasets(kind, cfg)
    sampler = StepSampler(len(train_set), cfg["batch_size"], env.rank, env.world, cfg["seed"], step)
    loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg["num_workers"],
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(cfg["seed"]),
                        persistent_workers=False)
    val_loader = None
    if val_set is not None and env.main:
        val_loader = DataLoader(val_set, batch_size=max(1, cfg["batch_size"] // env.world), shuffle=False,
                                num_workers=cfg["num_workers"])

    logger = _Logger(out_dir, env.main)
    stop = min(cfg["steps"], max_steps if max_steps is not None else cfg["steps"])
    bar = None
    if progress and env.main:
        from tqdm import tqdm

        bar = tqdm(total=cfg["steps"], initial=step, desc=f"train {kind}", dynamic_ncols=True)
    metrics: dict[str, float] = {}
    val_metrics: dict[str, float] = {}
    window: list[dict[str, float]] = []
    t_last, samples = time.perf_counter(), 0
    net.train()
    data_iter = iter(loader)
    while step < stop:
        batch = _to_device(next(data_iter), device)
        with _autocast(device, cfg["amp"]):
            loss, step_metrics = STEPS[kind](net, batch, cfg["loss"])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"] or math.inf)
        if torch.isfinite(grad_norm):
            scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        samples += cfg["batch_size"]
        window.append({**step_metrics, "grad_norm": float(grad_norm), "skipped": float(not torch.isfinite(grad_norm))})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{step_metrics['loss']:.4f}")
        if step % cfg["log_every"] == 0 or step == stop:
            now = time.perf_counter()
            metrics = {**_mean_metrics(window), "lr": scheduler.get_last_lr()[0], "samples_per_s": samples / (now - t_last)}
            logger.log(step, "train", metrics)
            window, t_last, samples = [], now, 0
        if val_loader is not None and (step % cfg["val_every"] == 0 or step == cfg["steps"]):
            val_metrics = validate(model, kind, val_loader, cfg["val_batches"], cfg["loss"], device, cfg["amp"])
            logger.log(step, "val", val_metrics)
        if step % cfg["ckpt_every"] == 0 or step == stop:
            if env.main:
                _save(ckpt_path, model, optimizer, scheduler, scaler, step, cfg)
            if env.world > 1:
                dist.barrier()
    del data_iter  # stops the loader's worker processes before the export
    if bar is not None:
        bar.close()
    logger.close()
    model_path = None
    if step >= cfg["steps"] and env.main:
        model_path = export_model(ckpt_path, out_dir / f"{kind}_{model.cfg.size}.pt")
    return TrainResult(step=step, checkpoint=ckpt_path, model_path=model_path, metrics=metrics, val_metrics=val_metrics)


def _init_from_model_file(model: nn.Module, path: str, kind: str) -> str:
    """Copy a cooppose model file into `model`: all weights when kind and configuration match (fine-tuning);
    from another kind with the same backbone (e.g. a refiner started from the trained coarse network, as
    Co-op starts every network from CroCo) the encoder + decoder, plus the head tensors of the same name and
    shape (the patch-matching layers the coarse and selection heads share); CheckpointError otherwise."""
    source = load_model(path)
    if source.cfg.kind == kind:
        if source.cfg != model.cfg:
            raise CheckpointError(f"{path}: holds a {source.cfg.size!r} {kind} model whose configuration differs from the one trained here.")
        model.load_state_dict(source.state_dict())
        return f"init_weights: all weights from {path}"
    differ = {f: (getattr(source.cfg, f), getattr(model.cfg, f)) for f in BACKBONE_FIELDS if getattr(source.cfg, f) != getattr(model.cfg, f)}
    if differ:
        raise CheckpointError(f"{path}: holds a {source.cfg.kind!r} model whose backbone differs from this {kind} model "
                              f"(file, model): {differ}; weights are shared across kinds only on the same backbone.")
    own, theirs = model.state_dict(), source.state_dict()
    backbone = {k: v for k, v in theirs.items() if not k.startswith("head.")}
    shared = {k: v for k, v in theirs.items() if k.startswith("head.") and k in own and own[k].shape == v.shape}
    model.load_state_dict({**backbone, **shared}, strict=False)
    return (f"init_weights: encoder + decoder ({len(backbone)} tensors) and {len(shared)} shared head tensors from the "
            f"{source.cfg.kind} model {path}; the rest of the {kind} head initialised")


def _save(path: Path, model: nn.Module, optimizer, scheduler, scaler, step: int, cfg: dict) -> None:
    atomic_torch_save(
        {
            "format": TRAIN_FORMAT,
            "kind": cfg["kind"],
            "step": step,
            "config": cfg,
            "model_config": model.cfg.to_dict(),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": _rng_state(),
        },
        path,
    )


def _restore(path: Path, model: nn.Module, optimizer, scheduler, scaler, kind: str) -> int:
    try:
        ckpt = load_torch_file(path)
    except CheckpointError as err:
        raise CheckpointError(f"cannot resume: {err} Delete it or pass --no-resume.") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{path}: not a cooppose training checkpoint.")
    if ckpt["kind"] != kind or config_from_dict(ckpt["model_config"]) != model.cfg:
        raise CheckpointError(f"{path}: written for a different model ({ckpt['kind']}, {ckpt['model_config']}); "
                              "use another --out folder or the matching config.")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    _set_rng_state(ckpt["rng"])
    return int(ckpt["step"])
