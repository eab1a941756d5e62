"""PnP + RANSAC, Kabsch, Kabsch + RANSAC and MAGSAC++ rigid fitting."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cooppose.errors import CameraError, InputError
from cooppose.geometry.pnp import (
    kabsch,
    kabsch_ransac,
    magsac_loss,
    magsac_rigid,
    magsac_weights,
    reprojection_errors,
    solve_pnp_ransac,
)
from cooppose.geometry.transforms import make_pose, project, random_rotations, so3_log, transform_points

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)
seeds = st.integers(0, 2**32 - 1)
K = np.array([[600.0, 0.0, 320.0], [0.0, 600.0, 240.0], [0.0, 0.0, 1.0]])


def rot_err_rad(R1: np.ndarray, R2: np.ndarray) -> float:
    return float(np.linalg.norm(so3_log(R1.T @ R2)))


def scene(rng: np.random.Generator, n: int = 200):
    """Object points in a 100 mm box, a random pose 400-900 mm in front of the camera, exact pixels."""
    X = rng.uniform(-50, 50, (n, 3))
    T = make_pose(random_rotations(1, rng)[0], np.r_[rng.uniform(-60, 60, 2), rng.uniform(400, 900)])
    uv = project(K, transform_points(T, X))
    return X, T, uv


@SETTINGS
@given(seeds, st.sampled_from(["epnp", "sqpnp", "magsac"]))
def test_pnp_recovers_pose_from_exact_matches(seed, method):
    X, T, uv = scene(np.random.default_rng(seed), 60)
    res = solve_pnp_ransac(X, uv, K, method=method, seed=seed % 1000)
    assert res.success and res.n_inliers == 60 and res.inliers.all()
    assert res.T.dtype == np.float64 and res.T.shape == (4, 4)
    assert rot_err_rad(res.T[:3, :3], T[:3, :3]) < 1e-6
    assert np.linalg.norm(res.T[:3, 3] - T[:3, 3]) < 1e-3


@pytest.mark.parametrize("method", ["epnp", "sqpnp", "magsac"])
def test_pnp_with_30_percent_outliers(method):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        X, T, uv = scene(rng, 200)
        uv = uv + rng.normal(0, 0.5, uv.shape)
        out = rng.random(200) < 0.3
        uv[out] = rng.uniform([0, 0], [640, 480], (out.sum(), 2))
        res = solve_pnp_ransac(X, uv, K, threshold_px=4.0, method=method)
        assert res.success
        assert np.degrees(rot_err_rad(res.T[:3, :3], T[:3, :3])) < 0.5
        assert np.linalg.norm(res.T[:3, 3] - T[:3, 3]) < 10.0
        assert res.inliers[~out].mean() > 0.95 and res.inliers[out].mean() < 0.1
        errors = reprojection_errors(res.T, X, uv, K)
        assert np.array_equal(res.inliers, errors < 4.0)


def test_pnp_is_deterministic_for_a_seed():
    rng = np.random.default_rng(5)
    X, _, uv = scene(rng, 100)
    uv[:40] = rng.uniform(0, 480, (40, 2))
    a, b = solve_pnp_ransac(X, uv, K, seed=3), solve_pnp_ransac(X, uv, K, seed=3)
    assert np.array_equal(a.T, b.T) and np.array_equal(a.inliers, b.inliers)


def test_pnp_fails_softly_on_too_few_or_degenerate_points():
    X, _, uv = scene(np.random.default_rng(0), 10)
    for n in (0, 3, 5):
        res = solve_pnp_ransac(X[:n], uv[:n], K)
        assert not res.success and res.T is None and res.inliers.shape == (n,) and res.n_inliers == 0
    assert solve_pnp_ransac(X[:5], uv[:5], K, min_inliers=4).success
    line = np.outer(np.linspace(-50, 50, 20), [1.0, 2.0, 0.5])
    uv_line = project(K, line + [0, 0, 600])
    assert not solve_pnp_ransac(line, uv_line, K).success
    same = np.zeros((20, 3))
    assert not solve_pnp_ransac(same, np.full((20, 2), 100.0), K).success
    rng = np.random.default_rng(1)
    noise = solve_pnp_ransac(rng.uniform(-50, 50, (30, 3)), rng.uniform(0, 640, (30, 2)), K, threshold_px=1.0, min_inliers=20)
    assert not noise.success and noise.T is None


def test_pnp_rejects_malformed_input():
    X, _, uv = scene(np.random.default_rng(0), 10)
    bad_uv = uv.copy()
    bad_uv[3, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        solve_pnp_ransac(X, bad_uv, K)
    with pytest.raises(InputError, match="shape"):
        solve_pnp_ransac(X[:, :2], uv, K)
    with pytest.raises(InputError, match="rows"):
        solve_pnp_ransac(X, uv[:5], K)
    with pytest.raises(InputError, match="method"):
        solve_pnp_ransac(X, uv, K, method="p3p")
    with pytest.raises(CameraError):
        solve_pnp_ransac(X, uv, np.diag([0.0, 600.0, 1.0]))


@SETTINGS
@given(seeds)
def test_kabsch_exact(seed):
    rng = np.random.default_rng(seed)
    T = make_pose(random_rotations(1, rng)[0], rng.uniform(-500, 500, 3))
    X = rng.normal(size=(int(rng.integers(3, 40)), 3)) * 80
    est = kabsch(X, transform_points(T, X))
    assert np.allclose(est, T, atol=1e-8)
    assert np.isclose(np.linalg.det(est[:3, :3]), 1.0)


def test_kabsch_returns_a_proper_rotation_for_mirrored_data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 3)) * 50
    est = kabsch(X, X * np.array([1.0, 1.0, -1.0]))  # best orthogonal fit is a reflection
    assert np.isclose(np.linalg.det(est[:3, :3]), 1.0)


def test_weighted_kabsch_ignores_zero_weight_points_and_checks_input():
    rng = np.random.default_rng(2)
    T = make_pose(random_rotations(1, rng)[0], [10.0, 20.0, 700.0])
    X = rng.normal(size=(20, 3)) * 50
    Y = transform_points(T, X)
    Y[:5] += 300.0
    w = np.r_[np.zeros(5), np.ones(15)]
    assert np.allclose(kabsch(X, Y, w), T, atol=1e-8)
    for bad in (np.zeros(20), -w, w[:10], np.r_[np.nan, w[1:]]):
        with pytest.raises(InputError, match="weights"):
            kabsch(X, Y, bad)
    with pytest.raises(InputError, match="at least 3"):
        kabsch(X[:2], Y[:2])


def noisy_3d3d(seed: int, n: int = 300, outliers: float = 0.4):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-50, 50, (n, 3))
    T = make_pose(random_rotations(1, rng)[0], np.r_[rng.uniform(-60, 60, 2), rng.uniform(400, 900)])
    Y = transform_points(T, X) + rng.normal(0, 1.0, (n, 3))
    out = rng.random(n) < outliers
    Y[out] = T[:3, 3] + rng.uniform(-80, 80, (out.sum(), 3))
    return X, Y, T, out


@pytest.mark.parametrize("solver,threshold", [(kabsch_ransac, 5.0), (magsac_rigid, 10.0)])
def test_robust_rigid_fit_with_40_percent_outliers(solver, threshold):
    for seed in range(5):
        X, Y, T, out = noisy_3d3d(seed)
        res = solver(X, Y, threshold, seed=seed)
        assert res.success
        assert np.degrees(rot_err_rad(res.T[:3, :3], T[:3, :3])) < 1.0
        assert np.linalg.norm(res.T[:3, 3] - T[:3, 3]) < 2.0
        assert res.inliers[~out].mean() > 0.95 and res.n_inliers == res.inliers.sum()


@pytest.mark.parametrize("solver", [kabsch_ransac, magsac_rigid])
def test_robust_rigid_fit_fails_softly_and_checks_input(solver):
    X, Y, _, _ = noisy_3d3d(0, 20, 0.0)
    assert not solver(X[:2], Y[:2], 5.0).success
    line = np.outer(np.arange(10.0), [1.0, 0.0, 0.0])
    res = solver(line, line + 5.0, 5.0)
    assert not res.success and res.T is None
    rng = np.random.default_rng(0)
    assert not solver(rng.normal(size=(50, 3)) * 50, rng.normal(size=(50, 3)) * 50, 1.0, min_inliers=20).success
    with pytest.raises(InputError):
        solver(X, Y[:10], 5.0)
    with pytest.raises(InputError):
        solver(X, np.full_like(Y, np.inf), 5.0)
    with pytest.raises(InputError):
        solver(X, Y, 0.0)


def test_magsac_weight_and_loss_shapes():
    r = np.linspace(0.0, 15.0, 301)
    w, loss = magsac_weights(r, 10.0), magsac_loss(r, 10.0)
    assert np.isclose(w[0], 1.0) and np.all(w[r >= 10.0] == 0.0) and np.all(np.diff(w) <= 1e-12)
    assert np.isclose(loss[0], 0.0) and np.allclose(loss[r >= 10.0], 1.0) and np.all(np.diff(loss) >= -1e-12)
    # the loss is the integral of r * weight(r): compare its derivative with r * weight numerically
    dl = np.gradient(loss, r)
    inside = (r > 0.5) & (r < 9.5)
    ratio = dl[inside] / (r[inside] * w[inside])
    assert np.allclose(ratio, ratio.mean(), rtol=1e-2)
