"""BOP pose errors and BOP19 recall: hand-computed values, symmetry properties, constructed depth maps."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cooppose.eval import metrics as M
from cooppose.geometry.transforms import random_rotations
from cooppose.objects import symmetry_transformations

K = np.array([[500.0, 0.0, 32.0], [0.0, 500.0, 24.0], [0.0, 0.0, 1.0]])
PTS = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 100.0], [30.0, -20.0, 50.0], [-10.0, 40.0, 20.0]])


def test_mssd_mspd_add_of_pure_translation():
    R, t = np.eye(3), np.array([0.0, 0.0, 1000.0])
    assert M.mssd(R, t + [3, 4, 0], R, t, PTS) == pytest.approx(5.0)
    assert M.add(R, t + [3, 4, 0], R, t, PTS) == pytest.approx(5.0)
    # a 10 mm shift along x moves a point at depth z by fx * 10 / z pixels: largest for the nearest (z = 1000)
    assert M.mspd(R, t + [10, 0, 0], R, t, K, PTS) == pytest.approx(500 * 10 / 1000)
    assert M.mssd(R, t, R, t, PTS) == 0.0 and M.mspd(R, t, R, t, K, PTS) == 0.0


def test_mspd_of_a_point_at_zero_depth_is_not_finite():
    # the toolkit divides by z = 0 for BOP placeholder rows (R = I, t = 0): such errors are misses
    assert not math.isfinite(M.mspd(np.eye(3), np.zeros(3), np.eye(3), [0, 0, 1000.0], K, PTS))


BOX_INFO = {"diameter": 200.0, "symmetries_discrete": [[-1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]]}
CYL_INFO = {"diameter": 200.0, "symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]}


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.sampled_from(["box", "cyl"]), st.integers(0, 10_000))
def test_symmetric_object_under_its_symmetry_has_zero_mssd_mspd(seed, kind, k):
    rng = np.random.default_rng(seed)
    syms = symmetry_transformations(BOX_INFO if kind == "box" else CYL_INFO)
    S = syms[k % len(syms)]
    R_g = random_rotations(1, rng)[0]
    t_g = np.array([rng.uniform(-100, 100), rng.uniform(-100, 100), rng.uniform(600, 1500)])
    pts = rng.uniform(-60, 60, (50, 3))
    R_e, t_e = R_g @ S[:3, :3], R_g @ S[:3, 3] + t_g  # the estimate is the GT pose composed with a symmetry
    assert M.mssd(R_e, t_e, R_g, t_g, pts, syms) < 1e-9
    assert M.mspd(R_e, t_e, R_g, t_g, K, pts, syms) < 1e-7
    if not np.allclose(S, np.eye(4)) and not np.allclose(S[:3, :3], np.eye(3), atol=0.2):
        assert M.mssd(R_e, t_e, R_g, t_g, pts) > 1.0  # without the symmetries the same estimate is wrong


@settings(max_examples=20, deadline=None)
@given(st.floats(0, 2 * math.pi))
def test_continuous_symmetry_discretisation_bound(angle):
    # points on a circle of radius 100 (diameter 200): any rotation about the axis is within one step,
    # so MSSD <= arc of half a step <= max_sym_disc_step x diameter / 2
    a = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    pts = np.stack([100 * np.cos(a), 100 * np.sin(a), np.zeros_like(a)], 1)
    c, s = math.cos(angle), math.sin(angle)
    Rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    t = np.array([0, 0, 1000.0])
    err = M.mssd(Rz, t, np.eye(3), t, pts, symmetry_transformations(CYL_INFO))
    assert err <= 0.01 * 200 / 2 + 1e-9


def test_adi_ignores_a_symmetry_that_add_sees():
    pts = np.array([[50.0, 0, 0], [-50.0, 0, 0], [0, 50.0, 0], [0, -50.0, 0]])
    flip = np.diag([-1.0, -1.0, 1.0])  # 180 deg about z maps the point set onto itself
    t = np.array([0, 0, 800.0])
    assert M.add(flip, t, np.eye(3), t, pts) == pytest.approx(100.0)
    assert M.adi(flip, t, np.eye(3), t, pts) == pytest.approx(0.0)
    assert M.adi(np.eye(3), t + [0, 0, 7], np.eye(3), t, pts) == pytest.approx(7.0)


def test_sphere_tests():
    assert M.spheres_overlap([0, 0, 1000], [0, 0, 1099], 100) and not M.spheres_overlap([0, 0, 1000], [0, 0, 1100], 100)
    assert M.sphere_projections_overlap(50, [0, 0, 1000], [99, 0, 1000])
    assert not M.sphere_projections_overlap(50, [0, 0, 1000], [101, 0, 1000])
    assert not M.sphere_projections_overlap(50, [0, 0, 0], [0, 0, 1000])


# ---------------------------------------------------------------------------------------------- VSD
H, W = 48, 64


def _block(depth, rows=slice(14, 34), cols=slice(22, 42), bg=0.0):
    d = np.full((H, W), bg)
    d[rows, cols] = depth
    return d


def test_vsd_perfect_estimate_is_zero():
    gt = _block(1000.0)
    np.testing.assert_array_equal(M.vsd(gt, gt, gt, K, diameter=100.0), np.zeros(10))


def test_vsd_depth_offset_steps_at_tau():
    # est 12 mm behind GT on every pixel: |d| / diameter ~ 0.12 (x <= 1.0003 off-axis), visible (12 <= delta 15)
    gt, est = _block(1000.0), _block(1012.0)
    e = M.vsd(est, gt, gt, K, diameter=100.0)
    np.testing.assert_array_equal(e, [1, 1] + [0] * 8)  # cost only for tau 0.05, 0.10
    lin = M.vsd(est, gt, gt, K, diameter=100.0, taus=[0.24], cost="tlinear")
    assert lin[0] == pytest.approx(0.5, abs=1e-3)


def test_vsd_lateral_shift_counts_non_overlap():
    # est shifted by half the block width: |U| = 1.5 block, |I| = 0.5 block -> e = 1 / 1.5 for every tau
    gt = _block(1000.0)
    est = _block(1000.0, cols=slice(32, 52))
    test = _block(1000.0, bg=2000.0)  # background wall behind the object
    np.testing.assert_allclose(M.vsd(est, gt, test, K, diameter=100.0), np.full(10, 2 / 3))


def test_vsd_ignores_occluded_pixels_and_missing_depth_is_visible():
    gt = _block(1000.0)
    test = gt.copy()
    test[14:24, 22:42] = 500.0  # an occluder hides the top half
    np.testing.assert_array_equal(M.vsd(gt, gt, test, K, diameter=100.0), np.zeros(10))
    # where the estimate is wrong only behind the occluder, it still costs nothing
    est = gt.copy()
    est[14:24, 22:42] = 1300.0
    np.testing.assert_array_equal(M.vsd(est, gt, test, K, diameter=100.0), np.zeros(10))
    # missing test depth (0) counts as visible (bop19): the wrong half now counts
    test[14:24, 22:42] = 0.0
    np.testing.assert_allclose(M.vsd(est, gt, test, K, diameter=100.0), np.full(10, 0.5))


def test_vsd_empty_union_is_one():
    z = np.zeros((H, W))
    np.testing.assert_array_equal(M.vsd(z, z, z, K, diameter=100.0), np.ones(10))


class _BlockRenderer:
    """Renders the fixed block at the depth t_z of the pose; counts calls."""

    def __init__(self):
        self.calls = 0

    def render(self, mesh, K, T, size):
        self.calls += 1

        class R:
            depth = _block(T[2, 3])

        return R


def test_vsd_rendered_uses_renderer_and_sphere_shortcut():
    ren = _BlockRenderer()
    t = np.array([0, 0, 1000.0])
    test = _block(1000.0)
    e = M.vsd_rendered(ren, None, np.eye(3), t + [0, 0, 12], np.eye(3), t, test, K, diameter=100.0)
    np.testing.assert_array_equal(e, [1, 1] + [0] * 8)
    assert ren.calls == 2
    far = M.vsd_rendered(ren, None, np.eye(3), t + [500, 0, 0], np.eye(3), t, test, K, diameter=100.0)
    np.testing.assert_array_equal(far, np.ones(10))
    assert ren.calls == 2  # no rendering when the projected bounding spheres are apart


# ---------------------------------------------------------------------------------------------- recall
def test_valid_gt_are_the_most_visible_instances_per_target():
    objs, vis = [1, 1, 2, 1], [0.5, 0.9, 0.3, 0.9]
    np.testing.assert_array_equal(M.valid_gt_mask(objs, vis, {1: 2}), [False, True, False, True])
    np.testing.assert_array_equal(M.valid_gt_mask(objs, vis, {1: 1}), [False, True, False, False])  # ties: first
    np.testing.assert_array_equal(M.valid_gt_mask(objs, [0.02, 0.05, 0.3, 0.01], {1: 1, 2: 1}), [False, True, True, False])


def test_top_estimates_by_score_stable():
    assert M.top_estimates([0.5, 0.9, 0.9, 0.1], 2) == [1, 2]
    assert M.top_estimates([0.5], 3) == [0]


def test_greedy_matching_is_greedy_not_optimal():
    err = np.array([[0.1, 0.2], [0.15, 5.0]])
    assert M.greedy_match(err, np.array([True, True]), 1.0) == 1  # est 0 takes GT 0; est 1 has nothing left
    assert M.greedy_match(err, np.array([False, True]), 1.0) == 1  # est 0 takes GT 1 (0.2)
    assert M.greedy_match(err, np.array([True, True]), 0.1) == 0  # strictly below the threshold
    assert M.greedy_match(np.array([[np.nan, np.inf]]), np.array([True, True]), 1.0) == 0


def test_recall_on_two_target_toy_set():
    groups = [
        M.MatchGroup(1, np.array([[0.12]]), np.array([True])),  # matched for thresholds 0.15 .. 0.50
        M.MatchGroup(2, np.zeros((0, 1)), np.array([True])),  # no estimate: a miss
        M.MatchGroup(1, np.array([[0.01, 0.3]]), np.array([False, True])),  # only GT 1 counts -> from 0.35 on
    ]
    rec, tp, n = M.recalls(groups, M.MSSD_THRESHOLDS)
    assert n == 3
    expected = (np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 1]) + np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])) / 3
    np.testing.assert_allclose(rec, expected)
    np.testing.assert_array_equal(tp.sum(axis=1), [8, 0, 4])
    vsd_groups = [M.MatchGroup(1, np.array([[[0.1, 0.4]]]), np.array([True]))]  # 2 variants (taus)
    rec, _, _ = M.recalls(vsd_groups, [0.2, 0.5])
    np.testing.assert_array_equal(rec, [[1, 1], [0, 1]])
