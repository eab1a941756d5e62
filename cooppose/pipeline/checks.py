"""Sanity checks run before estimating: each bad input gets a CoopposeError (or a warning) naming the fix."""

from __future__ import annotations

import warnings
import numpy as np

from cooppose.errors import InputError, MeshError

MIN_BOX_PX = 4.0  # a detection box narrower or lower than this (pixels) cannot be cropped meaningfully
MIN_DIAMETER_MM = 1.0  # below: the mesh was almost surely given in metres and read as millimetres
# Ratio r = median depth / (f * diameter / box side). An object cannot look larger than its diameter,
# so r <= ~1 (slack for background pixels in the box); a thin object seen end-on gives r ~ 0.1.
DEPTH_RATIO_MIN, DEPTH_RATIO_WARN = 0.02, 4.0


def check_image(rgb) -> np.ndarray:
    """Return the image as uint8 (H, W, 3); grey (H, W) or (H, W, 1) is replicated, RGBA loses alpha."""
    img = np.asarray(rgb)
    if img.dtype != np.uint8:
        hint = " (scale a [0, 1] float image with (img * 255).round().astype(np.uint8))" if img.dtype.kind == "f" else ""
        raise InputError(f"rgb must be a uint8 image, got dtype {img.dtype}; convert it to 8-bit RGB{hint}.")
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 3, 4):
        raise InputError(f"rgb must have shape (H, W, 3) (or grey (H, W), RGBA (H, W, 4)), got {img.shape}.")
    if min(img.shape[:2]) < 16:
        raise InputError(f"rgb is only {img.shape[1]}x{img.shape[0]} pixels; pass the full camera image.")
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[..., :3])


def check_box(box, image_size: tuple[int, int]) -> tuple[float, float, float, float]:
    """Validate a detection box (x0, y0, x1, y1) for an (H, W) image; clip it to the image (warning if it had to)."""
    H, W = image_size
    b = np.asarray(box, dtype=np.float64).ravel() if box is not None else np.zeros(0)
    if b.shape != (4,) or not np.all(np.isfinite(b)):
        raise InputError(f"box must be 4 finite numbers (x0, y0, x1, y1) in pixels, got {box!r}.")
    x0, y0, x1, y1 = b
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"box {tuple(b)} is empty or inverted; give (x0, y0, x1, y1) with x1 > x0 and y1 > y0.")
    lo_x, lo_y, hi_x, hi_y = -0.5, -0.5, W - 0.5, H - 0.5
    clipped = (max(x0, lo_x), max(y0, lo_y), min(x1, hi_x), min(y1, hi_y))
    if clipped[2] - clipped[0] < MIN_BOX_PX or clipped[3] - clipped[1] < MIN_BOX_PX:
        raise InputError(
            f"box {tuple(round(v, 1) for v in b)} leaves less than {MIN_BOX_PX:.0f} px inside the {W}x{H} image; "
            "give a box in pixels of this image (x0, y0, x1, y1), not normalised or (x, y, w, h)."
        )
    if clipped != (x0, y0, x1, y1) and (x0 < lo_x - 1 or y0 < lo_y - 1 or x1 > hi_x + 1 or y1 > hi_y + 1):
        warnings.warn(f"box {tuple(round(v, 1) for v in b)} extends outside the {W}x{H} image; clipped to it.", stacklevel=3)
    return tuple(float(v) for v in clipped)


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight box (x0, y0, x1, y1) of a non-empty boolean mask, in continuous pixel coordinates."""
    ys, xs = np.nonzero(mask)
    return (xs.min() - 0.5, ys.min() - 0.5, xs.max() + 0.5, ys.max() + 0.5)


def check_mask(mask, image_size: tuple[int, int]) -> np.ndarray:
    """Validate an instance mask (H, W) (bool, or 0/non-0 numbers); return it as bool."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] in (1, 3, 4):
        m = m[..., 0]
    if m.shape != tuple(image_size):
        raise InputError(f"mask has shape {m.shape} but the image is {tuple(image_size)}; give one (H, W) mask per image.")
    m = m.astype(bool) if m.dtype == bool else (np.nan_to_num(m.astype(np.float64)) > 0)
    if m.sum() < MIN_BOX_PX:
        raise InputError(f"mask has {int(m.sum())} pixels set; give a non-empty mask of the object (or a box).")
    return m


def check_depth(depth, image_size: tuple[int, int], depth_scale: float = 1.0) -> np.ndarray:
    """Depth (H, W) times depth_scale as float32 millimetres; NaN/inf/negative become 0 (unknown)."""
    if not (np.isfinite(depth_scale) and depth_scale > 0):
        raise InputError(f"depth_scale must be a positive number (depth_mm = depth * depth_scale), got {depth_scale}.")
    d = np.asarray(depth)
    if d.ndim == 3 and d.shape[2] == 1:
        d = d[..., 0]
    if d.shape != tuple(image_size):
        raise InputError(f"depth has shape {d.shape} but the image is {tuple(image_size)}; register depth to the RGB image.")
    if d.dtype.kind not in "uif":
        raise InputError(f"depth must be numeric (e.g. uint16 or float32), got dtype {d.dtype}.")
    d = d.astype(np.float64) * depth_scale
    d[~np.isfinite(d) | (d < 0)] = 0.0
    if not np.any(d > 0):
        raise InputError("depth is all zero / NaN; pass a valid depth map (or no depth for the RGB-only pipeline).")
    return d.astype(np.float32)


def check_depth_units(depth_mm: np.ndarray, box, K: np.ndarray, diameter_mm: float, mask: np.ndarray | None = None) -> None:
    """Refuse depth that cannot be in millimetres for this object, box and camera (e.g. metres); warn when odd."""
    x0, y0, x1, y1 = box
    H, W = depth_mm.shape
    sel = np.zeros((H, W), dtype=bool)
    sel[max(int(np.ceil(y0)), 0):int(np.floor(y1)) + 1, max(int(np.ceil(x0)), 0):int(np.floor(x1)) + 1] = True
    if mask is not None:
        sel &= mask
    values = depth_mm[sel]
    values = values[values > 0]
    if values.size < max(10, 0.05 * sel.sum()):
        raise InputError(
            f"depth is (almost) all zero inside the box {tuple(round(v, 1) for v in box)}; "
            "check that depth is registered to the RGB image, or estimate without depth."
        )
    side = max(x1 - x0, y1 - y0)
    z_max = np.sqrt(K[0, 0] * K[1, 1]) * diameter_mm / side  # farthest the object can be and still fill the box
    r = float(np.median(values)) / z_max
    if r < DEPTH_RATIO_MIN:
        raise InputError(
            f"median depth in the box is {np.median(values):.3g} mm, but an object of diameter {diameter_mm:.0f} mm "
            f"filling a {side:.0f} px box is ~{z_max:.0f} mm away: the depth looks like metres. "
            "Pass depth_scale=1000 (depth_mm = depth * depth_scale)."
        )
    if r > DEPTH_RATIO_WARN:
        warnings.warn(
            f"median depth in the box ({np.median(values):.0f} mm) is {r:.1f}x farther than an object of diameter "
            f"{diameter_mm:.0f} mm filling a {side:.0f} px box can be; check depth_scale and the mesh units.",
            stacklevel=3,
        )


def check_object_units(diameter_mm: float, name: str = "mesh") -> None:
    """Refuse a mesh whose diameter says it was read in the wrong units."""
    if not np.isfinite(diameter_mm) or diameter_mm < MIN_DIAMETER_MM:
        raise MeshError(
            f"{name} has a diameter of {diameter_mm:.3g} mm: it looks like it is in metres. "
            "Load it with load_mesh(path, units='m')."
        )
    if diameter_mm > 10_000:
        warnings.warn(f"{name} has a diameter of {diameter_mm / 1000:.1f} m; check that its units are right.", stacklevel=3)


def check_detection(diameter_mm: float, box, mask, image_size: tuple[int, int], K: np.ndarray,
                    depth_mm: np.ndarray | None = None, name: str = "mesh") -> tuple[tuple[float, float, float, float], np.ndarray | None]:
    """Check one detection (object size, box and/or mask, depth units in its box); return (box, mask as bool or None)."""
    check_object_units(diameter_mm, name)
    if box is None and mask is None:
        raise InputError("give a detection: a box (x0, y0, x1, y1) or an instance mask.")
    m = check_mask(mask, image_size) if mask is not None else None
    b = check_box(box if box is not None else mask_box(m), image_size)
    if depth_mm is not None:
        check_depth_units(depth_mm, b, K, diameter_mm, m)
    return b, m


def split_detection(i: int, det) -> tuple:
    """(obj, box, mask) of detection i given as a pair (obj, box (x0, y0, x1, y1) or mask (H, W)); InputError otherwise."""
    if not isinstance(det, (tuple, list)) or len(det) != 2:
        raise InputError(f"detection {i} must be a pair (obj, box or mask), got {type(det).__name__}.")
    obj, region = det
    is_mask = region is not None and np.ndim(region) == 2
    return obj, None if is_mask else region, region if is_mask else None
