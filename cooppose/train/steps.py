"""One training/validation step per network kind: a batch (docs/design.md "Training batches") -> (loss, metrics).

Each step runs the network, the losses of cooppose.train.losses and returns float metrics. Steps are
deterministic functions of (model, batch): the refiner's PnP uses a fixed pixel lattice rather than a
random subsample, so a resumed or DDP-split run sees exactly the same computation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cooppose.errors import ConfigError
from cooppose.geometry.lm_pnp import lm_pnp
from cooppose.geometry.transforms import rotation_error_deg
from cooppose.train.losses import (
    certainty_loss,
    coarse_classification_loss,
    coarse_offset_loss,
    disentangled_pose_loss,
    flow_l1_loss,
    flow_nll_loss,
    selection_loss,
)

LOSS_DEFAULTS: dict[str, dict[str, float]] = {
    "coarse": {"offset_weight": 1.0},
    # pose_weight multiplies a loss in mm: 0.01 makes a 10 mm mean point error cost 0.1 per term,
    # the order of the flow NLL once it has converged. pnp_stride: PnP uses every k-th pixel per axis.
    # flow_l1_weight: an extra plain L1 flow term (not in Co-op; 0 = the paper's losses), see flow_l1_loss.
    "refiner": {"cert_weight": 1.0, "pose_weight": 0.01, "pnp_iters": 3, "pnp_stride": 2, "flow_l1_weight": 0.0},
    "selection": {},
}

StepOutput = tuple[torch.Tensor, dict[str, float]]


def resolve_loss_config(kind: str, cfg: dict | None) -> dict[str, float]:
    """Loss settings of `kind`: cfg merged over LOSS_DEFAULTS; unknown keys raise ConfigError."""
    if kind not in LOSS_DEFAULTS:
        raise ConfigError(f"unknown model kind {kind!r}; choose one of {sorted(LOSS_DEFAULTS)}.")
    unknown = sorted(set(cfg or {}) - set(LOSS_DEFAULTS[kind]))
    if unknown:
        raise ConfigError(f"unknown {kind} loss settings {unknown}; allowed: {sorted(LOSS_DEFAULTS[kind])}.")
    return {**LOSS_DEFAULTS[kind], **(cfg or {})}


def coarse_step(model: nn.Module, batch: dict[str, torch.Tensor], cfg: dict) -> StepOutput:
    """Coarse: CE over Np+1 classes + offset_weight * L1 offsets on matched patches; metrics include patch accuracy."""
    out = model(batch["query"], batch["template"])
    labels = batch["labels"]
    ce = coarse_classification_loss(out["logits"], labels)
    l1 = coarse_offset_loss(out["offsets"], batch["offsets"], labels)
    loss = ce + cfg["offset_weight"] * l1
    with torch.no_grad():
        pred = out["logits"].argmax(-1)
        matched = labels < labels.shape[1]
        metrics = {
            "loss": loss.item(),
            "ce": ce.item(),
            "offset_l1": l1.item(),
            "patch_acc": (pred == labels).float().mean().item(),
            "match_acc": ((pred == labels) & matched).sum().item() / max(1, int(matched.sum())),
        }
    return loss, metrics


def pnp_inputs(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], stride: int) -> tuple[torch.Tensor, ...]:
    """PnP points from the refiner output on a lattice of every `stride`-th rendered pixel.

    Returns X (B, N, 3) object points (render_xyz, mm), uv (B, N, 2) = pixel + flow in the query
    crop, and weights (B, N) = flow_probability * certainty (detached) * sensitivity, zero off the
    rendered object.
    """
    B, _, H, W = out["flow"].shape
    v, u = torch.meshgrid(torch.arange(0, H, stride, device=out["flow"].device),
                          torch.arange(0, W, stride, device=out["flow"].device), indexing="ij")
    grid = torch.stack([u, v], -1).reshape(1, -1, 2).float()  # (1, N, 2) pixel (u, v)
    flow = out["flow"][:, :, ::stride, ::stride].flatten(2).transpose(1, 2).float()  # (B, N, 2)
    weight_map = out["flow_probability"] * out["certainty"].detach() * out["sensitivity"]  # (B, 1, H, W)
    mask = batch["render_mask"][:, ::stride, ::stride].reshape(B, -1)
    weights = weight_map[:, 0, ::stride, ::stride].reshape(B, -1).float() * mask
    X = batch["render_xyz"][:, ::stride, ::stride].reshape(B, -1, 3).float()
    return X, grid + flow, weights


def pose_errors(T: torch.Tensor, T_gt: torch.Tensor) -> tuple[float, float]:
    """Mean rotation error (deg) and translation error (mm) of poses (B, 4, 4) against T_gt."""
    rot = rotation_error_deg(T[:, :3, :3].double(), T_gt[:, :3, :3].double()).mean().item()
    trans = (T[:, :3, 3] - T_gt[:, :3, 3]).double().norm(dim=-1).mean().item()
    return rot, trans


def refiner_step(model: nn.Module, batch: dict[str, torch.Tensor], cfg: dict) -> StepOutput:
    """Refiner: flow Laplace NLL [+ flow_l1_weight * L1 flow] + cert_weight * certainty BCE + pose_weight * pose loss after LM PnP."""
    out = model(batch["query"], batch["render"])
    valid = batch["flow_valid"]
    nll = flow_nll_loss(out["flow"], out["scale"], batch["flow"], valid)
    cert = certainty_loss(out["certainty_logit"], batch["certainty"], valid)
    with torch.autocast(out["flow"].device.type, enabled=False):
        X, uv, weights = pnp_inputs(out, batch, int(cfg["pnp_stride"]))
        T = lm_pnp(X, uv, weights, batch["K"].float(), batch["T_init"].float(), n_iters=int(cfg["pnp_iters"]))
        pose = disentangled_pose_loss(T, batch["T_gt"], batch["points"])
    loss = nll + cfg["cert_weight"] * cert + cfg["pose_weight"] * pose
    if cfg["flow_l1_weight"]:
        loss = loss + cfg["flow_l1_weight"] * flow_l1_loss(out["flow"], batch["flow"], valid)
    with torch.no_grad():
        rot0, trans0 = pose_errors(batch["T_init"], batch["T_gt"])
        rot1, trans1 = pose_errors(T.detach(), batch["T_gt"])
        cert_ok = ((out["certainty"][:, 0] > 0.5) == (batch["certainty"] > 0.5)) & valid
        epe = (out["flow"] - batch["flow"]).norm(dim=1)
        metrics = {
            "loss": loss.item(),
            "flow_nll": nll.item(),
            "cert_bce": cert.item(),
            "pose_loss": pose.item(),
            "flow_epe": (epe * valid).sum().item() / max(1, int(valid.sum())),
            "cert_acc": cert_ok.sum().item() / max(1, int(valid.sum())),
            "rot_err_before": rot0,
            "rot_err_after": rot1,
            "trans_err_before": trans0,
            "trans_err_after": trans1,
        }
    return loss, metrics


def selection_step(model: nn.Module, batch: dict[str, torch.Tensor], cfg: dict) -> StepOutput:
    """Selection: BCE of the hypothesis logit; metrics include accuracy at threshold 0."""
    logit = model(batch["query"], batch["render"])
    loss = selection_loss(logit, batch["label"])
    with torch.no_grad():
        acc = ((logit > 0) == (batch["label"] > 0.5)).float().mean().item()
    return loss, {"loss": loss.item(), "accuracy": acc, "positive_rate": (batch["label"] > 0.5).float().mean().item()}


STEPS: dict[str, Callable[[nn.Module, dict, dict], StepOutput]] = {
    "coarse": coarse_step,
    "refiner": refiner_step,
    "selection": selection_step,
}
