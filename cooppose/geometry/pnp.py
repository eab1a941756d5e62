"""Robust pose from correspondences: PnP + RANSAC (2D-3D), Kabsch + RANSAC and MAGSAC++ (3D-3D).

All lengths in millimetres, poses `T_cam_obj` (4, 4) float64 mapping object points to the camera.
Solvers never raise on too few or degenerate correspondences: they return `success=False`.
Malformed input (wrong shapes, non-finite values) raises `InputError` / `CameraError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from cooppose.errors import CameraError, InputError
from cooppose.geometry.transforms import make_pose, project, transform_points

PNP_METHODS = {"epnp": cv2.SOLVEPNP_EPNP, "sqpnp": cv2.SOLVEPNP_SQPNP, "magsac": cv2.USAC_MAGSAC}

# sqrt of the 0.99 quantile of the chi-square distribution with 3 degrees of freedom: a 3D residual
# of an inlier with isotropic noise sigma stays below CHI3_Q99 * sigma with probability 0.99.
CHI3_Q99 = 3.3682141
_CHUNK = 64  # hypotheses scored at once by the vectorised 3D-3D RANSAC loops


@dataclass
class PnPResult:
    """Outcome of `solve_pnp_ransac`: pose (or None), inlier mask (N,), success flag, inlier count."""

    T: np.ndarray | None  # (4, 4) float64 T_cam_obj
    inliers: np.ndarray  # (N,) bool
    success: bool
    n_inliers: int


@dataclass
class RigidResult:
    """Outcome of a robust 3D-3D fit: pose (or None), inlier mask (N,), success flag, inlier count."""

    T: np.ndarray | None  # (4, 4) float64 with X_cam ~ R X_obj + t
    inliers: np.ndarray  # (N,) bool
    success: bool
    n_inliers: int


def _points(X, name: str, dim: int) -> np.ndarray:
    """Validate an (N, dim) finite array and return it as float64."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != dim:
        raise InputError(f"{name} must have shape (N, {dim}), got {X.shape}; pass one row per correspondence.")
    if not np.all(np.isfinite(X)):
        raise InputError(f"{name} contains NaN or inf; drop those correspondences before solving.")
    return X


def _pair(X_a, X_b, name_a: str, name_b: str, dim_b: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate two arrays of correspondences with the same number of rows."""
    A = _points(X_a, name_a, 3)
    B = _points(X_b, name_b, dim_b)
    if len(A) != len(B):
        raise InputError(f"{name_a} has {len(A)} rows but {name_b} has {len(B)}; they must correspond row by row.")
    return A, B


def _intrinsics(K) -> np.ndarray:
    """Validate a finite 3x3 K with positive focal lengths; return float64."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise CameraError(f"K must be a finite 3x3 matrix with positive focal lengths, got {K.tolist()}.")
    return K


def _spread(X: np.ndarray) -> bool:
    """True when points (N, 3) are not all (nearly) collinear or coincident."""
    if len(X) < 3:
        return False
    s = np.linalg.svd(X - X.mean(0), compute_uv=False)
    return bool(s[0] > 1e-9 and s[1] > 1e-6 * s[0])


def _failed_pnp(n: int) -> PnPResult:
    return PnPResult(T=None, inliers=np.zeros(n, dtype=bool), success=False, n_inliers=0)


def _failed_rigid(n: int) -> RigidResult:
    return RigidResult(T=None, inliers=np.zeros(n, dtype=bool), success=False, n_inliers=0)


def _pose(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    return make_pose(cv2.Rodrigues(np.asarray(rvec, dtype=np.float64))[0], np.asarray(tvec, dtype=np.float64).ravel())


def reprojection_errors(T: np.ndarray, X: np.ndarray, uv: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pixel distance (N,) between projections of X (N, 3) under T and uv (N, 2); inf for points behind the camera."""
    X_cam = transform_points(T, X)  # (N, 3)
    err = np.linalg.norm(project(K, X_cam) - uv, axis=-1)
    return np.where(X_cam[:, 2] > 0, err, np.inf)


def solve_pnp_ransac(
    X,
    uv,
    K,
    threshold_px: float = 8.0,
    iterations: int = 1000,
    min_inliers: int = 6,
    seed: int = 0,
    method: str = "epnp",
) -> PnPResult:
    """Pose from 2D-3D matches: OpenCV RANSAC (EPnP, SQPnP or USAC MAGSAC) then LM refinement on the inliers.

    X (N, 3) object points in mm, uv (N, 2) pixels, K (3, 3). Inliers are re-counted after the refinement
    (reprojection error < threshold_px, in front of the camera). Fails softly (success False, T None) with
    fewer than max(4, min_inliers) points, too few inliers, or (nearly) collinear inlier object points.
    """
    X, uv = _pair(X, uv, "X", "uv", 2)
    K = _intrinsics(K)
    if method not in PNP_METHODS:
        raise InputError(f"unknown PnP method {method!r}; use one of {sorted(PNP_METHODS)}.")
    if not threshold_px > 0 or iterations < 1:
        raise InputError(f"threshold_px ({threshold_px}) must be > 0 and iterations ({iterations}) >= 1.")
    n = len(X)
    if n < max(4, min_inliers) or not _spread(X):
        return _failed_pnp(n)
    cv2.setRNGSeed(int(seed))
    try:
        ok, rvec, tvec, idx = cv2.solvePnPRansac(
            X, uv, K, None,
            iterationsCount=int(iterations),
            reprojectionError=float(threshold_px),
            confidence=0.999,
            flags=PNP_METHODS[method],
        )
    except cv2.error:
        return _failed_pnp(n)
    if not ok or idx is None or len(idx) < 3 or not (np.all(np.isfinite(rvec)) and np.all(np.isfinite(tvec))):
        return _failed_pnp(n)
    idx = idx.ravel()
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 50, 1e-12)
    try:
        rvec, tvec = cv2.solvePnPRefineLM(X[idx], uv[idx], K, None, rvec.copy(), tvec.copy(), criteria=criteria)
    except cv2.error:
        return _failed_pnp(n)
    T = _pose(rvec, tvec)
    if not np.all(np.isfinite(T)):
        return _failed_pnp(n)
    inliers = reprojection_errors(T, X, uv, K) < threshold_px
    n_in = int(inliers.sum())
    if n_in < max(4, min_inliers) or not _spread(X[inliers]):
        return PnPResult(T=None, inliers=inliers, success=False, n_inliers=n_in)
    return PnPResult(T=T, inliers=inliers, success=True, n_inliers=n_in)


def _kabsch_batch(A: np.ndarray, B: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted rigid fits for batches: A, B (M, N, 3), w (M, N) with positive sums -> T (M, 4, 4)."""
    w = w / w.sum(-1, keepdims=True)
    ca = (w[..., None] * A).sum(-2)  # (M, 3)
    cb = (w[..., None] * B).sum(-2)
    H = np.einsum("mn,mni,mnj->mij", w, A - ca[:, None], B - cb[:, None])  # (M, 3, 3) cross-covariance
    U, _, Vt = np.linalg.svd(H)
    V = np.swapaxes(Vt, -1, -2)
    d = np.sign(np.linalg.det(V @ np.swapaxes(U, -1, -2)))
    d = np.where(d == 0, 1.0, d)
    D = np.zeros_like(H)
    D[:, 0, 0] = 1.0
    D[:, 1, 1] = 1.0
    D[:, 2, 2] = d
    R = V @ D @ np.swapaxes(U, -1, -2)
    t = cb - (R @ ca[..., None])[..., 0]
    return make_pose(R, t)


def kabsch(X_src, X_dst, weights=None) -> np.ndarray:
    """Least-squares rigid transform T (4, 4), a proper rotation, with X_dst ~ R X_src + t (optionally weighted)."""
    A, B = _pair(X_src, X_dst, "X_src", "X_dst", 3)
    if len(A) < 3:
        raise InputError(f"kabsch needs at least 3 point pairs, got {len(A)}.")
    if weights is None:
        w = np.ones(len(A))
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(A),) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise InputError(f"weights must be ({len(A)},) finite, >= 0 and not all zero; got shape {w.shape}.")
    return _kabsch_batch(A[None], B[None], w[None])[0]


def _residuals(T: np.ndarray, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Distances (M, N) between B (N, 3) and poses T (M, 4, 4) applied to A (N, 3)."""
    return np.linalg.norm(A @ np.swapaxes(T[:, :3, :3], -1, -2) + T[:, None, :3, 3] - B, axis=-1)


def _minimal_hypotheses(A: np.ndarray, B: np.ndarray, rng: np.random.Generator, m: int, tol: float) -> np.ndarray:
    """Up to m rigid fits (M, 4, 4) from random 3-point samples, skipping degenerate or inconsistent triples."""
    n = len(A)
    idx = rng.integers(0, n, (m, 3))  # (m, 3); rows with a repeated index are degenerate and dropped below
    a, b = A[idx], B[idx]  # (m, 3, 3)
    area_a = np.linalg.norm(np.cross(a[:, 1] - a[:, 0], a[:, 2] - a[:, 0]), axis=-1)
    area_b = np.linalg.norm(np.cross(b[:, 1] - b[:, 0], b[:, 2] - b[:, 0]), axis=-1)
    # a rigid motion keeps the three side lengths: reject triples whose sides disagree by more than 2 tol
    pairs = [(0, 1), (0, 2), (1, 2)]
    da = np.stack([np.linalg.norm(a[:, i] - a[:, j], axis=-1) for i, j in pairs], -1)
    db = np.stack([np.linalg.norm(b[:, i] - b[:, j], axis=-1) for i, j in pairs], -1)
    distinct = (idx[:, 0] != idx[:, 1]) & (idx[:, 0] != idx[:, 2]) & (idx[:, 1] != idx[:, 2])
    flat_a = area_a <= 1e-6 * da.max(-1) ** 2  # nearly collinear (or coincident) triple
    flat_b = area_b <= 1e-6 * db.max(-1) ** 2
    keep = distinct & ~flat_a & ~flat_b & np.all(np.abs(da - db) < 2 * tol, -1)
    if not keep.any():
        return np.zeros((0, 4, 4))
    return _kabsch_batch(a[keep], b[keep], np.ones(a[keep].shape[:2]))


def _needed_iterations(inlier_ratio: float, confidence: float = 0.999) -> float:
    """RANSAC iterations needed to draw one all-inlier 3-point sample with the given confidence."""
    p = inlier_ratio**3
    if p >= 1.0:
        return 1.0
    if p <= 0.0:
        return math.inf
    return math.log(1 - confidence) / math.log(1 - p)


def _rigid_inputs(X_obj, X_cam, threshold_name: str, threshold: float, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Checked (N,3) point pairs of a robust 3D-3D fit; InputError on a bad threshold or iteration count."""
    A, B = _pair(X_obj, X_cam, "X_obj", "X_cam", 3)
    if not threshold > 0 or iterations < 1:
        raise InputError(f"{threshold_name} ({threshold}) must be > 0 and iterations ({iterations}) >= 1.")
    return A, B


def kabsch_ransac(X_obj, X_cam, threshold_mm: float, iterations: int = 500, seed: int = 0, min_inliers: int = 3) -> RigidResult:
    """Rigid T (X_cam ~ R X_obj + t) robust to outliers: 3-point RANSAC, inliers within threshold_mm, Kabsch refit.

    Stops early once 99.9 % confidence of having drawn an all-inlier sample is reached; the best model is
    refit on its inliers until the inlier set stops changing. Fails softly (success False) on too few
    points or inliers, or (nearly) collinear inliers.
    """
    A, B = _rigid_inputs(X_obj, X_cam, "threshold_mm", threshold_mm, iterations)
    n = len(A)
    if n < max(3, min_inliers) or not _spread(A):
        return _failed_rigid(n)
    rng = np.random.default_rng(seed)
    best_T, best_count, best_cost = None, -1, math.inf
    done = 0
    while done < iterations and done < _needed_iterations(best_count / n):
        m = min(_CHUNK, iterations - done)
        done += m
        Ts = _minimal_hypotheses(A, B, rng, m, threshold_mm)
        if len(Ts) == 0:
            continue
        r = _residuals(Ts, A, B)  # (M, N)
        inl = r < threshold_mm
        counts = inl.sum(-1)
        cost = np.where(inl, r, threshold_mm).sum(-1)  # MSAC-style tie break
        k = int(np.lexsort((cost, -counts))[0])
        if counts[k] > best_count or (counts[k] == best_count and cost[k] < best_cost):
            best_T, best_count, best_cost = Ts[k], int(counts[k]), float(cost[k])
    if best_T is None or best_count < 3:
        return _failed_rigid(n)
    inliers = _residuals(best_T[None], A, B)[0] < threshold_mm
    T = best_T
    for _ in range(10):
        if inliers.sum() < 3 or not _spread(A[inliers]):
            break
        T_new = kabsch(A[inliers], B[inliers])
        new = _residuals(T_new[None], A, B)[0] < threshold_mm
        if new.sum() < inliers.sum():
            break
        T, stop, inliers = T_new, np.array_equal(new, inliers), new
        if stop:
            break
    n_in = int(inliers.sum())
    if n_in < max(3, min_inliers) or not _spread(A[inliers]):
        return RigidResult(T=None, inliers=inliers, success=False, n_inliers=n_in)
    return RigidResult(T=T, inliers=inliers, success=True, n_inliers=n_in)


def magsac_weights(r: np.ndarray, max_threshold: float) -> np.ndarray:
    """MAGSAC++ weights in [0, 1] of 3D residuals r (any shape), marginalised over sigma in [0, max_threshold / k].

    With r / sigma chi-distributed (3 dof), truncated at k = CHI3_Q99, and sigma uniform on
    [0, sigma_max], the marginal inlier density is proportional to exp(-r^2 / (2 sigma_max^2)) - exp(-k^2 / 2)
    for r < k sigma_max = max_threshold, 0 beyond. Normalised to 1 at r = 0.
    """
    s2 = (max_threshold / CHI3_Q99) ** 2
    floor = math.exp(-(CHI3_Q99**2) / 2)
    w = (np.exp(-(r**2) / (2 * s2)) - floor) / (1 - floor)
    return np.where(r < max_threshold, np.clip(w, 0.0, 1.0), 0.0)


def magsac_loss(r: np.ndarray, max_threshold: float) -> np.ndarray:
    """MAGSAC++ loss in [0, 1] of 3D residuals r: the integral of x * weight(x) from 0 to r, normalised to 1 at the threshold.

    rho(r) = sigma_max^2 (1 - exp(-r^2 / (2 sigma_max^2))) - r^2 / 2 * exp(-k^2 / 2) for r < max_threshold,
    constant (outlier) beyond; a model's quality is the sum over points (lower is better).
    """
    s2 = (max_threshold / CHI3_Q99) ** 2
    floor = math.exp(-(CHI3_Q99**2) / 2)

    def rho(x):
        return s2 * (1 - np.exp(-(x**2) / (2 * s2))) - x**2 / 2 * floor

    rc = np.minimum(r, max_threshold)
    return rho(rc) / rho(max_threshold)


def _sigma_consensus(T: np.ndarray, A: np.ndarray, B: np.ndarray, max_threshold: float, iters: int = 10) -> tuple[np.ndarray, float]:
    """sigma-consensus++: iteratively re-weighted Kabsch with MAGSAC++ weights; returns the best pose and its loss."""
    best_T = T
    best_loss = float(magsac_loss(_residuals(T[None], A, B)[0], max_threshold).sum())
    for _ in range(iters):
        w = magsac_weights(_residuals(best_T[None], A, B)[0], max_threshold)
        sel = w > 0
        if sel.sum() < 3 or not _spread(A[sel]):
            break
        T_new = _kabsch_batch(A[sel][None], B[sel][None], w[sel][None])[0]
        loss = float(magsac_loss(_residuals(T_new[None], A, B)[0], max_threshold).sum())
        if not loss < best_loss - 1e-12 * max(best_loss, 1.0):
            break
        best_T, best_loss = T_new, loss
    return best_T, best_loss


def magsac_rigid(X_obj, X_cam, max_threshold_mm: float, iterations: int = 500, seed: int = 0, min_inliers: int = 3) -> RigidResult:
    """MAGSAC++ rigid fit of 3D-3D matches (X_cam ~ R X_obj + t); OpenCV has no 3D-3D MAGSAC, so it is done here.

    - Hypotheses: Kabsch on random minimal samples of 3 matches (degenerate or side-length-inconsistent
      triples skipped).
    - Quality: instead of counting inliers at one threshold, each residual r pays the MAGSAC++ loss
      (`magsac_loss`): the noise scale sigma is marginalised uniformly over [0, sigma_max] with
      sigma_max = max_threshold_mm / 3.37 (chi, 3 dof, 99 % quantile), so the loss grows smoothly up to
      max_threshold_mm and stays constant beyond. Lower total loss is better.
    - Polishing: sigma-consensus++, i.e. iteratively re-weighted Kabsch with the marginal inlier
      weights (`magsac_weights`), run on each new best model and at the end; a step is kept only if
      it lowers the loss.
    - Stops early once 99.9 % confidence is reached for the fraction of matches within max_threshold_mm.
    Inliers reported are the matches with residual < max_threshold_mm under the final pose.
    """
    A, B = _rigid_inputs(X_obj, X_cam, "max_threshold_mm", max_threshold_mm, iterations)
    n = len(A)
    if n < max(3, min_inliers) or not _spread(A):
        return _failed_rigid(n)
    rng = np.random.default_rng(seed)
    best_T, best_loss, best_count = None, math.inf, 0
    done = 0
    while done < iterations and done < _needed_iterations(best_count / n):
        m = min(_CHUNK, iterations - done)
        done += m
        Ts = _minimal_hypotheses(A, B, rng, m, max_threshold_mm)
        if len(Ts) == 0:
            continue
        loss = magsac_loss(_residuals(Ts, A, B), max_threshold_mm).sum(-1)  # (M,)
        k = int(np.argmin(loss))
        if loss[k] < best_loss:
            best_T, best_loss = _sigma_consensus(Ts[k], A, B, max_threshold_mm)
            best_count = int((_residuals(best_T[None], A, B)[0] < max_threshold_mm).sum())
    if best_T is None:
        return _failed_rigid(n)
    inliers = _residuals(best_T[None], A, B)[0] < max_threshold_mm
    n_in = int(inliers.sum())
    if n_in < max(3, min_inliers) or not _spread(A[inliers]):
        return RigidResult(T=None, inliers=inliers, success=False, n_inliers=n_in)
    return RigidResult(T=best_T, inliers=inliers, success=True, n_inliers=n_in)
