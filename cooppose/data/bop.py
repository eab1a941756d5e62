"""BOP dataset folders and BOP19 results files: readers, atomic writers, a small dataset index.

Layout (bop_toolkit `docs/bop_datasets_format.md`), all lengths in mm:
  DATASET/camera.json, test_targets_bop19.json, models[_eval]/models_info.json + obj_OBJID.ply,
  DATASET/SPLIT/SCENE/{scene_camera,scene_gt,scene_gt_info}.json,
  DATASET/SPLIT/SCENE/{rgb,gray,depth}/IMID.(png|jpg|tif), {mask,mask_visib}/IMID_GTID.png
with SCENE, IMID, GTID, OBJID written as 6 digits. `cam_K` and rotations are row-major 3x3, depth images
are uint16 PNG in units of `depth_scale` mm. Every writer writes atomically (temp file + os.replace).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cooppose.errors import DatasetError
from cooppose.fileio import atomic_write_bytes

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
RESULTS_HEADER = "scene_id,im_id,obj_id,score,R,t,time"
TIME_TOLERANCE_S = 1e-3  # bop_toolkit check_consistent_timings


# ---------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Camera:
    """Dataset camera (camera.json): image size, intrinsics and optional depth scale (mm per depth unit)."""

    width: int
    height: int
    K: np.ndarray  # (3, 3)
    depth_scale: float | None = None


@dataclass(frozen=True)
class SceneCamera:
    """Per-image camera (scene_camera.json): K, depth scale, optional world-to-camera pose (mm)."""

    K: np.ndarray  # (3, 3)
    depth_scale: float | None = None
    R_w2c: np.ndarray | None = None  # (3, 3)
    t_w2c: np.ndarray | None = None  # (3,) mm


@dataclass(frozen=True)
class GtPose:
    """One annotated object instance (scene_gt.json): X_cam = R X_model + t, t in mm."""

    obj_id: int
    R: np.ndarray  # (3, 3)
    t: np.ndarray  # (3,) mm


@dataclass(frozen=True)
class GtInfo:
    """Visibility statistics of one GT instance (scene_gt_info.json); boxes are (x, y, w, h) pixels."""

    bbox_obj: tuple[int, int, int, int]
    bbox_visib: tuple[int, int, int, int]
    px_count_all: int
    px_count_valid: int
    px_count_visib: int
    visib_fract: float


@dataclass(frozen=True)
class Target:
    """One BOP19 estimation target: find `inst_count` instances of `obj_id` in an image."""

    scene_id: int
    im_id: int
    obj_id: int
    inst_count: int


@dataclass(frozen=True)
class PoseEstimate:
    """One row of a BOP19 results file; t in mm, time in seconds for the whole image (-1 = unknown)."""

    scene_id: int
    im_id: int
    obj_id: int
    score: float
    R: np.ndarray  # (3, 3)
    t: np.ndarray  # (3,) mm
    time: float = -1.0


@dataclass(frozen=True)
class ResultsName:
    """Parts of a results file name METHOD_DATASET-SPLIT[-SPLITTYPE].csv."""

    method: str
    dataset: str
    split: str
    split_type: str | None = None


# ---------------------------------------------------------------------------------------------- atomic files
def _json_text(content: Any) -> str:
    """BOP style: one top-level entry per line, keys in numeric order when they are integers."""

    def key(k: Any) -> tuple:
        s = str(k)
        return (0, int(s), "") if s.lstrip("-").isdigit() else (1, 0, s)

    if isinstance(content, Mapping):
        items = sorted(content.items(), key=lambda kv: key(kv[0]))
        body = ",\n".join(f"  {json.dumps(str(k))}: {json.dumps(v, sort_keys=True)}" for k, v in items)
        return "{\n" + body + ("\n" if items else "") + "}\n"
    if isinstance(content, list):
        body = ",\n".join(f"  {json.dumps(v, sort_keys=True)}" for v in content)
        return "[\n" + body + ("\n" if content else "") + "]\n"
    return json.dumps(content, sort_keys=True) + "\n"


def save_json(path: str | os.PathLike, content: Any) -> None:
    """Write JSON atomically in the BOP layout (one top-level entry per line)."""
    try:
        text = _json_text(content)
    except (TypeError, ValueError) as err:
        raise DatasetError(f"cannot write {path}: content is not JSON-serialisable ({err}); convert arrays to lists.") from err
    atomic_write_bytes(path, text.encode("utf-8"))


def load_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing file or malformed JSON raises DatasetError naming it."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path} not found; check the BOP dataset folder (and the split name).")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path} is not valid JSON: {err}.") from err


# ---------------------------------------------------------------------------------------------- validation
def _bad(path: Any, what: str) -> DatasetError:
    return DatasetError(f"{path}: {what}")


def _int_key(path: Any, k: str) -> int:
    try:
        return int(k)
    except ValueError:
        raise _bad(path, f"key {k!r} is not an integer id.") from None


def _matrix(path: Any, where: str, value: Any, n: int) -> np.ndarray:
    """n x n matrix (n > 1) or 3-vector (n == 1) from a flat JSON list."""
    size = n * n if n > 1 else 3
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        a = np.zeros(0)
    if a.size != size or not np.all(np.isfinite(a)):
        raise _bad(path, f"{where} must be {size} finite numbers, got {value!r}.")
    return a.reshape(n, n) if n > 1 else a.reshape(3)


def _field(path: Any, where: str, entry: Any, key: str) -> Any:
    if not isinstance(entry, Mapping):
        raise _bad(path, f"{where} must be an object, got {type(entry).__name__}.")
    if key not in entry:
        raise _bad(path, f"{where} has no '{key}'.")
    return entry[key]


def _number(path: Any, where: str, value: Any, integer: bool = False) -> Any:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (integer and not (math.isfinite(value) and int(value) == value))):
        kind = "an integer" if integer else "a number"
        raise _bad(path, f"{where} must be {kind}, got {value!r}.")
    return int(value) if integer else float(value)


def _positive(path: Any, where: str, value: Any, integer: bool = False) -> Any:
    """A finite number > 0 (an integer >= 1 when `integer`)."""
    v = _number(path, where, value, integer)
    if not (math.isfinite(v) and v > 0):
        raise _bad(path, f"{where} must be positive and finite, got {value!r}.")
    return v


def _intrinsics(path: Any, where: str, K: np.ndarray) -> np.ndarray:
    """K (3, 3) with positive focal lengths."""
    if not (K[0, 0] > 0 and K[1, 1] > 0):
        raise _bad(path, f"{where} must be [fx, 0, cx, 0, fy, cy, 0, 0, 1] with fx, fy > 0, got {K.reshape(9).tolist()}.")
    return K


def _mapping(path: Any, content: Any) -> Mapping:
    if not isinstance(content, Mapping):
        raise _bad(path, f"expected a JSON object keyed by id, got {type(content).__name__}.")
    return content


# ---------------------------------------------------------------------------------------------- camera.json
def load_camera(path: str | os.PathLike) -> Camera:
    """Read camera.json (width, height, fx, fy, cx, cy, optional depth_scale)."""
    c = _mapping(path, load_json(path))
    vals = {k: _positive(path, k, _field(path, "camera", c, k)) for k in ("fx", "fy")}
    for k in ("cx", "cy"):
        vals[k] = _number(path, k, _field(path, "camera", c, k))
        if not math.isfinite(vals[k]):
            raise _bad(path, f"{k} must be finite, got {vals[k]}.")
    width = _positive(path, "width", _field(path, "camera", c, "width"), integer=True)
    height = _positive(path, "height", _field(path, "camera", c, "height"), integer=True)
    K = np.array([[vals["fx"], 0.0, vals["cx"]], [0.0, vals["fy"], vals["cy"]], [0.0, 0.0, 1.0]])
    scale = _positive(path, "depth_scale", c["depth_scale"]) if "depth_scale" in c else None
    return Camera(width=width, height=height, K=K, depth_scale=scale)


def save_camera(path: str | os.PathLike, camera: Camera) -> None:
    """Write camera.json."""
    K = np.asarray(camera.K, dtype=np.float64)
    out: dict[str, Any] = {
        "cx": float(K[0, 2]), "cy": float(K[1, 2]), "fx": float(K[0, 0]), "fy": float(K[1, 1]),
        "height": int(camera.height), "width": int(camera.width),
    }
    if camera.depth_scale is not None:
        out["depth_scale"] = float(camera.depth_scale)
    atomic_write_bytes(path, (json.dumps(out, indent=2, sort_keys=True) + "\n").encode("utf-8"))


# ---------------------------------------------------------------------------------------------- models_info.json
def load_models_info(path: str | os.PathLike) -> dict[int, dict]:
    """Read models_info.json as {obj_id: entry}; every entry needs a positive diameter (mm)."""
    content = _mapping(path, load_json(path))
    out = {}
    for k, entry in content.items():
        obj_id = _int_key(path, k)
        d = _number(path, f"object {k} diameter", _field(path, f"object {k}", entry, "diameter"))
        if not (math.isfinite(d) and d > 0):
            raise _bad(path, f"object {k} has a non-positive diameter {d}.")
        out[obj_id] = dict(entry)
    return out


def save_models_info(path: str | os.PathLike, models_info: Mapping[int, Mapping]) -> None:
    """Write models_info.json ({obj_id: {diameter, min_x, ..., symmetries_*}})."""
    save_json(path, {int(k): _jsonable(v) for k, v in models_info.items()})


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


# ---------------------------------------------------------------------------------------------- targets
def load_targets(path: str | os.PathLike) -> list[Target]:
    """Read test_targets_bop19.json (list of {scene_id, im_id, obj_id, inst_count})."""
    content = load_json(path)
    if not isinstance(content, list):
        raise _bad(path, f"expected a JSON list of targets, got {type(content).__name__}.")
    out = []
    for i, t in enumerate(content):
        vals = [_number(path, f"target {i} {k}", _field(path, f"target {i}", t, k), integer=True)
                for k in ("scene_id", "im_id", "obj_id")]
        count = _positive(path, f"target {i} inst_count", _field(path, f"target {i}", t, "inst_count"), integer=True)
        out.append(Target(*vals, count))
    return out


def save_targets(path: str | os.PathLike, targets: Iterable[Target]) -> None:
    """Write test_targets_bop19.json."""
    save_json(path, [{"im_id": t.im_id, "inst_count": t.inst_count, "obj_id": t.obj_id, "scene_id": t.scene_id}
                     for t in targets])


# ---------------------------------------------------------------------------------------------- scene files
def load_scene_camera(path: str | os.PathLike) -> dict[int, SceneCamera]:
    """Read scene_camera.json as {im_id: SceneCamera}."""
    content = _mapping(path, load_json(path))
    out = {}
    for k, c in content.items():
        im = _int_key(path, k)
        K = _intrinsics(path, f"image {k} cam_K", _matrix(path, f"image {k} cam_K", _field(path, f"image {k}", c, "cam_K"), 3))
        scale = _positive(path, f"image {k} depth_scale", c["depth_scale"]) if "depth_scale" in c else None
        R = _matrix(path, f"image {k} cam_R_w2c", c["cam_R_w2c"], 3) if "cam_R_w2c" in c else None
        t = _matrix(path, f"image {k} cam_t_w2c", c["cam_t_w2c"], 1) if "cam_t_w2c" in c else None
        out[im] = SceneCamera(K=K, depth_scale=scale, R_w2c=R, t_w2c=t)
    return out


def save_scene_camera(path: str | os.PathLike, scene_camera: Mapping[int, SceneCamera]) -> None:
    """Write scene_camera.json."""
    out = {}
    for im, c in scene_camera.items():
        e: dict[str, Any] = {"cam_K": np.asarray(c.K, dtype=np.float64).reshape(9).tolist()}
        if c.depth_scale is not None:
            e["depth_scale"] = float(c.depth_scale)
        if c.R_w2c is not None:
            e["cam_R_w2c"] = np.asarray(c.R_w2c, dtype=np.float64).reshape(9).tolist()
        if c.t_w2c is not None:
            e["cam_t_w2c"] = np.asarray(c.t_w2c, dtype=np.float64).reshape(3).tolist()
        out[int(im)] = e
    save_json(path, out)


def _per_image(path: Any, parse: Any) -> dict[int, list]:
    """{im_id: [parse(where, entry), ...]} of a per-image instance file (scene_gt, scene_gt_info)."""
    content = _mapping(path, load_json(path))
    out = {}
    for k, entries in content.items():
        im = _int_key(path, k)
        if not isinstance(entries, list):
            raise _bad(path, f"image {k} must hold a list of instances, got {type(entries).__name__}.")
        out[im] = [parse(f"image {k} instance {j}", e) for j, e in enumerate(entries)]
    return out


def load_scene_gt(path: str | os.PathLike) -> dict[int, list[GtPose]]:
    """Read scene_gt.json as {im_id: [GtPose, ...]} (list order = GT instance id)."""

    def parse(where: str, g: Any) -> GtPose:
        obj = _number(path, f"{where} obj_id", _field(path, where, g, "obj_id"), integer=True)
        R = _matrix(path, f"{where} cam_R_m2c", _field(path, where, g, "cam_R_m2c"), 3)
        t = _matrix(path, f"{where} cam_t_m2c", _field(path, where, g, "cam_t_m2c"), 1)
        return GtPose(obj_id=obj, R=R, t=t)

    return _per_image(path, parse)


def save_scene_gt(path: str | os.PathLike, scene_gt: Mapping[int, list[GtPose]]) -> None:
    """Write scene_gt.json."""
    out = {
        int(im): [{"cam_R_m2c": np.asarray(g.R, dtype=np.float64).reshape(9).tolist(),
                   "cam_t_m2c": np.asarray(g.t, dtype=np.float64).reshape(3).tolist(),
                   "obj_id": int(g.obj_id)} for g in gts]
        for im, gts in scene_gt.items()
    }
    save_json(path, out)


def _box(path: Any, where: str, value: Any) -> tuple[int, int, int, int]:
    if not isinstance(value, list) or len(value) != 4:
        raise _bad(path, f"{where} must be [x, y, w, h], got {value!r}.")
    return tuple(_number(path, where, v, integer=True) for v in value)  # type: ignore[return-value]


def load_scene_gt_info(path: str | os.PathLike) -> dict[int, list[GtInfo]]:
    """Read scene_gt_info.json as {im_id: [GtInfo, ...]} (same order as scene_gt)."""

    def parse(where: str, e: Any) -> GtInfo:
        def count(name: str) -> int:
            return _number(path, f"{where} {name}", _field(path, where, e, name), integer=True)

        return GtInfo(
            bbox_obj=_box(path, f"{where} bbox_obj", _field(path, where, e, "bbox_obj")),
            bbox_visib=_box(path, f"{where} bbox_visib", _field(path, where, e, "bbox_visib")),
            px_count_all=count("px_count_all"),
            px_count_valid=count("px_count_valid"),
            px_count_visib=count("px_count_visib"),
            visib_fract=_number(path, f"{where} visib_fract", _field(path, where, e, "visib_fract")),
        )

    return _per_image(path, parse)


def save_scene_gt_info(path: str | os.PathLike, scene_gt_info: Mapping[int, list[GtInfo]]) -> None:
    """Write scene_gt_info.json."""
    out = {
        int(im): [{"bbox_obj": [int(v) for v in e.bbox_obj], "bbox_visib": [int(v) for v in e.bbox_visib],
                   "px_count_all": int(e.px_count_all), "px_count_valid": int(e.px_count_valid),
                   "px_count_visib": int(e.px_count_visib), "visib_fract": float(e.visib_fract)} for e in infos]
        for im, infos in scene_gt_info.items()
    }
    save_json(path, out)


# ---------------------------------------------------------------------------------------------- images
def _read_image(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"image {path} not found; check the BOP dataset folder.")
    img = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"image {path} could not be decoded (corrupt or not an image).")
    return img


def _write_image(path: str | os.PathLike, img: np.ndarray, jpg_quality: int = 95) -> None:
    ext = Path(path).suffix.lower()
    if ext not in IMAGE_EXTS:
        raise DatasetError(f"cannot write image {path}: extension must be one of {IMAGE_EXTS}.")
    params = [cv2.IMWRITE_JPEG_QUALITY, jpg_quality] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, img, params)
    if not ok:
        raise DatasetError(f"cannot encode image {path} (dtype {img.dtype}, shape {img.shape}).")
    atomic_write_bytes(path, buf.tobytes())


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read a colour image as RGB uint8 (H, W, 3); a grey image is repeated over 3 channels."""
    img = _read_image(path)
    if img.dtype != np.uint8:
        raise DatasetError(f"image {path} has dtype {img.dtype}; an 8-bit RGB image was expected.")
    if img.ndim == 2:
        return np.repeat(img[:, :, None], 3, axis=2)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_rgb(path: str | os.PathLike, rgb: np.ndarray, jpg_quality: int = 95) -> None:
    """Write an RGB uint8 (H, W, 3) image as PNG or JPEG (by extension), atomically."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DatasetError(f"cannot write {path}: RGB must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}.")
    _write_image(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), jpg_quality)


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Read a grey image (H, W), uint8 or uint16 as stored."""
    img = _read_image(path)
    if img.ndim != 2:
        raise DatasetError(f"image {path} has {img.shape[2]} channels; a single-channel grey image was expected.")
    return img


def write_gray(path: str | os.PathLike, gray: np.ndarray) -> None:
    """Write a grey uint8/uint16 (H, W) image, atomically."""
    gray = np.asarray(gray)
    if gray.ndim != 2 or gray.dtype not in (np.uint8, np.uint16):
        raise DatasetError(f"cannot write {path}: grey image must be uint8/uint16 (H, W), got {gray.dtype} {gray.shape}.")
    _write_image(path, gray)


def read_depth(path: str | os.PathLike, depth_scale: float) -> np.ndarray:
    """Read a uint16 depth PNG and convert it to float32 mm (x depth_scale); 0 = no measurement."""
    img = _read_image(path)
    if img.ndim != 2 or img.dtype not in (np.uint16, np.uint8):
        raise DatasetError(f"depth image {path} must be a 16-bit single-channel PNG, got {img.dtype} {img.shape}.")
    return (img.astype(np.float64) * float(depth_scale)).astype(np.float32)


def write_depth(path: str | os.PathLike, depth_mm: np.ndarray, depth_scale: float = 1.0) -> None:
    """Write float depth in mm (H, W; 0 = none) as a uint16 PNG of round(depth / depth_scale), atomically."""
    d = np.asarray(depth_mm, dtype=np.float64)
    if d.ndim != 2:
        raise DatasetError(f"cannot write depth {path}: expected (H, W), got {d.shape}.")
    if not np.all(np.isfinite(d)) or np.any(d < 0):
        raise DatasetError(f"cannot write depth {path}: values must be finite and >= 0 mm (use 0 for no depth).")
    if Path(path).suffix.lower() != ".png":
        raise DatasetError(f"cannot write depth {path}: depth images are 16-bit PNG files.")
    units = np.round(d / depth_scale)
    if units.max(initial=0) > 65535:
        raise DatasetError(
            f"cannot write depth {path}: {d.max():.1f} mm exceeds 65535 x depth_scale ({depth_scale}); "
            "use a larger depth_scale."
        )
    _write_image(path, units.astype(np.uint16))


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a mask PNG as bool (H, W) (non-zero = object)."""
    img = _read_image(path)
    if img.ndim == 3:
        img = img[:, :, 0]
    return img > 0


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write a bool (H, W) mask as a uint8 PNG (0 / 255), atomically."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise DatasetError(f"cannot write mask {path}: expected (H, W), got {m.shape}.")
    _write_image(path, np.where(m > 0, 255, 0).astype(np.uint8))


# ---------------------------------------------------------------------------------------------- results CSV
def results_filename(method: str, dataset: str, split: str, split_type: str | None = None) -> str:
    """BOP results file name METHOD_DATASET-SPLIT[-SPLITTYPE].csv (the method may not contain '_')."""
    for name, value in (("method", method), ("dataset", dataset), ("split", split), ("split_type", split_type)):
        if value is None and name == "split_type":
            continue
        if not value or "_" in value or (name != "method" and "-" in value) or "/" in value:
            raise DatasetError(
                f"{name} {value!r} cannot be used in a BOP results file name: it must be non-empty, without '_' "
                "(and without '-' for dataset and split)."
            )
    parts = [dataset, split] + ([split_type] if split_type else [])
    return f"{method}_{'-'.join(parts)}.csv"


def parse_results_filename(path: str | os.PathLike) -> ResultsName:
    """Split a results file name METHOD_DATASET-SPLIT[-SPLITTYPE].csv into its parts."""
    stem = Path(path).name
    if stem.endswith(".csv"):
        stem = stem[:-4]
    parts = stem.split("_")
    info = parts[1].split("-") if len(parts) == 2 else []
    if len(parts) != 2 or not parts[0] or len(info) not in (2, 3) or not all(info):
        raise DatasetError(
            f"results file name {Path(path).name!r} is not METHOD_DATASET-SPLIT.csv (e.g. coop_lmo-test.csv, "
            "method without '_'); rename it."
        )
    return ResultsName(method=parts[0], dataset=info[0], split=info[1], split_type=info[2] if len(info) == 3 else None)


def as_estimate(row: PoseEstimate | Mapping[str, Any]) -> PoseEstimate:
    """A PoseEstimate from itself or a mapping with scene_id, im_id, obj_id, score, R, t[, time]."""
    if isinstance(row, PoseEstimate):
        return row
    try:
        return PoseEstimate(
            scene_id=int(row["scene_id"]), im_id=int(row["im_id"]), obj_id=int(row["obj_id"]),
            score=float(row["score"]), R=np.asarray(row["R"], dtype=np.float64).reshape(3, 3),
            t=np.asarray(row["t"], dtype=np.float64).reshape(3), time=float(row.get("time", -1.0)),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(
            f"pose estimate {dict(row)!r} is malformed ({err}); give scene_id, im_id, obj_id, score, R (3x3), t (3) mm."
        ) from err


def check_consistent_times(rows: Iterable[PoseEstimate], source: str = "results") -> None:
    """Raise DatasetError unless every row of one image has the same time (within 1 ms, as bop_toolkit)."""
    times: dict[tuple[int, int], float] = {}
    for r in rows:
        key = (r.scene_id, r.im_id)
        if key in times and abs(times[key] - r.time) > TIME_TOLERANCE_S:
            raise DatasetError(
                f"{source}: scene {r.scene_id} image {r.im_id} has different times ({times[key]} s and {r.time} s); "
                "BOP needs one time per image (the whole image's run time) on every row."
            )
        times.setdefault(key, r.time)


def write_results(path: str | os.PathLike, rows: Iterable[PoseEstimate | Mapping[str, Any]]) -> None:
    """Write pose estimates as a BOP19 results CSV (R row-major, t mm, time s per image), atomically."""
    ests = [as_estimate(r) for r in rows]
    for e in ests:
        R, t = np.asarray(e.R, dtype=np.float64), np.asarray(e.t, dtype=np.float64)
        if R.size != 9 or t.size != 3 or not (np.all(np.isfinite(R)) and np.all(np.isfinite(t)) and math.isfinite(e.score)):
            raise DatasetError(
                f"cannot write {path}: estimate scene {e.scene_id} image {e.im_id} obj {e.obj_id} has a non-finite "
                "or malformed R (3x3), t (3) or score."
            )
    check_consistent_times(ests, source=f"cannot write {path}")
    lines = [RESULTS_HEADER]
    for e in ests:
        R = " ".join(repr(float(v)) for v in np.asarray(e.R, dtype=np.float64).reshape(9))
        t = " ".join(repr(float(v)) for v in np.asarray(e.t, dtype=np.float64).reshape(3))
        lines.append(f"{e.scene_id},{e.im_id},{e.obj_id},{float(e.score)!r},{R},{t},{float(e.time)!r}")
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def read_results(path: str | os.PathLike) -> list[PoseEstimate]:
    """Read a BOP19 results CSV; malformed lines or inconsistent per-image times raise DatasetError."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"results file {path} not found.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path} is not a text CSV ({err}); expected {RESULTS_HEADER}.") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or (n == 1 and line.strip() == RESULTS_HEADER):
            continue
        elems = line.split(",")
        try:
            if len(elems) != 7:
                raise ValueError(f"{len(elems)} comma-separated fields instead of 7")
            R = np.array([float(v) for v in elems[4].split()], dtype=np.float64)
            t = np.array([float(v) for v in elems[5].split()], dtype=np.float64)
            if R.size != 9 or t.size != 3:
                raise ValueError(f"R has {R.size} values (need 9), t has {t.size} (need 3)")
            out.append(PoseEstimate(int(elems[0]), int(elems[1]), int(elems[2]), float(elems[3]),
                                    R.reshape(3, 3), t, float(elems[6])))
        except ValueError as err:
            raise DatasetError(f"{path} line {n}: {err}; expected {RESULTS_HEADER}.") from None
    check_consistent_times(out, source=str(path))
    return out


# ---------------------------------------------------------------------------------------------- dataset index
@dataclass
class BopDataset:
    """A BOP dataset folder and one split: lists scenes, images and targets, reads their files (cached)."""

    root: Path
    split: str = "test"
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not self.root.is_dir():
            raise DatasetError(f"BOP dataset folder {self.root} not found.")

    def _cached(self, key: tuple, fn, *args):
        if key not in self._cache:
            self._cache[key] = fn(*args)
        return self._cache[key]

    @property
    def split_dir(self) -> Path:
        """Folder of the split (root / split)."""
        return self.root / self.split

    @property
    def models_dir(self) -> Path:
        """models_eval/ if present (the models BOP metrics use), else models/."""
        ev = self.root / "models_eval"
        return ev if ev.is_dir() else self.root / "models"

    def model_path(self, obj_id: int) -> Path:
        """Path of obj_OBJID.ply in models_dir."""
        return self.models_dir / f"obj_{obj_id:06d}.ply"

    @property
    def camera(self) -> Camera:
        """camera.json of the dataset."""
        return self._cached(("camera",), load_camera, self.root / "camera.json")

    @property
    def models_info(self) -> dict[int, dict]:
        """models_info.json of models_dir."""
        return self._cached(("models_info",), load_models_info, self.models_dir / "models_info.json")

    def targets(self, filename: str = "test_targets_bop19.json") -> list[Target]:
        """Estimation targets of the dataset (targets file in the dataset root)."""
        return self._cached(("targets", filename), load_targets, self.root / filename)

    def scene_ids(self) -> list[int]:
        """Scene ids of the split (6-digit folders), sorted."""
        if not self.split_dir.is_dir():
            raise DatasetError(f"split folder {self.split_dir} not found; check the split name.")
        return sorted(int(p.name) for p in self.split_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def scene_dir(self, scene_id: int) -> Path:
        """Folder of one scene."""
        return self.split_dir / f"{scene_id:06d}"

    def scene_camera(self, scene_id: int) -> dict[int, SceneCamera]:
        """scene_camera.json of a scene."""
        return self._cached(("scene_camera", scene_id), load_scene_camera, self.scene_dir(scene_id) / "scene_camera.json")

    def scene_gt(self, scene_id: int) -> dict[int, list[GtPose]]:
        """scene_gt.json of a scene."""
        return self._cached(("scene_gt", scene_id), load_scene_gt, self.scene_dir(scene_id) / "scene_gt.json")

    def scene_gt_info(self, scene_id: int) -> dict[int, list[GtInfo]]:
        """scene_gt_info.json of a scene."""
        return self._cached(("scene_gt_info", scene_id), load_scene_gt_info, self.scene_dir(scene_id) / "scene_gt_info.json")

    def image_ids(self, scene_id: int) -> list[int]:
        """Image ids of a scene (keys of scene_camera.json), sorted."""
        return sorted(self.scene_camera(scene_id))

    def image_path(self, scene_id: int, im_id: int, kind: str = "rgb") -> Path | None:
        """Existing file of kind rgb/gray/depth for an image (any supported extension), or None."""
        folder = self.scene_dir(scene_id) / kind
        for ext in IMAGE_EXTS:
            p = folder / f"{im_id:06d}{ext}"
            if p.is_file():
                return p
        return None

    def mask_path(self, scene_id: int, im_id: int, gt_id: int, visib: bool = True) -> Path:
        """Path of mask_visib/ (or mask/) IMID_GTID.png."""
        return self.scene_dir(scene_id) / ("mask_visib" if visib else "mask") / f"{im_id:06d}_{gt_id:06d}.png"

    def K(self, scene_id: int, im_id: int) -> np.ndarray:
        """Intrinsics (3, 3) of an image."""
        cams = self.scene_camera(scene_id)
        if im_id not in cams:
            raise DatasetError(f"{self.scene_dir(scene_id) / 'scene_camera.json'} has no image {im_id}.")
        return cams[im_id].K

    def _require(self, scene_id: int, im_id: int, kind: str) -> Path:
        p = self.image_path(scene_id, im_id, kind)
        if p is None:
            raise DatasetError(f"no {kind} image {im_id:06d} in {self.scene_dir(scene_id) / kind}.")
        return p

    def read_rgb(self, scene_id: int, im_id: int) -> np.ndarray:
        """RGB uint8 (H, W, 3) of an image (from rgb/, else gray/ repeated)."""
        p = self.image_path(scene_id, im_id, "rgb") or self.image_path(scene_id, im_id, "gray")
        if p is None:
            raise DatasetError(f"no rgb (or gray) image {im_id:06d} in {self.scene_dir(scene_id)}/rgb (or gray).")
        return read_rgb(p)

    def has_depth(self, scene_id: int, im_id: int) -> bool:
        """Whether the image has a depth map."""
        return self.image_path(scene_id, im_id, "depth") is not None

    def read_depth(self, scene_id: int, im_id: int) -> np.ndarray:
        """Depth float32 (H, W) in mm (0 = no measurement), scaled by the image's depth_scale."""
        p = self._require(scene_id, im_id, "depth")
        cam = self.scene_camera(scene_id).get(im_id)
        scale = cam.depth_scale if cam is not None and cam.depth_scale is not None else self.camera.depth_scale
        if scale is None:
            raise DatasetError(f"no depth_scale for scene {scene_id} image {im_id} in scene_camera.json or camera.json.")
        return read_depth(p, scale)

    def read_mask(self, scene_id: int, im_id: int, gt_id: int, visib: bool = True) -> np.ndarray:
        """Mask bool (H, W) of GT instance gt_id (visible part by default)."""
        return read_mask(self.mask_path(scene_id, im_id, gt_id, visib))
