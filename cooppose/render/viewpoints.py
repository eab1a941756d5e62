"""Template viewpoints: icosphere directions and look-at camera poses around an object."""

from __future__ import annotations

import numpy as np

from cooppose.errors import RenderError
from cooppose.geometry.transforms import look_at

_PHI = (1 + 5**0.5) / 2
_ICOSAHEDRON_VERTICES = [(-1, _PHI, 0), (1, _PHI, 0), (-1, -_PHI, 0), (1, -_PHI, 0), (0, -1, _PHI), (0, 1, _PHI),
                         (0, -1, -_PHI), (0, 1, -_PHI), (_PHI, 0, -1), (_PHI, 0, 1), (-_PHI, 0, -1), (-_PHI, 0, 1)]  # fmt: skip
_ICOSAHEDRON_FACES = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4), (11, 10, 2),
                      (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8), (3, 8, 9), (4, 9, 5),
                      (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]  # fmt: skip
MAX_LEVEL = 5


def icosphere_directions(level: int) -> np.ndarray:
    """Unit vectors (N, 3) at the vertices of an icosphere; level 0 = 42 (CNOS's level 0), 1 = 162, N = 10 * 4^(level+1) + 2."""
    if not isinstance(level, (int, np.integer)) or not 0 <= level <= MAX_LEVEL:
        raise RenderError(f"icosphere level must be an integer in [0, {MAX_LEVEL}], got {level!r}.")
    verts = [np.array(v, dtype=np.float64) / np.linalg.norm(v) for v in _ICOSAHEDRON_VERTICES]
    faces = list(_ICOSAHEDRON_FACES)
    for _ in range(level + 1):  # the icosahedron (12 vertices) is CNOS's level -1
        midpoint: dict[tuple[int, int], int] = {}

        def mid(a: int, b: int) -> int:
            key = (min(a, b), max(a, b))
            if key not in midpoint:
                m = verts[a] + verts[b]
                verts.append(m / np.linalg.norm(m))
                midpoint[key] = len(verts) - 1
            return midpoint[key]

        new_faces = []
        for a, b, c in faces:
            ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
            new_faces += [(a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca)]
        faces = new_faces
    return np.stack(verts)


def template_poses(level: int, distance_mm: float, center: np.ndarray) -> np.ndarray:
    """Poses T_cam_obj (N, 4, 4) of cameras at `distance_mm` from `center` along the icosphere directions, looking at it."""
    if not np.isfinite(distance_mm) or distance_mm <= 0:
        raise RenderError(f"distance_mm must be a positive number, got {distance_mm!r}.")
    center = np.asarray(center, dtype=np.float64).reshape(3)
    return np.stack([look_at(center + distance_mm * d, center) for d in icosphere_directions(level)])
