"""cooppose: Co-op (CVPR 2025) 6D pose estimation of novel objects."""

__version__ = "0.1.0"
