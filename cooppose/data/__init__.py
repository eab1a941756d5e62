"""Datasets: BOP folders and results files (bop.py), training samples (other modules)."""

from cooppose.data.bop import (
    BopDataset,
    Camera,
    GtInfo,
    GtPose,
    PoseEstimate,
    ResultsName,
    SceneCamera,
    Target,
    parse_results_filename,
    read_results,
    results_filename,
    write_results,
)

__all__ = [
    "BopDataset",
    "Camera",
    "GtInfo",
    "GtPose",
    "PoseEstimate",
    "ResultsName",
    "SceneCamera",
    "Target",
    "parse_results_filename",
    "read_results",
    "results_filename",
    "write_results",
]
