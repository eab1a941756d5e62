"""Classical baselines with the estimator interface of `PoseEstimator` (the runner treats them alike).

- `SiftPnPBaseline` (RGB): SIFT keypoints of the query crop matched (Lowe ratio test) to each onboarding
  template; the templates with the most matches give 2D-3D matches (template keypoints lifted with the
  template's xyz map) -> PnP (SQPnP) + RANSAC; the most inliers win. Score: PnP inliers / query keypoints.
  Without any PnP solution, the best-matched template's pose is placed in the box (score 0), as
  `PoseEstimator` does.
- `FpfhIcpBaseline` (RGB-D): the query depth inside the box (or mask), back-projected to mm, is registered
  to points sampled on the model: FPFH features (Rusu et al. 2009) with PCA normals on both sides, the 3
  nearest model features of each scene point as candidate matches, 3-point RANSAC whose best fits are
  re-ranked by fitness (the share of scene points on the model, as Open3D scores), then coarse-to-fine
  point-to-plane ICP on the best few. Score: fraction of scene points within one voxel of the model.
Both only need numpy, scipy and OpenCV (core dependencies): FPFH and ICP are implemented here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from scipy.spatial import cKDTree

from cooppose.errors import InputError
from cooppose.geometry.camera import check_intrinsics, make_crop, warp
from cooppose.geometry.pnp import solve_pnp_ransac
from cooppose.geometry.transforms import backproject, invert_pose, make_pose, rotation_error_deg, so3_exp
from cooppose.pipeline import checks
from cooppose.pipeline.hypothesis import PoseHypothesis

Box = tuple[float, float, float, float]
N_BINS = 11  # bins per FPFH angle; three angles -> 33-dimensional descriptors


@dataclass
class _Inputs:
    rgb: np.ndarray  # (H, W, 3) uint8
    K: np.ndarray  # (3, 3)
    box: Box
    mask: np.ndarray | None  # (H, W) bool
    depth: np.ndarray | None  # (H, W) float32 mm


def _check(rgb, K, obj, box, mask, depth) -> _Inputs:
    """The estimator's input checks (image, K, detection, depth units), as PoseEstimator runs them."""
    img = checks.check_image(rgb)
    K = check_intrinsics(K, img.shape[:2])
    d = checks.check_depth(depth, img.shape[:2]) if depth is not None else None
    b, m = checks.check_detection(obj.diameter, box, mask, img.shape[:2], K, d, getattr(obj, "name", "mesh"))
    return _Inputs(img, K, b, m, d)


# ---------------------------------------------------------------------------------------------- point clouds
def voxel_downsample(points: np.ndarray, voxel: float, normals: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean point (N', 3) of each occupied voxel of side `voxel` (mm), with the renormalised mean normal if given."""
    keys = np.floor(points / voxel).astype(np.int64)
    _, inv, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inv = inv.ravel()
    out = np.zeros((len(counts), 3))
    np.add.at(out, inv, points)
    out /= counts[:, None]
    if normals is None:
        return out, None
    nrm = np.zeros((len(counts), 3))
    np.add.at(nrm, inv, normals)
    return out, nrm / np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-12)


def estimate_normals(points: np.ndarray, radius: float, viewpoint: np.ndarray, k_max: int = 30) -> np.ndarray:
    """Unit normals (N, 3): smallest principal axis of the neighbours within `radius`, turned towards `viewpoint`."""
    dist, idx = cKDTree(points).query(points, k=min(k_max, len(points)), distance_upper_bound=radius)
    valid = np.isfinite(dist)  # (N, k)
    idx = np.where(valid, idx, np.arange(len(points))[:, None])
    w = valid[..., None].astype(np.float64)
    nb = points[idx]  # (N, k, 3)
    mean = (nb * w).sum(1) / w.sum(1)
    d = (nb - mean[:, None]) * w
    _, vecs = np.linalg.eigh(np.einsum("nki,nkj->nij", d, d))
    n = vecs[:, :, 0]  # eigenvector of the smallest eigenvalue
    flip = np.einsum("ni,ni->n", n, viewpoint - points) < 0
    n[flip] *= -1
    return n


def _spfh(points: np.ndarray, normals: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Simplified PFH (N, 33): per point, histograms of the Darboux-frame angles (theta, alpha, phi) of its pairs (i, j)."""
    n = len(points)
    dp = points[j] - points[i]
    dist = np.maximum(np.linalg.norm(dp, axis=1), 1e-12)
    a1 = np.einsum("pi,pi->p", normals[i], dp) / dist
    a2 = np.einsum("pi,pi->p", normals[j], dp) / dist
    swap = np.abs(a1) < np.abs(a2)  # the source is the point whose normal is closer to the pair's line
    src = np.where(swap[:, None], normals[j], normals[i])
    tgt = np.where(swap[:, None], normals[i], normals[j])
    dp = np.where(swap[:, None], -dp, dp)
    phi = np.where(swap, -a2, a1)
    v = np.cross(dp, src)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    w = np.cross(src, v)
    alpha = np.einsum("pi,pi->p", v, tgt)
    theta = np.arctan2(np.einsum("pi,pi->p", w, tgt), np.einsum("pi,pi->p", src, tgt))
    theta = np.where(theta > np.pi - 1e-6, theta - 2 * np.pi, theta)  # antiparallel normals: +-pi is one angle, bin 0
    hist = np.zeros((n, 3 * N_BINS))
    for k, (value, lo, hi) in enumerate(((theta, -np.pi, np.pi), (alpha, -1.0, 1.0), (phi, -1.0, 1.0))):
        b = np.clip(((value - lo) / (hi - lo) * N_BINS).astype(np.int64), 0, N_BINS - 1) + k * N_BINS
        np.add.at(hist, (i, b), 1.0)
    count = np.bincount(i, minlength=n).astype(np.float64)
    return hist * (100.0 / np.maximum(count, 1.0))[:, None]


def fpfh(points: np.ndarray, normals: np.ndarray, radius: float) -> np.ndarray:
    """Fast Point Feature Histograms (N, 33) over the neighbours within `radius` (mm)."""
    n = len(points)
    pairs = cKDTree(points).query_pairs(radius, output_type="ndarray")  # (P, 2), i < j
    i = np.concatenate([pairs[:, 0], pairs[:, 1]])
    j = np.concatenate([pairs[:, 1], pairs[:, 0]])
    spfh = _spfh(points, normals, i, j)
    w = 1.0 / np.maximum(np.linalg.norm(points[i] - points[j], axis=1), 1e-9)
    acc = np.zeros((n, 3 * N_BINS))
    np.add.at(acc, i, w[:, None] * spfh[j])
    count = np.bincount(i, minlength=n).astype(np.float64)
    return spfh + acc / np.maximum(count, 1.0)[:, None]


def icp_point_to_plane(src: np.ndarray, dst: np.ndarray, dst_normals: np.ndarray, T: np.ndarray, max_dist: float,
                       iterations: int = 30, tol: float = 1e-6) -> np.ndarray:
    """Point-to-plane ICP: T (4, 4) refined so that T @ src (N, 3) lies on the surface of dst (M, 3) with normals."""
    tree = cKDTree(dst)
    for _ in range(iterations):
        s = src @ T[:3, :3].T + T[:3, 3]
        d, j = tree.query(s, distance_upper_bound=max_dist)
        ok = np.isfinite(d)
        if ok.sum() < 6:
            break
        p, q, nq = s[ok], dst[j[ok]], dst_normals[j[ok]]
        A = np.hstack([np.cross(p, nq), nq])  # (K, 6): derivative of the plane residual w.r.t. (omega, t)
        b = -np.einsum("ki,ki->k", p - q, nq)
        x = np.linalg.lstsq(A, b, rcond=None)[0]
        T = make_pose(so3_exp(x[:3]), x[3:]) @ T
        if np.linalg.norm(x) < tol:
            break
    return T


def _kabsch_batch(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Least-squares rigid fits T (M, 4, 4) with B ~ R A + t for point sets A, B (M, n, 3)."""
    ca, cb = A.mean(1), B.mean(1)  # (M, 3)
    H = np.einsum("mni,mnj->mij", A - ca[:, None], B - cb[:, None])
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(np.swapaxes(Vt, -1, -2) @ np.swapaxes(U, -1, -2)))
    D = np.tile(np.eye(3), (len(A), 1, 1))
    D[:, 2, 2] = np.where(d == 0, 1.0, d)
    R = np.swapaxes(Vt, -1, -2) @ D @ np.swapaxes(U, -1, -2)
    return make_pose(R, cb - (R @ ca[..., None])[..., 0])


def ransac_candidates(src: np.ndarray, dst: np.ndarray, threshold: float, iterations: int, n_keep: int,
                      rng: np.random.Generator, chunk: int = 1000) -> np.ndarray:
    """Rigid fits T (<= n_keep, 4, 4), dst ~ T src, from 3-point RANSAC over candidate matches.

    src (N, k, 3): k candidate model points for each scene point dst (N, 3). A sample draws 3 scene points
    and one candidate each; samples whose side lengths disagree by more than 10 % are skipped. Returned: the
    fits with the most scene points having a candidate within `threshold`, best first.
    """
    n, k = src.shape[:2]
    best_T, best_n = np.zeros((0, 4, 4)), np.zeros(0, dtype=np.int64)
    for start in range(0, iterations, chunk):
        m = min(chunk, iterations - start)
        idx, pick = rng.integers(0, n, (m, 3)), rng.integers(0, k, (m, 3))
        a, b = src[idx, pick], dst[idx]  # (m, 3, 3)
        da = np.linalg.norm(a - np.roll(a, 1, axis=1), axis=-1)
        db = np.linalg.norm(b - np.roll(b, 1, axis=1), axis=-1)
        ok = np.all((da > 1e-6) & (np.abs(da - db) < 0.1 * np.maximum(da, db)), axis=1)
        if not ok.any():
            continue
        T = _kabsch_batch(a[ok], b[ok])
        moved = np.einsum("mij,nkj->mnki", T[:, :3, :3], src) + T[:, None, None, :3, 3]  # (m', N, k, 3)
        res = np.linalg.norm(moved - dst[None, :, None], axis=-1).min(-1)  # (m', N)
        best_T = np.concatenate([best_T, T])
        best_n = np.concatenate([best_n, (res < threshold).sum(1)])
        keep = np.argsort(-best_n, kind="stable")[:n_keep]
        best_T, best_n = best_T[keep], best_n[keep]
    return best_T


def sample_surface(obj: Any, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n points (n, 3) mm uniformly on the mesh surface with their face normals (n, 3) (winding-outward)."""
    v, f = obj.vertices, obj.faces
    cross = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    area = np.linalg.norm(cross, axis=1)
    face = rng.choice(len(f), size=n, p=area / area.sum())
    r1, r2 = rng.random((2, n))
    s = np.sqrt(r1)
    w = np.stack([1 - s, s * (1 - r2), s * r2], 1)  # (n, 3) uniform barycentric weights
    pts = (w[:, :, None] * v[f[face]]).sum(1)
    return pts, cross[face] / np.maximum(area[face], 1e-12)[:, None]


def box_points(depth: np.ndarray, K: np.ndarray, box: Box, mask: np.ndarray | None, diameter: float) -> np.ndarray:
    """Camera points (N, 3) mm of the valid depth pixels in the box (and mask), within one diameter of the central depth."""
    H, W = depth.shape
    x0, y0, x1, y1 = box
    sel = np.zeros((H, W), dtype=bool)
    c0, c1 = max(int(np.ceil(x0)), 0), min(int(np.floor(x1)), W - 1) + 1
    r0, r1 = max(int(np.ceil(y0)), 0), min(int(np.floor(y1)), H - 1) + 1
    sel[r0:r1, c0:c1] = True
    if mask is not None:
        sel &= mask
    sel &= depth > 0
    if sel.sum() < 10:
        return np.zeros((0, 3))
    inner = np.zeros_like(sel)  # the central half of the box: mostly the object
    rc, cc, rh, ch = (r0 + r1) // 2, (c0 + c1) // 2, max((r1 - r0) // 4, 1), max((c1 - c0) // 4, 1)
    inner[rc - rh:rc + rh + 1, cc - ch:cc + ch + 1] = True
    z_ref = float(np.median(depth[(inner & sel) if (inner & sel).any() else sel]))
    sel &= np.abs(depth - z_ref) < diameter
    v, u = np.nonzero(sel)
    return backproject(K, np.stack([u, v], -1).astype(np.float64), depth[sel].astype(np.float64))


class _ManyMixin:
    """`estimate_many` in the shape of `PoseEstimator.estimate_many`: detections are (obj, box or mask) pairs."""

    def estimate_many(self, rgb: np.ndarray, K: np.ndarray, detections: list, depth: np.ndarray | None = None,
                      n_hypotheses: int = 1) -> list[list[PoseHypothesis]]:
        """`estimate` for each detection (obj, box (x0, y0, x1, y1) or mask (H, W)) of one image."""
        out = []
        for i, det in enumerate(detections):
            obj, box, mask = checks.split_detection(i, det)
            out.append(self.estimate(rgb, K, obj, box=box, depth=depth, n_hypotheses=n_hypotheses, mask=mask))
        return out


# ---------------------------------------------------------------------------------------------- FPFH + ICP
@dataclass
class _ModelCloud:
    points: np.ndarray  # (N, 3) mm, voxel-downsampled, object frame
    features: np.ndarray  # (N, 33)
    dense: np.ndarray  # (M, 3) mm, finer cloud for ICP
    dense_normals: np.ndarray  # (M, 3)
    voxel: float
    diameter: float


@dataclass
class FpfhIcpBaseline(_ManyMixin):
    """RGB-D baseline: FPFH global registration + point-to-plane ICP of the query depth to the model."""

    voxel_fraction: float = 1 / 25  # voxel side as a fraction of the object diameter
    normal_radius: float = 2.5  # in voxels
    feature_radius: float = 5.0  # in voxels
    model_points: int = 30000
    feature_matches: int = 3  # nearest model features per scene point, each a candidate match
    ransac_iterations: int = 20000
    candidates: int = 100  # RANSAC fits with the most matching inliers, re-ranked by fitness
    icp_candidates: int = 5  # best-fitness candidates refined by ICP per requested hypothesis
    icp_iterations: int = 30
    seed: int = 0
    needs_depth: bool = field(default=True, init=False)  # the runner refuses RGB-only runs of this baseline
    _models: dict = field(default_factory=dict, repr=False)

    def onboard(self, obj: Any) -> _ModelCloud:
        """Sample the model surface and compute its FPFH features (cached per mesh)."""
        key = obj.content_hash
        if key not in self._models:
            voxel = self.voxel_fraction * obj.diameter
            pts, nrm = sample_surface(obj, self.model_points, np.random.default_rng(self.seed))
            p, face_n = voxel_downsample(pts, voxel, nrm)
            n = estimate_normals(p, self.normal_radius * voxel, np.zeros(3))  # as the scene's, oriented outwards
            n[np.einsum("ni,ni->n", n, face_n) < 0] *= -1
            dense, dense_n = voxel_downsample(pts, voxel / 3, nrm)
            self._models[key] = _ModelCloud(p, fpfh(p, n, self.feature_radius * voxel), dense, dense_n, voxel, obj.diameter)
        return self._models[key]

    def estimate(self, rgb: np.ndarray, K: np.ndarray, obj: Any, box: Box | None = None, depth: np.ndarray | None = None,
                 n_hypotheses: int = 1, mask: np.ndarray | None = None) -> list[PoseHypothesis]:
        """Up to n_hypotheses poses (best first) registering the depth in the box to the model; [] when registration fails."""
        if depth is None:
            raise InputError("the FPFH + ICP baseline needs a depth map (mm); run it in RGB-D mode.")
        t_start = time.perf_counter()
        inp = _check(rgb, K, obj, box, mask, depth)
        model = self.onboard(obj)
        v = model.voxel
        scene = box_points(inp.depth, inp.K, inp.box, inp.mask, model.diameter)
        if len(scene) < 10:
            raise InputError(f"fewer than 10 depth pixels inside the box {inp.box}; check that depth is registered to the image.")
        pts, _ = voxel_downsample(scene, v)
        if len(pts) < 6:
            return []
        nrm = estimate_normals(pts, self.normal_radius * v, np.zeros(3))
        feats = fpfh(pts, nrm, self.feature_radius * v)
        match = cKDTree(model.features).query(feats, k=self.feature_matches)[1].reshape(len(pts), -1)  # (N, k)
        rng = np.random.default_rng(self.seed)
        cands = ransac_candidates(model.points[match], pts, 1.5 * v, self.ransac_iterations, self.candidates, rng)
        # rank the candidates by how much of the scene lies on the model, refine the best ones with ICP
        tree = cKDTree(model.dense)

        def fitness(T_obj_cam: np.ndarray) -> float:
            return float(np.mean(tree.query(pts @ T_obj_cam[:3, :3].T + T_obj_cam[:3, 3])[0] < v))

        inv = [invert_pose(T) for T in cands]
        order = np.argsort([-fitness(T) for T in inv], kind="stable")
        t_global = time.perf_counter()
        out, seen = [], []
        for k in order[: self.icp_candidates * n_hypotheses]:
            T_obj_cam = inv[k]
            for dist in (3 * v, 1.5 * v, v):
                T_obj_cam = icp_point_to_plane(pts, model.dense, model.dense_normals, T_obj_cam, dist, self.icp_iterations)
            T = invert_pose(T_obj_cam)
            if any(np.linalg.norm(T[:3, 3] - s[:3, 3]) < 2 * v and rotation_error_deg(T[:3, :3], s[:3, :3]) < 5 for s in seen):
                continue
            seen.append(T)
            out.append(PoseHypothesis.from_T(T, score=fitness(T_obj_cam), stage="refine"))
        out = sorted(out, key=lambda h: -h.score)[:n_hypotheses]
        t_end = time.perf_counter()
        for h in out:
            h.timings = {"global": t_global - t_start, "icp": t_end - t_global}
        return out


# ---------------------------------------------------------------------------------------------- SIFT + PnP
@dataclass
class _TemplateFeatures:
    templates: Any  # cooppose.onboarding.ObjectTemplates
    keypoints: list[np.ndarray]  # per template (Ki, 2) crop pixels
    points: list[np.ndarray]  # per template (Ki, 3) object points (mm) under each keypoint
    descriptors: list[np.ndarray]  # per template (Ki, 128) float32


@dataclass
class SiftPnPBaseline(_ManyMixin):
    """RGB baseline: SIFT matches between the query crop and the 42 onboarding templates, then PnP + RANSAC."""

    size: int = 256  # template and query crop side (pixels)
    level: int = 0  # template icosphere level (0: 42 views)
    pad: float = 1.2  # query crop padding, as the templates'
    ratio: float = 0.8  # Lowe ratio test
    threshold_px: float = 4.0  # PnP inlier threshold, crop pixels
    candidates: int = 5  # templates with the most matches that PnP is run on; the most inliers win
    pnp_method: str = "sqpnp"  # SQPnP resolves the planar-face ambiguity that EPnP often gets wrong here
    fallback: bool = True  # no PnP solution: the best-matched template's pose placed in the box, score 0
    min_matches: int = 6
    seed: int = 0
    cache_dir: str | None = None  # onboarding template cache (None: the default)
    _templates: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._sift = cv2.SIFT_create()
        self._matcher = cv2.BFMatcher(cv2.NORM_L2)

    def _detect(self, rgb: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        kps, desc = self._sift.detectAndCompute(gray, None if mask is None else mask.astype(np.uint8) * 255)
        return np.array([k.pt for k in kps], dtype=np.float64).reshape(-1, 2), desc

    def onboard(self, obj: Any) -> _TemplateFeatures:
        """Render the object's templates and compute their SIFT keypoints, descriptors and 3D points (cached per mesh)."""
        key = obj.content_hash
        if key not in self._templates:
            from cooppose.onboarding import onboard

            tpl = onboard(obj, size=self.size, level=self.level, cache_dir=self.cache_dir)
            feats = _TemplateFeatures(tpl, [], [], [])
            for rgb, mask, xyz in zip(tpl.rgb, tpl.mask, tpl.xyz):
                kp, desc = self._detect(rgb, cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0)
                px = np.clip(np.round(kp).astype(np.int64), 0, self.size - 1)
                ok = mask[px[:, 1], px[:, 0]] if len(px) else np.zeros(0, dtype=bool)
                feats.keypoints.append(kp[ok])
                feats.points.append(xyz[px[ok, 1], px[ok, 0]].astype(np.float64))
                feats.descriptors.append(desc[ok] if desc is not None else np.zeros((0, 128), np.float32))
            self._templates[key] = feats
        return self._templates[key]

    def _matches(self, desc: np.ndarray, tdesc: np.ndarray) -> np.ndarray:
        """(M, 2) index pairs (query, template) passing the ratio test."""
        if len(desc) < 2 or len(tdesc) < 2:
            return np.zeros((0, 2), dtype=np.int64)
        pairs = self._matcher.knnMatch(desc, tdesc, k=2)
        good = [(m.queryIdx, m.trainIdx) for m, n in pairs if m.distance < self.ratio * n.distance]
        return np.array(good, dtype=np.int64).reshape(-1, 2)

    def estimate(self, rgb: np.ndarray, K: np.ndarray, obj: Any, box: Box | None = None, depth: np.ndarray | None = None,
                 n_hypotheses: int = 1, mask: np.ndarray | None = None) -> list[PoseHypothesis]:
        """Up to n_hypotheses poses (best first) from the templates with the most SIFT matches.

        When no template gives a PnP solution: the `fallback` pose (score 0) if enabled, else [].
        """
        t_start = time.perf_counter()
        inp = _check(rgb, K, obj, box, mask, None)
        feats = self.onboard(obj)
        crop = make_crop(inp.box, inp.K, self.size, pad=self.pad)
        kp, desc = self._detect(warp(inp.rgb, crop))
        if desc is None:
            kp, desc = np.zeros((0, 2)), np.zeros((0, 128), np.float32)
        matches = [self._matches(desc, d) for d in feats.descriptors]
        order = np.argsort([-len(m) for m in matches], kind="stable")
        t_match = time.perf_counter()
        out = []
        for tid in order[: max(self.candidates, n_hypotheses)]:  # PnP on the templates with the most matches
            m = matches[tid]
            if len(m) < self.min_matches:
                break
            res = solve_pnp_ransac(feats.points[tid][m[:, 1]], kp[m[:, 0]], crop.K, threshold_px=self.threshold_px,
                                   seed=self.seed, min_inliers=self.min_matches, method=self.pnp_method)
            if res.success:
                out.append(PoseHypothesis.from_T(res.T, score=res.n_inliers / len(kp), stage="coarse", template_id=int(tid)))
        out = sorted(out, key=lambda h: -h.score)[:n_hypotheses]
        if not out and self.fallback:
            from cooppose.pipeline.coarse import box_pose

            tid = int(order[0])
            out = [PoseHypothesis.from_T(box_pose(feats.templates, tid, obj, inp.K, inp.box), score=0.0, stage="coarse",
                                         template_id=tid)]
        t_end = time.perf_counter()
        for h in out:
            h.timings = {"match": t_match - t_start, "pnp": t_end - t_match}
        return out
