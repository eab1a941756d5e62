"""Batched, differentiable weighted PnP (GenFlow / EPro-PnP style), in torch.

Minimises, per batch element, the weighted reprojection cost
    E(T) = 1/2 sum_i w_i || pi(K (R X_i + t)) - uv_i ||^2
over T = [R | t] on SE(3). `lm_pnp` runs `n_iters` Levenberg-Marquardt steps without gradient, then one
Gauss-Newton step with gradient (`gauss_newton_step`) from that result, so gradients reach the weights,
targets and points through the last step only (the implicit-function trick of EPro-PnP).

Pose update (rotation left-multiplied, about the object origin, in camera axes): for delta = (omega, v),
    R <- so3_exp(omega) R,   t <- t + v,
whose Jacobian at delta = 0 is d X_cam = omega x (R X) + v. Rotating about the object origin instead
of the camera centre keeps rotation and translation nearly decoupled (a rotation about the camera centre
is almost a sideways translation of a distant object), so the normal equations stay well conditioned in
float32; they are also solved after Jacobi (diagonal) scaling.
Points with depth <= MIN_DEPTH (behind or on the camera plane) get no weight, and their residual is
computed at MIN_DEPTH, so they never produce NaN or inf gradients. An LM step is accepted when it lowers
the total weight of such points, or keeps it and lowers the cost of the others.
"""

from __future__ import annotations

import torch

from cooppose.errors import InputError
from cooppose.geometry.transforms import so3_exp

MIN_DEPTH = 1e-3  # mm; projected depth below which a point counts as behind the camera
_LAMBDA_MIN, _LAMBDA_MAX = 1e-10, 1e10


def _check(X: torch.Tensor, uv: torch.Tensor, weights: torch.Tensor, K: torch.Tensor, T: torch.Tensor) -> None:
    """Raise InputError unless shapes are X (B,N,3), uv (B,N,2), weights (B,N), K (B,3,3), T (B,4,4)."""
    if X.dim() != 3 or X.shape[-1] != 3:
        raise InputError(f"X must be (B, N, 3) object points, got {tuple(X.shape)}.")
    B, N = X.shape[:2]
    expected = {"uv": (uv, (B, N, 2)), "weights": (weights, (B, N)), "K": (K, (B, 3, 3)), "T": (T, (B, 4, 4))}
    for name, (x, shape) in expected.items():
        if tuple(x.shape) != shape:
            raise InputError(f"{name} must have shape {shape} to match X {tuple(X.shape)}, got {tuple(x.shape)}.")


def _residuals(X: torch.Tensor, uv: torch.Tensor, K: torch.Tensor, T: torch.Tensor):
    """Reprojection residuals and helpers at poses T.

    Returns r (B,N,2) = pi(K X_cam) - uv, X_cam (B,N,3), the projected depth p_z (B,N) clamped to
    MIN_DEPTH, the projections (B,N,2) and the mask of points in front of the camera (B,N).
    """
    R, t = T[:, :3, :3], T[:, :3, 3]
    X_cam = X @ R.transpose(-1, -2) + t[:, None]  # (B, N, 3)
    p = X_cam @ K.transpose(-1, -2)  # (B, N, 3)
    front = p[..., 2] > MIN_DEPTH
    pz = torch.where(front, p[..., 2], torch.full_like(p[..., 2], MIN_DEPTH))
    proj = p[..., :2] / pz[..., None]  # (B, N, 2)
    return proj - uv, X_cam, pz, proj, front


def _normal_equations(X, uv, weights, K, T):
    """Cost over points in front (B,), weight behind the camera (B,), J^T W J (B,6,6), J^T W r (B,6) at T."""
    r, X_cam, pz, proj, front = _residuals(X, uv, K, T)
    w = weights * front  # (B, N); points behind the camera do not pull the pose
    cost = 0.5 * (w * (r * r).sum(-1)).sum(-1)  # (B,)
    behind = (weights * ~front).sum(-1)  # (B,)
    # d proj / d X_cam: row k is (K[k] - proj_k K[2]) / p_z, k = 0 (u), 1 (v)
    dproj = (K[:, None, :2, :] - proj[..., None] * K[:, None, 2:3, :]) / pz[..., None, None]  # (B, N, 2, 3)
    # d X_cam / d(omega, v) = [-[R X]_x, I]  =>  d proj / d omega = (R X) x (d proj / d X_cam)
    RX = (X_cam - T[:, None, :3, 3])[..., None, :]  # (B, N, 1, 3)
    J = torch.cat([torch.linalg.cross(RX, dproj), dproj], -1).flatten(1, 2)  # (B, 2N, 6)
    Jw = J * w.repeat_interleave(2, dim=1)[..., None]  # (B, 2N, 6)
    H = Jw.transpose(-1, -2) @ J  # (B, 6, 6)
    g = (Jw.transpose(-1, -2) @ r.flatten(1, 2)[..., None])[..., 0]  # (B, 6)
    return cost, behind, H, g


def _apply(T: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Left-multiplicative update of poses T (B,4,4) by delta = (omega, v) (B,6)."""
    R = so3_exp(delta[:, :3]) @ T[:, :3, :3]  # (B, 3, 3)
    t = T[:, :3, 3] + delta[:, 3:]  # (B, 3)
    bottom = T[:, 3:4, :]
    return torch.cat([torch.cat([R, t[..., None]], -1), bottom], -2)


def _solve(H: torch.Tensor, g: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """delta = -(H + lam diag(H))^-1 g, solved with Jacobi scaling; empty or degenerate systems give ~0.

    With D = diag(H) (floored at a tiny fraction of its largest entry), S = D^-1/2:
    delta = -S (S H S + lam I + eps I)^-1 S g, where eps (10 machine epsilons) only guards singular systems.
    """
    eye = torch.eye(6, dtype=H.dtype, device=H.device)
    diag = torch.diagonal(H, dim1=-2, dim2=-1)  # (B, 6)
    fin = torch.finfo(H.dtype)
    floor = (diag.amax(-1, keepdim=True) * fin.eps).clamp_min(fin.tiny ** 0.5).detach()  # (B, 1)
    s = torch.rsqrt(torch.maximum(diag, floor))  # (B, 6)
    A = H * s[:, :, None] * s[:, None, :] + (lam[:, None, None] + 10 * fin.eps) * eye
    return -s * torch.linalg.solve(A, (s * g)[..., None])[..., 0]


def gauss_newton_step(X: torch.Tensor, uv: torch.Tensor, weights: torch.Tensor, K: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """One differentiable Gauss-Newton step of the weighted reprojection cost from poses T (B,4,4); returns (B,4,4).

    X (B,N,3) object points (mm), uv (B,N,2) target pixels, weights (B,N) >= 0, K (B,3,3).
    """
    _check(X, uv, weights, K, T)
    _, _, H, g = _normal_equations(X, uv, weights, K, T)
    return _apply(T, _solve(H, g, torch.zeros_like(H[:, 0, 0])))


def lm_pnp(
    X: torch.Tensor,
    uv: torch.Tensor,
    weights: torch.Tensor,
    K: torch.Tensor,
    T_init: torch.Tensor,
    n_iters: int = 3,
    lm_lambda: float = 1e-3,
) -> torch.Tensor:
    """Weighted PnP: n_iters LM steps without gradient from T_init, then one Gauss-Newton step with gradient.

    X (B,N,3) object points (mm), uv (B,N,2) target pixels, weights (B,N) >= 0, K (B,3,3), T_init (B,4,4).
    Returns T (B,4,4) in the dtype of X. Each batch element keeps its own damping: a step that lowers the
    cost (see the module docstring for points behind the camera) is accepted and its lambda divided by 10,
    otherwise it is rejected and lambda multiplied by 10.
    """
    _check(X, uv, weights, K, T_init)
    uv, weights, K = uv.to(X.dtype), weights.to(X.dtype), K.to(X.dtype)
    if n_iters < 0 or not lm_lambda >= 0:
        raise InputError(f"n_iters ({n_iters}) must be >= 0 and lm_lambda ({lm_lambda}) >= 0.")
    with torch.no_grad():
        Xd, uvd, wd, Kd = X.detach(), uv.detach(), weights.detach(), K.detach()
        T = T_init.detach().to(X.dtype)
        lam = torch.full((X.shape[0],), float(lm_lambda), dtype=X.dtype, device=X.device)
        cost, behind, H, g = _normal_equations(Xd, uvd, wd, Kd, T)
        for _ in range(n_iters):
            T_new = _apply(T, _solve(H, g, lam))
            cost_new, behind_new, H_new, g_new = _normal_equations(Xd, uvd, wd, Kd, T_new)
            better = (behind_new < behind) | ((behind_new == behind) & (cost_new < cost))
            accept = torch.isfinite(cost_new) & torch.isfinite(T_new).flatten(1).all(-1) & better  # (B,)
            T = torch.where(accept[:, None, None], T_new, T)
            cost = torch.where(accept, cost_new, cost)
            behind = torch.where(accept, behind_new, behind)
            H = torch.where(accept[:, None, None], H_new, H)
            g = torch.where(accept[:, None], g_new, g)
            lam = torch.where(accept, lam / 10, lam * 10).clamp(_LAMBDA_MIN, _LAMBDA_MAX)
    return gauss_newton_step(X, uv, weights, K, T)
