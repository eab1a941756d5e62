"""Reading maps (template xyz, query depth) at sub-pixel positions without mixing in empty pixels."""

from __future__ import annotations

import numpy as np


def sample_map(values: np.ndarray, valid: np.ndarray, uv: np.ndarray, max_spread: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """Values (H, W[, C]) at pixels uv (N, 2) -> (N, C) float64 and ok (N,).

    Bilinear where the 4 neighbouring pixels are valid and their values lie within `max_spread` of each
    other (no surface discontinuity); otherwise the nearest pixel if it is valid; otherwise not ok.
    """
    vals = np.asarray(values, dtype=np.float64)
    if vals.ndim == 2:
        vals = vals[..., None]
    H, W, C = vals.shape
    uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
    finite = np.isfinite(uv).all(-1)
    uv = np.where(finite[:, None], uv, -10.0)
    out = np.zeros((len(uv), C))
    # nearest pixel
    n = np.rint(uv).astype(np.int64)
    inside = finite & (n[:, 0] >= 0) & (n[:, 0] < W) & (n[:, 1] >= 0) & (n[:, 1] < H)
    nx, ny = n[:, 0].clip(0, W - 1), n[:, 1].clip(0, H - 1)
    ok = inside & valid[ny, nx]
    out[ok] = vals[ny[ok], nx[ok]]
    # bilinear where the 2x2 neighbourhood is valid and continuous
    x0 = np.floor(uv[:, 0]).astype(np.int64)
    y0 = np.floor(uv[:, 1]).astype(np.int64)
    in4 = finite & (x0 >= 0) & (x0 + 1 < W) & (y0 >= 0) & (y0 + 1 < H)
    xa, ya = x0.clip(0, W - 2), y0.clip(0, H - 2)
    corners = [(ya, xa), (ya, xa + 1), (ya + 1, xa), (ya + 1, xa + 1)]
    cv = np.stack([vals[y, x] for y, x in corners], 0)  # (4, N, C)
    cok = np.stack([valid[y, x] for y, x in corners], 0).all(0) & in4
    spread = (cv.max(0) - cv.min(0)).max(-1)
    bil = cok & (spread <= max_spread)
    fx = (uv[:, 0] - xa)[:, None]
    fy = (uv[:, 1] - ya)[:, None]
    interp = (cv[0] * (1 - fx) * (1 - fy) + cv[1] * fx * (1 - fy) + cv[2] * (1 - fx) * fy + cv[3] * fx * fy)
    out[bil] = interp[bil]
    return out, ok | bil
