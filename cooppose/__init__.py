"""cooppose: Co-op (CVPR 2025) 6D pose estimation of novel objects.

    from cooppose import PoseEstimator, load_mesh
    estimator = PoseEstimator.from_pretrained()
    best = estimator.estimate(rgb, K, load_mesh("mesh.ply"), box=(x0, y0, x1, y1))[0]

The names below are imported on first use, so `import cooppose` stays fast (no torch import).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "PoseEstimator": "cooppose.pipeline.estimator",
    "PoseHypothesis": "cooppose.pipeline.hypothesis",
    "load_mesh": "cooppose.objects.mesh",
    "ObjectModel": "cooppose.objects.mesh",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    """Import the public names lazily (PEP 562)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cooppose' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
