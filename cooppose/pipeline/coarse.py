"""Coarse stage: query crop from the detection, patch matches against every template, top-k templates -> PnP poses.

For query patch i with predicted template patch k (not "no match"), the query pixel is the patch
centre q_i and the template pixel is m = patch * ((c_k, r_k) + 0.5 + offset) - 0.5 (the convention of
`cooppose.data.targets`); m is lifted to object space with the template's xyz map. RGB: PnP + RANSAC on
(X, q) in crop coordinates with the crop intrinsics (the same camera pose). RGB-D: q is back-projected
with the query depth and Kabsch + RANSAC aligns the 3D-3D matches.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cooppose.data.targets import patch_centers, patch_pixels
from cooppose.geometry.camera import Crop, make_crop, warp
from cooppose.geometry.pnp import kabsch_ransac, solve_pnp_ransac
from cooppose.geometry.transforms import backproject, make_pose, project, skew, transform_points
from cooppose.models import normalize, template_score
from cooppose.models.checkpoint import atomic_torch_save
from cooppose.pipeline.hypothesis import PoseHypothesis
from cooppose.pipeline.sampling import sample_map

PATCH = 16
QUERY_PAD = 1.0  # design.md: the coarse query crop is the square around the detection box, unpadded
PNP_THRESHOLD_PX = 8.0  # half a patch, in crop pixels
SPREAD_FRAC = 0.05  # neighbouring map values farther apart than this x diameter are a surface discontinuity
BOX_MIN_COVER = 0.5  # a solved pose must project over at least this share of the detection box ...
BOX_SIDE_RANGE = (0.5, 3.0)  # ... with a longer box side within these factors of the detection's (occlusion shrinks detections)


@dataclass
class CoarseQuery:
    """One detection's query crop (S, S, 3) uint8 with its crop geometry, and its object's templates."""

    rgb: np.ndarray  # (S, S, 3) uint8
    crop: Crop
    templates: object  # cooppose.onboarding.ObjectTemplates


@dataclass
class CoarseMatches:
    """Coarse network output of one query against all T templates."""

    logits: np.ndarray  # (T, Np, Np + 1) float32; class Np = no match
    offsets: np.ndarray  # (T, Np, 2) float32 in [-0.5, 0.5], (x, y) in patch units


class CoarsePredictor(ABC):
    """Patch classification + offsets of a query crop against every template of its object."""

    size: int  # query crop side S (pixels)

    def prepare(self, templates) -> None:
        """Precompute what the predictor needs per object (e.g. template tokens); default: nothing."""

    @abstractmethod
    def predict(self, query: CoarseQuery) -> CoarseMatches:
        """Matches of one query against all its templates."""

    def predict_batch(self, queries: list[CoarseQuery]) -> list[CoarseMatches]:
        """Matches of several queries (the default runs them one by one)."""
        return [self.predict(q) for q in queries]


class NetworkCoarsePredictor(CoarsePredictor):
    """A `CoarseNet`: template tokens encoded once per object, each query encoded once, decoded against all templates in batches."""

    def __init__(self, model, device: str | torch.device = "cpu", pair_batch: int = 64):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.size = int(model.cfg.img_size)
        self.pair_batch = int(pair_batch)
        self._tokens: dict[int, tuple[object, torch.Tensor]] = {}  # id(templates) -> (templates, tokens (T, N, D))
        self._fingerprint: str | None = None

    @torch.inference_mode()
    def _encode(self, rgb: np.ndarray) -> torch.Tensor:
        """uint8 images (B, S, S, 3) -> encoder tokens (B, N, D), in chunks."""
        out = [self.model.encode_image(normalize(rgb[i:i + self.pair_batch]).to(self.device))
               for i in range(0, len(rgb), self.pair_batch)]
        return torch.cat(out)

    @property
    def fingerprint(self) -> str:
        """Hash of the model's configuration and weights (keys the on-disk token cache)."""
        if self._fingerprint is None:
            h = hashlib.sha1(json.dumps(self.model.cfg.to_dict(), sort_keys=True).encode())
            for name, t in self.model.state_dict().items():
                h.update(name.encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def template_tokens(self, templates) -> torch.Tensor:
        """Encoder tokens (T, N, D) of the templates' RGB: computed once, kept in memory and next to the template cache."""
        hit = self._tokens.get(id(templates))
        if hit is not None and hit[0] is templates:
            return hit[1]
        path = None
        if getattr(templates, "cache_path", None) is not None:
            path = Path(templates.cache_path)
            path = path.with_name(f"{path.stem}.coarse-tokens-{self.fingerprint}.pt")
        tokens = _read_tokens(path, len(templates.rgb)) if path is not None else None
        if tokens is None:
            tokens = self._encode(np.asarray(templates.rgb))
            if path is not None:
                _write_tokens(path, tokens)
        tokens = tokens.to(self.device)
        self._tokens[id(templates)] = (templates, tokens)
        return tokens

    def prepare(self, templates) -> None:
        """Encode and keep the template tokens of one object."""
        self.template_tokens(templates)

    def predict(self, query: CoarseQuery) -> CoarseMatches:
        """Matches of one query against all its templates."""
        return self.predict_batch([query])[0]

    @torch.inference_mode()
    def predict_batch(self, queries: list[CoarseQuery]) -> list[CoarseMatches]:
        """Encode all queries at once, then decode every (query, template) pair in chunks of `pair_batch`."""
        if not queries:
            return []
        q_tok = self._encode(np.stack([q.rgb for q in queries]))  # (B, N, D)
        t_tok = [self.template_tokens(q.templates) for q in queries]
        counts = [len(t) for t in t_tok]
        pair_q = torch.cat([q_tok[i:i + 1].expand(n, -1, -1) for i, n in enumerate(counts)])  # (P, N, D)
        pair_t = torch.cat(t_tok)  # (P, N, D)
        logits, offsets = [], []
        for i in range(0, len(pair_q), self.pair_batch):
            out = self.model.match(pair_q[i:i + self.pair_batch], pair_t[i:i + self.pair_batch])
            logits.append(out["logits"].float().cpu())
            offsets.append(out["offsets"].float().cpu())
        logits_all = torch.cat(logits).numpy()
        offsets_all = torch.cat(offsets).numpy()
        bounds = np.cumsum([0] + counts)
        return [CoarseMatches(logits=logits_all[a:b], offsets=offsets_all[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _read_tokens(path: Path, n: int) -> torch.Tensor | None:
    """Cached template tokens (n, N, D), or None when the file is missing or unusable (it is then rewritten)."""
    if not path.is_file():
        return None
    try:
        tokens = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or foreign file: recompute
        warnings.warn(f"template token cache {path} is unreadable ({type(err).__name__}); recomputing it.", stacklevel=3)
        return None
    return tokens if isinstance(tokens, torch.Tensor) and tokens.ndim == 3 and len(tokens) == n else None


def _write_tokens(path: Path, tokens: torch.Tensor) -> None:
    """Save tokens atomically; a read-only cache folder only warns."""
    try:
        atomic_torch_save(tokens.cpu(), path)
    except OSError as err:
        warnings.warn(f"cannot write the template token cache {path} ({err}); tokens are recomputed next time.", stacklevel=3)


def query_crop(rgb: np.ndarray, K: np.ndarray, box, size: int) -> tuple[np.ndarray, Crop]:
    """The coarse query crop (S, S, 3) of an image around a detection box, and its geometry."""
    crop = make_crop(box, K, size, pad=QUERY_PAD)
    return warp(rgb, crop), crop


def template_ranking(matches: CoarseMatches) -> tuple[np.ndarray, np.ndarray]:
    """Template scores (T,) = mean over query patches of 1 - p(no match), and template indices best first."""
    scores = template_score(torch.from_numpy(matches.logits)).numpy().astype(np.float64)
    return scores, np.argsort(-scores, kind="stable")


def correspondences(matches: CoarseMatches, t: int, templates, diameter: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2D-3D matches from template t: query crop pixels q (N, 2), template pixels m (N, 2), object points X (N, 3) mm."""
    logits, offsets = matches.logits[t], matches.offsets[t]  # (Np, Np+1), (Np, 2)
    S = int(np.asarray(templates.rgb).shape[1])
    n_p = logits.shape[0]
    labels = logits.argmax(-1)
    sel = labels < n_p
    q = patch_centers(S, PATCH)[sel]
    m = patch_pixels(labels[sel], offsets[sel], S, PATCH)
    X, ok = sample_map(templates.xyz[t], templates.mask[t], m, max_spread=SPREAD_FRAC * diameter)
    return q[ok], m[ok], X[ok]


def box_pose(templates, t: int, obj, K: np.ndarray, box) -> np.ndarray:
    """Fallback pose: template t's rotation seen along the ray through the box centre, at the depth its size implies."""
    T_t = np.asarray(templates.poses[t], dtype=np.float64)
    c_t = transform_points(T_t, obj.center[None])[0]  # object centre in the template camera
    ys, xs = np.nonzero(templates.mask[t])
    extent_t = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1.0 if len(xs) else float(templates.rgb.shape[1])
    K_t = np.asarray(templates.K[t], dtype=np.float64)
    side = max(box[2] - box[0], box[3] - box[1])
    z = c_t[2] * np.sqrt(K[0, 0] * K[1, 1]) / np.sqrt(K_t[0, 0] * K_t[1, 1]) * extent_t / side
    ray = np.linalg.solve(K, np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, 1.0]))
    ray_t = c_t / np.linalg.norm(c_t)
    R_fix = _rotation_between(ray_t, ray / np.linalg.norm(ray))
    R = R_fix @ T_t[:3, :3]
    return make_pose(R, ray * z - R @ obj.center)


def in_front(T: np.ndarray, obj) -> bool:
    """True when the whole bounding box of the object lies in front of the camera at pose T."""
    lo, hi = obj.bbox_min, obj.bbox_max
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    return bool(np.all(np.isfinite(T)) and np.all(transform_points(T, corners)[:, 2] > 1e-3 * obj.diameter))


def agrees_with_box(T: np.ndarray, obj, K: np.ndarray, box) -> bool:
    """True when pose T (in front of the camera) projects the object onto the detection box (x0, y0, x1, y1):
    the projection's bounding box covers >= BOX_MIN_COVER of the detection and its longer side is within
    BOX_SIDE_RANGE x the detection's. PnP / Kabsch on mostly wrong matches gives poses far off the box."""
    uv = project(K, transform_points(T, obj.vertices[obj.hull_indices]))  # (H, 2) projected hull
    (x0, y0), (x1, y1) = uv.min(0), uv.max(0)
    bw, bh = box[2] - box[0], box[3] - box[1]
    overlap = max(0.0, min(x1, box[2]) - max(x0, box[0])) * max(0.0, min(y1, box[3]) - max(y0, box[1]))
    ratio = max(x1 - x0, y1 - y0) / max(bw, bh)
    return bool(overlap >= BOX_MIN_COVER * bw * bh and BOX_SIDE_RANGE[0] <= ratio <= BOX_SIDE_RANGE[1])


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest rotation (3, 3) taking unit vector a to unit vector b."""
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if np.linalg.norm(v) < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    V = skew(v)
    return np.eye(3) + V + V @ V / (1 + c)


def coarse_hypotheses(
    query: CoarseQuery,
    matches: CoarseMatches,
    obj,
    K: np.ndarray,
    box,
    k: int = 1,
    depth: np.ndarray | None = None,
    seed: int = 0,
    debug: bool = False,
) -> list[PoseHypothesis]:
    """k coarse poses, one per top-ranked template (PnP on RGB, Kabsch on RGB-D); a failed solve, or a pose that
    does not agree with the detection box, falls back to `box_pose`."""
    templates, crop = query.templates, query.crop
    scores, order = template_ranking(matches)
    out = []
    for t in order[:k]:
        q, m, X = correspondences(matches, int(t), templates, obj.diameter)
        T, inliers = _solve(q, X, crop, K, depth, obj.diameter, seed)
        fallback = T is None or not in_front(T, obj) or not agrees_with_box(T, obj, K, box)
        if fallback:
            T = box_pose(templates, int(t), obj, K, box)
        info = None
        if debug:
            info = {"query": query.rgb, "crop": crop, "template_rgb": templates.rgb[t], "template_scores": scores,
                    "q": q, "m": m, "X": X, "inliers": inliers, "fallback": fallback}
        out.append(PoseHypothesis.from_T(T, score=scores[t], stage="coarse", template_id=int(t), debug=info))
    return out


def _solve(q: np.ndarray, X: np.ndarray, crop: Crop, K: np.ndarray, depth: np.ndarray | None, diameter: float,
           seed: int) -> tuple[np.ndarray | None, np.ndarray]:
    """Pose from query crop pixels q (N, 2) <-> object points X (N, 3): PnP (RGB) or Kabsch (RGB-D); (None, inliers) on failure."""
    if depth is None:
        res = solve_pnp_ransac(X, q, crop.K, threshold_px=PNP_THRESHOLD_PX, seed=seed)
        return res.T, res.inliers
    uv = crop.to_image(q)
    d, ok = sample_map(depth, depth > 0, uv, max_spread=SPREAD_FRAC * diameter)
    ok &= d[:, 0] > 0
    inliers = np.zeros(len(q), dtype=bool)
    if ok.sum() < 3:
        return None, inliers
    X_cam = backproject(K, uv[ok], d[ok, 0])
    # half a patch at the median depth, in mm, but no tighter than typical depth noise
    px_mm = np.median(d[ok, 0]) / np.sqrt(K[0, 0] * K[1, 1]) / crop.A[0, 0]
    res = kabsch_ransac(X[ok], X_cam, threshold_mm=max(PNP_THRESHOLD_PX * px_mm, 0.02 * diameter), seed=seed)
    inliers[np.flatnonzero(ok)] = res.inliers
    return res.T, inliers
