"""Training losses of the three networks (method.md 2.7, 3.4, 4).

Every loss is a mean over samples of a per-sample mean (over patches, valid pixels or model points),
so a batch split evenly across DDP processes gives exactly the loss of the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of values (B, ...) over mask (B, ...) (0 where a sample has no valid entry) -> (B,)."""
    m = mask.to(values.dtype).flatten(1)
    return (values.flatten(1) * m).sum(1) / m.sum(1).clamp_min(1.0)


def coarse_classification_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the Np+1 classes (template patches + no match); logits (B, Np, Np+1), labels (B, Np) -> ()."""
    ce = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape)
    return ce.mean(1).mean()


def coarse_offset_loss(offsets: torch.Tensor, offsets_gt: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L1 norm of the offset error (B, Np, 2), averaged over the patches with a match (label < Np), then over samples -> ()."""
    n_patches = labels.shape[1]
    err = (offsets.float() - offsets_gt).abs().sum(-1)  # (B, Np)
    return _masked_mean(err, labels < n_patches).mean()


def flow_nll_loss(flow: torch.Tensor, scale: torch.Tensor, flow_gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Laplace negative log-likelihood |F - F_gt|_1 / b + log b on valid rendered pixels.

    flow, flow_gt (B, 2, H, W) pixels, scale b (B, 1, H, W) > 0, valid (B, H, W) bool -> ().
    """
    err = (flow.float() - flow_gt).abs().sum(1)  # (B, H, W)
    b = scale.float()[:, 0]
    return _masked_mean(err / b + torch.log(b), valid).mean()


def flow_l1_loss(flow: torch.Tensor, flow_gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Plain |F - F_gt|_1 (pixels) on valid rendered pixels; flow, flow_gt (B, 2, H, W), valid (B, H, W) -> ().

    Not in Co-op: an optional aid for training from scratch. Under the Laplace NLL alone the network first
    raises the scale b to its bound, which divides the flow gradient by b (up to 16) while the certainty
    loss keeps its full weight, so the shared trunk learns certainty and the flow stays a constant.
    """
    return _masked_mean((flow.float() - flow_gt).abs().sum(1), valid).mean()


def certainty_loss(certainty_logit: torch.Tensor, certainty_gt: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the certainty (logit (B, 1, H, W)) against visibility (B, H, W) {0, 1} on valid pixels -> ()."""
    bce = F.binary_cross_entropy_with_logits(certainty_logit.float()[:, 0], certainty_gt.float(), reduction="none")
    return _masked_mean(bce, valid).mean()


def point_distance(T1: torch.Tensor, T2: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Mean over model points (B, P, 3) of the L1 distance |T1 x - T2 x|_1 between poses (B, 4, 4) -> (B,)."""
    X1 = points @ T1[:, :3, :3].transpose(1, 2) + T1[:, None, :3, 3]
    X2 = points @ T2[:, :3, :3].transpose(1, 2) + T2[:, None, :3, 3]
    return (X1 - X2).abs().sum(-1).mean(1)


def disentangled_pose_loss(T_pred: torch.Tensor, T_gt: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """GenFlow's disentangled point-matching loss (method.md 3.4), mean over samples -> ().

    D([R | t*], P*) + D([R* | t_x, t_y, t*_z], P*) + D([R* | t*_x, t*_y, t_z], P*), with D the mean L1
    distance over model points, (R, t) predicted and (R*, t*) ground truth: rotation, image-plane
    translation and depth are each supervised with the other parts set to the truth.
    """
    T_pred, T_gt, points = T_pred.float(), T_gt.float(), points.float()
    rot = T_gt.clone()
    rot[:, :3, :3] = T_pred[:, :3, :3]
    xy = T_gt.clone()
    xy[:, :2, 3] = T_pred[:, :2, 3]
    z = T_gt.clone()
    z[:, 2, 3] = T_pred[:, 2, 3]
    return (point_distance(rot, T_gt, points) + point_distance(xy, T_gt, points) + point_distance(z, T_gt, points)).mean()


def selection_loss(logit: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the hypothesis logit (B,) against its label (B,) {0, 1} -> ()."""
    return F.binary_cross_entropy_with_logits(logit.float(), label.float())
