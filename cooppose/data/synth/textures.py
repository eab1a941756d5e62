"""Procedural textures, permissively licensed photos (scikit-image) and scene backgrounds, all seeded.

Every generator takes a `numpy.random.Generator` and an output size and returns uint8 (H, W, 3);
the same generator state gives the same image.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import cv2
import numpy as np

from cooppose.errors import ConfigError

# scikit-image sample photos whose docstrings state a permissive licence (checked in skimage 0.26).
PHOTOS: dict[str, str] = {
    "astronaut": "public domain (NASA)",
    "coffee": "CC0 (Rachel Michetti)",
    "chelsea": "CC0 (Stefan van der Walt)",
    "rocket": "public domain (SpaceX)",
    "brick": "CC0 (CC0Textures)",
    "grass": "CC0 (CC0Textures)",
    "gravel": "CC0 (CC0Textures)",
    "camera": "CC0 (Lav Varshney)",
    "hubble_deep_field": "public domain (NASA)",
    "retina": "CC0 1.0",
    "clock": "public domain (Stefan van der Walt)",
    "text": "public domain",
    "cell": "CC0",
    "coins": "no known copyright restrictions (Brooklyn Museum)",
    "immunohistochemistry": "no known copyright restrictions (CMMI)",
}


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo from PHOTOS as uint8 (H, W, 3) (grey ones are replicated); read-only."""
    if name not in PHOTOS:
        raise ConfigError(f"unknown photo {name!r}; choose one of {sorted(PHOTOS)}.")
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)())
    if img.dtype != np.uint8:
        img = (img.astype(np.float64) * (255.0 / max(float(img.max()), 1.0))).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(img[:, :, :3])
    img.setflags(write=False)
    return img


def random_color(rng: np.random.Generator) -> np.ndarray:
    """One colour (3,) uint8: saturated hues, pastels, greys, darks and whites."""
    kind = rng.random()
    if kind < 0.15:
        return np.full(3, rng.integers(0, 256), dtype=np.uint8)
    hsv = np.array([[[rng.integers(0, 180), rng.integers(40, 256), rng.integers(30, 256)]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]


def _palette(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.stack([random_color(rng) for _ in range(n)]).astype(np.float32)  # (n, 3)


def _gradient(t: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Map t in [0, 1] (H, W) through a piecewise-linear colour ramp (n, 3) to uint8 (H, W, 3)."""
    x = np.clip(t, 0.0, 1.0) * (len(colors) - 1)
    i = np.minimum(x.astype(np.int64), len(colors) - 2)
    f = (x - i)[..., None]
    return np.clip(colors[i] * (1 - f) + colors[i + 1] * f, 0, 255).astype(np.uint8)


def _noise_field(rng: np.random.Generator, h: int, w: int, octaves: int, base: int) -> np.ndarray:
    """Fractal value noise in [0, 1] (H, W): bicubically upsampled random grids, halving amplitude per octave."""
    out = np.zeros((h, w), np.float32)
    amp, total = 1.0, 0.0
    for o in range(octaves):
        cells = base * 2**o
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        total += amp
        amp *= 0.5
    out /= total
    lo, hi = out.min(), out.max()
    return (out - lo) / max(hi - lo, 1e-6)


def plain(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A single random colour."""
    return np.broadcast_to(random_color(rng), (h, w, 3)).copy()


def noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Perlin-like fractal noise through a random 2-4 colour ramp."""
    t = _noise_field(rng, h, w, octaves=int(rng.integers(1, 6)), base=int(rng.integers(2, 9)))
    return _gradient(t, _palette(rng, int(rng.integers(2, 5))))


def stripes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Straight stripes at a random angle and period, hard or smooth, 2-4 colours."""
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(4, 64)
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = (u * np.cos(angle) + v * np.sin(angle)) / period
    colors = _palette(rng, int(rng.integers(2, 5)))
    if rng.random() < 0.5:
        idx = np.floor(phase).astype(np.int64) % len(colors)
        return colors[idx].astype(np.uint8)
    return _gradient(0.5 + 0.5 * np.sin(2 * np.pi * phase), colors)


def checkers(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A (possibly rotated) checkerboard with random cell size and two colours."""
    angle = rng.uniform(0, np.pi / 2) if rng.random() < 0.5 else 0.0
    cell = rng.uniform(6, 64)
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    a = (u * np.cos(angle) + v * np.sin(angle)) / cell
    b = (-u * np.sin(angle) + v * np.cos(angle)) / cell
    idx = (np.floor(a).astype(np.int64) + np.floor(b).astype(np.int64)) % 2
    return _palette(rng, 2)[idx].astype(np.uint8)


_FONTS = [
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX,
    cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
    cv2.FONT_HERSHEY_PLAIN,
]
_LETTERS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789%&#@"))


def text_blobs(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Label-like artwork: a background, filled ellipses and rectangles, and lines of random letters."""
    img = np.ascontiguousarray(noise(rng, h, w) if rng.random() < 0.3 else plain(rng, h, w))
    for _ in range(int(rng.integers(0, 6))):
        color = tuple(int(c) for c in random_color(rng))
        center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.5:
            axes = (int(rng.integers(4, max(w // 3, 5))), int(rng.integers(4, max(h // 3, 5))))
            cv2.ellipse(img, center, axes, float(rng.uniform(0, 180)), 0, 360, color, -1, cv2.LINE_AA)
        else:
            corner = (int(center[0] + rng.integers(8, max(w // 2, 9))), int(center[1] + rng.integers(8, max(h // 3, 9))))
            cv2.rectangle(img, center, corner, color, -1)
    for _ in range(int(rng.integers(2, 12))):
        n = int(rng.integers(1, 14))
        word = "".join(rng.choice(_LETTERS, n))
        scale = float(rng.uniform(0.4, 2.5))
        org = (int(rng.integers(-20, w)), int(rng.integers(10, h + 20)))
        color = tuple(int(c) for c in random_color(rng))
        cv2.putText(img, word, org, _FONTS[rng.integers(len(_FONTS))], scale, color, int(rng.integers(1, 4)), cv2.LINE_AA)
    return img


def color_patches(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Voronoi cells of random colours (a patchwork), optionally with dark borders."""
    n = int(rng.integers(3, 40))
    seeds = rng.random((n, 2)) * np.array([w, h])
    colors = _palette(rng, n)
    step = 4  # label a 1/4-resolution grid, then upsample with nearest neighbour
    v, u = np.mgrid[0 : h : step, 0:w:step].astype(np.float32)
    d = (u[..., None] - seeds[:, 0]) ** 2 + (v[..., None] - seeds[:, 1]) ** 2  # (h/4, w/4, n)
    labels = np.argmin(d, -1).astype(np.uint8)
    labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
    img = colors[labels].astype(np.uint8)
    if rng.random() < 0.4:
        edges = cv2.morphologyEx(labels, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        img[edges] = random_color(rng) // 4
    return img


def photo_patch(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random crop (random scale, flips, 90-degree turns) of a PHOTOS image, resized to (h, w)."""
    photo = load_photo(str(rng.choice(sorted(PHOTOS))))
    ph, pw = photo.shape[:2]
    side = rng.uniform(0.15, 1.0) * min(ph, pw)
    ch, cw = int(max(8, min(ph, side * rng.uniform(0.7, 1.0)))), int(max(8, min(pw, side * rng.uniform(0.7, 1.0))))
    y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = photo[y0 : y0 + ch, x0 : x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1]
    crop = np.rot90(crop, int(rng.integers(0, 4)))
    return cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=cv2.INTER_AREA)


TEXTURES: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "noise": noise,
    "stripes": stripes,
    "checkers": checkers,
    "text_blobs": text_blobs,
    "color_patches": color_patches,
    "photo_patch": photo_patch,
}


def random_texture(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, str]:
    """A random procedural or photo texture uint8 (h, w, 3) and the name of its generator."""
    name = str(rng.choice(list(TEXTURES)))
    return TEXTURES[name](rng, h, w), name


def random_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A scene background uint8 (h, w, 3): a photo crop (60%) or a procedural texture, sometimes blurred."""
    if rng.random() < 0.6:
        img = photo_patch(rng, h, w)
    else:
        img, _ = random_texture(rng, h, w)
    if rng.random() < 0.3:
        k = 2 * int(rng.integers(1, 5)) + 1
        img = cv2.GaussianBlur(img, (k, k), 0)
    return np.ascontiguousarray(img)
