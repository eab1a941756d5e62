"""PoseEstimator: the one public entry that runs coarse -> refine -> select for one or many detections."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from cooppose.errors import CheckpointError, InputError
from cooppose.geometry.camera import check_intrinsics
from cooppose.pipeline import checks
from cooppose.pipeline.coarse import CoarsePredictor, CoarseQuery, coarse_hypotheses, in_front, query_crop
from cooppose.pipeline.hypothesis import PoseHypothesis
from cooppose.pipeline.refine import RefinePredictor, make_view, refine_step
from cooppose.pipeline.select import SelectPredictor, rank

CHECKPOINT_DIR = Path(__file__).resolve().parents[1] / "assets" / "checkpoints"
CHECKPOINT_NAMES = {"coarse": "coarse", "refiner": "refiner", "selection": "selection"}


def checkpoint_path(kind: str, size: str = "tiny", directory: str | Path | None = None) -> Path:
    """Where the checkpoint of `kind` ("coarse", "refiner", "selection") and `size` lives: <dir>/<kind>_<size>.pt."""
    return Path(directory or CHECKPOINT_DIR) / f"{CHECKPOINT_NAMES[kind]}_{size}.pt"


def _load(kind: str, source, size: str, directory, device: str):
    """A model of `kind` from an nn.Module, a checkpoint file, or <directory>/<kind>_<size>.pt."""
    import torch

    if isinstance(source, torch.nn.Module):
        model = source
    else:
        from cooppose.models.checkpoint import load_model

        path = Path(source) if source is not None else checkpoint_path(kind, size, directory)
        if not path.is_file():
            raise CheckpointError(
                f"{kind} checkpoint not found: {path}. Train one (`cooppose train {kind} --config ...` exports "
                f"{path.name} into its run folder) and pass that folder as path / --checkpoints, or give the file "
                f"itself ({kind}=PATH)."
            )
        model = load_model(path, kind=kind, device=device)
    cfg_kind = getattr(getattr(model, "cfg", None), "kind", None)
    if cfg_kind != kind:
        raise CheckpointError(f"the {kind} model given is a {cfg_kind!r} network; pass a {kind} checkpoint.")
    return model


class PoseEstimator:
    """Co-op inference: templates per object (cached), coarse poses from patch matches, render-and-compare refinement, selection."""

    def __init__(self, coarse: CoarsePredictor, refiner: RefinePredictor | None = None, selector: SelectPredictor | None = None,
                 renderer=None, template_level: int = 0, lm_iters: int = 5, seed: int = 0, cache_dir: str | Path | None = None):
        self.coarse = coarse
        self.refiner = refiner
        self.selector = selector
        self._renderer = renderer
        self.template_level = int(template_level)
        self.lm_iters = int(lm_iters)
        self.seed = int(seed)
        self.cache_dir = cache_dir
        self._templates: dict[str, object] = {}  # content hash -> ObjectTemplates

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, size: str = "tiny", device: str = "cpu", *,
                        coarse=None, refiner=None, selection=None, **kwargs) -> PoseEstimator:
        """Networks from <path>/{coarse,refiner,selection}_<size>.pt (default: the bundled checkpoints).

        `coarse`, `refiner`, `selection` override one network each with a checkpoint file or an in-memory model.
        Raises CheckpointError naming the missing file.
        """
        from cooppose.pipeline.coarse import NetworkCoarsePredictor
        from cooppose.pipeline.refine import NetworkRefinePredictor
        from cooppose.pipeline.select import NetworkSelectPredictor

        models = {kind: _load(kind, src, size, path, device)
                  for kind, src in (("coarse", coarse), ("refiner", refiner), ("selection", selection))}
        return cls(NetworkCoarsePredictor(models["coarse"], device), NetworkRefinePredictor(models["refiner"], device),
                   NetworkSelectPredictor(models["selection"], device), **kwargs)

    @property
    def renderer(self):
        """The renderer (created on first use, so that no GL context exists before a fork)."""
        if self._renderer is None:
            from cooppose.render import Renderer

            self._renderer = Renderer()
        return self._renderer

    def onboard(self, obj):
        """Templates of `obj` at the coarse network's input size (rendered once, cached) and their predictor data."""
        key = obj.content_hash
        if key not in self._templates:
            from cooppose.onboarding import onboard

            templates = onboard(obj, size=self.coarse.size, level=self.template_level, cache_dir=self.cache_dir,
                                renderer=self.renderer)
            self.coarse.prepare(templates)
            self._templates[key] = templates
        return self._templates[key]

    def estimate(self, rgb: np.ndarray, K: np.ndarray, obj, box=None, mask=None, depth: np.ndarray | None = None,
                 depth_scale: float = 1.0, n_hypotheses: int = 1, n_refine: int = 3, debug: bool = False) -> list[PoseHypothesis]:
        """Poses of `obj` in one detection (box (x0, y0, x1, y1) and/or instance mask), best first.

        rgb (H, W, 3) uint8, K (3, 3), depth (H, W) with depth_mm = depth * depth_scale (RGB-D when given).
        Returns n_hypotheses PoseHypothesis; the first one's score is the selection confidence.
        """
        return self._run(rgb, K, [(obj, box, mask)], depth, depth_scale, n_hypotheses, n_refine, debug)[0]

    def estimate_many(self, rgb: np.ndarray, K: np.ndarray, detections: list, depth: np.ndarray | None = None,
                      depth_scale: float = 1.0, n_hypotheses: int = 1, n_refine: int = 3, debug: bool = False) -> list[list[PoseHypothesis]]:
        """`estimate` for several detections (obj, box or mask) of one image, network calls batched across them."""
        dets = [checks.split_detection(i, det) for i, det in enumerate(detections)]
        return self._run(rgb, K, dets, depth, depth_scale, n_hypotheses, n_refine, debug)

    def _run(self, rgb, K, dets, depth, depth_scale, n_hypotheses, n_refine, debug) -> list[list[PoseHypothesis]]:
        """Checks, then the three stages for all detections; stage times are split evenly among the detections."""
        if int(n_hypotheses) < 1 or int(n_refine) < 0:
            raise InputError(f"n_hypotheses ({n_hypotheses}) must be >= 1 and n_refine ({n_refine}) >= 0.")
        if not dets:
            return []
        if n_refine > 0 and self.refiner is None:
            raise InputError("this estimator has no refiner; pass n_refine=0 or build it with a refiner.")
        rgb = checks.check_image(rgb)
        size = rgb.shape[:2]
        K = check_intrinsics(K, size)
        depth_mm = checks.check_depth(depth, size, depth_scale) if depth is not None else None
        boxes = [checks.check_detection(obj.diameter, box, mask, size, K, depth_mm, getattr(obj, "name", "mesh"))[0]
                 for obj, box, mask in dets]
        objs = [obj for obj, _, _ in dets]
        templates = [self.onboard(obj) for obj in objs]

        t0 = time.perf_counter()
        hyps = self._coarse(rgb, K, objs, boxes, templates, depth_mm, int(n_hypotheses), debug)
        timings = {"coarse": (time.perf_counter() - t0) / len(dets)}
        flat = [(d, h) for d, hs in enumerate(hyps) for h in hs]  # every hypothesis of every detection, batched below
        flat_objs = [objs[d] for d, _ in flat]
        if n_refine:
            t0 = time.perf_counter()
            for _ in range(int(n_refine)):
                self._refine([h for _, h in flat], flat_objs, rgb, K, depth_mm, debug)
            timings["refine"] = (time.perf_counter() - t0) / len(dets)
        if self.selector is not None:
            t0 = time.perf_counter()
            scores = self._scores([h for _, h in flat], flat_objs, rgb, K, depth_mm, debug)
            results = [rank([h for dd, h in flat if dd == d], [s for (dd, _), s in zip(flat, scores) if dd == d])
                       for d in range(len(dets))]
            timings["select"] = (time.perf_counter() - t0) / len(dets)
        else:
            results = [sorted(hs, key=lambda h: -h.score) for hs in hyps]
        for hs in results:
            for h in hs:
                h.timings = dict(timings)
        return results

    def _coarse(self, rgb, K, objs, boxes, templates, depth_mm, k: int, debug: bool) -> list[list[PoseHypothesis]]:
        """k coarse hypotheses per detection; the coarse network runs once over all detections."""
        queries = []
        for tpl, b in zip(templates, boxes):
            crop_rgb, crop = query_crop(rgb, K, b, self.coarse.size)
            queries.append(CoarseQuery(rgb=crop_rgb, crop=crop, templates=tpl))
        matches = self.coarse.predict_batch(queries)
        hyps = []
        for obj, q, m, b in zip(objs, queries, matches, boxes):
            hs = coarse_hypotheses(q, m, obj, K, b, k=k, depth=depth_mm, seed=self.seed, debug=debug)
            if debug:
                for h in hs:
                    h.debug = {"coarse": h.debug, "refine": []}
            hyps.append(hs)
        return hyps

    def _refine(self, hyps: list[PoseHypothesis], objs: list, rgb, K, depth_mm, debug: bool) -> None:
        """One refinement iteration of every hypothesis in place (one batched refiner call); score = mean certainty."""
        views = [make_view(self.renderer, obj, rgb, K, h.T, self.refiner.size, depth_mm) for h, obj in zip(hyps, objs)]
        preds = self.refiner.predict_batch(views)
        new = refine_step(views, preds, [obj.diameter for obj in objs], self.lm_iters, self.seed)
        for h, obj, view, pred, T in zip(hyps, objs, views, preds, new):
            T = T if in_front(T, obj) else view.T
            h.R, h.t = T[:3, :3].copy(), T[:3, 3].copy()
            h.stage = "refine"
            h.score = float(np.mean(pred.certainty[view.mask])) if view.mask.any() else 0.0
            if debug:
                h.debug["refine"].append({"view": view, "prediction": pred, "T_after": T.copy()})

    def _scores(self, hyps: list[PoseHypothesis], objs: list, rgb, K, depth_mm, debug: bool) -> np.ndarray:
        """Selection scores (B,) of every hypothesis on its pose-conditioned crop and rendering (one batched call)."""
        views = [make_view(self.renderer, obj, rgb, K, h.T, self.selector.size, depth_mm) for h, obj in zip(hyps, objs)]
        if debug:
            for h, view in zip(hyps, views):
                h.debug["select"] = {"view": view}
        return self.selector.score_batch(views)
