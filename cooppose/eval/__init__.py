"""Evaluation: BOP pose errors and recalls (metrics.py), BOP19 scoring of results (scoring.py)."""

from cooppose.eval.metrics import add, adi, mspd, mssd, vsd, vsd_rendered
from cooppose.eval.scoring import score_results

__all__ = ["add", "adi", "mspd", "mssd", "score_results", "vsd", "vsd_rendered"]
