"""Write synthetic objects as a BOP `models/` folder: obj_OBJID.ply (+ .png), models_info.json, sources.json.

PLY files are binary little-endian, in mm, with per-vertex `x y z nx ny nz` and either
`red green blue` (uchar) or `texture_u texture_v` (v up, as BOP) plus a `comment TextureFile
obj_OBJID.png` header line, as BOP models are.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from cooppose.data.bop import save_json, save_models_info, write_rgb
from cooppose.data.synth.objects import SynthObject, diameter
from cooppose.errors import DatasetError
from cooppose.fileio import atomic_write_bytes

SOURCES_FILE = "sources.json"


def ply_bytes(obj: SynthObject, texture_file: str | None = None) -> bytes:
    """The binary PLY of an object (texture_file is written in the header when the object is textured)."""
    n, f = len(obj.vertices), len(obj.faces)
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4")]
    textured = obj.texture is not None
    if textured and texture_file is None:
        raise DatasetError("a textured object needs texture_file (the PNG written beside the PLY).")
    fields += [("texture_u", "<f4"), ("texture_v", "<f4")] if textured else [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    vert = np.empty(n, dtype=fields)
    for i, axis in enumerate("xyz"):
        vert[axis] = obj.vertices[:, i]
        vert["n" + axis] = obj.normals[:, i]
    if textured:
        vert["texture_u"], vert["texture_v"] = obj.uv[:, 0], obj.uv[:, 1]
    else:
        colors = obj.colors if obj.colors is not None else np.full((n, 3), 180, np.uint8)
        vert["red"], vert["green"], vert["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    face = np.empty(f, dtype=[("n", "u1"), ("i", "<i4", (3,))])
    face["n"], face["i"] = 3, obj.faces
    kinds = {"<f4": "float", "u1": "uchar"}
    header = ["ply", "format binary_little_endian 1.0", "comment created by cooppose synth (units: mm)"]
    if textured:
        header.append(f"comment TextureFile {texture_file}")
    header.append(f"element vertex {n}")
    header += [f"property {kinds[t]} {name}" for name, t in fields]
    header += [f"element face {f}", "property list uchar int vertex_indices", "end_header"]
    return ("\n".join(header) + "\n").encode("ascii") + vert.tobytes() + face.tobytes()


def model_info(obj: SynthObject) -> dict:
    """The models_info.json entry of an object: diameter, min_*/size_* (mm) and symmetries when known."""
    lo, hi = obj.vertices.min(0), obj.vertices.max(0)
    info: dict = {"diameter": diameter(obj.vertices)}
    for i, axis in enumerate("xyz"):
        info[f"min_{axis}"] = float(lo[i])
        info[f"size_{axis}"] = float(hi[i] - lo[i])
    if obj.symmetries_discrete:
        info["symmetries_discrete"] = [[float(v) for v in s] for s in obj.symmetries_discrete]
    if obj.symmetries_continuous:
        info["symmetries_continuous"] = [
            {"axis": [float(v) for v in s["axis"]], "offset": [float(v) for v in s["offset"]]} for s in obj.symmetries_continuous
        ]
    return info


def write_object(models_dir: str | os.PathLike, obj_id: int, obj: SynthObject) -> dict:
    """Write obj_OBJID.ply (and obj_OBJID.png when textured) atomically; return its models_info entry."""
    models_dir = Path(models_dir)
    stem = f"obj_{obj_id:06d}"
    texture_file = None
    if obj.texture is not None:
        texture_file = f"{stem}.png"
        write_rgb(models_dir / texture_file, np.ascontiguousarray(obj.texture))
    atomic_write_bytes(models_dir / f"{stem}.ply", ply_bytes(obj, texture_file))
    return model_info(obj)


def write_models(models_dir: str | os.PathLike, objects: Iterable[tuple[int, SynthObject]]) -> dict[int, dict]:
    """Write (obj_id, object) pairs into models_dir with models_info.json and sources.json; return models_info."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    infos: dict[int, dict] = {}
    sources: dict[int, dict] = {}
    for obj_id, obj in objects:
        if obj_id in infos:
            raise DatasetError(f"object id {obj_id} is given twice; object ids must be unique.")
        infos[obj_id] = write_object(models_dir, obj_id, obj)
        sources[obj_id] = dict(obj.source)
    save_models_info(models_dir / "models_info.json", infos)
    save_json(models_dir / SOURCES_FILE, sources)
    return infos


def make_object_set(models_dir: str | os.PathLike, n: int, seed: int, pybullet: bool = False, progress: bool = False) -> dict[int, dict]:
    """Write n procedural objects (ids 1..n) and, with `pybullet`, the usable pybullet_data meshes (ids n+1...)."""
    import itertools

    from tqdm import tqdm

    from cooppose.data.synth.objects import procedural_object
    from cooppose.data.synth.sources import package_meshes, package_objects

    if n < 0 or (n == 0 and not pybullet):
        raise DatasetError(f"no objects to write: give n > 0 procedural objects or pybullet=True (got n={n}).")
    objects = (procedural_object(seed, i) for i in range(n))
    total = n
    if pybullet:
        objects = itertools.chain(objects, package_objects(seed))
        total += len(package_meshes())
    bar = tqdm(objects, total=total, desc="objects", unit="obj", disable=not progress)
    return write_models(models_dir, enumerate(bar, start=1))
