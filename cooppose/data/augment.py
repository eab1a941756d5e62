"""MegaPose's Pillow RGB augmentation (method.md section 6), seeded; applied to query images only.

With probability 0.8 the group runs; inside it each op runs on its own with its probability, in
this order: Gaussian blur (integer radius in {1, 2, 3}, p 0.4), then the ImageEnhance ops Sharpness
(factor U(0, 50), p 0.3), Contrast (U(0.2, 50), p 0.3), Brightness (U(0.1, 6), p 0.5) and
Color (U(0, 20), p 0.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from cooppose.errors import InputError


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and factor intervals of the augmentation group (MegaPose defaults)."""

    p_group: float = 0.8
    p_blur: float = 0.4
    blur_radius: tuple[int, int] = (1, 3)  # inclusive
    p_sharpness: float = 0.3
    sharpness: tuple[float, float] = (0.0, 50.0)
    p_contrast: float = 0.3
    contrast: tuple[float, float] = (0.2, 50.0)
    p_brightness: float = 0.5
    brightness: tuple[float, float] = (0.1, 6.0)
    p_color: float = 0.3
    color: tuple[float, float] = (0.0, 20.0)


def augment_rgb(rgb: np.ndarray, rng: np.random.Generator, config: AugmentConfig = AugmentConfig()) -> np.ndarray:
    """Augment an RGB image uint8 (H, W, 3); returns a new uint8 (H, W, 3); same rng state -> same output."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        desc = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise InputError(f"augment_rgb needs a uint8 (H, W, 3) RGB image, got {desc}; convert it first.")
    # Draw every random number up front so the stream consumed does not depend on the image.
    u = rng.random(6)
    radius = int(rng.integers(config.blur_radius[0], config.blur_radius[1] + 1))
    factors = rng.random(4)
    if u[0] >= config.p_group:
        return rgb.copy()
    img = Image.fromarray(rgb)
    if u[1] < config.p_blur:
        img = img.filter(ImageFilter.GaussianBlur(radius))
    enhancers = [
        (u[2] < config.p_sharpness, ImageEnhance.Sharpness, config.sharpness),
        (u[3] < config.p_contrast, ImageEnhance.Contrast, config.contrast),
        (u[4] < config.p_brightness, ImageEnhance.Brightness, config.brightness),
        (u[5] < config.p_color, ImageEnhance.Color, config.color),
    ]
    for (apply, enhancer, (lo, hi)), f in zip(enhancers, factors):
        if apply:
            img = enhancer(img).enhance(lo + (hi - lo) * float(f))
    return np.asarray(img, dtype=np.uint8).copy()
