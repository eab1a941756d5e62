"""Training loop: schedule, sampler, steps, exact resume after a stop, 2-process DDP == 1 process, export."""

from __future__ import annotations

import json
import math
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import Dataset

from cooppose.errors import CheckpointError, ConfigError
from cooppose.geometry.lm_pnp import lm_pnp
from cooppose.geometry.transforms import make_pose, project, rotation_error_deg, so3_exp
from cooppose.models import build_model
from cooppose.models.checkpoint import load_model
from cooppose.train import resolve_train_config, train
from cooppose.train.loop import LrSchedule, StepSampler
from cooppose.train.steps import STEPS, pnp_inputs, resolve_loss_config

pytestmark = pytest.mark.usefixtures("one_thread_module")

S = 32
MICRO = dict(size="tiny", img_size=S, enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=32, dec_depth=1,
             dec_num_heads=2, match_dim=16, dpt_hooks=[0, 1, 1, 1], dpt_layer_dims=[8, 8, 8, 8], dpt_feature_dim=8,
             dpt_last_dim=8)



def refiner_sample(i: int, size: int = S) -> dict[str, torch.Tensor]:
    """A geometrically exact refiner sample: a 40 mm sphere rendered at a perturbed pose, GT flow to the true pose."""
    rng = np.random.default_rng([7, i])
    f, c = 40.0 * size / 32, (size - 1) / 2
    K = np.array([[f, 0, c], [0, f, c], [0, 0, 1.0]])
    R_gt = so3_exp(rng.normal(size=3) * 0.5)
    T_gt = make_pose(R_gt, np.array([0.0, 0.0, 100.0]) + rng.normal(size=3) * [2, 2, 5])
    T_init = make_pose(so3_exp(rng.normal(size=3) * 0.05) @ R_gt, T_gt[:3, 3] + rng.normal(size=3) * [2, 2, 4])
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    rays = np.stack([(u - c) / f, (v - c) / f, np.ones_like(u)], -1)  # (S, S, 3)
    centre, radius = T_init[:3, 3], 40.0
    a = (rays**2).sum(-1)
    b = -2 * rays @ centre
    disc = b**2 - 4 * a * (centre @ centre - radius**2)
    mask = disc > 0
    depth = np.where(mask, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), 0.0)
    X_cam = rays * depth[..., None]
    X_obj = (X_cam - centre) @ T_init[:3, :3]  # R^T (X - t)
    uv_gt = project(K, X_obj @ R_gt.T + T_gt[:3, 3])
    flow = np.where(mask[..., None], uv_gt - np.stack([u, v], -1), 0.0)
    dirs = rng.normal(size=(64, 3))
    points = radius * dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    t = lambda x, dt=torch.float32: torch.as_tensor(np.asarray(x), dtype=dt)  # noqa: E731
    return {
        "query": t(rng.normal(size=(3, size, size))), "render": t(rng.normal(size=(3, size, size))),
        "K": t(K), "T_init": t(T_init), "T_gt": t(T_gt),
        "render_xyz": t(np.where(mask[..., None], X_obj, 0.0)), "render_mask": t(mask, torch.bool),
        "flow": t(flow.transpose(2, 0, 1)), "flow_valid": t(mask, torch.bool), "certainty": t(mask),
        "points": t(points),
    }


class RandomSet(Dataset):
    """Index-seeded random samples following the batch contract of docs/design.md."""

    def __init__(self, kind: str, n: int = 16):
        self.kind, self.n = kind, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.kind == "refiner":
            return refiner_sample(i)
        g = torch.Generator().manual_seed(1000 + i)
        img = lambda: torch.randn(3, S, S, generator=g)  # noqa: E731
        if self.kind == "coarse":
            np_ = (S // 16) ** 2
            return {"query": img(), "template": img(), "labels": torch.randint(0, np_ + 1, (np_,), generator=g),
                    "offsets": torch.rand(np_, 2, generator=g) - 0.5}
        return {"query": img(), "render": img(), "label": (torch.rand((), generator=g) > 0.5).float()}


def micro_cfg(kind: str, **kw) -> dict:
    return {"kind": kind, "model": dict(MICRO), "batch_size": 4, "steps": 6, "lr": 1e-3, "warmup_steps": 2,
            "decay_steps": [4], "num_workers": 0, "log_every": 2, "val_every": 3, "val_batches": 1, "ckpt_every": 2,
            "grad_clip": 1e-2 if kind == "refiner" else None, **kw}


def test_lr_schedule_warmup_then_step_decay():
    f = LrSchedule(warmup_steps=4, decay_steps=[10, 20], decay_factor=0.1)
    assert [f(s) for s in (0, 1, 3, 9)] == pytest.approx([0.25, 0.5, 1.0, 1.0])
    assert f(10) == pytest.approx(0.1) and f(25) == pytest.approx(0.01)
    assert LrSchedule(0, [], 0.1)(0) == 1.0


def test_step_sampler_splits_global_batches_and_restarts_anywhere():
    full = StepSampler(10, 4, rank=0, world=1, seed=3, start_step=0)
    r0, r1 = StepSampler(10, 4, 0, 2, 3, 0), StepSampler(10, 4, 1, 2, 3, 0)
    for step in range(5):
        assert r0.indices(step) + r1.indices(step) == full.indices(step)
    assert len(set(full.indices(0) + full.indices(1))) == 8  # one epoch (2 batches) has no repeats
    it = iter(StepSampler(10, 4, 0, 1, 3, start_step=3))
    assert next(it) == full.indices(3)
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        StepSampler(3, 4, 0, 1, 0, 0)


def test_pnp_inputs_with_true_flow_recover_the_pose():
    batch = torch.utils.data.default_collate([refiner_sample(i) for i in range(3)])
    ones = torch.ones(3, 1, S, S)
    out = {"flow": batch["flow"], "flow_probability": ones, "certainty": ones, "sensitivity": ones}
    X, uv, w = pnp_inputs(out, batch, stride=1)
    assert w.sum(1).min() > 50  # the sphere covers enough pixels
    T = lm_pnp(X, uv, w, batch["K"], batch["T_init"], n_iters=5)
    before = rotation_error_deg(batch["T_init"][:, :3, :3].double(), batch["T_gt"][:, :3, :3].double())
    after = rotation_error_deg(T[:, :3, :3].double(), batch["T_gt"][:, :3, :3].double())
    assert before.min() > 1.0 and after.max() < 0.05
    assert (T[:, :3, 3] - batch["T_gt"][:, :3, 3]).norm(dim=-1).max() < 0.05


@pytest.mark.parametrize("kind", ["coarse", "refiner", "selection"])
def test_step_losses_and_metrics(kind):
    torch.manual_seed(0)
    model = build_model(kind, **MICRO)
    batch = torch.utils.data.default_collate([RandomSet(kind)[i] for i in range(4)])
    loss, metrics = STEPS[kind](model, batch, resolve_loss_config(kind, None))
    assert loss.ndim == 0 and torch.isfinite(loss) and metrics["loss"] == pytest.approx(loss.item())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    if kind == "coarse":
        assert 0 <= metrics["patch_acc"] <= 1
    elif kind == "refiner":
        assert metrics["rot_err_before"] > 0.5 and metrics["rot_err_after"] >= 0
        assert model.head.dpt.out[-1].weight.grad.abs().sum() > 0
    else:
        assert 0 <= metrics["accuracy"] <= 1


def test_refiner_flow_l1_weight_adds_the_plain_flow_error():
    from cooppose.train.losses import flow_l1_loss

    torch.manual_seed(0)
    model = build_model("refiner", **MICRO).eval()
    batch = torch.utils.data.default_collate([refiner_sample(i) for i in range(2)])
    base, _ = STEPS["refiner"](model, batch, resolve_loss_config("refiner", None))
    extra, _ = STEPS["refiner"](model, batch, resolve_loss_config("refiner", {"flow_l1_weight": 0.5}))
    with torch.no_grad():
        l1 = flow_l1_loss(model(batch["query"], batch["render"])["flow"], batch["flow"], batch["flow_valid"])
    assert l1 > 1.0 and (extra - base).item() == pytest.approx(0.5 * l1.item(), rel=1e-4)


def test_refiner_sensitivity_learns_only_from_the_pose_loss():
    torch.manual_seed(0)
    model = build_model("refiner", **MICRO)
    batch = torch.utils.data.default_collate([refiner_sample(i) for i in range(2)])
    loss, _ = STEPS["refiner"](model, batch, resolve_loss_config("refiner", {"pose_weight": 0.0}))
    loss.backward()
    # channel 4 of the last conv is the sensitivity: without the pose loss it gets no gradient
    assert model.head.dpt.out[-1].weight.grad[4].abs().max() == 0
    assert model.head.dpt.out[-1].weight.grad[3].abs().max() > 0  # certainty does


def _params(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.parametrize("kind,workers", [("coarse", 1), ("refiner", 0), ("selection", 0)])
def test_stop_and_resume_gives_identical_parameters(tmp_path, kind, workers):
    cfg = micro_cfg(kind, num_workers=workers)
    data = (RandomSet(kind), RandomSet(kind, 4))
    full = train(cfg, tmp_path / "full", datasets=data, progress=False)
    part = train(cfg, tmp_path / "split", datasets=data, progress=False, max_steps=3)
    assert part.step == 3 and part.model_path is None
    resumed = train(cfg, tmp_path / "split", datasets=data, progress=False)
    assert resumed.step == 6
    a, b = _params(full.checkpoint), _params(resumed.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    opt_a = torch.load(full.checkpoint, weights_only=True)["optimizer"]["state"]
    opt_b = torch.load(resumed.checkpoint, weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_a)
    model = load_model(full.model_path, kind=kind)
    assert model.cfg.kind == kind and not model.training
    rows = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in rows} == {"train", "val"} and rows[-1]["step"] == 6


def test_learning_rate_follows_the_schedule(tmp_path):
    cfg = micro_cfg("selection", steps=5, warmup_steps=2, decay_steps=[4], decay_factor=0.5, log_every=1)
    train(cfg, tmp_path, datasets=(RandomSet("selection"), None), progress=False)
    lrs = [json.loads(r)["lr"] for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # lr logged after step s is the lr of step s (0-based): 1.0, 1.0, 1.0, 0.5 x base (warm-up 0.5 was step 0)
    assert lrs == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4, 5e-4])


def test_corrupt_training_checkpoint_is_refused(tmp_path):
    cfg = micro_cfg("selection", steps=2)
    res = train(cfg, tmp_path, datasets=(RandomSet("selection"), None), progress=False)
    data = res.checkpoint.read_bytes()
    res.checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="checkpoint.pt"):
        train(cfg, tmp_path, datasets=(RandomSet("selection"), None), progress=False)
    with pytest.raises(CheckpointError, match="selection_tiny.pt"):
        load_model(tmp_path / "selection_tiny.pt", kind="coarse")


def test_init_weights_fine_tunes_from_a_model_file_of_the_same_configuration(tmp_path):
    data = (RandomSet("selection"), None)
    first = train(micro_cfg("selection", steps=2), tmp_path / "first", datasets=data, progress=False)
    source = load_model(first.model_path, kind="selection").state_dict()
    tuned = train(micro_cfg("selection", steps=1, lr=1e-12, weight_decay=0.0, init_weights=str(first.model_path)),
                  tmp_path / "tuned", datasets=data, progress=False)
    start = _params(tuned.checkpoint)
    assert all(torch.allclose(start[k].float(), source[k], atol=1e-6) for k in source)
    wider = micro_cfg("selection", steps=1, init_weights=str(first.model_path))
    wider["model"] = {**wider["model"], "enc_embed_dim": 48}
    with pytest.raises(CheckpointError, match="configuration differs"):
        train(wider, tmp_path / "wider", datasets=data, progress=False)


def _started_from_coarse(tmp_path, kind: str) -> tuple[dict, dict, str]:
    """A micro coarse model, and the weights a `kind` network starts from with it as init_weights (lr ~ 0)."""
    coarse = train(micro_cfg("coarse", steps=2), tmp_path / "coarse", datasets=(RandomSet("coarse"), None), progress=False)
    source = load_model(coarse.model_path, kind="coarse").state_dict()
    other = train(micro_cfg(kind, steps=1, lr=1e-12, weight_decay=0.0, init_weights=str(coarse.model_path)),
                  tmp_path / kind, datasets=(RandomSet(kind), None), progress=False)
    return source, _params(other.checkpoint), str(coarse.model_path)


def test_init_weights_from_another_kind_copies_the_backbone_only(tmp_path):
    source, start, coarse_path = _started_from_coarse(tmp_path, "refiner")
    backbone = [k for k in source if not k.startswith("head.")]
    assert backbone and all(torch.allclose(start[k].float(), source[k], atol=1e-6) for k in backbone)
    assert not any(k.startswith("head.") and k in source for k in start)  # the coarse head has no refiner counterpart
    deeper = micro_cfg("selection", steps=1, init_weights=coarse_path)
    deeper["model"] = {**deeper["model"], "enc_depth": MICRO["enc_depth"] + 1}
    with pytest.raises(CheckpointError, match="backbone differs.*enc_depth"):
        train(deeper, tmp_path / "deeper", datasets=(RandomSet("selection"), None), progress=False)


def test_init_weights_selection_from_coarse_shares_the_patch_matching_layers(tmp_path):
    source, start, _ = _started_from_coarse(tmp_path, "selection")
    shared = [k for k in start if k.startswith("head.") and k in source]
    assert sorted(k.split(".")[1] for k in shared) == sorted(
        ["log_temperature", "no_match", "no_match", "no_match", "no_match", "query_proj", "query_proj",
         "template_norm", "template_norm", "template_proj", "template_proj"])
    assert all(torch.allclose(start[k].float(), source[k], atol=1e-6) for k in shared)
    assert start["head.appearance.weight"].abs().max() < 1e-9  # the appearance term starts at zero


def test_train_config_validation():
    with pytest.raises(ConfigError, match="unknown training config keys"):
        resolve_train_config({"kind": "coarse", "learning_rate": 1})
    with pytest.raises(ConfigError, match="kind"):
        resolve_train_config({"kind": "pose"})
    with pytest.raises(ConfigError, match="loss settings"):
        resolve_train_config({"kind": "coarse", "loss": {"cert_weight": 1}})
    with pytest.raises(ConfigError, match="size"):
        resolve_train_config({"kind": "coarse", "model": {"size": "huge"}})
    cfg = resolve_train_config({"kind": "refiner"})
    assert cfg["weight_decay"] == 0.05 and cfg["loss"]["pose_weight"] == 0.01


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str, cfg: dict) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    try:
        train(cfg, out, datasets=(RandomSet(cfg["kind"]), None), progress=False)
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_ddp_step_equals_one_process_on_the_whole_batch(tmp_path):
    cfg = micro_cfg("coarse", steps=1, warmup_steps=0, decay_steps=[])
    # fork: the workers inherit the imported modules (one intra-op thread, so no OpenMP pool to break)
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp"), cfg), nprocs=2, join=True,
                       start_method="fork")
    single = train(cfg, tmp_path / "one", datasets=(RandomSet("coarse"), None), progress=False)
    a = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    b = torch.load(single.checkpoint, weights_only=True)
    # Adam's first exp_avg is (1 - beta1) * gradient: the averaged DDP gradient equals the full-batch one
    for i, state in b["optimizer"]["state"].items():
        assert torch.allclose(a["optimizer"]["state"][i]["exp_avg"], state["exp_avg"], rtol=1e-4, atol=1e-9)
    lr = cfg["lr"]
    for k, v in b["model"].items():  # parameters agree up to Adam's sign-like first step on near-zero gradients
        assert (a["model"][k] - v).abs().max() <= 2 * lr + 1e-6, k
    assert math.isclose(a["step"], 1) and a["step"] == b["step"]
