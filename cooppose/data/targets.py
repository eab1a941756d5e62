"""Ground truth for training the coarse, refiner and selection models, from poses and rendered maps.

Patch convention (shared with coarse inference): crop pixels follow the OpenCV convention of
`cooppose.geometry.camera` (pixel (u, v) centred at integer (u, v), crop spans [-0.5, S - 0.5]).
Patch (r, c) of a G x G grid (G = S / patch) has index k = r * G + c and covers the continuous
square [patch*c - 0.5, patch*(c+1) - 0.5) x [patch*r - 0.5, patch*(r+1) - 0.5). Its centre is
patch * ((c, r) + 0.5) - 0.5, and a point m inside it has the offset
U = (m + 0.5) / patch - (c, r) - 0.5 in [-0.5, 0.5]^2 (method.md 2.6 written for pixel corners at 0).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from cooppose.errors import InputError
from cooppose.geometry.camera import Crop, make_crop
from cooppose.geometry.transforms import invert_pose, make_pose, project, rotation_error_deg, transform_points

Box = tuple[float, float, float, float]


def _grid(size: int, patch: int) -> int:
    if patch < 2 or patch % 2 or size % patch:
        raise InputError(f"crop size {size} must be a multiple of an even patch size, got patch={patch}; use e.g. 160/16.")
    return size // patch


def patch_centers(size: int, patch: int = 16) -> np.ndarray:
    """Crop pixel coordinates (Np, 2) as (u, v) of the patch centres, in patch index order k = r * G + c."""
    G = _grid(size, patch)
    c, r = np.meshgrid(np.arange(G), np.arange(G))
    return np.stack([c.ravel(), r.ravel()], -1) * float(patch) + (patch / 2.0 - 0.5)


def patch_pixels(labels: np.ndarray, offsets: np.ndarray, size: int, patch: int = 16) -> np.ndarray:
    """Template pixels (N, 2) of patch classes (N,) < Np with sub-patch offsets (N, 2): patch*((c, r)+0.5+U) - 0.5."""
    G = _grid(size, patch)
    labels = np.asarray(labels, dtype=np.int64)
    if np.any(labels < 0) or np.any(labels >= G * G):
        raise InputError(f"patch labels must lie in [0, {G * G}) (no-match excluded), got range [{labels.min()}, {labels.max()}].")
    cr = np.stack([labels % G, labels // G], -1).astype(np.float64)
    return patch * (cr + 0.5 + np.asarray(offsets, dtype=np.float64)) - 0.5


def _check_map(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.shape != shape:
        raise InputError(f"{name} must have shape {shape}, got {arr.shape}; pass maps of the same crop size.")
    return arr


def _check_pose(name: str, T: np.ndarray) -> np.ndarray:
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise InputError(f"{name} must be a finite 4x4 pose T_cam_obj (mm), got shape {T.shape}.")
    return T


def _sample_patch_points(xyz: np.ndarray, valid: np.ndarray, patch: int, max_spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Object point at each patch centre (Np, 3) = mean of its 2x2 central pixels, and whether it is reliable (Np,)."""
    h = patch // 2
    quad_xyz = xyz[h - 1 :: patch, h - 1 :: patch], xyz[h - 1 :: patch, h::patch], xyz[h::patch, h - 1 :: patch], xyz[h::patch, h::patch]
    quad_ok = valid[h - 1 :: patch, h - 1 :: patch], valid[h - 1 :: patch, h::patch], valid[h::patch, h - 1 :: patch], valid[h::patch, h::patch]
    pts = np.stack(quad_xyz, 0).reshape(4, -1, 3).astype(np.float64)  # (4, Np, 3)
    ok = np.stack(quad_ok, 0).reshape(4, -1).all(0) & np.isfinite(pts).all((0, 2))
    pts = np.where(ok[None, :, None], pts, 0.0)
    mean = pts.mean(0)
    spread = np.linalg.norm(pts - mean, axis=-1).max(0)
    return mean, ok & (spread < max_spread)


def coarse_labels(
    query_xyz: np.ndarray,
    query_valid: np.ndarray,
    template_K: np.ndarray,
    template_pose: np.ndarray,
    template_depth: np.ndarray,
    patch: int = 16,
    depth_tol_mm: float = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Patch classification targets: template patch index (Np,) int64 (Np = no match) and offsets (Np, 2) float32.

    query_xyz (S, S, 3) holds the object-frame point (mm) seen at each query crop pixel, query_valid (S, S)
    where it is the visible object. A query patch gets a class when the point at its centre (mean of the
    2x2 central pixels, which must agree within depth_tol_mm) projects inside the template and matches the
    template depth there within depth_tol_mm; otherwise it gets Np.
    """
    query_xyz = np.asarray(query_xyz)
    if query_xyz.ndim != 3 or query_xyz.shape[0] != query_xyz.shape[1] or query_xyz.shape[2] != 3:
        raise InputError(f"query_xyz must be a square (S, S, 3) object-coordinate map, got {query_xyz.shape}.")
    S = query_xyz.shape[0]
    G = _grid(S, patch)
    Np = G * G
    query_valid = _check_map("query_valid", query_valid, (S, S)).astype(bool)
    template_depth = np.asarray(template_depth, dtype=np.float64)
    if template_depth.ndim != 2:
        raise InputError(f"template_depth must be a (H, W) depth map in mm, got {template_depth.shape}.")
    if not depth_tol_mm > 0:
        raise InputError(f"depth_tol_mm must be > 0, got {depth_tol_mm}; use 1-2 % of the object diameter.")
    K_T = np.asarray(template_K, dtype=np.float64)
    T_T = _check_pose("template_pose", template_pose)

    X, ok = _sample_patch_points(query_xyz, query_valid, patch, depth_tol_mm)
    Xc = transform_points(T_T, X)  # (Np, 3) template camera frame
    z = Xc[:, 2]
    m = project(K_T, Xc)  # (Np, 2) template pixels
    Ht, Wt = template_depth.shape
    ok &= (z > 0) & np.isfinite(m).all(-1)
    pix = np.rint(np.where(ok[:, None], m, 0.0)).astype(np.int64)
    ok &= (pix[:, 0] >= 0) & (pix[:, 0] < Wt) & (pix[:, 1] >= 0) & (pix[:, 1] < Ht)
    d = np.where(ok, template_depth[pix[:, 1].clip(0, Ht - 1), pix[:, 0].clip(0, Wt - 1)], 0.0)
    ok &= (d > 0) & (np.abs(z - d) < depth_tol_mm)

    cell = (m + 0.5) / patch  # continuous patch coordinates (c, r)
    cr = np.floor(np.where(ok[:, None], cell, 0.0)).astype(np.int64).clip(0, G - 1)
    labels = np.where(ok, cr[:, 1] * G + cr[:, 0], Np).astype(np.int64)
    offsets = np.where(ok[:, None], (cell - cr - 0.5).clip(-0.5, 0.5), 0.0).astype(np.float32)
    return labels, offsets


def _view_dirs(poses: np.ndarray, center: np.ndarray) -> np.ndarray:
    cam = invert_pose(poses)[..., :3, 3]  # camera centres in the object frame
    d = cam - center
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def _template_order(templates_poses: np.ndarray, T_gt: np.ndarray, center: np.ndarray | None) -> np.ndarray:
    poses = np.asarray(templates_poses, dtype=np.float64)
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or len(poses) == 0:
        raise InputError(f"templates_poses must be (N, 4, 4) with N >= 1, got {poses.shape}.")
    T_gt = _check_pose("T_gt", T_gt)
    c = np.zeros(3) if center is None else np.asarray(center, dtype=np.float64).reshape(3)
    cos = _view_dirs(poses, c) @ _view_dirs(T_gt, c)
    return np.argsort(-cos, kind="stable")


def nearest_template(templates_poses: np.ndarray, T_gt: np.ndarray, center: np.ndarray | None = None) -> int:
    """Index of the template whose viewing direction (object centre -> camera, object frame) is closest to T_gt's."""
    return int(_template_order(templates_poses, T_gt, center)[0])


def choose_template(
    templates_poses: np.ndarray,
    T_gt: np.ndarray,
    rng: np.random.Generator,
    p_negative: float = 0.2,
    n_near: int = 4,
    center: np.ndarray | None = None,
) -> int:
    """Training template: the nearest view with prob. 1 - p_negative, else (half/half) one of the next n_near views or any view."""
    if not 0.0 <= p_negative <= 1.0:
        raise InputError(f"p_negative must be in [0, 1], got {p_negative}.")
    order = _template_order(templates_poses, T_gt, center)
    u = rng.random()
    if u >= p_negative or len(order) == 1:
        return int(order[0])
    if u < p_negative / 2:
        near = order[1 : 1 + max(1, n_near)]
        return int(near[rng.integers(len(near))])
    return int(order[rng.integers(len(order))])


def perturb_pose(
    T_gt: np.ndarray,
    rng: np.random.Generator,
    trans_std_mm: Sequence[float] = (10.0, 10.0, 50.0),
    rot_std_deg: float = 15.0,
    min_depth_frac: float = 0.5,
) -> np.ndarray:
    """Initial pose for refiner training (method.md 3.4): GT + Gaussian camera-frame translation and Euler noise.

    The rotation noise (x, y, z Euler angles, each N(0, rot_std_deg)) turns the object about its origin
    in camera axes; the depth is kept >= min_depth_frac x the GT depth so the object stays in front.
    """
    T_gt = _check_pose("T_gt", T_gt)
    std = np.asarray(trans_std_mm, dtype=np.float64).reshape(3)
    R_noise = Rotation.from_euler("xyz", rng.normal(0.0, rot_std_deg, 3), degrees=True).as_matrix()
    t = T_gt[:3, 3] + rng.normal(0.0, 1.0, 3) * std
    t[2] = max(t[2], min_depth_frac * T_gt[2, 3])
    return make_pose(R_noise @ T_gt[:3, :3], t)


def _model_extent(obj) -> tuple[np.ndarray, np.ndarray]:
    """Bounding-box centre (3,) and the points (M, 3) whose projections bound the model's (its hull when known)."""
    pts = obj if isinstance(obj, np.ndarray) else getattr(obj, "vertices", None)
    pts = None if pts is None else np.asarray(pts, dtype=np.float64)
    if pts is None or pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise InputError("refiner_crop needs an ObjectModel (with .vertices in mm) or an (N, 3) array of model points.")
    hull = getattr(obj, "hull_indices", None)  # extreme projections of a point set lie on its convex hull
    if hull is not None:
        return np.asarray(obj.center, dtype=np.float64), pts[hull]
    return (pts.min(0) + pts.max(0)) / 2, pts


def refiner_crop(
    T_pose: np.ndarray,
    obj,
    K: np.ndarray,
    image_box: Box | None = None,
    size: int = 160,
    pad: float = 1.4,
) -> Crop:
    """Pose-conditioned crop (DeepIM/MegaPose rule), the single definition for refiner training and inference.

    The square is centred on the projection of the model's bounding-box centre under T_pose, its half side
    is the largest distance from that centre to the projected model points (and to `image_box`, an optional
    observed box (x0, y0, x1, y1) the crop must also cover), then scaled by `pad`.
    """
    T_pose = _check_pose("T_pose", T_pose)
    center, pts = _model_extent(obj)
    Xc = transform_points(T_pose, np.vstack([center[None], pts]))
    if np.any(Xc[:, 2] <= 0):
        raise InputError(f"refiner_crop: the object is (partly) behind the camera at this pose (t = {T_pose[:3, 3].tolist()} mm).")
    uv = project(np.asarray(K, dtype=np.float64), Xc)
    c, ext = uv[0], uv[1:]
    if image_box is not None:
        x0, y0, x1, y1 = (float(v) for v in image_box)
        ext = np.vstack([ext, [[x0, y0], [x1, y1]]])
    half = float(np.abs(ext - c).max())
    if not np.isfinite(half) or half <= 0:
        raise InputError("refiner_crop: the projected model has no extent; check K, the pose and the model points.")
    return make_crop((c[0] - half, c[1] - half, c[0] + half, c[1] + half), K, size, pad)


def _gt_projection(render_xyz: np.ndarray, render_mask: np.ndarray, K_crop: np.ndarray, T_gt: np.ndarray):
    """Rendered object pixels (v, u) (n,) each, their points projected at T_gt q (n, 2) and depth z (n,), over (H, W)."""
    render_xyz = np.asarray(render_xyz)
    if render_xyz.ndim != 3 or render_xyz.shape[2] != 3:
        raise InputError(f"render_xyz must be an (H, W, 3) object-coordinate map in mm, got {render_xyz.shape}.")
    H, W = render_xyz.shape[:2]
    mask = _check_map("render_mask", render_mask, (H, W)).astype(bool)
    v, u = np.nonzero(mask)
    X = render_xyz[v, u].astype(np.float64)  # (n, 3)
    Xc = transform_points(_check_pose("T_gt", T_gt), X)
    ok = np.isfinite(Xc).all(-1) & (Xc[:, 2] > 0)  # in front of the camera at T_gt
    v, u, Xc = v[ok], u[ok], Xc[ok]
    return v, u, project(np.asarray(K_crop, dtype=np.float64), Xc), Xc[:, 2], (H, W)


def flow_targets(render_xyz: np.ndarray, render_mask: np.ndarray, K_crop: np.ndarray, T_gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """GT flow (2, H, W) float32 from each rendered pixel to where its object point lies in the query crop under T_gt.

    Returns the flow (0 where invalid) and its validity (H, W) bool: the pixel shows the object and the point is in
    front of the camera at T_gt.
    """
    v, u, q, _, (H, W) = _gt_projection(render_xyz, render_mask, K_crop, T_gt)
    flow = np.zeros((2, H, W), np.float32)
    flow[0, v, u] = q[:, 0] - u
    flow[1, v, u] = q[:, 1] - v
    valid = np.zeros((H, W), bool)
    valid[v, u] = True
    return flow, valid


def certainty_targets(
    render_xyz: np.ndarray,
    render_mask: np.ndarray,
    K_crop: np.ndarray,
    T_gt: np.ndarray,
    query_depth_crop: np.ndarray,
    tol_mm: float,
) -> np.ndarray:
    """Visibility target (H, W) float32: 1 where the rendered pixel's point, moved by T_gt, is seen in the query.

    Seen means it lands inside the query crop and its GT depth agrees with the query depth (the scene depth
    warped into the crop, occluders included) at the nearest pixel within tol_mm; 0 elsewhere.
    """
    if not tol_mm > 0:
        raise InputError(f"tol_mm must be > 0, got {tol_mm}; use about 1-2 % of the object diameter.")
    v, u, q, z, (H, W) = _gt_projection(render_xyz, render_mask, K_crop, T_gt)
    depth = np.asarray(query_depth_crop)
    if depth.ndim != 2:
        raise InputError(f"query_depth_crop must be an (H, W) depth map in mm, got {depth.shape}.")
    Hq, Wq = depth.shape
    pix = np.rint(np.where(np.isfinite(q), q, -1.0)).astype(np.int64)
    inside = (pix[:, 0] >= 0) & (pix[:, 0] < Wq) & (pix[:, 1] >= 0) & (pix[:, 1] < Hq)
    d = np.zeros(len(z))
    d[inside] = depth[pix[inside, 1], pix[inside, 0]]
    out = np.zeros((H, W), np.float32)
    out[v, u] = inside & (d > 0) & (np.abs(z - d) < tol_mm)
    return out


def selection_label(
    T_hyp: np.ndarray,
    T_gt: np.ndarray,
    diameter: float,
    rot_thresh_deg: float = 5.0,
    trans_frac: float = 0.1,
    symmetries: Sequence[np.ndarray] | np.ndarray | None = None,
) -> bool:
    """True when, for some symmetry S of the object, T_hyp is within rot_thresh_deg and trans_frac x diameter of T_gt @ S."""
    T_hyp = _check_pose("T_hyp", T_hyp)
    T_gt = _check_pose("T_gt", T_gt)
    if not diameter > 0:
        raise InputError(f"diameter must be > 0 mm, got {diameter}.")
    syms = np.eye(4)[None] if symmetries is None or len(symmetries) == 0 else np.asarray(symmetries, dtype=np.float64).reshape(-1, 4, 4)
    gts = T_gt[None] @ syms  # (M, 4, 4)
    rot = rotation_error_deg(gts[:, :3, :3], np.broadcast_to(T_hyp[:3, :3], gts[:, :3, :3].shape))
    trans = np.linalg.norm(gts[:, :3, 3] - T_hyp[:3, 3], axis=-1)
    return bool(np.any((rot < rot_thresh_deg) & (trans < trans_frac * diameter)))
