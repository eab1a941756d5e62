"""SO(3)/SE(3) helpers in numpy and torch (batched).

Conventions used everywhere in cooppose:
- Length unit: **millimetres** (as BOP meshes and files). Only `objects/` and `data/` convert at the edges.
- Pose: `T_cam_obj`, a 4x4 matrix mapping object points to the OpenCV camera frame
  (x right, y down, z forward): X_cam = R @ X_obj + t.
- Pixels: OpenCV convention, pixel (u, v) is centred at integer coordinates (u, v).
Functions accept numpy arrays or torch tensors with any leading batch shape unless said otherwise.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cooppose.errors import InputError

Array = np.ndarray | torch.Tensor


def _lib(x: Array):
    return torch if isinstance(x, torch.Tensor) else np


def make_pose(R: Array, t: Array) -> Array:
    """Build (..., 4, 4) poses from rotations (..., 3, 3) and translations (..., 3)."""
    if isinstance(R, torch.Tensor):
        T = torch.zeros(R.shape[:-2] + (4, 4), dtype=R.dtype, device=R.device)
    else:
        R = np.asarray(R, dtype=np.float64)
        T = np.zeros(R.shape[:-2] + (4, 4), dtype=np.float64)
    T[..., :3, :3] = R
    T[..., :3, 3] = t
    T[..., 3, 3] = 1.0
    return T


def invert_pose(T: Array) -> Array:
    """Inverse of rigid poses (..., 4, 4), using R^T instead of a general inverse."""
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    Rt = R.transpose(-1, -2) if isinstance(R, torch.Tensor) else np.swapaxes(R, -1, -2)
    return make_pose(Rt, -(Rt @ t[..., None])[..., 0])


def compose(*poses: Array) -> Array:
    """Matrix product of poses, left to right: compose(A, B) maps x to A @ B @ x."""
    out = poses[0]
    for T in poses[1:]:
        out = out @ T
    return out


def transform_points(T: Array, X: Array) -> Array:
    """Apply poses (..., 4, 4) to points (..., N, 3); returns (..., N, 3)."""
    R = T[..., :3, :3]
    t = T[..., None, :3, 3]
    Rt = R.transpose(-1, -2) if isinstance(R, torch.Tensor) else np.swapaxes(R, -1, -2)
    return X @ Rt + t


def project(K: Array, X_cam: Array, eps: float = 1e-9) -> Array:
    """Project camera-frame points (..., N, 3) with intrinsics (..., 3, 3) to pixels (..., N, 2)."""
    Kt = K.transpose(-1, -2) if isinstance(K, torch.Tensor) else np.swapaxes(K, -1, -2)
    uvw = X_cam @ Kt
    z = uvw[..., 2:3]
    lib = _lib(z)
    z = lib.where(lib.abs(z) < eps, lib.full_like(z, eps) if lib is np else torch.full_like(z, eps), z)
    return uvw[..., :2] / z


def backproject(K: Array, uv: Array, depth: Array) -> Array:
    """Lift pixels (..., N, 2) with depths (..., N) to camera-frame points (..., N, 3)."""
    fx, fy = K[..., 0, 0, None], K[..., 1, 1, None]
    cx, cy = K[..., 0, 2, None], K[..., 1, 2, None]
    x = (uv[..., 0] - cx) / fx * depth
    y = (uv[..., 1] - cy) / fy * depth
    lib = _lib(uv)
    return lib.stack([x, y, depth], -1) if lib is torch else np.stack([x, y, depth], -1)


def rotation_error_deg(R1: Array, R2: Array) -> Array:
    """Geodesic angle in degrees between rotations (..., 3, 3).

    Computed as atan2(sin, cos) of the relative rotation, accurate for tiny angles (arccos of the trace
    loses half the digits: 0.02 deg resolution in float32) and for angles near 180 deg.
    """
    if isinstance(R1, torch.Tensor):
        D = R1.transpose(-1, -2) @ R2
        cos = (D.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
        axis = torch.stack([D[..., 2, 1] - D[..., 1, 2], D[..., 0, 2] - D[..., 2, 0], D[..., 1, 0] - D[..., 0, 1]], -1)
        return torch.rad2deg(torch.atan2(torch.linalg.vector_norm(axis, dim=-1) / 2, cos))
    D = np.swapaxes(R1, -1, -2) @ R2
    cos = (np.trace(D, axis1=-2, axis2=-1) - 1) / 2
    axis = np.stack([D[..., 2, 1] - D[..., 1, 2], D[..., 0, 2] - D[..., 2, 0], D[..., 1, 0] - D[..., 0, 1]], -1)
    return np.degrees(np.arctan2(np.linalg.norm(axis, axis=-1) / 2, cos))


def skew(w: Array) -> Array:
    """Skew-symmetric matrices (..., 3, 3) of vectors (..., 3)."""
    lib = _lib(w)
    z = lib.zeros_like(w[..., 0])
    rows = [
        lib.stack([z, -w[..., 2], w[..., 1]], -1),
        lib.stack([w[..., 2], z, -w[..., 0]], -1),
        lib.stack([-w[..., 1], w[..., 0], z], -1),
    ]
    return lib.stack(rows, -2)


def so3_exp(w: Array) -> Array:
    """Rodrigues: axis-angle vectors (..., 3) to rotations (..., 3, 3); smooth at 0 (torch-differentiable)."""
    lib = _lib(w)
    theta2 = (w * w).sum(-1)[..., None, None]
    if lib is torch:
        theta = torch.sqrt(theta2.clamp_min(1e-24))
        small = theta2 < 1e-8
        a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
        b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / theta2.clamp_min(1e-24))
        eye = torch.eye(3, dtype=w.dtype, device=w.device).expand(w.shape[:-1] + (3, 3))
    else:
        theta = np.sqrt(np.maximum(theta2, 1e-24))
        small = theta2 < 1e-8
        a = np.where(small, 1 - theta2 / 6, np.sin(theta) / theta)
        b = np.where(small, 0.5 - theta2 / 24, (1 - np.cos(theta)) / np.maximum(theta2, 1e-24))
        eye = np.broadcast_to(np.eye(3), w.shape[:-1] + (3, 3))
    W = skew(w)
    return eye + a * W + b * (W @ W)


def so3_log(R: Array) -> Array:
    """Axis-angle vectors (..., 3) of rotations (..., 3, 3) (numpy; robust near 0 and pi)."""
    R = np.asarray(R, dtype=np.float64)
    from scipy.spatial.transform import Rotation

    flat = R.reshape(-1, 3, 3)
    return Rotation.from_matrix(flat).as_rotvec().reshape(R.shape[:-2] + (3,))


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """n rotations (n, 3, 3) drawn uniformly on SO(3) (Shoemake's quaternion method)."""
    u1, u2, u3 = rng.random((3, n))
    q = np.stack(
        [
            np.sqrt(1 - u1) * np.sin(2 * math.pi * u2),
            np.sqrt(1 - u1) * np.cos(2 * math.pi * u2),
            np.sqrt(u1) * np.sin(2 * math.pi * u3),
            np.sqrt(u1) * np.cos(2 * math.pi * u3),
        ],
        -1,
    )
    return quat_to_matrix(q)


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) as (x, y, z, w) to rotations (..., 3, 3)."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = np.moveaxis(q, -1, 0)
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """Pose T_cam_obj (4, 4) of an OpenCV camera at `eye` looking at `target` (object-frame points, mm).

    The camera's -y axis (image up) is aligned with `up` as far as possible; when the viewing direction
    is parallel to `up`, another up vector is used.
    """
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    if not np.all(np.isfinite(z)) or np.linalg.norm(z) == 0:
        raise InputError(f"look_at needs distinct finite eye and target, got eye={eye.tolist()}, target={np.asarray(target).tolist()}.")
    z = z / np.linalg.norm(z)
    up = np.asarray(up, dtype=np.float64)
    if abs(np.dot(z, up / np.linalg.norm(up))) > 0.999:
        up = np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(z, up)
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    R_obj_cam = np.stack([x, y, z], 1)  # columns: camera axes in object frame
    return invert_pose(make_pose(R_obj_cam, eye))
