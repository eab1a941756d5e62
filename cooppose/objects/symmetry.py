"""Symmetry transformations of an object from its BOP `models_info` entry (as bop_toolkit discretises them).

BOP gives `symmetries_discrete` as row-major 4x4 matrices (16 floats, translation in mm) and
`symmetries_continuous` as {"axis": [3], "offset": [3] mm}. A continuous symmetry is discretised into
ceil(pi / max_sym_disc_step) rotations about the axis through the offset point, so that the vertex
farthest from the axis travels at most max_sym_disc_step x diameter between consecutive steps
(the diameter cancels out). Every discrete symmetry (identity first) is then composed with every
discretised continuous one: T = T_cont @ T_disc.
"""

from __future__ import annotations

import math

import numpy as np

from cooppose.errors import DatasetError
from cooppose.geometry.transforms import make_pose, so3_exp


def _entries(model_info: dict, key: str) -> list:
    """The list under `key` of a models_info entry ([] when absent)."""
    value = model_info.get(key, [])
    if not isinstance(value, list):
        raise DatasetError(f"models_info {key} must be a list, got {value!r}; fix the models_info.json entry.")
    return value


def _discrete(model_info: dict) -> list[np.ndarray]:
    out = [np.eye(4)]
    for i, sym in enumerate(_entries(model_info, "symmetries_discrete")):
        try:
            M = np.asarray(sym, dtype=np.float64)
        except (TypeError, ValueError):
            M = np.zeros(0)
        if M.size != 16 or not np.all(np.isfinite(M)):
            raise DatasetError(
                f"models_info symmetries_discrete[{i}] must be 16 finite numbers (row-major 4x4), got {sym!r}; "
                "fix the models_info.json entry."
            )
        out.append(M.reshape(4, 4))
    return out


def _continuous(model_info: dict, max_sym_disc_step: float) -> list[np.ndarray]:
    out = []
    steps = int(math.ceil(math.pi / max_sym_disc_step))
    for i, sym in enumerate(_entries(model_info, "symmetries_continuous")):
        try:
            axis = np.asarray(sym["axis"], dtype=np.float64).reshape(3)
            offset = np.asarray(sym["offset"], dtype=np.float64).reshape(3)
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(
                f"models_info symmetries_continuous[{i}] must be {{'axis': [3], 'offset': [3]}}, got {sym!r}; "
                "fix the models_info.json entry."
            ) from err
        norm = np.linalg.norm(axis)
        if not np.isfinite(norm) or norm == 0 or not np.all(np.isfinite(offset)):
            raise DatasetError(f"models_info symmetries_continuous[{i}] has a zero or non-finite axis/offset: {sym!r}.")
        angles = np.arange(steps) * (2.0 * math.pi / steps)
        R = so3_exp(angles[:, None] * (axis / norm))  # (steps, 3, 3)
        t = offset - R @ offset  # rotation about the axis through `offset`
        out.extend(make_pose(R, t))
    return out


def symmetry_transformations(model_info: dict, max_sym_disc_step: float = 0.01) -> list[np.ndarray]:
    """Symmetry transforms (4x4 float64, mm, identity first) of a BOP models_info entry, as bop_toolkit's."""
    if not max_sym_disc_step > 0:
        raise ValueError(f"max_sym_disc_step must be > 0, got {max_sym_disc_step}")
    discrete = _discrete(model_info)
    continuous = _continuous(model_info, max_sym_disc_step)
    if not continuous:
        return discrete
    return [Tc @ Td for Td in discrete for Tc in continuous]
