"""Procedural objects: random compositions of primitives with box-projected UVs and procedural textures.

An object is 1-5 watertight primitives (box, cylinder, sphere/ellipsoid, cone, capsule, torus,
extruded star polygon) with random sizes and rotations, each centred on a vertex of the parts before
it, concatenated (no boolean ops), centred on its bounding box and scaled to a log-uniform diameter
in [30, 300] mm. Kinds: `textured` (one texture atlas), `plain` (one colour, >= 2 parts),
`multicolor` (one colour per part, >= 2 parts) and `symmetric` (one axis-aligned plain primitive
with its BOP symmetries). UVs are a box projection into a 3 x 2 atlas: a face goes to the cell of
its dominant normal axis and sign; v points up the image (OpenGL/BOP: row = (1 - v) * H).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import trimesh
from scipy.sparse import csr_matrix
from scipy.spatial import ConvexHull
from scipy.spatial.distance import pdist

from cooppose.data.synth.textures import random_color, random_texture
from cooppose.geometry.transforms import random_rotations

TEXTURE_CELL = 160  # px per atlas cell; the atlas is 3 x 2 cells
DIAMETER_RANGE_MM = (30.0, 300.0)
KIND_PROBS = {"textured": 0.65, "plain": 0.15, "multicolor": 0.10, "symmetric": 0.10}
CREASE_DEG = 35.0  # corners whose faces differ by less than this share a smoothed normal


@dataclass
class SynthObject:
    """A mesh in mm ready to be written as a BOP model, with its appearance and known symmetries."""

    vertices: np.ndarray  # (V, 3) float64 mm, centred on the bounding box
    faces: np.ndarray  # (F, 3) int64, counter-clockwise seen from outside
    normals: np.ndarray  # (V, 3) float32 unit
    uv: np.ndarray | None = None  # (V, 2) float32 in [0, 1], with `texture`
    texture: np.ndarray | None = None  # (H, W, 3) uint8
    colors: np.ndarray | None = None  # (V, 3) uint8, when there is no texture
    symmetries_discrete: list[list[float]] = field(default_factory=list)  # row-major 4x4, mm
    symmetries_continuous: list[dict] = field(default_factory=list)  # {"axis": [3], "offset": [3] mm}
    source: dict = field(default_factory=dict)  # where it came from (sources.json entry)


# ---------------------------------------------------------------- primitives (unit scale, watertight)


def _sections(rng: np.random.Generator) -> int:
    return int(rng.choice([3, 4, 5, 6, 8, 12, 16, 24, 32, 48]))


def _box(rng: np.random.Generator) -> trimesh.Trimesh:
    return trimesh.creation.box(extents=rng.uniform(0.15, 1.0, 3))


def _cylinder(rng: np.random.Generator) -> trimesh.Trimesh:
    return trimesh.creation.cylinder(radius=rng.uniform(0.08, 0.5), height=rng.uniform(0.1, 1.0), sections=_sections(rng))


def _sphere(rng: np.random.Generator) -> trimesh.Trimesh:
    m = trimesh.creation.icosphere(subdivisions=int(rng.integers(1, 4)), radius=rng.uniform(0.15, 0.5))
    if rng.random() < 0.5:  # ellipsoid
        m.apply_scale(rng.uniform(0.5, 1.5, 3))
    return m


def _cone(rng: np.random.Generator) -> trimesh.Trimesh:
    return trimesh.creation.cone(radius=rng.uniform(0.1, 0.5), height=rng.uniform(0.2, 1.0), sections=_sections(rng))


def _capsule(rng: np.random.Generator) -> trimesh.Trimesh:
    n = int(rng.choice([6, 8, 12, 16, 24]))
    return trimesh.creation.capsule(height=rng.uniform(0.1, 0.8), radius=rng.uniform(0.08, 0.35), count=[n, n])


def _torus(rng: np.random.Generator) -> trimesh.Trimesh:
    major = rng.uniform(0.2, 0.5)
    return trimesh.creation.torus(
        major_radius=major,
        minor_radius=major * rng.uniform(0.1, 0.6),
        major_sections=int(rng.choice([6, 8, 12, 16, 24, 32])),
        minor_sections=int(rng.choice([4, 6, 8, 12, 16])),
    )


def star_prism(rng: np.random.Generator) -> trimesh.Trimesh:
    """A random star-shaped polygon (3-12 corners, fan-triangulated) extruded along z; watertight."""
    n = int(rng.integers(3, 13))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    angles = angles[np.concatenate([[True], np.diff(angles) > 1e-3])]
    n = len(angles)
    if n < 3:
        angles, n = np.array([0.0, 2.1, 4.2]), 3
    radius = rng.uniform(0.2, 0.5)
    r = radius * rng.uniform(0.35, 1.0, n)
    ring = np.stack([r * np.cos(angles), r * np.sin(angles)], 1)  # (n, 2) counter-clockwise
    h = rng.uniform(0.05, 0.8)
    bottom = np.concatenate([ring, np.full((n, 1), -h / 2)], 1)
    top = np.concatenate([ring, np.full((n, 1), h / 2)], 1)
    vertices = np.concatenate([[[0, 0, -h / 2], [0, 0, h / 2]], bottom, top])  # 0: bottom centre, 1: top centre
    i = np.arange(n)
    j = (i + 1) % n
    b, t = 2 + i, 2 + n + i
    bj, tj = 2 + j, 2 + n + j
    faces = np.concatenate(
        [
            np.stack([np.zeros(n, int), bj, b], 1),  # bottom cap, normal -z
            np.stack([np.ones(n, int), t, tj], 1),  # top cap, normal +z
            np.stack([b, bj, tj], 1),  # sides, outward
            np.stack([b, tj, t], 1),
        ]
    )
    return trimesh.Trimesh(vertices, faces, process=False)


PRIMITIVES: dict[str, Callable[[np.random.Generator], trimesh.Trimesh]] = {
    "box": _box,
    "cylinder": _cylinder,
    "sphere": _sphere,
    "cone": _cone,
    "capsule": _capsule,
    "torus": _torus,
    "prism": star_prism,
}


# ---------------------------------------------------------------- geometry helpers


def diameter(vertices: np.ndarray) -> float:
    """Largest distance between two vertices (mm), computed on the convex hull."""
    pts = np.asarray(vertices, dtype=np.float64)
    try:
        pts = pts[ConvexHull(pts).vertices]
    except Exception:  # flat or degenerate point sets: use every vertex
        pass
    return float(pdist(pts).max()) if len(pts) > 1 else 0.0


def corner_normals(vertices: np.ndarray, faces: np.ndarray, crease_deg: float = CREASE_DEG) -> np.ndarray:
    """Normals (F, 3, 3) per face corner: area-weighted mean of the faces at that vertex within crease_deg."""
    tri = vertices[faces]  # (F, 3, 3)
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # (F, 3), norm = 2 * area
    unit = cross / np.maximum(np.linalg.norm(cross, axis=1, keepdims=True), 1e-12)
    F = len(faces)
    corner_vertex = faces.reshape(-1)  # (3F,)
    corner_face = np.repeat(np.arange(F), 3)
    incidence = csr_matrix((np.ones(3 * F), (corner_vertex, corner_face)), shape=(len(vertices), F))
    counts = np.diff(incidence.indptr)[corner_vertex]  # faces around the vertex of each corner
    c_idx = np.repeat(np.arange(3 * F), counts)  # (pairs,) corner
    within = np.arange(len(c_idx)) - np.repeat(np.cumsum(counts) - counts, counts)
    g_idx = incidence.indices[incidence.indptr[corner_vertex[c_idx]] + within]  # (pairs,) neighbouring face
    keep = np.einsum("ij,ij->i", unit[corner_face[c_idx]], unit[g_idx]) >= math.cos(math.radians(crease_deg))
    out = np.zeros((3 * F, 3))
    np.add.at(out, c_idx[keep], cross[g_idx[keep]])
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out.reshape(F, 3, 3)


def box_uv(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Texture coordinates (F, 3, 2) per face corner: box projection into a 3 x 2 atlas, v up, margins kept."""
    tri = vertices[faces]  # (F, 3, 3)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    axis = np.argmax(np.abs(n), axis=1)  # (F,)
    sign = (n[np.arange(len(faces)), axis] >= 0).astype(int)
    lo = vertices.min(0)
    scale = max(float(np.ptp(vertices, axis=0).max()), 1e-9)
    local = (tri - lo) / scale  # (F, 3, 3) in [0, 1]
    a = local[np.arange(len(faces))[:, None], np.arange(3)[None], ((axis + 1) % 3)[:, None]]
    b = local[np.arange(len(faces))[:, None], np.arange(3)[None], ((axis + 2) % 3)[:, None]]
    margin = 0.02
    u = (axis[:, None] + margin + (1 - 2 * margin) * a) / 3
    v = (sign[:, None] + margin + (1 - 2 * margin) * b) / 2
    return np.stack([u, v], -1)


def merge_corners(vertices: np.ndarray, faces: np.ndarray, attrs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Unmerge to one vertex per face corner with the given (F, 3, k) attributes, then merge identical rows."""
    pos = vertices[faces].reshape(-1, 3)
    flat = [a.reshape(len(pos), -1) for a in attrs]
    key = np.round(np.concatenate([pos] + flat, 1), 6)
    _, first, inverse = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    return pos[first], inverse.reshape(-1, 3).astype(np.int64), [f[first] for f in flat]


# ---------------------------------------------------------------- objects


def _compose(rng: np.random.Generator, n_parts: int) -> tuple[list[trimesh.Trimesh], list[str]]:
    parts, names = [], []
    for k in range(n_parts):
        name = str(rng.choice(list(PRIMITIVES)))
        part = PRIMITIVES[name](rng)
        part.apply_translation(-part.bounds.mean(0))
        T = np.eye(4)
        T[:3, :3] = random_rotations(1, rng)[0]
        if k > 0:
            anchors = np.concatenate([p.vertices for p in parts])
            T[:3, 3] = anchors[rng.integers(len(anchors))] * rng.uniform(0.6, 1.0)
        part.apply_transform(T)
        parts.append(part)
        names.append(name)
    return parts, names


def _finish(
    vertices: np.ndarray,
    faces: np.ndarray,
    rng: np.random.Generator,
    corner_colors: np.ndarray | None,
    textured: bool,
) -> SynthObject:
    """Centre, scale to a random diameter, compute normals/UVs and merge corners."""
    vertices = vertices - (vertices.min(0) + vertices.max(0)) / 2
    d = math.exp(rng.uniform(math.log(DIAMETER_RANGE_MM[0]), math.log(DIAMETER_RANGE_MM[1])))
    vertices = vertices * (d / diameter(vertices))
    normals = corner_normals(vertices, faces)
    if textured:
        texture, texture_kind = random_texture(rng, 2 * TEXTURE_CELL, 3 * TEXTURE_CELL)
        v, f, (nrm, uv) = merge_corners(vertices, faces, [normals, box_uv(vertices, faces)])
        obj = SynthObject(v, f, nrm.astype(np.float32), uv=uv.astype(np.float32), texture=texture)
        obj.source["texture"] = texture_kind
        return obj
    v, f, (nrm, col) = merge_corners(vertices, faces, [normals, corner_colors])
    return SynthObject(v, f, nrm.astype(np.float32), colors=col.astype(np.uint8))


def _symmetric(rng: np.random.Generator) -> SynthObject:
    """One axis-aligned plain-coloured primitive with its symmetries (BOP convention)."""
    name = str(rng.choice(["box", "cylinder", "cone", "capsule", "torus"]))
    flip_x = [1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1]  # 180 deg about x
    flip_y = [-1, 0, 0, 0, 0, 1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1]
    flip_z = [-1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    z_axis = [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]
    if name == "box":
        ext = np.sort(rng.uniform(0.2, 1.0, 3))
        ext = ext * np.array([1.0, 1.2, 1.44]) ** np.arange(1, 4)  # pairwise ratios >= 1.2: no extra symmetries
        mesh, disc, cont = trimesh.creation.box(extents=rng.permutation(ext)), [flip_x, flip_y, flip_z], []
    elif name == "cylinder":
        mesh, disc, cont = trimesh.creation.cylinder(rng.uniform(0.1, 0.5), rng.uniform(0.1, 1.0), sections=64), [flip_x], z_axis
    elif name == "cone":
        mesh, disc, cont = trimesh.creation.cone(rng.uniform(0.1, 0.5), rng.uniform(0.2, 1.0), sections=64), [], z_axis
    elif name == "capsule":
        mesh = trimesh.creation.capsule(height=rng.uniform(0.1, 0.8), radius=rng.uniform(0.1, 0.35), count=[48, 24])
        disc, cont = [flip_x], z_axis
    else:
        major = rng.uniform(0.2, 0.5)
        mesh = trimesh.creation.torus(major, major * rng.uniform(0.15, 0.6), major_sections=64, minor_sections=16)
        disc, cont = [flip_x], z_axis
    color = random_color(rng)
    faces = np.asarray(mesh.faces, dtype=np.int64)
    obj = _finish(np.asarray(mesh.vertices, dtype=np.float64), faces, rng, np.broadcast_to(color, faces.shape + (3,)), False)
    obj.symmetries_discrete = [[float(x) for x in s] for s in disc]
    obj.symmetries_continuous = [dict(s) for s in cont]
    obj.source.update(parts=[name])
    return obj


def make_object(rng: np.random.Generator, kind: str | None = None) -> SynthObject:
    """A random procedural object; `kind` in KIND_PROBS (drawn from KIND_PROBS when None)."""
    if kind is None:
        kind = str(rng.choice(list(KIND_PROBS), p=list(KIND_PROBS.values())))
    if kind not in KIND_PROBS:
        raise ValueError(f"kind must be one of {list(KIND_PROBS)}, got {kind!r}")
    if kind == "symmetric":
        obj = _symmetric(rng)
    else:
        sizes, probs = np.arange(1, 6), np.array([0.2, 0.3, 0.25, 0.15, 0.1])
        if kind != "textured":  # one plain part could be symmetric without saying so
            sizes, probs = sizes[1:], probs[1:] / probs[1:].sum()
        n_parts = int(rng.choice(sizes, p=probs))
        parts, names = _compose(rng, n_parts)
        vertices = np.concatenate([p.vertices for p in parts]).astype(np.float64)
        offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
        faces = np.concatenate([np.asarray(p.faces, np.int64) + o for p, o in zip(parts, offsets)])
        colors = None
        if kind != "textured":
            base = [random_color(rng)] * n_parts if kind == "plain" else [random_color(rng) for _ in parts]
            colors = np.concatenate([np.broadcast_to(c, (len(p.faces), 3, 3)) for c, p in zip(base, parts)])
        obj = _finish(vertices, faces, rng, colors, kind == "textured")
        obj.source["parts"] = names
    obj.source = {"source": "procedural", "kind": kind, **obj.source}
    return obj


def procedural_object(seed: int, index: int) -> SynthObject:
    """The procedural object number `index` of the set made with `seed` (independent of the others)."""
    obj = make_object(np.random.default_rng([seed, index]))
    obj.source.update(seed=int(seed), index=int(index))
    return obj
