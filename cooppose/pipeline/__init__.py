"""Inference pipeline: coarse (patch matches + PnP) -> refine (flow + LM PnP) -> select, behind `PoseEstimator`."""

from cooppose.pipeline.coarse import CoarseMatches, CoarsePredictor, CoarseQuery, NetworkCoarsePredictor
from cooppose.pipeline.estimator import PoseEstimator, checkpoint_path
from cooppose.pipeline.hypothesis import PoseHypothesis
from cooppose.pipeline.refine import NetworkRefinePredictor, RefinePrediction, RefinePredictor, RefineView
from cooppose.pipeline.select import NetworkSelectPredictor, SelectPredictor

__all__ = [
    "CoarseMatches",
    "CoarsePredictor",
    "CoarseQuery",
    "NetworkCoarsePredictor",
    "NetworkRefinePredictor",
    "NetworkSelectPredictor",
    "PoseEstimator",
    "PoseHypothesis",
    "RefinePrediction",
    "RefinePredictor",
    "RefineView",
    "SelectPredictor",
    "checkpoint_path",
]
