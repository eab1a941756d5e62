"""Find the visual symmetries of a SynthObject (shape and colour) and write them the BOP way.

Two independent area-weighted samples of the surface (points with their texture or vertex colour)
are drawn. A rotation R about an axis through the surface centroid is a symmetry when the rotated
second sample lies on the first as closely as the unrotated one does: mean nearest-neighbour
distance and mean colour difference within `tol` times those of the unrotated pair. Candidate axes
are the principal axes of the surface (plus in-plane directions when two principal moments are equal);
orders 2-6 are tried, and an axis that accepts rotations by 1 rad and 2 pi / 7 is continuous.
Discrete rotations are closed into their group and every element is checked again; BOP lists every
non-identity element. Objects whose principal moments are all equal (cubes, spheres) may keep
some symmetries unfound: their principal axes are arbitrary.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

from cooppose.data.synth.objects import SynthObject

ORDERS = (6, 5, 4, 3, 2)  # tried largest first: the first accepted order is the axis's order
MAX_GROUP = 48


def surface_samples(obj: SynthObject, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n surface points (n, 3) mm, area-weighted, with their colours (n, 3) float (texture texel or vertex colours)."""
    tri = obj.vertices[obj.faces]  # (F, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    face = rng.choice(len(area), size=n, p=area / area.sum())
    r1, r2 = rng.random((2, n))
    s = np.sqrt(r1)
    w = np.stack([1 - s, s * (1 - r2), s * r2], 1)[:, :, None]  # (n, 3, 1)
    points = (w * tri[face]).sum(1)
    if obj.texture is not None:
        uv = (w * obj.uv[obj.faces[face]]).sum(1)
        H, W = obj.texture.shape[:2]
        col = np.clip(np.round(uv[:, 0] * (W - 1)), 0, W - 1).astype(int)
        row = np.clip(np.round((1 - uv[:, 1]) * (H - 1)), 0, H - 1).astype(int)
        colors = obj.texture[row, col].astype(np.float64)
    elif obj.colors is not None:
        colors = (w * obj.colors[obj.faces[face]].astype(np.float64)).sum(1)
    else:
        colors = np.zeros((n, 3))
    return points, colors


def surface_moments(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted centroid (3,) and covariance (3, 3) of a triangle surface, exactly.

    Uses the integral over a triangle (a, b, c) of area A: x x^T dA = A / 12 (a a^T + b b^T + c c^T + 9 g g^T),
    g = (a + b + c) / 3.
    """
    tri = vertices[faces]  # (F, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    total = area.sum()
    g = tri.mean(1)  # (F, 3)
    centre = (area[:, None] * g).sum(0) / total
    t = tri - centre
    gc = g - centre
    second = np.einsum("f,fkij->ij", area / 12, t[:, :, :, None] * t[:, :, None, :]) + np.einsum(
        "f,fi,fj->ij", 9 * area / 12, gc, gc
    )
    return centre, second / total


def axis_rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation (3, 3) by `angle` rad about the unit `axis` (right-handed)."""
    a = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle) * K + (1 - math.cos(angle)) * (K @ K)


def _close_group(generators: list[np.ndarray]) -> list[np.ndarray]:
    """All products of the generators (rotations), identity first, at most MAX_GROUP elements."""
    group = [np.eye(3)]
    frontier = [np.eye(3)]
    while frontier and len(group) < MAX_GROUP:
        new = []
        for A in frontier:
            for G in generators:
                C = G @ A
                if all(np.abs(C - B).max() > 1e-6 for B in group):
                    group.append(C)
                    new.append(C)
        frontier = new
    return group[:MAX_GROUP]


def find_symmetries(obj: SynthObject, n: int = 1500, tol: float = 1.2, seed: int = 0) -> tuple[list[list[float]], list[dict]]:
    """(symmetries_discrete, symmetries_continuous) in BOP form (row-major 4x4 in mm; axis + offset)."""
    rng = np.random.default_rng(seed)
    P, C = surface_samples(obj, n, rng)
    Q, D = surface_samples(obj, n, rng)
    tree = cKDTree(P)
    dist, idx = tree.query(Q)
    base_geo, base_col = dist.mean(), np.abs(D - C[idx]).mean()
    centre, cov = surface_moments(obj.vertices, obj.faces)  # exact: sampled ones are too noisy for the test

    def accepts(R: np.ndarray) -> bool:
        d, i = tree.query((Q - centre) @ R.T + centre)
        return d.mean() <= tol * base_geo and np.abs(D - C[i]).mean() <= tol * base_col + 2.0

    moments, axes = np.linalg.eigh(cov)
    axes = [axes[:, i] for i in range(3)]
    continuous = [a for a in axes if accepts(axis_rotation(a, 1.0)) and accepts(axis_rotation(a, 2 * math.pi / 7))]
    candidates = list(axes)
    for i, j in ((0, 1), (1, 2), (0, 2)):  # equal moments: the principal axes in that plane are arbitrary
        if abs(moments[i] - moments[j]) <= 0.05 * max(moments[i], moments[j]):
            for t in np.linspace(0, math.pi, 12, endpoint=False)[1:]:
                candidates.append(math.cos(t) * axes[i] + math.sin(t) * axes[j])
    generators = []
    for a in candidates:
        if any(abs(abs(a @ c) - 1) < 1e-6 for c in continuous):
            continue
        perpendicular = any(abs(a @ c) < 1e-6 for c in continuous)
        for k in (2,) if perpendicular else ORDERS:
            R = axis_rotation(a, 2 * math.pi / k)
            if accepts(R):
                generators.append(R)
                break
        if perpendicular and generators:  # one flip perpendicular to a continuous axis is enough
            break
    if len(continuous) > 1:  # a sphere-like object: BOP cannot express it; keep one axis
        continuous = continuous[:1]
    group = [R for R in _close_group(generators)[1:] if accepts(R)]  # products of near-symmetries are re-checked
    discrete = []
    for R in group:
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = R, centre - R @ centre
        discrete.append([float(v) for v in T.reshape(16)])
    cont = [{"axis": [float(v) for v in a / np.linalg.norm(a)], "offset": [float(v) for v in centre]} for a in continuous]
    return discrete, cont
