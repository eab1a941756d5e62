"""PoseHypothesis: the plain result every stage returns (pose, score, provenance, timings)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from cooppose.errors import InputError
from cooppose.geometry.transforms import make_pose, so3_log

STAGES = ("coarse", "refine", "select")


@dataclass
class PoseHypothesis:
    """One pose T_cam_obj = [R | t] (t in mm) with its score, the stage that made it and where it came from."""

    R: np.ndarray  # (3, 3) float64
    t: np.ndarray  # (3,) float64, mm
    score: float  # coarse: template score; refine: mean confidence; select: selection probability in [0, 1]
    stage: str  # one of STAGES
    template_id: int  # index of the template the coarse pose came from (-1: not from a template)
    timings: dict[str, float] = field(default_factory=dict)  # seconds spent per stage for this hypothesis
    debug: dict | None = field(default=None, repr=False, compare=False)  # pictures' ingredients when asked for

    def __post_init__(self) -> None:
        self.R = np.asarray(self.R, dtype=np.float64).reshape(3, 3)
        self.t = np.asarray(self.t, dtype=np.float64).reshape(3)
        self.score = float(self.score)
        self.template_id = int(self.template_id)
        if self.stage not in STAGES:
            raise InputError(f"stage {self.stage!r} is not one of {STAGES}.")

    @classmethod
    def from_T(cls, T: np.ndarray, score: float, stage: str, template_id: int = -1, **kwargs) -> PoseHypothesis:
        """Build from a 4x4 pose T_cam_obj."""
        T = np.asarray(T, dtype=np.float64)
        return cls(R=T[:3, :3], t=T[:3, 3], score=score, stage=stage, template_id=template_id, **kwargs)

    @property
    def T(self) -> np.ndarray:
        """The 4x4 pose T_cam_obj (float64, mm)."""
        return make_pose(self.R, self.t)

    def to_dict(self) -> dict:
        """JSON-able dict: R (row-major 3x3 list), t (mm), T (4x4 list), score, stage, template_id, timings."""
        return {
            "R": self.R.tolist(),
            "t": self.t.tolist(),
            "T": self.T.tolist(),
            "score": self.score,
            "stage": self.stage,
            "template_id": self.template_id,
            "timings": {k: float(v) for k, v in self.timings.items()},
        }

    @classmethod
    def from_dict(cls, d: dict) -> PoseHypothesis:
        """Inverse of `to_dict` (timings optional)."""
        try:
            return cls(R=np.array(d["R"]), t=np.array(d["t"]), score=d["score"], stage=d["stage"],
                       template_id=d.get("template_id", -1), timings=dict(d.get("timings", {})))
        except (KeyError, ValueError, TypeError) as err:
            raise InputError(f"not a pose hypothesis dict ({err}); expected keys R, t, score, stage.") from err

    def to_json(self) -> str:
        """`to_dict` as an indented JSON string."""
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        angle = math.degrees(float(np.linalg.norm(so3_log(self.R))))
        t = ", ".join(f"{v:.1f}" for v in self.t)
        total = sum(self.timings.values())
        return (f"PoseHypothesis({self.stage}, score {self.score:.3f}, template {self.template_id}, "
                f"rotation {angle:.1f} deg, t = ({t}) mm, {1000 * total:.0f} ms)")
