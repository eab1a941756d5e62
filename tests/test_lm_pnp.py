"""Differentiable weighted PnP: convergence, robustness to weights, batching and gradients."""

import math

import numpy as np
import pytest
import torch

from cooppose.errors import InputError
from cooppose.geometry.lm_pnp import gauss_newton_step, lm_pnp
from cooppose.geometry.transforms import make_pose, project, random_rotations, rotation_error_deg, so3_exp, transform_points

K_NP = np.array([[500.0, 0.0, 80.0], [0.0, 500.0, 80.0], [0.0, 0.0, 1.0]])


def problem(B: int, N: int, seed: int, rot_deg: float = 15.0, trans_mm: float = 20.0, dtype=torch.float64):
    """Exact targets for random poses and an initial pose off by rot_deg about a random axis and trans_mm."""
    rng = np.random.default_rng(seed)
    T = make_pose(random_rotations(B, rng), np.c_[rng.uniform(-30, 30, (B, 2)), rng.uniform(400, 700, B)])  # (B,4,4)
    X = rng.uniform(-50, 50, (B, N, 3))
    uv = project(K_NP, transform_points(T, X))  # (B, N, 2)
    axes = rng.normal(size=(B, 3))
    axes *= math.radians(rot_deg) / np.linalg.norm(axes, axis=-1, keepdims=True)
    shifts = rng.normal(size=(B, 3))
    shifts *= trans_mm / np.linalg.norm(shifts, axis=-1, keepdims=True)
    T_init = make_pose(so3_exp(axes) @ T[:, :3, :3], T[:, :3, 3] + shifts)
    t = lambda a: torch.as_tensor(a, dtype=dtype)  # noqa: E731
    K = t(np.broadcast_to(K_NP, (B, 3, 3)).copy())
    return t(X), t(uv), torch.ones(B, N, dtype=dtype), K, t(T_init), t(T)


def errors(T_est: torch.Tensor, T_gt: torch.Tensor):
    T_est, T_gt = T_est.detach().double(), T_gt.double()
    return rotation_error_deg(T_est[:, :3, :3], T_gt[:, :3, :3]), (T_est[:, :3, 3] - T_gt[:, :3, 3]).norm(dim=-1)


def test_exact_recovery_float64_from_15_deg_20_mm():
    X, uv, w, K, T_init, T_gt = problem(4, 100, seed=0)
    r0, t0 = errors(T_init, T_gt)
    assert torch.allclose(r0, torch.full_like(r0, 15.0)) and torch.allclose(t0, torch.full_like(t0, 20.0))
    rot, trans = errors(lm_pnp(X, uv, w, K, T_init, n_iters=10), T_gt)
    assert rot.max() < 1e-3 and trans.max() < 1e-3


def test_default_three_iterations_converge_and_float32_works():
    X, uv, w, K, T_init, T_gt = problem(4, 100, seed=1, dtype=torch.float32)
    T = lm_pnp(X, uv, w, K, T_init)
    assert T.dtype == torch.float32
    rot, trans = errors(T, T_gt)
    assert rot.max() < 1e-3 and trans.max() < 1e-2


def test_zero_weight_outliers_are_ignored():
    X, uv, w, K, T_init, T_gt = problem(2, 120, seed=2)
    gen = torch.Generator().manual_seed(0)
    out = torch.rand(2, 120, generator=gen) < 0.3
    uv = torch.where(out[..., None], torch.rand(2, 120, 2, generator=gen, dtype=uv.dtype) * 160, uv)
    rot_bad, _ = errors(lm_pnp(X, uv, w, K, T_init, n_iters=10), T_gt)
    assert rot_bad.min() > 0.1  # unweighted outliers do pull the pose away
    rot, trans = errors(lm_pnp(X, uv, w * ~out, K, T_init, n_iters=10), T_gt)
    assert rot.max() < 1e-3 and trans.max() < 1e-3


def test_batch_equals_one_at_a_time():
    X, uv, w, K, T_init, _ = problem(4, 50, seed=3)
    w = w * torch.linspace(0.1, 2.0, 50, dtype=w.dtype)
    uv = uv + 0.5 * torch.randn(uv.shape, generator=torch.Generator().manual_seed(1), dtype=uv.dtype)
    batched = lm_pnp(X, uv, w, K, T_init)
    for b in range(4):
        single = lm_pnp(X[b : b + 1], uv[b : b + 1], w[b : b + 1], K[b : b + 1], T_init[b : b + 1])
        assert torch.allclose(batched[b], single[0], atol=1e-10)


def test_gauss_newton_step_gradcheck_weights_and_uv():
    X, uv, w, K, T_init, T_gt = problem(2, 8, seed=4, rot_deg=2.0, trans_mm=3.0)
    w = (w * torch.linspace(0.5, 1.5, 8, dtype=w.dtype)).requires_grad_()
    uv = uv.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda w_, uv_: gauss_newton_step(X, uv_, w_, K, T_init), (w, uv))
    assert torch.autograd.gradcheck(lambda X_: gauss_newton_step(X_, uv, w, K, T_init), (X.clone().requires_grad_(),))


def test_gradient_flows_through_last_step_only():
    X, uv, w, K, T_init, _ = problem(2, 30, seed=5)
    uv = uv + 0.3 * torch.randn(uv.shape, generator=torch.Generator().manual_seed(2), dtype=uv.dtype)
    X, uv, w, T_init = (a.clone().requires_grad_() for a in (X, uv, w, T_init))
    T = lm_pnp(X, uv, w, K, T_init)
    T[:, :3, 3].sum().backward()
    for g in (X.grad, uv.grad, w.grad):
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert T_init.grad is None
    # d t_x / d u of a target is positive: moving the targets right moves the object right
    assert uv.grad[..., 0].sum() > 0


def test_gauss_newton_step_from_the_optimum_stays_and_lowers_cost_nearby():
    X, uv, w, K, _, T_gt = problem(3, 40, seed=6)
    assert torch.allclose(gauss_newton_step(X, uv, w, K, T_gt), T_gt, atol=1e-9)
    _, _, _, _, T_near, _ = problem(3, 40, seed=6, rot_deg=1.0, trans_mm=2.0)
    r0, t0 = errors(T_near, T_gt)
    r1, t1 = errors(gauss_newton_step(X, uv, w, K, T_near), T_gt)
    assert torch.all(r1 < 0.05 * r0) and torch.all(t1 < 0.05 * t0)


def test_points_behind_camera_and_zero_weights_give_no_nan():
    X, uv, w, K, T_init, T_gt = problem(2, 40, seed=7)
    behind = torch.tensor([[30.0, -20.0, -500.0], [0.0, 0.0, -300.0], [10.0, 5.0, -900.0]], dtype=X.dtype)  # camera frame
    X = X.clone()
    X[:, :3] = transform_points(torch.linalg.inv(T_gt), behind.expand(2, 3, 3))  # behind the camera, weight 1
    w = w.clone().requires_grad_()
    T = lm_pnp(X, uv, w, K, T_init, n_iters=10)
    T.sum().backward()
    assert torch.isfinite(T).all() and torch.isfinite(w.grad).all()
    rot, trans = errors(T, T_gt)  # the other 37 points still determine the pose exactly
    assert rot.max() < 1e-3 and trans.max() < 1e-3
    X_plane = X.detach().clone()
    X_plane[:, 3] = transform_points(torch.linalg.inv(T_init), torch.tensor([[[10.0, 5.0, 0.0]]], dtype=X.dtype).expand(2, 1, 3))[:, 0]
    X_plane.requires_grad_()
    gauss_newton_step(X_plane, uv, w, K, T_init).sum().backward()  # a point exactly on the camera plane
    assert torch.isfinite(X_plane.grad).all() and torch.isfinite(w.grad).all()
    zero = torch.zeros_like(w).requires_grad_()
    T0 = lm_pnp(X, uv, zero, K, T_init)
    T0.sum().backward()
    assert torch.allclose(T0, T_init) and torch.isfinite(zero.grad).all()


def test_shapes_are_checked():
    X, uv, w, K, T_init, _ = problem(2, 10, seed=8)
    with pytest.raises(InputError, match="uv"):
        lm_pnp(X, uv[:, :5], w, K, T_init)
    with pytest.raises(InputError, match="weights"):
        lm_pnp(X, uv, w[0], K, T_init)
    with pytest.raises(InputError, match="K"):
        gauss_newton_step(X, uv, w, K[0], T_init)
    with pytest.raises(InputError, match="X"):
        lm_pnp(X[..., :2], uv, w, K, T_init)
    with pytest.raises(InputError, match="n_iters"):
        lm_pnp(X, uv, w, K, T_init, n_iters=-1)
