"""Pose, projection and rotation helpers: round trips, hand-computed values and properties."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cooppose.errors import InputError
from cooppose.geometry.transforms import (
    backproject,
    compose,
    invert_pose,
    look_at,
    make_pose,
    project,
    quat_to_matrix,
    random_rotations,
    rotation_error_deg,
    skew,
    so3_exp,
    so3_log,
    transform_points,
)

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
seeds = st.integers(0, 2**32 - 1)


def random_pose(rng: np.random.Generator) -> np.ndarray:
    return make_pose(random_rotations(1, rng)[0], rng.uniform(-200, 200, 3))


@SETTINGS
@given(seeds)
def test_compose_with_inverse_is_identity(seed):
    rng = np.random.default_rng(seed)
    T = random_pose(rng)
    assert np.allclose(compose(T, invert_pose(T)), np.eye(4), atol=1e-9)
    assert np.allclose(compose(invert_pose(T), T), np.eye(4), atol=1e-9)
    assert np.allclose(invert_pose(T), np.linalg.inv(T), atol=1e-9)
    Tt = torch.as_tensor(T)
    assert torch.allclose(compose(Tt, invert_pose(Tt)), torch.eye(4, dtype=torch.float64), atol=1e-9)


@SETTINGS
@given(seeds)
def test_transform_points_respects_composition(seed):
    rng = np.random.default_rng(seed)
    A, B = random_pose(rng), random_pose(rng)
    X = rng.normal(size=(7, 3)) * 50
    assert np.allclose(transform_points(compose(A, B), X), transform_points(A, transform_points(B, X)), atol=1e-9)
    hom = np.c_[X, np.ones(7)] @ (A @ B).T
    assert np.allclose(transform_points(compose(A, B), X), hom[:, :3], atol=1e-9)


def test_make_pose_keeps_torch_dtype_and_batch():
    R = torch.eye(3, dtype=torch.float32).expand(5, 3, 3)
    T = make_pose(R, torch.arange(15, dtype=torch.float32).reshape(5, 3))
    assert T.dtype == torch.float32 and T.shape == (5, 4, 4)
    assert T[2, :3, 3].tolist() == [6.0, 7.0, 8.0] and T[2, 3].tolist() == [0.0, 0.0, 0.0, 1.0]


@SETTINGS
@given(seeds)
def test_project_backproject_round_trip(seed):
    rng = np.random.default_rng(seed)
    K = np.array([[rng.uniform(200, 900), 0, rng.uniform(100, 400)], [0, rng.uniform(200, 900), rng.uniform(100, 300)], [0, 0, 1]])
    uv = rng.uniform(0, 640, (20, 2))
    depth = rng.uniform(100, 3000, 20)
    X = backproject(K, uv, depth)
    assert np.allclose(X[:, 2], depth)
    assert np.allclose(project(K, X), uv, atol=1e-9)
    Xt = backproject(torch.as_tensor(K), torch.as_tensor(uv), torch.as_tensor(depth))
    assert torch.allclose(project(torch.as_tensor(K), Xt), torch.as_tensor(uv), atol=1e-9)


def test_project_hand_computed():
    K = np.array([[500.0, 0, 320], [0, 400, 240], [0, 0, 1]])
    assert np.allclose(project(K, np.array([[100.0, -50.0, 1000.0]])), [[370.0, 220.0]])


@SETTINGS
@given(seeds, st.floats(1e-6, math.pi - 1e-3))
def test_so3_exp_log_round_trip(seed, angle):
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    w = axis / np.linalg.norm(axis) * angle
    R = so3_exp(w)
    assert np.allclose(R @ R.T, np.eye(3), atol=1e-12) and np.isclose(np.linalg.det(R), 1.0)
    assert np.allclose(so3_log(R), w, atol=1e-9)
    assert np.allclose(so3_exp(torch.as_tensor(w)).numpy(), R, atol=1e-12)
    assert np.isclose(rotation_error_deg(np.eye(3), R), math.degrees(angle), atol=1e-7)


def test_so3_exp_hand_computed_and_smooth_at_zero():
    Rz = so3_exp(np.array([0.0, 0.0, math.pi / 2]))
    assert np.allclose(Rz, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    R = so3_exp(w)
    assert torch.equal(R.detach(), torch.eye(3, dtype=torch.float64))
    (R * torch.arange(9, dtype=torch.float64).reshape(3, 3)).sum().backward()
    # d/dw of sum(M * (I + [w]x)) at 0: the skew part gives (M21 - M12, M02 - M20, M10 - M01)
    assert torch.allclose(w.grad, torch.tensor([7.0 - 5.0, 2.0 - 6.0, 3.0 - 1.0], dtype=torch.float64))


def test_skew_is_cross_product():
    rng = np.random.default_rng(3)
    w, v = rng.normal(size=(2, 3))
    assert np.allclose(skew(w) @ v, np.cross(w, v))


def test_random_rotations_are_proper_and_uniform():
    R = random_rotations(20000, np.random.default_rng(0))
    assert np.allclose(R @ np.swapaxes(R, -1, -2), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(R), 1.0)
    # Haar measure: E[R] = 0 and the rotation angle has density (1 - cos a) / pi, mean pi/2 + 2/pi
    assert np.abs(R.mean(0)).max() < 0.02
    angles = np.radians(rotation_error_deg(np.eye(3), R))
    assert abs(angles.mean() - (math.pi / 2 + 2 / math.pi)) < 0.02


def test_quat_to_matrix_hand_computed():
    s = math.sqrt(0.5)
    assert np.allclose(quat_to_matrix(np.array([0.0, 0.0, s, s])), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    assert np.allclose(quat_to_matrix(np.array([1.0, 0.0, 0.0, 0.0])), np.diag([1.0, -1.0, -1.0]), atol=1e-12)


def test_rotation_error_small_and_near_pi_are_accurate():
    for angle in (1e-7, 1e-3, math.pi - 1e-6):
        R = so3_exp(np.array([0.3, -0.4, 0.5]) / math.sqrt(0.5) * angle)
        assert math.isclose(float(rotation_error_deg(np.eye(3), R)), math.degrees(angle), rel_tol=1e-6)
    R32 = torch.as_tensor(so3_exp(np.array([0.0, 1e-4, 0.0])), dtype=torch.float32)
    assert math.isclose(float(rotation_error_deg(torch.eye(3), R32)), math.degrees(1e-4), rel_tol=1e-3)


@SETTINGS
@given(seeds)
def test_look_at_puts_target_on_optical_axis(seed):
    rng = np.random.default_rng(seed)
    target = rng.uniform(-50, 50, 3)
    direction = rng.normal(size=3)
    eye = target + direction / np.linalg.norm(direction) * rng.uniform(100, 1000)
    T = look_at(eye, target)
    assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-12) and np.isclose(np.linalg.det(T[:3, :3]), 1.0)
    t_cam = transform_points(T, target[None])[0]
    assert np.allclose(t_cam[:2], 0, atol=1e-9) and np.isclose(t_cam[2], np.linalg.norm(eye - target))
    assert np.allclose(invert_pose(T)[:3, 3], eye)
    K = np.array([[600.0, 0, 320], [0, 600, 240], [0, 0, 1]])
    assert np.allclose(project(K, t_cam[None]), [[320, 240]])
    up_cam = T[:3, :3] @ np.array([0.0, 0.0, 1.0])
    assert up_cam[1] <= 1e-9  # object "up" points to image up (-y) or along the axis


def test_look_at_degenerate_up_and_bad_input():
    T = look_at(np.array([0.0, 0.0, 500.0]), np.zeros(3))  # viewing direction parallel to up
    assert np.all(np.isfinite(T)) and np.isclose(np.linalg.det(T[:3, :3]), 1.0)
    assert np.allclose(transform_points(T, np.zeros((1, 3)))[0], [0, 0, 500])
    with pytest.raises(InputError, match="eye and target"):
        look_at(np.ones(3), np.ones(3))
