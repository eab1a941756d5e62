"""PoseHypothesis: pose assembly, JSON round trip, readable printing."""

import json

import numpy as np
import pytest

from cooppose.errors import InputError
from cooppose.geometry.transforms import so3_exp
from cooppose.pipeline import PoseHypothesis


def test_T_roundtrip_and_json():
    R = so3_exp(np.array([0.0, 0.0, np.pi / 2]))
    h = PoseHypothesis(R=R, t=[10.0, -5.0, 800.0], score=0.75, stage="select", template_id=3, timings={"coarse": 0.1})
    T = h.T
    assert np.allclose(T[:3, :3], R) and np.allclose(T[:3, 3], [10, -5, 800]) and np.allclose(T[3], [0, 0, 0, 1])
    d = json.loads(h.to_json())
    assert d["stage"] == "select" and d["template_id"] == 3 and d["score"] == 0.75
    back = PoseHypothesis.from_dict(d)
    assert np.allclose(back.T, T) and back.timings == {"coarse": 0.1}
    assert np.allclose(PoseHypothesis.from_T(T, 0.5, "coarse").t, [10, -5, 800])


def test_str_reports_angle_and_translation():
    h = PoseHypothesis(R=so3_exp(np.array([0.0, np.pi / 2, 0.0])), t=[0, 0, 500], score=0.5, stage="refine",
                       template_id=1, timings={"coarse": 0.2, "refine": 0.3})
    s = str(h)
    assert "rotation 90.0 deg" in s and "(0.0, 0.0, 500.0) mm" in s and "500 ms" in s


def test_bad_stage_and_bad_dict():
    with pytest.raises(InputError, match="stage"):
        PoseHypothesis(R=np.eye(3), t=np.zeros(3), score=0, stage="final", template_id=0)
    with pytest.raises(InputError, match="keys"):
        PoseHypothesis.from_dict({"R": np.eye(3).tolist()})


def test_import_cooppose_is_lazy():
    import subprocess
    import sys

    code = ("import sys, cooppose; assert 'torch' not in sys.modules and 'cv2' not in sys.modules; "
            "from cooppose import PoseEstimator, load_mesh; print(PoseEstimator.__name__, load_mesh.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["PoseEstimator", "load_mesh"]
