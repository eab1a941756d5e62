"""Training losses against numbers computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from cooppose.geometry.transforms import make_pose, so3_exp
from cooppose.train.losses import (
    certainty_loss,
    coarse_classification_loss,
    coarse_offset_loss,
    disentangled_pose_loss,
    flow_l1_loss,
    flow_nll_loss,
    point_distance,
    selection_loss,
)


def test_coarse_cross_entropy_by_hand():
    # 1 sample, 2 query patches, Np = 2 -> 3 classes
    logits = torch.tensor([[[0.0, 0.0, 0.0], [math.log(3.0), 0.0, 0.0]]])
    labels = torch.tensor([[2, 0]])  # patch 0: no match; patch 1: template patch 0
    expected = (-math.log(1 / 3) - math.log(3 / 5)) / 2
    assert coarse_classification_loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)


def test_coarse_offset_l1_only_on_matched_patches():
    offsets = torch.tensor([[[0.1, -0.2], [0.5, 0.5], [0.0, 0.0]], [[0.3, 0.3], [0.3, 0.3], [0.3, 0.3]]])
    gt = torch.zeros(2, 3, 2)
    labels = torch.tensor([[0, 3, 1], [3, 3, 3]])  # Np = 3: sample 0 has 2 matched patches, sample 1 none
    # sample 0: (|0.1| + |-0.2| + 0) / 2 = 0.15; sample 1 contributes 0; mean over samples = 0.075
    assert coarse_offset_loss(offsets, gt, labels).item() == pytest.approx(0.075, abs=1e-6)


def test_flow_laplace_nll_by_hand():
    flow = torch.zeros(1, 2, 1, 2)
    flow_gt = torch.tensor([[[[1.0, 5.0]], [[-2.0, 0.0]]]])  # pixel 0 error |1| + |-2| = 3; pixel 1 error 5
    scale = torch.tensor([[[[2.0, 1.0]]]])
    valid = torch.tensor([[[True, False]]])
    assert flow_nll_loss(flow, scale, flow_gt, valid).item() == pytest.approx(3 / 2 + math.log(2), abs=1e-6)
    valid_all = torch.ones(1, 1, 2, dtype=torch.bool)
    both = ((3 / 2 + math.log(2)) + (5 / 1 + 0.0)) / 2
    assert flow_nll_loss(flow, scale, flow_gt, valid_all).item() == pytest.approx(both, abs=1e-6)


def test_flow_l1_by_hand_and_independent_of_the_scale():
    flow = torch.zeros(1, 2, 1, 2)
    flow_gt = torch.tensor([[[[1.0, 5.0]], [[-2.0, 0.0]]]])  # errors 3 and 5 px
    assert flow_l1_loss(flow, flow_gt, torch.tensor([[[True, False]]])).item() == pytest.approx(3.0)
    assert flow_l1_loss(flow, flow_gt, torch.ones(1, 1, 2, dtype=torch.bool)).item() == pytest.approx(4.0)
    flow.requires_grad_(True)
    flow_l1_loss(flow, flow_gt, torch.ones(1, 1, 2, dtype=torch.bool)).backward()
    assert torch.equal(flow.grad, torch.tensor([[[[-0.5, -0.5]], [[0.5, 0.0]]]]))  # sign / n pixels, b plays no part


def test_certainty_bce_by_hand():
    logit = torch.tensor([[[[0.0, math.log(3.0), 5.0]]]])  # p = 0.5, 0.75, ...
    gt = torch.tensor([[[1.0, 0.0, 1.0]]])
    valid = torch.tensor([[[True, True, False]]])
    expected = (-math.log(0.5) - math.log(0.25)) / 2
    assert certainty_loss(logit, gt, valid).item() == pytest.approx(expected, abs=1e-6)


def test_selection_bce_by_hand():
    logit = torch.tensor([0.0, math.log(4.0)])  # p = 0.5, 0.8
    label = torch.tensor([1.0, 0.0])
    assert selection_loss(logit, label).item() == pytest.approx((math.log(2) - math.log(0.2)) / 2, abs=1e-6)


def test_disentangled_pose_loss_by_hand():
    points = torch.tensor([[[10.0, 0.0, 0.0], [0.0, 10.0, 0.0]]])  # 2 model points, mm
    T_gt = make_pose(torch.eye(3)[None], torch.tensor([[0.0, 0.0, 500.0]]))
    # prediction: 90 deg about z, translation off by (3, -4, 12)
    R = so3_exp(torch.tensor([[0.0, 0.0, math.pi / 2]]))
    T_pred = make_pose(R, torch.tensor([[3.0, -4.0, 512.0]]))
    # rotation term: R x - x for (10,0,0) -> (0,10,0): |(-10, 10, 0)|_1 = 20; for (0,10,0) -> (-10,0,0): 20
    # xy term: |(3, -4, 0)|_1 = 7 for every point; z term: 12
    assert disentangled_pose_loss(T_pred, T_gt, points).item() == pytest.approx(20 + 7 + 12, abs=1e-4)
    assert point_distance(T_pred, T_gt, points).item() == pytest.approx((abs(-10 + 3) + abs(10 - 4) + 12 + abs(-10 + 3) + abs(-10 - 4) + 12) / 2, abs=1e-4)
    assert disentangled_pose_loss(T_gt, T_gt, points).item() == 0.0


def test_losses_are_sample_means_so_batches_split_evenly():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 5, 6, generator=g)
    labels = torch.randint(0, 6, (4, 5), generator=g)
    off, off_gt = torch.rand(4, 5, 2, generator=g) - 0.5, torch.rand(4, 5, 2, generator=g) - 0.5
    for fn, args in [(coarse_classification_loss, (logits, labels)), (coarse_offset_loss, (off, off_gt, labels))]:
        whole = fn(*args)
        halves = (fn(*(a[:2] for a in args)) + fn(*(a[2:] for a in args))) / 2
        assert whole.item() == pytest.approx(halves.item(), abs=1e-6)
