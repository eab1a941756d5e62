"""Pictures of what the pipeline did (headless, numpy + OpenCV): pose overlays, coarse matches, refiner outputs.

- `overlay_pose`: the mesh rendered at a pose, blended into the image, with its contour.
- `coarse_panel` (supplementary Fig. 1 style): query crop | best template, matched patches and lines.
- `refine_panel` (Fig. 2 style): query crop, initial rendering, flow (colour wheel), confidence,
  flow probability, certainty, sensitivity, refined overlay.
All functions return uint8 RGB images; `save_png` writes one atomically.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cooppose.fileio import atomic_write_bytes

GREEN, RED, YELLOW = (60, 220, 60), (230, 50, 50), (250, 210, 40)
CAPTION_PX = 18


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 image as PNG atomically (temp file in the same folder + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"could not encode {path} as PNG")
    atomic_write_bytes(path, buf.tobytes())
    return path


def blend_mask(rgb: np.ndarray, mask: np.ndarray, render_rgb: np.ndarray | None = None, color=GREEN,
               alpha: float = 0.5) -> np.ndarray:
    """Blend a rendering (or a flat colour) into rgb where mask is set, and draw the mask's contour."""
    out = rgb.astype(np.float32).copy()
    paint = render_rgb.astype(np.float32) if render_rgb is not None else np.broadcast_to(np.float32(color), out.shape)
    out[mask] = (1 - alpha) * out[mask] + alpha * paint[mask]
    out = out.round().astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, color, max(1, round(min(rgb.shape[:2]) / 250)), lineType=cv2.LINE_AA)
    return out


def overlay_pose(rgb: np.ndarray, obj, K: np.ndarray, T: np.ndarray, renderer=None, color=GREEN,
                 alpha: float = 0.5) -> np.ndarray:
    """The image with the mesh rendered at pose T (mm) blended in and its silhouette outlined."""
    if renderer is None:
        from cooppose.render import Renderer

        renderer = Renderer()
    H, W = rgb.shape[:2]
    r = renderer.render(obj, np.asarray(K, dtype=np.float64), np.asarray(T, dtype=np.float64), size=(H, W))
    return blend_mask(rgb, r.mask, r.rgb, color, alpha)


def flow_to_color(flow: np.ndarray, valid: np.ndarray | None = None, max_norm: float | None = None) -> np.ndarray:
    """Colour-wheel picture (H, W, 3) of a flow (2, H, W): hue = direction, saturation = magnitude / max_norm."""
    u, v = flow[0].astype(np.float32), flow[1].astype(np.float32)
    mag = np.hypot(u, v)
    valid = np.isfinite(mag) if valid is None else (valid & np.isfinite(mag))
    if max_norm is None:
        max_norm = float(np.percentile(mag[valid], 99)) if valid.any() else 1.0
    ang = (np.degrees(np.arctan2(-v, -u)) + 180.0) / 2.0  # [0, 180) OpenCV hue
    hsv = np.zeros(mag.shape + (3,), np.uint8)
    hsv[..., 0] = np.nan_to_num(ang).astype(np.uint8) % 180
    hsv[..., 1] = (np.clip(np.nan_to_num(mag) / max(max_norm, 1e-6), 0, 1) * 255).astype(np.uint8)
    hsv[..., 2] = 255
    out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    out[~valid] = 0
    return out


def colorize(values: np.ndarray, valid: np.ndarray | None = None, vmin: float = 0.0, vmax: float | None = None) -> np.ndarray:
    """Viridis picture (H, W, 3) of a scalar map; vmax defaults to the 99th percentile of the valid values."""
    v = np.nan_to_num(values.astype(np.float32))
    valid = np.ones(v.shape, bool) if valid is None else valid
    if vmax is None:
        vmax = float(np.percentile(v[valid], 99)) if valid.any() else 1.0
    scaled = np.clip((v - vmin) / max(vmax - vmin, 1e-9), 0, 1)
    out = cv2.cvtColor(cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS), cv2.COLOR_BGR2RGB)
    out[~valid] = 0
    return out


def caption(tile: np.ndarray, text: str) -> np.ndarray:
    """The tile with a black caption strip on top."""
    strip = np.zeros((CAPTION_PX, tile.shape[1], 3), np.uint8)
    cv2.putText(strip, text, (3, CAPTION_PX - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    return np.vstack([strip, tile])


def grid(tiles: list[np.ndarray], cols: int) -> np.ndarray:
    """Tiles of equal size laid out in rows of `cols` (missing cells black)."""
    h, w = tiles[0].shape[:2]
    rows = []
    for i in range(0, len(tiles), cols):
        row = list(tiles[i:i + cols]) + [np.zeros((h, w, 3), np.uint8)] * (cols - len(tiles[i:i + cols]))
        rows.append(np.hstack(row))
    return np.vstack(rows)


def coarse_panel(info: dict, max_lines: int = 60) -> np.ndarray:
    """Query crop | best template side by side, matched patches boxed and joined (inliers green, outliers red).

    `info` is `PoseHypothesis.debug["coarse"]` (estimate(..., debug=True)): query, template_rgb, q, m, inliers.
    """
    query, template = info["query"], info["template_rgb"]
    S = query.shape[0]
    canvas = np.hstack([query, template]).copy()
    q, m, inl = info["q"], info["m"], info["inliers"]
    inl = np.zeros(len(q), bool) if inl is None or len(inl) != len(q) else inl
    step = max(1, int(np.ceil(len(q) / max_lines)))
    half = 8
    for i in range(0, len(q), step):
        col = GREEN if inl[i] else RED
        (qx, qy), (mx, my) = q[i], m[i]
        cv2.rectangle(canvas, (int(qx - half), int(qy - half)), (int(qx + half), int(qy + half)), col, 1)
        cv2.circle(canvas, (int(round(mx + S)), int(round(my))), 2, col, -1, cv2.LINE_AA)
        cv2.line(canvas, (int(round(qx)), int(round(qy))), (int(round(mx + S)), int(round(my))), col, 1, cv2.LINE_AA)
    n_in = int(inl.sum())
    return caption(canvas, f"query | template  {len(q)} matches, {n_in} inliers")


def refine_panel(iteration: dict, renderer=None, obj=None) -> np.ndarray:
    """Fig. 2 style row for one refinement iteration (`PoseHypothesis.debug["refine"][i]`).

    Tiles: query crop, rendering at the initial pose, flow, confidence, flow probability, certainty,
    sensitivity and, when a renderer and the object are given, the refined pose drawn on the query crop.
    """
    view, pred = iteration["view"], iteration["prediction"]
    valid = view.mask
    tiles = [caption(view.query, "query crop"), caption(view.render, "initial render"),
             caption(flow_to_color(pred.flow, valid), "flow"), caption(colorize(pred.confidence, valid), "confidence")]
    if pred.flow_probability is not None:
        tiles.append(caption(colorize(pred.flow_probability, valid, vmax=1.0), "flow probability"))
    tiles.append(caption(colorize(pred.certainty, valid, vmax=1.0), "certainty"))
    if pred.sensitivity is not None:
        tiles.append(caption(colorize(pred.sensitivity, valid), "sensitivity"))
    if renderer is not None and obj is not None:
        S = view.query.shape[0]
        r = renderer.render(obj, view.crop.K, iteration["T_after"], size=(S, S))
        tiles.append(caption(blend_mask(view.query, r.mask, r.rgb), "refined"))
    return grid(tiles, cols=4)
