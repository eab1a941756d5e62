"""BOP pose errors (MSSD, MSPD, VSD, ADD, ADD-S) and the BOP19 average recall, in numpy.

Follows bop_toolkit (`pose_error.py`, `eval_calc_errors.py`, `eval_calc_scores.py`, `pose_matching.py`,
`eval_bop19_pose.py`). Poses map model to camera, X_cam = R X + t, lengths in mm, K in pixels.
Symmetries are 4x4 transforms S (from `cooppose.objects.symmetry_transformations`), identity included.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

# BOP19 threshold grids (eval_bop19_pose.py); np.arange reproduces the toolkit's exact float values.
MSSD_THRESHOLDS = np.arange(0.05, 0.51, 0.05)  # fraction of the object diameter
MSPD_THRESHOLDS = np.arange(5, 51, 5).astype(np.float64)  # pixels at image width 640
VSD_THRESHOLDS = np.arange(0.05, 0.51, 0.05)  # VSD correctness thresholds theta
VSD_TAUS = np.arange(0.05, 0.51, 0.05)  # misalignment tolerances, fraction of the diameter
VSD_DELTA = 15.0  # mm, visibility tolerance (5 for ITODD)


def _sym_array(syms: Sequence[np.ndarray] | np.ndarray | None) -> np.ndarray:
    if syms is None:
        return np.eye(4)[None]
    S = np.asarray(syms, dtype=np.float64)
    return S.reshape(-1, 4, 4)


def _rt(R: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(R, dtype=np.float64).reshape(3, 3), np.asarray(t, dtype=np.float64).reshape(3)


def _project(X: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection (..., N, 3) -> (..., N, 2) without guarding z = 0 (gives inf/nan as the toolkit)."""
    uvw = X @ np.asarray(K, dtype=np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        return uvw[..., :2] / uvw[..., 2:3]


def _sym_gt_points(R_g: np.ndarray, t_g: np.ndarray, pts: np.ndarray, S: np.ndarray) -> np.ndarray:
    """GT points under each symmetry: R_g (S_R x + S_t) + t_g, (n_sym, N, 3)."""
    R = R_g @ S[:, :3, :3]  # (n_sym, 3, 3)
    t = S[:, :3, 3] @ R_g.T + t_g  # (n_sym, 3)
    return pts @ np.swapaxes(R, -1, -2) + t[:, None, :]


def _max_norm(diff: np.ndarray) -> np.ndarray:
    """max over points of the Euclidean norm, (n_sym, N, D) -> (n_sym,); sqrt after max (same value, less work)."""
    with np.errstate(invalid="ignore"):
        return np.sqrt(np.einsum("snd,snd->sn", diff, diff).max(axis=-1))


def _min_over_syms(fn, S: np.ndarray, chunk: int = 64) -> float:
    return float(np.min(np.concatenate([fn(S[i : i + chunk]) for i in range(0, len(S), chunk)])))


def mssd(R_e: np.ndarray, t_e: np.ndarray, R_g: np.ndarray, t_g: np.ndarray, pts: np.ndarray,
         syms: Sequence[np.ndarray] | np.ndarray | None = None) -> float:
    """Maximum Symmetry-aware Surface Distance (mm).

    MSSD = min_S max_x || (R_e x + t_e) - (R_g (S_R x + S_t) + t_g) ||  over model points x (N, 3).
    """
    R_e, t_e = _rt(R_e, t_e)
    R_g, t_g = _rt(R_g, t_g)
    pts = np.asarray(pts, dtype=np.float64)
    p_e = pts @ R_e.T + t_e  # (N, 3)

    def err(S: np.ndarray) -> np.ndarray:
        return _max_norm(p_e[None] - _sym_gt_points(R_g, t_g, pts, S))

    return _min_over_syms(err, _sym_array(syms))


def mspd(R_e: np.ndarray, t_e: np.ndarray, R_g: np.ndarray, t_g: np.ndarray, K: np.ndarray, pts: np.ndarray,
         syms: Sequence[np.ndarray] | np.ndarray | None = None) -> float:
    """Maximum Symmetry-aware Projection Distance (pixels; inf/nan when a point projects from z = 0).

    MSPD = min_S max_x || proj_K(R_e x + t_e) - proj_K(R_g (S_R x + S_t) + t_g) ||.
    """
    R_e, t_e = _rt(R_e, t_e)
    R_g, t_g = _rt(R_g, t_g)
    pts = np.asarray(pts, dtype=np.float64)
    uv_e = _project(pts @ R_e.T + t_e, K)  # (N, 2)

    def err(S: np.ndarray) -> np.ndarray:
        uv_g = _project(_sym_gt_points(R_g, t_g, pts, S), K)
        return _max_norm(uv_e[None] - uv_g)

    return _min_over_syms(err, _sym_array(syms))


def add(R_e: np.ndarray, t_e: np.ndarray, R_g: np.ndarray, t_g: np.ndarray, pts: np.ndarray) -> float:
    """Average Distance of model points (ADD, mm): mean_x || (R_e x + t_e) - (R_g x + t_g) ||."""
    R_e, t_e = _rt(R_e, t_e)
    R_g, t_g = _rt(R_g, t_g)
    pts = np.asarray(pts, dtype=np.float64)
    return float(np.linalg.norm((pts @ R_e.T + t_e) - (pts @ R_g.T + t_g), axis=1).mean())


def adi(R_e: np.ndarray, t_e: np.ndarray, R_g: np.ndarray, t_g: np.ndarray, pts: np.ndarray) -> float:
    """ADD-S / ADI (mm): mean over GT-posed points y of min over estimated points || y - (R_e x + t_e) ||."""
    R_e, t_e = _rt(R_e, t_e)
    R_g, t_g = _rt(R_g, t_g)
    pts = np.asarray(pts, dtype=np.float64)
    dists, _ = cKDTree(pts @ R_e.T + t_e).query(pts @ R_g.T + t_g, k=1)
    return float(dists.mean())


def spheres_overlap(t_e: np.ndarray, t_g: np.ndarray, diameter: float) -> bool:
    """Whether the bounding spheres overlap: ||t_e - t_g|| < diameter (else the toolkit sets MSSD to inf)."""
    return bool(np.linalg.norm(np.asarray(t_e, float).reshape(3) - np.asarray(t_g, float).reshape(3)) < diameter)


def sphere_projections_overlap(radius: float, t_e: np.ndarray, t_g: np.ndarray) -> bool:
    """Approximate test that the images of two spheres of `radius` centred at t_e, t_g overlap (VSD shortcut).

    || t_e[:2]/t_e[2] - t_g[:2]/t_g[2] || < radius (1/t_e[2] + 1/t_g[2]); False when a depth is 0.
    """
    p1, p2 = np.asarray(t_e, float).reshape(3), np.asarray(t_g, float).reshape(3)
    if p1[2] == 0 or p2[2] == 0:
        return False
    dist = np.linalg.norm(p1[:2] / p1[2] - p2[:2] / p2[2])
    return bool(dist < radius * (1.0 / p1[2] + 1.0 / p2[2]))


def depth_to_distance(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Distance from the camera centre (H, W) of a depth map (H, W): d sqrt(((u-cx)/fx)^2 + ((v-cy)/fy)^2 + 1)."""
    depth = np.asarray(depth, dtype=np.float64)
    H, W = depth.shape
    u = (np.arange(W) - K[0, 2]) / float(K[0, 0])
    v = (np.arange(H) - K[1, 2]) / float(K[1, 1])
    return np.sqrt((u[None, :] * depth) ** 2 + (v[:, None] * depth) ** 2 + depth**2)


def _visible(dist_test: np.ndarray, dist_model: np.ndarray, delta: float) -> np.ndarray:
    """bop19 visibility: rendered pixel not behind the test surface by more than delta, or test depth missing."""
    diff = dist_model.astype(np.float32) - dist_test.astype(np.float32)
    return ((diff <= delta) | (dist_test == 0)) & (dist_model > 0)


def vsd(depth_est: np.ndarray, depth_gt: np.ndarray, depth_test: np.ndarray, K: np.ndarray, diameter: float,
        delta: float = VSD_DELTA, taus: Iterable[float] = VSD_TAUS, normalized_by_diameter: bool = True,
        cost: str = "step") -> np.ndarray:
    """Visible Surface Discrepancy from depth maps (H, W) in mm (0 = empty), one error per tau.

    With distance images D (depth_to_distance), V_gt = {D_gt > 0, D_gt - D_test <= delta or D_test = 0},
    V_est = {D_est > 0, D_est - D_test <= delta or D_test = 0} | (V_gt & D_est > 0), U = V_gt | V_est,
    I = V_gt & V_est and d = |D_gt - D_est| / diameter on I:
    e(tau) = (#{p in I : d >= tau} + |U| - |I|) / |U|  ("step" cost; "tlinear": sum min(d / tau, 1));
    e = 1 when U is empty.
    """
    K = np.asarray(K, dtype=np.float64)
    d_test, d_gt, d_est = (depth_to_distance(d, K) for d in (depth_test, depth_gt, depth_est))
    visib_gt = _visible(d_test, d_gt, delta)
    visib_est = _visible(d_test, d_est, delta) | (visib_gt & (d_est > 0))
    inter = visib_gt & visib_est
    union_count = int((visib_gt | visib_est).sum())
    taus = np.asarray(list(taus), dtype=np.float64)
    if union_count == 0:
        return np.ones(len(taus))
    dists = np.abs(d_gt[inter] - d_est[inter])
    if normalized_by_diameter:
        dists = dists / diameter
    comp = union_count - int(inter.sum())
    if cost == "step":
        costs = (dists[None, :] >= taus[:, None]).sum(axis=1)
    elif cost == "tlinear":
        costs = np.minimum(dists[None, :] / taus[:, None], 1.0).sum(axis=1)
    else:
        raise ValueError(f"unknown VSD cost {cost!r}; use 'step' or 'tlinear'.")
    return (costs + comp) / float(union_count)


def render_pose(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """4x4 pose for rendering with R replaced by its nearest rotation (SVD).

    Annotations and results files store R with a few decimals (LM-O GT deviates from orthonormal by up
    to 2e-3); the projection changes by far less than a pixel, but renderers require a rigid pose.
    """
    from cooppose.geometry.transforms import make_pose

    R, t = _rt(R, t)
    U, _, Vt = np.linalg.svd(R)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return make_pose(U @ D @ Vt, t)


def vsd_rendered(renderer, mesh, R_e: np.ndarray, t_e: np.ndarray, R_g: np.ndarray, t_g: np.ndarray,
                 depth_test: np.ndarray, K: np.ndarray, diameter: float, delta: float = VSD_DELTA,
                 taus: Iterable[float] = VSD_TAUS, depth_gt: np.ndarray | None = None) -> np.ndarray:
    """VSD per tau, rendering the model depth at both poses with `renderer.render(mesh, K, T, size).depth`.

    Returns 1 for every tau when the projected bounding spheres do not overlap (as the toolkit).
    `depth_gt` may pass a cached rendering at the GT pose.
    """
    taus = list(taus)
    if not sphere_projections_overlap(0.5 * diameter, t_e, t_g):
        return np.ones(len(taus))
    size = depth_test.shape[:2]
    depth_est = renderer.render(mesh, K, render_pose(R_e, t_e), size=size).depth
    if depth_gt is None:
        depth_gt = renderer.render(mesh, K, render_pose(R_g, t_g), size=size).depth
    return vsd(depth_est, depth_gt, depth_test, K, diameter, delta, taus, True, "step")


# ---------------------------------------------------------------------------------------------- BOP19 recall
def valid_gt_mask(gt_obj_ids: Sequence[int], visib_fracts: Sequence[float], inst_counts: dict[int, int]) -> np.ndarray:
    """Valid GT instances of one image (official visib_gt_min = -1): per target object, its inst_count most visible.

    GT instances are visited by decreasing visib_fract (stable, ties by GT index); `inst_counts` maps the
    target objects of the image to their inst_count. Returns a bool mask (G,).
    """
    order = sorted(range(len(gt_obj_ids)), key=lambda g: visib_fracts[g], reverse=True)
    left = dict(inst_counts)
    valid = np.zeros(len(gt_obj_ids), dtype=bool)
    for g in order:
        obj = int(gt_obj_ids[g])
        if left.get(obj, 0) > 0:
            valid[g] = True
            left[obj] -= 1
    return valid


def top_estimates(scores: Sequence[float], n: int) -> list[int]:
    """Indices of the n best-scored estimates, by decreasing score (stable: ties keep input order)."""
    return sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)[:n]


def greedy_match(errors: np.ndarray, valid: np.ndarray, threshold: float) -> int:
    """Number of valid GT matched when estimates (rows, by decreasing score) greedily take GT (columns).

    Each estimate takes the not-yet-matched valid GT with the smallest error strictly below `threshold`
    (first such GT on ties); non-finite errors never match. errors: (E, G), valid: (G,).
    """
    free = np.asarray(valid, dtype=bool).copy()
    matched = 0
    for row in np.asarray(errors, dtype=np.float64):
        cand = free & (row < threshold)
        if cand.any():
            g = int(np.argmin(np.where(cand, row, np.inf)))
            free[g] = False
            matched += 1
    return matched


@dataclass
class MatchGroup:
    """One (image, object) target: errors of its kept estimates (score order) against the image's GT of that object."""

    obj_id: int
    errors: np.ndarray  # (E, G) or (E, G, V) with V error variants (e.g. one per VSD tau)
    valid: np.ndarray  # (G,) bool: GT instances that count as targets


def recalls(groups: Sequence[MatchGroup], thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray, int]:
    """BOP19 recalls over targets: matched valid GT / all valid GT, per threshold (and variant).

    Returns (recall (T,) or (V, T), per-group true positives (n_groups, T) or (n_groups, V, T), n_targets).
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    n_targets = int(sum(int(np.sum(g.valid)) for g in groups))
    tps = []
    for g in groups:
        err = np.asarray(g.errors, dtype=np.float64)
        n_var = 1 if err.ndim == 2 else err.shape[2]
        err3 = err.reshape(err.shape[0], err.shape[1], n_var)  # (E, G, V)
        valid = np.asarray(g.valid, dtype=bool)
        out = np.zeros((n_var, len(thresholds)), dtype=np.int64)
        if err3.shape[0] > 0 and (err3.shape[0] == 1 or valid.sum() == 1):
            # One estimate, or one valid GT: one match iff some estimate beats the threshold on a valid GT.
            best = np.where(valid[None, :, None] & ~np.isnan(err3), err3, np.inf).min(axis=(0, 1))  # (V,)
            out[:] = best[:, None] < thresholds[None, :]
        elif err3.shape[0] > 1:
            for v in range(n_var):
                for k, th in enumerate(thresholds):
                    out[v, k] = greedy_match(err3[:, :, v], valid, th)
        tps.append(out if err.ndim == 3 else out[0])
    tp = np.asarray(tps) if tps else np.zeros((0, len(thresholds)), dtype=np.int64)
    total = tp.sum(axis=0) if len(tps) else np.zeros(tp.shape[1:])
    rec = total / n_targets if n_targets else np.zeros_like(total, dtype=np.float64)
    return rec.astype(np.float64), tp, n_targets
