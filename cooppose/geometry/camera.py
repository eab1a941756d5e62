"""Intrinsics checks and THE crop/zoom used everywhere (coarse query crop, refiner crop, training data).

A crop is an axis-aligned square window of the image, given as a box (x0, y0, x1, y1) in continuous
OpenCV pixel coordinates (pixel (u, v) is centred at (u, v)), resized to S x S. The box corner
(x0, y0) maps to the crop coordinate (-0.5, -0.5) and (x1, y1) to (S - 0.5, S - 0.5), so
u_crop = s * (u - x0) - 0.5 with s = S / (x1 - x0), and the crop intrinsics are K_crop = A @ K.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np

from cooppose.errors import CameraError, InputError


@dataclass(frozen=True)
class Crop:
    """A square crop: its box in the image, output size S, the affine A (3x3) image->crop and K_crop."""

    box: tuple[float, float, float, float]
    size: int
    A: np.ndarray  # (3, 3) maps homogeneous image pixels to crop pixels
    K: np.ndarray  # (3, 3) intrinsics of the crop

    def to_crop(self, uv: np.ndarray) -> np.ndarray:
        """Map image pixels (..., 2) to crop pixels (..., 2)."""
        return uv * self.A[[0, 1], [0, 1]] + self.A[:2, 2]

    def to_image(self, uv: np.ndarray) -> np.ndarray:
        """Map crop pixels (..., 2) back to image pixels (..., 2)."""
        return (uv - self.A[:2, 2]) / self.A[[0, 1], [0, 1]]


def check_intrinsics(K: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Validate K (3x3, finite, positive focal lengths, principal point inside the (H, W) image); return it as float64."""
    K = np.asarray(K, dtype=np.float64)
    H, W = image_size
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        raise CameraError(f"K must be a finite 3x3 matrix, got shape {K.shape}; pass [[fx,0,cx],[0,fy,cy],[0,0,1]].")
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0, 0, 1]):
        raise CameraError(f"K has non-positive focal lengths or a bad last row: {K.tolist()}.")
    cx, cy = K[0, 2], K[1, 2]
    if not (0 <= cx <= W and 0 <= cy <= H):
        raise CameraError(
            f"K does not fit the {W}x{H} image: principal point ({cx:.1f}, {cy:.1f}) lies outside it. "
            "Check that K belongs to this image (and was scaled if the image was resized)."
        )
    if abs(cx - (W - 1) / 2) > W / 5 or abs(cy - (H - 1) / 2) > H / 5:  # e.g. K of twice or half the resolution
        warnings.warn(
            f"K's principal point ({cx:.1f}, {cy:.1f}) is far from the centre of the {W}x{H} image; check that K "
            "belongs to this image (scale fx, fy, cx, cy with the image when it is resized).",
            stacklevel=2,
        )
    return K


def square_box(box: tuple[float, float, float, float] | np.ndarray, pad: float = 1.0) -> tuple[float, float, float, float]:
    """Smallest square around `box` (x0, y0, x1, y1) with the same centre, its side scaled by `pad`."""
    if np.shape(box) != (4,):
        raise InputError(f"box must be 4 numbers (x0, y0, x1, y1), got shape {np.shape(box)}.")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not np.all(np.isfinite([x0, y0, x1, y1])) or x1 <= x0 or y1 <= y0:
        raise InputError(f"box {box} is empty or not finite; give (x0, y0, x1, y1) with x1 > x0 and y1 > y0.")
    if not (np.isfinite(pad) and pad > 0):
        raise InputError(f"pad must be a positive finite factor, got {pad!r}.")
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half = max(x1 - x0, y1 - y0) * pad / 2
    return (cx - half, cy - half, cx + half, cy + half)


def make_crop(box: tuple[float, float, float, float], K: np.ndarray, size: int, pad: float = 1.0) -> Crop:
    """Crop for the square around `box` padded by `pad`, resized to size x size, with its intrinsics."""
    if int(size) != size or size < 1:
        raise InputError(f"crop size must be a positive integer, got {size!r}.")
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)):
        raise CameraError(f"K must be a finite 3x3 matrix, got shape {K.shape}; pass [[fx,0,cx],[0,fy,cy],[0,0,1]].")
    size = int(size)
    x0, y0, x1, y1 = square_box(box, pad)
    s = size / (x1 - x0)
    A = np.array([[s, 0.0, -s * x0 - 0.5], [0.0, s, -s * y0 - 0.5], [0.0, 0.0, 1.0]])
    return Crop(box=(x0, y0, x1, y1), size=size, A=A, K=A @ K)


_WARP_DTYPES = (np.uint8, np.uint16, np.int16, np.float32, np.float64)  # what cv2.warpAffine interpolates natively


def warp(image: np.ndarray, crop: Crop, nearest: bool = False) -> np.ndarray:
    """Resample an image (H, W[, C]) into the crop (S, S[, C]); outside pixels are 0. Use nearest for depth/masks.

    Keeps the dtype and a trailing channel axis (also C = 1). Dtypes OpenCV cannot warp (int32, int64,
    float16, ...) are warped as float64 and cast back (integers rounded); bool is warped as uint8.
    """
    image = np.asarray(image)
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise InputError(f"image must be a non-empty (H, W) or (H, W, C) array, got shape {image.shape}.")
    if not (image.dtype == bool or np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise InputError(f"image dtype {image.dtype} cannot be warped; pass a boolean, integer or float array.")
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    if image.dtype == bool:
        src = image.astype(np.uint8)
    elif image.dtype.type in _WARP_DTYPES:
        src = image
    else:
        src = image.astype(np.float64)
    src = np.ascontiguousarray(src)
    out = cv2.warpAffine(src, crop.A[:2], (crop.size, crop.size), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if image.ndim == 3 and out.ndim == 2:
        out = out[..., None]  # OpenCV drops a single channel axis
    if image.dtype == bool:
        return out.astype(bool)
    if out.dtype != image.dtype and np.issubdtype(image.dtype, np.integer):
        return np.rint(out).astype(image.dtype)
    return out.astype(image.dtype, copy=False)
