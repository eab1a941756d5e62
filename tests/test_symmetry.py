"""Symmetry transformations from BOP models_info, checked against hand-computed bop_toolkit behaviour."""

import json
import math

import numpy as np
import pytest

from cooppose.errors import DatasetError
from cooppose.objects.symmetry import symmetry_transformations


def test_no_symmetry_is_identity_only():
    Ts = symmetry_transformations({"diameter": 100.0})
    assert len(Ts) == 1
    np.testing.assert_array_equal(Ts[0], np.eye(4))


def test_discrete_row_major_mm():
    flip = [-1, 0, 0, 10.0, 0, -1, 0, -20.0, 0, 0, 1, 0, 0, 0, 0, 1]
    Ts = symmetry_transformations({"symmetries_discrete": [flip]})
    assert len(Ts) == 2
    np.testing.assert_array_equal(Ts[0], np.eye(4))
    np.testing.assert_array_equal(Ts[1], np.array(flip).reshape(4, 4))


def test_continuous_step_count_and_rotation_about_offset_axis():
    info = {"symmetries_continuous": [{"axis": [0, 0, 2.0], "offset": [5.0, 0, 0]}]}
    Ts = symmetry_transformations(info, max_sym_disc_step=0.5)
    n = math.ceil(math.pi / 0.5)  # 7 steps of 2pi/7
    assert len(Ts) == n
    np.testing.assert_allclose(Ts[0], np.eye(4), atol=1e-12)
    a = 2 * math.pi / n
    # the point (15, 0, 3) is 10 mm from the axis x=5,y=0; it turns by a about +z
    p = Ts[1] @ np.array([15.0, 0, 3.0, 1.0])
    np.testing.assert_allclose(p[:3], [5 + 10 * math.cos(a), 10 * math.sin(a), 3.0], atol=1e-9)
    for T in Ts:  # the offset point stays fixed
        np.testing.assert_allclose(T[:3, :3] @ [5.0, 0, 0] + T[:3, 3], [5.0, 0, 0], atol=1e-9)
    assert len(symmetry_transformations(info)) == math.ceil(math.pi / 0.01) == 315


def test_discrete_times_continuous_order():
    flip = np.diag([1.0, -1.0, -1.0, 1.0])  # 180 deg about x
    info = {"symmetries_discrete": [flip.ravel().tolist()], "symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]}
    Ts = symmetry_transformations(info, max_sym_disc_step=1.0)  # 4 steps of 90 deg
    assert len(Ts) == 8
    np.testing.assert_allclose(Ts[0], np.eye(4), atol=1e-12)
    Rz90 = np.array([[0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    np.testing.assert_allclose(Ts[1], Rz90, atol=1e-12)
    np.testing.assert_allclose(Ts[5], Rz90 @ flip, atol=1e-12)  # T_cont @ T_disc, discrete outer loop


def test_malformed_entries_raise():
    with pytest.raises(DatasetError, match="symmetries_discrete"):
        symmetry_transformations({"symmetries_discrete": [[1, 0, 0]]})
    with pytest.raises(DatasetError, match="symmetries_continuous"):
        symmetry_transformations({"symmetries_continuous": [{"axis": [0, 0, 1]}]})
    with pytest.raises(DatasetError, match="zero"):
        symmetry_transformations({"symmetries_continuous": [{"axis": [0, 0, 0], "offset": [0, 0, 0]}]})


def test_lmo_eggbox_glue(shared_data):
    info = json.loads((shared_data / "lmo-frame3" / "models_eval" / "models_info.json").read_text())
    for oid in ("10", "11"):
        Ts = symmetry_transformations(info[oid])
        assert len(Ts) == 2
        R = Ts[1][:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-4)
        assert np.trace(R) < -0.9  # a 180-degree flip
    assert len(symmetry_transformations(info["1"])) == 1
