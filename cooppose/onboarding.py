"""Onboarding a novel object: render its templates once and cache them on disk.

Templates (docs/design.md "Templates"): cameras on an icosphere (level 0 = 42 views) look at the
bounding-box centre from 2.5 x diameter; for each view the projected mesh bounding box is cropped
with `make_crop(..., pad=1.2)` and the mesh is rendered straight into that S x S crop with the crop
intrinsics (no resampling). The projection uses a virtual camera; the crop intrinsics do not depend
on its focal length. Templates are lit by a headlight (`TEMPLATE_LIGHT`) so that untextured meshes
still show their shape.

The cache is one .npz per (mesh content, S, level, renderer version, light) under `cache_dir`
(default: `$COOPPOSE_CACHE/templates`, else `~/.cache/cooppose/templates`), written atomically.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cooppose.errors import InputError
from cooppose.fileio import atomic_open
from cooppose.geometry.camera import make_crop
from cooppose.geometry.transforms import transform_points
from cooppose.objects.mesh import ObjectModel
from cooppose.render import Light, Renderer
from cooppose.render.viewpoints import icosphere_directions, template_poses

TEMPLATE_PAD = 1.2
DISTANCE_FACTOR = 2.5  # camera distance in object diameters
TEMPLATE_LIGHT = Light(direction=(0.0, 0.0, -1.0), ambient=0.5, diffuse=0.5)
TEMPLATE_FORMAT = 1  # bump when this module's output changes (it keys the cache)
VIRTUAL_FOCAL = 1000.0  # px, the camera the bounding boxes are projected with
FIELDS = ("rgb", "depth", "mask", "xyz", "K", "poses")


@dataclass
class ObjectTemplates:
    """Rendered templates of one object: rgb (N,S,S,3) uint8, depth (N,S,S) float32 mm, mask (N,S,S) bool,
    xyz (N,S,S,3) float32 object-frame mm, K (N,3,3) crop intrinsics, poses (N,4,4) T_cam_obj."""

    rgb: np.ndarray
    depth: np.ndarray
    mask: np.ndarray
    xyz: np.ndarray
    K: np.ndarray
    poses: np.ndarray
    size: int
    object_hash: str
    cache_path: Path | None

    def __len__(self) -> int:
        return len(self.poses)


_default_renderer: Renderer | None = None


def _renderer() -> Renderer:
    global _default_renderer
    if _default_renderer is None:
        _default_renderer = Renderer()
    return _default_renderer


def default_cache_dir() -> Path:
    """$COOPPOSE_CACHE/templates when the variable is set, else ~/.cache/cooppose/templates."""
    root = os.environ.get("COOPPOSE_CACHE")
    return Path(root) / "templates" if root else Path.home() / ".cache" / "cooppose" / "templates"


def cache_key(obj: ObjectModel, size: int, level: int, renderer_version: str, light: Light | None) -> str:
    """Hex key of a template set: mesh content, size, level, renderer version, light, template format."""
    light_s = "none" if light is None else f"{tuple(np.round(light.unit_direction(), 6))}|{light.ambient}|{light.diffuse}"
    text = f"{obj.content_hash}|S={size}|level={level}|{renderer_version}|{light_s}|pad={TEMPLATE_PAD}|dist={DISTANCE_FACTOR}|fmt={TEMPLATE_FORMAT}"
    return hashlib.sha1(text.encode()).hexdigest()


def template_crop_K(obj: ObjectModel, T: np.ndarray, size: int) -> np.ndarray:
    """Crop intrinsics (3, 3) that frame the object's projected bounding box (padded by TEMPLATE_PAD) in size x size."""
    K0 = np.array([[VIRTUAL_FOCAL, 0.0, 0.0], [0.0, VIRTUAL_FOCAL, 0.0], [0.0, 0.0, 1.0]])
    X = transform_points(T, obj.vertices[obj.hull_indices])
    uv = X[:, :2] / X[:, 2:] * VIRTUAL_FOCAL
    box = (*uv.min(0), *uv.max(0))
    return make_crop(box, K0, size, pad=TEMPLATE_PAD).K


def render_templates(obj: ObjectModel, size: int, level: int, renderer: Renderer, light: Light | None, progress: bool = False) -> dict:
    """Render the N templates of `obj` into arrays (see ObjectTemplates)."""
    from tqdm import tqdm

    poses = template_poses(level, DISTANCE_FACTOR * obj.diameter, obj.center)
    N = len(poses)
    out = {
        "rgb": np.zeros((N, size, size, 3), np.uint8),
        "depth": np.zeros((N, size, size), np.float32),
        "mask": np.zeros((N, size, size), bool),
        "xyz": np.zeros((N, size, size, 3), np.float32),
        "K": np.zeros((N, 3, 3)),
        "poses": poses,
    }
    for i in tqdm(range(N), desc=f"onboarding {obj.name}", disable=not progress, unit="view"):
        out["K"][i] = template_crop_K(obj, poses[i], size)
        r = renderer.render(obj, out["K"][i], poses[i], (size, size), light)
        out["rgb"][i], out["depth"][i], out["mask"][i], out["xyz"][i] = r.rgb, r.depth, r.mask, r.xyz
    return out


def _load(path: Path, key: str, n: int, size: int) -> dict:
    """Arrays of a cache file; raises ValueError when it is not the expected, complete file."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in (*FIELDS, "key")}
    if str(data.pop("key")) != key:
        raise ValueError("key mismatch")
    shapes = {"rgb": (n, size, size, 3), "depth": (n, size, size), "mask": (n, size, size), "xyz": (n, size, size, 3), "K": (n, 3, 3), "poses": (n, 4, 4)}
    for k, shape in shapes.items():
        if data[k].shape != shape:
            raise ValueError(f"{k} has shape {data[k].shape}, expected {shape}")
    return data


def _save(path: Path, data: dict, key: str) -> None:
    """Write the cache file atomically (temporary file in the same folder, then os.replace)."""
    with atomic_open(path) as f:
        np.savez_compressed(f, key=np.array(key), **data)


def onboard(
    obj: ObjectModel,
    size: int = 160,
    level: int = 0,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    renderer: Renderer | None = None,
    light: Light | None = TEMPLATE_LIGHT,
) -> ObjectTemplates:
    """Templates of `obj` (rendered, or read from the cache): N = 42 views at level 0, each size x size."""
    if not isinstance(obj, ObjectModel):
        raise InputError(f"onboard needs an ObjectModel (cooppose.objects.load_mesh), got {type(obj).__name__}.")
    if not isinstance(size, (int, np.integer)) or not 16 <= size <= 2048:
        raise InputError(f"template size must be an integer in [16, 2048], got {size!r}.")
    size, level = int(size), int(level)
    n = len(icosphere_directions(level))
    renderer = renderer or _renderer()
    key = cache_key(obj, size, level, renderer.version, light)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', obj.name)[:48]}_{key[:20]}.npz"
    data = None
    if path.is_file():
        try:
            data = _load(path, key, n, size)
        except Exception as err:  # truncated zip, wrong arrays, foreign file: all are re-rendered
            warnings.warn(f"template cache {path} is unreadable or stale ({type(err).__name__}: {err}); re-rendering it.", stacklevel=2)
    if data is None:
        data = render_templates(obj, size, level, renderer, light, progress)
        try:
            _save(path, data, key)
        except OSError as err:
            warnings.warn(f"cannot write the template cache {path} ({err}); templates are not cached. Pass a writable cache_dir.", stacklevel=2)
            path = None
    return ObjectTemplates(**{k: data[k] for k in FIELDS}, size=size, object_hash=obj.content_hash, cache_path=path)
