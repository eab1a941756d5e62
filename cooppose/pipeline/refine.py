"""Refinement (render and compare): pose-conditioned crop -> render at the current pose -> dense flow -> new pose.

Each iteration re-crops around the current pose (`cooppose.data.targets.refiner_crop`, pad 1.4) and
renders the object with the crop intrinsics. The refiner predicts, for every rendered pixel p, where
it lies in the query crop (p + flow) and how much to trust it. RGB: the differentiable LM PnP
(`geometry.lm_pnp`) fits the pose to (X = rendered object point, uv = p + flow) weighted by the
confidence, starting from the current pose. RGB-D: the query depth at p + flow is back-projected and
MAGSAC++ aligns the 3D-3D matches whose certainty is >= 0.5 (Co-op supplement).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from cooppose.data.targets import refiner_crop
from cooppose.geometry.camera import Crop, warp
from cooppose.geometry.lm_pnp import lm_pnp
from cooppose.geometry.pnp import magsac_rigid
from cooppose.geometry.transforms import backproject, transform_points
from cooppose.models import normalize
from cooppose.onboarding import TEMPLATE_LIGHT
from cooppose.pipeline.sampling import sample_map

REFINE_PAD = 1.4
MIN_POINTS = 6  # fewer usable matches than this: keep the current pose
CERTAINTY_MIN = 0.5  # RGB-D: matches kept for MAGSAC++
MAGSAC_FRAC = 0.05  # RGB-D: MAGSAC++ maximum threshold, x diameter
MAX_PNP_POINTS = 2048  # RGB: matches subsampled (evenly over the rendered pixels) to at most this many
MAX_RIGID_POINTS = 4000  # RGB-D: matches subsampled (evenly) to at most this many
DEPTH_SPREAD_FRAC = 0.05  # depth neighbours farther apart than this x diameter are not interpolated


@dataclass
class RefineView:
    """Pose-conditioned crop of the query and the rendering at pose T with the same crop intrinsics."""

    query: np.ndarray  # (S, S, 3) uint8 query crop
    render: np.ndarray  # (S, S, 3) uint8 rendering at T
    crop: Crop
    T: np.ndarray  # (4, 4) pose that was rendered
    xyz: np.ndarray  # (S, S, 3) float32 object coordinates (mm) of the rendered pixels
    mask: np.ndarray  # (S, S) bool rendered object
    query_depth: np.ndarray | None = None  # (S, S) float32 mm, the query depth warped into the crop (RGB-D)


@dataclass
class RefinePrediction:
    """Refiner output on the rendered grid: flow to the query crop and its weights."""

    flow: np.ndarray  # (2, S, S) float32 pixels, rendered pixel -> query crop
    certainty: np.ndarray  # (S, S) in [0, 1]: visible (not occluded) in the query
    confidence: np.ndarray  # (S, S) >= 0: PnP weights = flow_probability * certainty * sensitivity
    flow_probability: np.ndarray | None = None  # (S, S) in [0, 1]
    sensitivity: np.ndarray | None = None  # (S, S) >= 0


class RefinePredictor(ABC):
    """Dense flow + weights from a rendering at the current pose to the query crop."""

    size: int  # crop side S (pixels)

    @abstractmethod
    def predict(self, view: RefineView) -> RefinePrediction:
        """Prediction for one view."""

    def predict_batch(self, views: list[RefineView]) -> list[RefinePrediction]:
        """Predictions for several views (the default runs them one by one)."""
        return [self.predict(v) for v in views]


class NetworkRefinePredictor(RefinePredictor):
    """A `RefinerNet` run on batches of (query crop, rendering) pairs."""

    def __init__(self, model, device: str | torch.device = "cpu", batch: int = 16):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.size = int(model.cfg.img_size)
        self.batch = int(batch)

    def predict(self, view: RefineView) -> RefinePrediction:
        """Prediction for one view."""
        return self.predict_batch([view])[0]

    @torch.inference_mode()
    def predict_batch(self, views: list[RefineView]) -> list[RefinePrediction]:
        """Predictions for several views, `batch` pairs per forward pass."""
        out = []
        for i in range(0, len(views), self.batch):
            chunk = views[i:i + self.batch]
            q = normalize(np.stack([v.query for v in chunk])).to(self.device)
            r = normalize(np.stack([v.render for v in chunk])).to(self.device)
            pred = {k: v.float().cpu().numpy() for k, v in self.model(q, r).items()}
            for j in range(len(chunk)):
                out.append(RefinePrediction(
                    flow=pred["flow"][j], certainty=pred["certainty"][j, 0], confidence=pred["confidence"][j, 0],
                    flow_probability=pred["flow_probability"][j, 0], sensitivity=pred["sensitivity"][j, 0]))
        return out


def make_view(renderer, obj, rgb: np.ndarray, K: np.ndarray, T: np.ndarray, size: int,
              depth: np.ndarray | None = None) -> RefineView:
    """Crop the query around pose T (pad 1.4) and render the object at T with the crop intrinsics."""
    crop = refiner_crop(T, obj, K, None, size, pad=REFINE_PAD)
    r = renderer.render(obj, crop.K, T, (size, size), TEMPLATE_LIGHT)
    query_depth = warp(depth, crop, nearest=True) if depth is not None else None
    return RefineView(query=warp(rgb, crop), render=r.rgb, crop=crop, T=np.asarray(T, dtype=np.float64),
                      xyz=r.xyz, mask=r.mask, query_depth=query_depth)


def _pixel_grid(S: int) -> np.ndarray:
    u, v = np.meshgrid(np.arange(S, dtype=np.float64), np.arange(S, dtype=np.float64))
    return np.stack([u, v], -1)  # (S, S, 2)


def _even(n: int, at_most: int) -> np.ndarray:
    """Indices of at most `at_most` of n items, evenly spread (all of them when n <= at_most)."""
    if n <= at_most:
        return np.arange(n)
    return np.linspace(0, n - 1, at_most).round().astype(np.int64)


def pnp_updates(views: list[RefineView], preds: list[RefinePrediction], lm_iters: int = 5) -> list[np.ndarray]:
    """RGB update of every view at once: weighted LM PnP from the rendered pose (padding with zero weights)."""
    rows = []
    for v, p in zip(views, preds):
        sel = v.mask & (p.confidence > 0) & np.isfinite(p.flow).all(0)
        keep = _even(int(sel.sum()), MAX_PNP_POINTS)
        uv = (_pixel_grid(v.mask.shape[0])[sel] + p.flow[:, sel].T)[keep]  # (N, 2)
        rows.append((v.xyz[sel][keep].astype(np.float64), uv, p.confidence[sel][keep].astype(np.float64)))
    n_max = max(max(len(r[0]) for r in rows), 1)
    B = len(rows)
    X = np.zeros((B, n_max, 3))
    uv = np.zeros((B, n_max, 2))
    w = np.zeros((B, n_max))
    for b, (Xb, uvb, wb) in enumerate(rows):
        X[b, :len(Xb)], uv[b, :len(Xb)], w[b, :len(Xb)] = Xb, uvb, wb
    T0 = np.stack([v.T for v in views])
    K = np.stack([v.crop.K for v in views])
    with torch.no_grad():
        T = lm_pnp(torch.from_numpy(X), torch.from_numpy(uv), torch.from_numpy(w), torch.from_numpy(K),
                   torch.from_numpy(T0), n_iters=lm_iters).numpy()
    out = []
    for b, (Xb, _, wb) in enumerate(rows):
        ok = len(Xb) >= MIN_POINTS and wb.sum() > 0 and np.all(np.isfinite(T[b]))
        ok = ok and bool(np.all(transform_points(T[b], Xb)[:, 2] > 0))
        out.append(T[b] if ok else T0[b])
    return out


def rigid_update(view: RefineView, pred: RefinePrediction, diameter: float, seed: int = 0) -> np.ndarray:
    """RGB-D update of one view: query depth at p + flow back-projected, MAGSAC++ on matches with certainty >= 0.5."""
    sel = view.mask & (pred.certainty >= CERTAINTY_MIN) & np.isfinite(pred.flow).all(0)
    uv = _pixel_grid(view.mask.shape[0])[sel] + pred.flow[:, sel].T
    X_obj = view.xyz[sel].astype(np.float64)
    d, ok = sample_map(view.query_depth, view.query_depth > 0, uv, max_spread=DEPTH_SPREAD_FRAC * diameter)
    ok &= d[:, 0] > 0
    X_obj, uv, d = X_obj[ok], uv[ok], d[ok, 0]
    if len(X_obj) < MIN_POINTS:
        return view.T
    keep = _even(len(X_obj), MAX_RIGID_POINTS)
    X_obj, uv, d = X_obj[keep], uv[keep], d[keep]
    X_cam = backproject(view.crop.K, uv, d)
    res = magsac_rigid(X_obj, X_cam, max_threshold_mm=MAGSAC_FRAC * diameter, seed=seed)
    return res.T if res.success else view.T


def refine_step(views: list[RefineView], preds: list[RefinePrediction], diameters: list[float],
                lm_iters: int = 5, seed: int = 0) -> list[np.ndarray]:
    """New poses (4, 4) for every view: LM PnP for RGB views (batched), MAGSAC++ for views with query depth."""
    new: list[np.ndarray | None] = [None] * len(views)
    rgb = [i for i, v in enumerate(views) if v.query_depth is None]
    if rgb:
        for i, T in zip(rgb, pnp_updates([views[i] for i in rgb], [preds[i] for i in rgb], lm_iters)):
            new[i] = T
    for i, v in enumerate(views):
        if v.query_depth is not None:
            new[i] = rigid_update(v, preds[i], diameters[i], seed)
    return new
