"""Contact sheet of BOP scene images with their visible masks, boxes and object ids, to check labels by eye.

Each annotated instance gets a colour: its mask_visib is tinted, outlined, its full mask's outline is
drawn thin, and `obj_id` (with visib_fract %) is written at the visible box's corner.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from cooppose.data import bop
from cooppose.errors import DatasetError

_COLORS = np.array(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180], [70, 240, 240],
     [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [170, 110, 40], [128, 0, 0], [0, 0, 128]],
    dtype=np.uint8,
)


def scene_dirs(path: str | os.PathLike) -> list[Path]:
    """Scene folders under `path`: a scene folder itself, a split folder, or a dataset root (all its splits)."""
    path = Path(path)
    if (path / "scene_gt.json").is_file():
        return [path]
    if not path.is_dir():
        raise DatasetError(f"{path} is not a folder; give a BOP dataset root, split folder or scene folder.")
    found = sorted(p for p in path.iterdir() if p.is_dir() and p.name.isdigit() and (p / "scene_gt.json").is_file())
    if found:
        return found
    found = sorted(
        s for split in path.iterdir() if split.is_dir() for s in split.iterdir()
        if s.is_dir() and s.name.isdigit() and (s / "scene_gt.json").is_file()
    )
    if not found:
        raise DatasetError(f"no BOP scenes (folders with scene_gt.json) under {path}.")
    return found


def _image_path(scene: Path, im_id: int) -> Path:
    for ext in bop.IMAGE_EXTS:
        p = scene / "rgb" / f"{im_id:06d}{ext}"
        if p.is_file():
            return p
    raise DatasetError(f"no rgb image {im_id:06d} in {scene / 'rgb'}.")


def annotate(scene: Path, im_id: int, gts: list[bop.GtPose], infos: list[bop.GtInfo]) -> np.ndarray:
    """RGB uint8 (H, W, 3) of one image with its instances drawn over it."""
    img = bop.read_rgb(_image_path(scene, im_id)).astype(np.float32)
    outlines = []
    for j, (g, info) in enumerate(zip(gts, infos)):
        color = _COLORS[j % len(_COLORS)].astype(np.float32)
        visib = bop.read_mask(scene / "mask_visib" / f"{im_id:06d}_{j:06d}.png")
        img[visib] = 0.55 * img[visib] + 0.45 * color
        full_path = scene / "mask" / f"{im_id:06d}_{j:06d}.png"
        full = bop.read_mask(full_path) if full_path.is_file() else np.zeros_like(visib)
        outlines.append((visib, full, color, g.obj_id, info))
    out = np.clip(img, 0, 255).astype(np.uint8)
    for visib, full, color, obj_id, info in outlines:
        c = tuple(int(x) for x in color)
        for mask, width in ((full, 1), (visib, 2)):
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, c, width)
    for visib, full, color, obj_id, info in outlines:
        if info.px_count_visib == 0:
            continue
        x, y = info.bbox_visib[:2]
        label = f"{obj_id} {100 * info.visib_fract:.0f}%"
        org = (int(np.clip(x, 0, out.shape[1] - 60)), int(np.clip(y + 14, 14, out.shape[0] - 4)))
        cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, label, org, cv2.FONT_HERSHEY_SIMPLEX, 0.5, tuple(int(v) for v in color), 1, cv2.LINE_AA)
    return out


def contact_sheet(path: str | os.PathLike, out: str | os.PathLike, n: int = 12, cols: int = 4, tile_width: int = 480) -> Path:
    """Write a PNG grid of the first n images found under `path` with their labels drawn; return its path."""
    if n < 1 or cols < 1 or tile_width < 32:
        raise DatasetError(f"contact sheet needs n >= 1, cols >= 1 and tile_width >= 32, got {n}, {cols}, {tile_width}.")
    tiles = []
    for scene in scene_dirs(path):
        gt = bop.load_scene_gt(scene / "scene_gt.json")
        info = bop.load_scene_gt_info(scene / "scene_gt_info.json")
        for im_id in sorted(gt):
            if len(tiles) == n:
                break
            img = annotate(scene, im_id, gt[im_id], info.get(im_id, []))
            h = int(round(img.shape[0] * tile_width / img.shape[1]))
            tile = cv2.resize(img, (tile_width, h), interpolation=cv2.INTER_AREA)
            cv2.putText(tile, f"{scene.name}/{im_id:06d}", (4, h - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            tiles.append(tile)
    if not tiles:
        raise DatasetError(f"no images with annotations under {path}.")
    th = max(t.shape[0] for t in tiles)
    rows = -(-len(tiles) // cols)
    sheet = np.zeros((rows * th, min(cols, len(tiles)) * tile_width, 3), np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet[r * th : r * th + t.shape[0], c * tile_width : (c + 1) * tile_width] = t
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise DatasetError(f"the contact sheet is a PNG; give an output path ending in .png, got {out}.")
    bop.write_rgb(out, sheet)
    return out
