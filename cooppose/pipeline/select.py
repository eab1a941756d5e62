"""Pose selection: score every refined hypothesis on its pose-conditioned crop and rendering; the best wins."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

from cooppose.models import normalize
from cooppose.pipeline.hypothesis import PoseHypothesis
from cooppose.pipeline.refine import RefineView


class SelectPredictor(ABC):
    """Probability in [0, 1] that the rendered hypothesis matches the query."""

    size: int  # crop side S (pixels)

    @abstractmethod
    def score(self, view: RefineView) -> float:
        """Score of one view."""

    def score_batch(self, views: list[RefineView]) -> np.ndarray:
        """Scores (B,) of several views (the default runs them one by one)."""
        return np.array([self.score(v) for v in views], dtype=np.float64)


class NetworkSelectPredictor(SelectPredictor):
    """A `SelectionNet`: sigmoid of its logit, batches of (query crop, rendering) pairs."""

    def __init__(self, model, device: str | torch.device = "cpu", batch: int = 32):
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.size = int(model.cfg.img_size)
        self.batch = int(batch)

    def score(self, view: RefineView) -> float:
        """Score of one view."""
        return float(self.score_batch([view])[0])

    @torch.inference_mode()
    def score_batch(self, views: list[RefineView]) -> np.ndarray:
        """Scores (B,) of several views, `batch` pairs per forward pass."""
        out = []
        for i in range(0, len(views), self.batch):
            chunk = views[i:i + self.batch]
            q = normalize(np.stack([v.query for v in chunk])).to(self.device)
            r = normalize(np.stack([v.render for v in chunk])).to(self.device)
            out.append(torch.sigmoid(self.model(q, r).float()).cpu().numpy())
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def rank(hypotheses: list[PoseHypothesis], scores: np.ndarray) -> list[PoseHypothesis]:
    """The hypotheses with their selection scores (stage "select"), best first (ties keep the input order)."""
    scored = []
    for h, s in zip(hypotheses, scores):
        h.score, h.stage = float(s), "select"
        scored.append(h)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return [scored[i] for i in order]
