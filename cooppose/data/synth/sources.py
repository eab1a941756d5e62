"""Training meshes from the installed `pybullet_data` (zlib licence), converted to SynthObjects in mm.

Only the objects listed here are used. The duck (`duck.obj`) is the held-out demo object and
is never read; robots, scenes and planes are not objects. Sizes come from the URDF scale where
one exists (else a plausible real size), clamped to a diameter in [30, 300] mm. The untextured
`random_urdfs` blobs get, per seed, either their URDF colour or a procedural texture. Their BOP
symmetries are found on the mesh and its colours (symmetry.find_symmetries): many blobs are
mirror-built and have a 2-fold axis.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cooppose.data.synth.objects import (
    DIAMETER_RANGE_MM,
    SynthObject,
    TEXTURE_CELL,
    merge_corners,
    box_uv,
    corner_normals,
    diameter,
)
from cooppose.data.synth.symmetry import find_symmetries
from cooppose.data.synth.textures import random_color, random_texture
from cooppose.errors import ConfigError, MeshError

RESERVED = ("duck",)  # held-out demo object: never a training mesh
RANDOM_URDF_TEXTURE_P = 0.5


@dataclass(frozen=True)
class PackageMesh:
    """One curated pybullet_data mesh: file, file-unit -> mm scale (per axis), texture or colour."""

    path: str  # relative to pybullet_data
    scale_mm: tuple[float, float, float]
    texture: str | None = None  # relative to pybullet_data; None: the file's own material or a colour
    color: tuple[float, float, float] | None = None  # RGB in [0, 1] when untextured (None: random)


def _iso(s: float) -> tuple[float, float, float]:
    return (s, s, s)


CURATED: tuple[PackageMesh, ...] = (
    PackageMesh("jenga/jenga.obj", (150.0, 50.0, 30.0), texture="jenga/jenga.png"),  # jenga.urdf scale
    PackageMesh("domino/domino.obj", _iso(1000.0), texture="domino/domino.jpg"),
    PackageMesh("soccerball.obj", _iso(220.0), texture="colors16.png"),
    PackageMesh("cube.obj", _iso(60.0), texture="cube.png"),
    PackageMesh("torus/torus_textured.obj", _iso(80.0), texture="cube.png"),
    PackageMesh("toys/concave_box.obj", _iso(100.0), texture="checker_grid.jpg"),
    PackageMesh("bunny.obj", _iso(75.0)),
    PackageMesh("lego/lego.obj", _iso(100.0), color=(1.0, 1.0, 0.4)),  # lego.urdf
    PackageMesh("objects/mug.obj", _iso(1000.0), color=(1.0, 0.2, 0.2)),  # mug.urdf
    PackageMesh("toys/cube.obj", _iso(1000.0)),
    PackageMesh("toys/cylinder.obj", _iso(1000.0)),
    PackageMesh("toys/prism.obj", _iso(1000.0)),
    PackageMesh("toys/shape_sorter.obj", _iso(500.0)),
    PackageMesh("teddy2_VHACD_CHs.obj", _iso(100.0), color=(1.0, 0.4, 0.4)),  # teddy_vhacd.urdf
    PackageMesh("stone.obj", _iso(300.0)),
)


def pybullet_data_root() -> Path:
    """Folder of the installed pybullet_data package (ConfigError when pybullet is not installed)."""
    try:
        import pybullet_data
    except ImportError as err:
        raise ConfigError("pybullet is not installed; `pip install pybullet` (or cooppose[train]) to use its meshes.") from err
    return Path(pybullet_data.getDataPath())


def random_urdf_meshes(root: Path) -> list[PackageMesh]:
    """The 1000 `random_urdfs/NNN/NNN.obj` blobs with their URDF scale and colour."""
    out = []
    for urdf in sorted(root.glob("random_urdfs/*/*.urdf")):
        text = urdf.read_text()
        scale = re.search(r'scale="([\d.eE+-]+) ([\d.eE+-]+) ([\d.eE+-]+)"', text)
        rgba = re.search(r'rgba="([\d.]+) ([\d.]+) ([\d.]+)', text)
        obj = urdf.with_suffix(".obj")
        if scale is None or not obj.is_file():
            continue
        out.append(
            PackageMesh(
                str(obj.relative_to(root)),
                tuple(1000.0 * float(s) for s in scale.groups()),
                color=tuple(float(c) for c in rgba.groups()) if rgba else None,
            )
        )
    return out


def package_meshes(root: Path | None = None) -> list[PackageMesh]:
    """Every usable pybullet_data mesh: the curated ones, then the random_urdfs blobs (fixed order)."""
    root = pybullet_data_root() if root is None else Path(root)
    meshes = list(CURATED) + random_urdf_meshes(root)
    for m in meshes:
        if any(r in Path(m.path).stem.lower() for r in RESERVED):
            raise ConfigError(f"{m.path} is a reserved object (held out of training).")
    return meshes


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def load_package_object(entry: PackageMesh, rng: np.random.Generator, root: Path | None = None) -> SynthObject:
    """Load one pybullet_data mesh as a SynthObject (mm, centred, diameter clamped to [30, 300] mm)."""
    import trimesh

    root = pybullet_data_root() if root is None else Path(root)
    path = root / entry.path
    if not path.is_file():
        raise MeshError(f"{path} not found; reinstall pybullet (the mesh list expects pybullet 3.2.x).")
    mesh = trimesh.load(str(path), force="mesh", process=False)
    vertices = np.asarray(mesh.vertices, np.float64) * np.asarray(entry.scale_mm)
    faces = np.asarray(mesh.faces, np.int64)
    if len(faces) == 0 or not np.all(np.isfinite(vertices)):
        raise MeshError(f"{path} has no faces or non-finite vertices; it is skipped.")
    keep = np.linalg.norm(np.cross(vertices[faces[:, 1]] - vertices[faces[:, 0]], vertices[faces[:, 2]] - vertices[faces[:, 0]]), axis=1) > 0
    faces = faces[keep]
    if len(faces) == 0:
        raise MeshError(f"{path} has only degenerate triangles; it is skipped.")
    vertices = vertices - (vertices.min(0) + vertices.max(0)) / 2
    d = diameter(vertices)
    vertices *= float(np.clip(d, *DIAMETER_RANGE_MM)) / d
    normals = corner_normals(vertices, faces)
    source = {"source": "pybullet_data", "path": entry.path, "license": "zlib (pybullet)"}
    uv = getattr(mesh.visual, "uv", None)
    if entry.texture is not None and uv is not None and len(uv) == len(mesh.vertices):
        texture = _read_rgb(root / entry.texture)
        v, f, (nrm, uvc) = merge_corners(vertices, faces, [normals, np.asarray(uv, np.float64)[faces]])
        return _with_symmetries(SynthObject(v, f, nrm.astype(np.float32), uv=uvc.astype(np.float32), texture=texture, source=source))
    if entry.path.startswith("random_urdfs/") and rng.random() < RANDOM_URDF_TEXTURE_P:
        texture, kind = random_texture(rng, 2 * TEXTURE_CELL, 3 * TEXTURE_CELL)
        v, f, (nrm, uvc) = merge_corners(vertices, faces, [normals, box_uv(vertices, faces)])
        source["texture"] = kind
        return _with_symmetries(SynthObject(v, f, nrm.astype(np.float32), uv=uvc.astype(np.float32), texture=texture, source=source))
    if entry.color is not None:
        color = np.round(np.asarray(entry.color) * 255).astype(np.uint8)
    elif mesh.visual.kind == "texture" and getattr(mesh.visual, "material", None) is not None:
        color = np.asarray(mesh.visual.material.main_color)[:3].astype(np.uint8)
    else:
        color = random_color(rng)
    corner_colors = np.broadcast_to(color, faces.shape + (3,))
    v, f, (nrm, col) = merge_corners(vertices, faces, [normals, corner_colors])
    return _with_symmetries(SynthObject(v, f, nrm.astype(np.float32), colors=col.astype(np.uint8), source=source))


def _with_symmetries(obj: SynthObject) -> SynthObject:
    """The object with the visual symmetries found on it (see symmetry.find_symmetries)."""
    obj.symmetries_discrete, obj.symmetries_continuous = find_symmetries(obj)
    return obj


def package_objects(seed: int, root: Path | None = None) -> Iterator[SynthObject]:
    """The usable package meshes as SynthObjects, in order; mesh k uses the generator seeded by (seed, 1e6 + k).

    Broken files (pybullet_data has a few random_urdfs with NaN vertices) are skipped with a warning.
    """
    root = pybullet_data_root() if root is None else Path(root)
    for k, entry in enumerate(package_meshes(root)):
        try:
            yield load_package_object(entry, np.random.default_rng([seed, 1_000_000 + k]), root)
        except MeshError as err:
            warnings.warn(str(err), stacklevel=2)


def mesh_file_object(path: str | Path, units: str = "mm") -> SynthObject:
    """A user's mesh file (PLY/OBJ/GLB, with its texture or colours) as a SynthObject in mm, frame kept as is."""
    from cooppose.objects import load_mesh

    obj = load_mesh(path, units=units)
    normals = corner_normals(obj.vertices, obj.faces)
    source = {"source": "mesh file", "path": str(path), "units": units}
    if obj.texture is not None:
        v, f, (nrm, uvc) = merge_corners(obj.vertices, obj.faces, [normals, obj.uv[obj.faces]])
        return SynthObject(v, f, nrm.astype(np.float32), uv=uvc.astype(np.float32), texture=obj.texture, source=source)
    colors = obj.vertex_colors if obj.vertex_colors is not None else np.full((len(obj.vertices), 3), 180, np.uint8)
    v, f, (nrm, col) = merge_corners(obj.vertices, obj.faces, [normals, colors[obj.faces].astype(np.float64)])
    return SynthObject(v, f, nrm.astype(np.float32), colors=np.round(col).astype(np.uint8), source=source)
