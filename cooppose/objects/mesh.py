"""Object meshes in millimetres: loading PLY/OBJ/GLB (vertex colours or a UV texture) into an `ObjectModel`.

Exactly one appearance is set on a model: either `uv` + `texture` (UV convention of OBJ/PLY/glTF as
trimesh returns it: v = 0 is the bottom row of the image), or `vertex_colors`. Meshes without either
get a uniform grey (`GREY`).
"""

from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from cooppose.errors import DatasetError, MeshError
from cooppose.objects.symmetry import symmetry_transformations

GREY = 180  # uint8 colour of untextured meshes
UNIT_SCALE = {"mm": 1.0, "m": 1000.0}  # file units -> mm
MIN_DIAMETER_MM = 5.0  # a declared-mm mesh smaller than this is almost surely in metres
MAX_DIAMETER_M = 10.0  # a declared-m mesh larger than this is almost surely in millimetres
LARGE_MESH_FACES = 1_000_000
EXACT_DIAMETER_MAX_VERTICES = 2000  # above this the diameter is computed on the convex hull (same value)
EXACT_DIAMETER_MAX_HULL = 20_000  # above this, on the extreme hull points of 1000 directions (see _extreme_points)
SUFFIXES = (".ply", ".obj", ".glb", ".gltf")


@dataclass(eq=False)
class ObjectModel:
    """A triangle mesh in millimetres with its appearance, extent and symmetries."""

    vertices: np.ndarray  # (N, 3) float64 mm
    faces: np.ndarray  # (F, 3) int64
    vertex_colors: np.ndarray | None  # (N, 3) uint8, None when textured
    uv: np.ndarray | None  # (N, 2) float32, v = 0 at the bottom of the texture
    texture: np.ndarray | None  # (H, W, 3) uint8, row 0 = top of the image
    name: str
    content_hash: str
    symmetries: list[np.ndarray] = field(default_factory=lambda: [np.eye(4)])  # 4x4, identity first
    diameter: float = field(init=False)  # mm, max distance between two vertices
    bbox_min: np.ndarray = field(init=False)  # (3,) mm
    bbox_max: np.ndarray = field(init=False)  # (3,) mm
    center: np.ndarray = field(init=False)  # (3,) mm, bounding-box centre

    def __post_init__(self) -> None:
        self.bbox_min = self.vertices.min(0)
        self.bbox_max = self.vertices.max(0)
        self.center = (self.bbox_min + self.bbox_max) / 2
        self.diameter = _diameter(self.vertices[self.hull_indices])

    @cached_property
    def hull_indices(self) -> np.ndarray:
        """Indices (M,) of the vertices on the convex hull (all vertices for small meshes)."""
        return _hull_indices(self.vertices)

    @cached_property
    def radius(self) -> float:
        """Largest distance (mm) from `center` to a vertex: the bounding sphere about the bbox centre."""
        return float(np.linalg.norm(self.vertices[self.hull_indices] - self.center, axis=1).max())

    @cached_property
    def face_areas(self) -> np.ndarray:
        """Area (F,) of each triangle, mm^2."""
        a, b, c = (self.vertices[self.faces[:, i]] for i in range(3))
        return 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)

    @property
    def is_textured(self) -> bool:
        """True when the appearance is a UV texture (else per-vertex colours)."""
        return self.texture is not None

    def sample_points(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n points (n, 3) mm drawn uniformly on the surface (area-weighted faces, uniform barycentrics)."""
        areas = self.face_areas
        total = areas.sum()
        if total <= 0:
            raise MeshError(f"mesh {self.name!r} has zero surface area; cannot sample surface points.")
        face = rng.choice(len(areas), size=n, p=areas / total)
        r1, r2 = rng.random((2, n))
        s = np.sqrt(r1)
        w = np.stack([1 - s, s * (1 - r2), s * r2], 1)  # (n, 3) uniform on the triangle
        tri = self.vertices[self.faces[face]]  # (n, 3, 3)
        return (w[:, :, None] * tri).sum(1)

    @classmethod
    def from_arrays(
        cls,
        vertices: np.ndarray,
        faces: np.ndarray,
        vertex_colors: np.ndarray | None = None,
        uv: np.ndarray | None = None,
        texture: np.ndarray | None = None,
        name: str = "mesh",
        symmetries: list[np.ndarray] | None = None,
    ) -> "ObjectModel":
        """Model from arrays already in mm (procedural meshes); its hash is that of the arrays."""
        vertices, faces, vertex_colors, uv, texture = _validate_arrays(name, vertices, faces, vertex_colors, uv, texture)
        h = hashlib.sha1()
        for a in (vertices, faces, vertex_colors, uv, texture):
            h.update(b"|" if a is None else np.ascontiguousarray(a).tobytes() + str(a.shape).encode())
        return cls(
            vertices=vertices,
            faces=faces,
            vertex_colors=vertex_colors,
            uv=uv,
            texture=texture,
            name=name,
            content_hash=h.hexdigest(),
            symmetries=list(symmetries) if symmetries is not None else [np.eye(4)],
        )


def _validate_arrays(name, vertices, faces, vertex_colors, uv, texture):
    where = f"mesh {name!r}"
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces)
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise MeshError(f"{where}: the mesh has no triangles (faces shape {faces.shape}); a point cloud cannot be rendered.")
    if vertices.ndim != 2 or vertices.shape[1] != 3 or len(vertices) == 0:
        raise MeshError(f"{where}: vertices must be a non-empty (N, 3) array, got shape {vertices.shape}.")
    if not np.all(np.isfinite(vertices)):
        raise MeshError(f"{where}: {int((~np.isfinite(vertices)).any(1).sum())} vertices are NaN or infinite; repair the mesh.")
    faces = faces.astype(np.int64)
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise MeshError(f"{where}: face indices must lie in [0, {len(vertices)}), got [{faces.min()}, {faces.max()}].")
    if texture is not None or uv is not None:
        if texture is None or uv is None:
            raise MeshError(f"{where}: a texture needs both `uv` (N, 2) and `texture` (H, W, 3).")
        uv = np.asarray(uv, dtype=np.float32)
        texture = np.ascontiguousarray(texture)
        if uv.shape != (len(vertices), 2) or not np.all(np.isfinite(uv)):
            raise MeshError(f"{where}: uv must be finite with shape ({len(vertices)}, 2), got {uv.shape}.")
        if texture.ndim != 3 or texture.shape[2] != 3 or texture.dtype != np.uint8:
            raise MeshError(f"{where}: texture must be (H, W, 3) uint8, got {texture.shape} {texture.dtype}.")
        vertex_colors = None
    else:
        if vertex_colors is None:
            vertex_colors = np.full((len(vertices), 3), GREY, np.uint8)
        vertex_colors = np.asarray(vertex_colors)
        if vertex_colors.shape != (len(vertices), 3):
            raise MeshError(f"{where}: vertex_colors must have shape ({len(vertices)}, 3), got {vertex_colors.shape}.")
        vertex_colors = vertex_colors.astype(np.uint8)
    return vertices, faces, vertex_colors, uv, texture


def _hull_indices(vertices: np.ndarray) -> np.ndarray:
    """Convex-hull vertex indices; the farthest pair of a point set always lies on its hull."""
    if len(vertices) <= EXACT_DIAMETER_MAX_VERTICES:
        return np.arange(len(vertices))
    from scipy.spatial import ConvexHull, QhullError

    try:
        return ConvexHull(vertices).vertices
    except QhullError:  # flat or degenerate: joggled input keeps (nearly) the same extreme points
        return ConvexHull(vertices, qhull_options="QJ").vertices


def _extreme_points(p: np.ndarray, n_dirs: int = 1000) -> np.ndarray:
    """Indices of the points extreme along n_dirs directions spread over a hemisphere (Fibonacci lattice).

    For the farthest pair (a, b) and the direction u nearest to (a - b), the extremes along u are at
    least |a - b| cos(gap) apart, so the diameter among these points is within a factor cos(gap) >= 0.999
    of the true one (gap ~2.6 deg for 1000 directions); in practice it is exact.
    """
    k = np.arange(n_dirs) + 0.5
    z = k / n_dirs  # hemisphere z in (0, 1): u and -u give the same extremes
    phi = np.pi * (1 + 5**0.5) * k
    r = np.sqrt(1 - z * z)
    dirs = np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)  # (D, 3)
    rows = np.arange(n_dirs)
    best_hi, best_lo = np.full(n_dirs, -np.inf), np.full(n_dirs, np.inf)
    arg_hi, arg_lo = np.zeros(n_dirs, np.int64), np.zeros(n_dirs, np.int64)
    for i in range(0, len(p), 8192):
        proj = dirs @ p[i : i + 8192].T  # (D, B)
        ih, il = proj.argmax(1), proj.argmin(1)
        hi, lo = proj[rows, ih], proj[rows, il]
        up, down = hi > best_hi, lo < best_lo
        arg_hi[up], best_hi[up] = ih[up] + i, hi[up]
        arg_lo[down], best_lo[down] = il[down] + i, lo[down]
    return np.unique(np.concatenate([arg_hi, arg_lo]))


def _diameter(points: np.ndarray) -> float:
    """Largest pairwise distance of points (M, 3), in row blocks of ~4M distances; see `_extreme_points` for huge M."""
    p = points - points.mean(0)  # centring keeps |a|^2 + |b|^2 - 2ab accurate
    if len(p) > EXACT_DIAMETER_MAX_HULL:
        p = p[_extreme_points(p)]
    sq = (p * p).sum(1)
    rows = max(1, 4_000_000 // len(p))
    best = 0.0
    for i in range(0, len(p), rows):
        d2 = sq[i : i + rows, None] + sq[None, :] - 2.0 * (p[i : i + rows] @ p.T)
        best = max(best, float(d2.max()))
    return float(np.sqrt(max(best, 0.0)))


def _ply_texture_name(path: Path) -> str | None:
    """The texture file named in a PLY header ('comment TextureFile NAME'), if any."""
    with open(path, "rb") as f:
        head = f.read(65536)
    end = head.find(b"end_header")
    for line in head[: end if end >= 0 else len(head)].decode("latin-1").splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0] == "comment" and parts[1].lower() == "texturefile":
            return parts[2].strip()
    return None


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _mtl_texture_path(path: Path) -> Path | None:
    """The first `map_Kd` image named by an OBJ's material libraries, resolved relative to each .mtl file."""
    if path.suffix.lower() != ".obj":
        return None
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("mtllib "):
            continue
        mtl = path.parent / line.split(maxsplit=1)[1].strip()
        if not mtl.is_file():
            continue
        for mline in mtl.read_text(errors="replace").splitlines():
            if mline.strip().startswith("map_Kd "):
                return (mtl.parent / mline.strip().split()[-1]).resolve()
    return None


def _appearance(mesh, path: Path):
    """(vertices, faces, vertex_colors, uv, texture) of a trimesh mesh; colours None when it has none."""
    from PIL import Image

    visual = mesh.visual
    vertices, faces = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces)
    if visual.kind == "texture" and getattr(visual, "uv", None) is not None:
        mat = visual.material
        image = getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)
        if isinstance(image, Image.Image):
            return vertices, faces, None, np.asarray(visual.uv, np.float32), np.asarray(image.convert("RGB"), np.uint8)
        tex_path = _mtl_texture_path(path)  # trimesh does not follow paths like ../textures/x.png
        if tex_path is not None and tex_path.is_file():
            return vertices, faces, None, np.asarray(visual.uv, np.float32), _read_image(tex_path)
        if tex_path is not None:
            warnings.warn(f"texture {tex_path} named by the material of {path} is missing; the mesh is rendered untextured.", stacklevel=3)
        return vertices, faces, np.tile(np.asarray(mat.main_color)[:3].astype(np.uint8), (len(vertices), 1)), None, None
    if visual.kind == "vertex":
        return vertices, faces, np.asarray(visual.vertex_colors)[:, :3].astype(np.uint8), None, None
    if visual.kind == "face":  # one vertex per face corner so that each face keeps its colour
        colors = np.repeat(np.asarray(visual.face_colors)[:, :3].astype(np.uint8), 3, axis=0)
        return vertices[faces].reshape(-1, 3), np.arange(3 * len(faces)).reshape(-1, 3), colors, None, None
    return vertices, faces, None, None, None


def _ply_appearance(mesh, path: Path):
    """Like `_appearance` for a PLY read without materials: the texture comes from the header's TextureFile."""
    vertices, faces = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces)
    tex_name = _ply_texture_name(path)
    uv = getattr(mesh.visual, "uv", None)
    if tex_name is not None and uv is not None:
        tex_path = path.parent / tex_name
        if tex_path.is_file():
            return vertices, faces, None, np.asarray(uv, np.float32), _read_image(tex_path)
        warnings.warn(f"texture {tex_name!r} named in {path} is missing; the mesh is rendered untextured (grey).", stacklevel=3)
        return vertices, faces, None, None, None
    if mesh.visual.kind == "texture":  # UVs without an image: nothing to show
        return vertices, faces, None, None, None
    return _appearance(mesh, path)


def _load_trimesh(path: Path):
    import trimesh

    kwargs = {"process": False, "force": "mesh"}
    if path.suffix.lower() == ".ply":
        kwargs["skip_materials"] = True  # cooppose reads the texture itself (and warns when it is missing)
    try:
        return trimesh.load(str(path), **kwargs)
    except Exception as err:  # trimesh raises many kinds of errors on broken files
        raise MeshError(f"cannot read mesh {path}: {type(err).__name__}: {err}. Check that the file is a valid PLY/OBJ/GLB.") from err


def _select_model_info(models_info: dict, path: Path) -> dict:
    """The entry of one object: `models_info` itself, or the whole models_info.json keyed by obj id."""
    if not models_info or not all(re.fullmatch(r"\d+", str(k)) for k in models_info):
        return models_info
    m = re.search(r"obj_0*(\d+)", path.stem)
    if m is None or m.group(1) not in {str(int(k)) for k in models_info}:
        raise DatasetError(
            f"models_info has entries for objects {sorted(models_info, key=int)} but none matches {path.name}; "
            "pass that object's entry (models_info[str(obj_id)])."
        )
    return {str(int(k)): v for k, v in models_info.items()}[m.group(1)]


def _non_manifold_edges(faces: np.ndarray) -> int:
    """Number of edges shared by more than two triangles."""
    edges = np.sort(faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2), axis=1)
    _, counts = np.unique(edges[:, 0] * (int(faces.max()) + 1) + edges[:, 1], return_counts=True)
    return int((counts > 2).sum())


def load_mesh(path: str | Path, units: str = "mm", models_info: dict | None = None, name: str | None = None) -> ObjectModel:
    """Load a PLY/OBJ/GLB mesh, convert it to millimetres and attach BOP symmetries from `models_info`."""
    path = Path(path)
    if units not in UNIT_SCALE:
        raise MeshError(f"units={units!r} for {path} is not supported; use one of {sorted(UNIT_SCALE)}.")
    if not path.is_file():
        raise MeshError(f"mesh file not found: {path}; check the path.")
    if path.suffix.lower() not in SUFFIXES:
        raise MeshError(f"unsupported mesh format {path.suffix!r} for {path}; convert it to one of {', '.join(SUFFIXES)}.")
    mesh = _load_trimesh(path)
    vertices, faces, vertex_colors, uv, texture = _ply_appearance(mesh, path) if path.suffix.lower() == ".ply" else _appearance(mesh, path)
    vertices, faces, vertex_colors, uv, texture = _validate_arrays(
        str(path), vertices * UNIT_SCALE[units], faces, vertex_colors, uv, texture
    )
    h = hashlib.sha1(path.read_bytes())
    h.update(f"|units={units}|".encode())
    if texture is not None:
        h.update(texture.tobytes())
    symmetries = symmetry_transformations(_select_model_info(models_info, path)) if models_info else [np.eye(4)]
    model = ObjectModel(
        vertices=vertices,
        faces=faces,
        vertex_colors=vertex_colors,
        uv=uv,
        texture=texture,
        name=name or path.stem,
        content_hash=h.hexdigest(),
        symmetries=symmetries,
    )
    if not model.face_areas.sum() > 0:
        raise MeshError(f"mesh {path}: all {len(faces)} triangles have zero area (coincident or collinear vertices); "
                        "nothing can be rendered. Check the file.")
    if units == "mm" and model.diameter < MIN_DIAMETER_MM:
        raise MeshError(f"mesh {path} is {model.diameter:.3g} mm across, which looks like metres; pass units='m'.")
    if units == "m" and model.diameter > MAX_DIAMETER_M * 1000:
        raise MeshError(f"mesh {path} is {model.diameter / 1000:.3g} m across, which looks like millimetres; pass units='mm'.")
    if len(faces) > LARGE_MESH_FACES:
        warnings.warn(f"mesh {path} has {len(faces)} faces (> {LARGE_MESH_FACES}); rendering will be slow. Decimate it.", stacklevel=2)
    bad = _non_manifold_edges(faces)
    if bad:
        warnings.warn(f"mesh {path} is non-manifold ({bad} edges shared by more than two faces); it still renders.", stacklevel=2)
    return model


def bundled_mesh_path(name: str = "duck") -> Path:
    """Path of a mesh shipped with cooppose (the demo's novel object 'duck', held out of training)."""
    root = Path(__file__).resolve().parent.parent / "assets" / "objects"
    available = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if name not in available:
        raise MeshError(f"no bundled object {name!r}; available: {available}.")
    return root / name / f"{name}.ply"
