"""Training datasets of the coarse, refiner and selection models, read from BOP-format (synthetic) scenes.

`build_dataset(kind, cfg, split)` indexes every annotated instance at least `min_visib` visible in the
scene folders, keeps the images of the split (a fixed hash of scene and image id puts `val_fraction`
of the images in "val"), and yields the dicts of docs/design.md ("Training batches"). Sample i is a
pure function of (cfg seed, i): its generator is `numpy.random.default_rng([seed, i])`, the same in
every epoch and worker. Only the query is augmented, and only in the "train" split. The renderer and
object meshes are created lazily in each process (DataLoader workers make their own). A coarse sample
renders only the template it uses (one view, exactly as `cooppose.onboarding.onboard` renders it)
instead of onboarding all 42, so that sampling among thousands of objects stays cheap.
"""

from __future__ import annotations

import math
import os
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch.utils.data import Dataset

from cooppose.data.augment import augment_rgb
from cooppose.data.bop import BopDataset, load_models_info
from cooppose.data.targets import (
    certainty_targets,
    choose_template,
    coarse_labels,
    flow_targets,
    patch_centers,
    patch_pixels,
    perturb_pose,
    refiner_crop,
    selection_label,
)
from cooppose.errors import ConfigError, DatasetError
from cooppose.geometry.camera import make_crop, warp
from cooppose.geometry.transforms import make_pose, random_rotations
from cooppose.models import normalize
from cooppose.onboarding import TEMPLATE_LIGHT
from cooppose.pipeline.coarse import PATCH, QUERY_PAD
from cooppose.pipeline.refine import REFINE_PAD

KINDS = ("coarse", "refiner", "selection")
SPLITS = ("train", "val")
COMMON_DEFAULTS: dict[str, Any] = {
    "scenes": None,  # a scene folder, a split folder of scenes, a dataset root, or a list of these
    "models": None,  # BOP models folder (obj_OBJID.ply + models_info.json); default: the dataset's models/
    "size": 160,  # network input S
    "seed": 0,
    "augment": True,  # MegaPose RGB augmentation of the query (train split only)
    "min_visib": 0.1,  # instances less visible than this are skipped
    "val_fraction": 0.1,  # share of the images in the "val" split
    "backend": "auto",  # renderer backend
    "object_cache": 256,  # meshes kept per process
    "obj_ids": None,  # only instances of these object ids (e.g. the textured ones for a first curriculum stage)
}
KIND_DEFAULTS: dict[str, dict[str, Any]] = {
    "coarse": {
        "patch": PATCH,
        "query_pad": QUERY_PAD,  # as inference: the square around the detection box
        "box_shift": 0.1,  # detection-box centre jitter, std as a fraction of the box width / height
        "box_scale": 0.15,  # detection-box size jitter, std of the log scale per axis
        "p_negative": 0.2,  # share of templates that are not the nearest view
        "n_near": 4,  # "near" negatives come from the next n_near views
        "label_tol": 0.02,  # template depth test tolerance, fraction of the diameter
        "template_level": 0,  # icosphere level of the templates (0: 42 views)
    },
    "refiner": {
        "crop_pad": REFINE_PAD,  # as inference
        "trans_std_mm": (10.0, 10.0, 50.0),
        "rot_std_deg": 15.0,
        "cert_tol": 0.02,  # certainty depth test tolerance, fraction of the diameter
        "n_points": 512,
    },
    "selection": {
        "crop_pad": REFINE_PAD,
        "p_positive": 0.5,  # hypotheses drawn inside the positive thresholds
        "p_far": 0.2,  # negatives with a uniformly random rotation (the rest: 1.2-4x the thresholds)
        "rot_thresh_deg": 5.0,
        "trans_frac": 0.1,
    },
}


@dataclass(frozen=True)
class InstanceRef:
    """One training instance: an annotated object in one image of one scene source."""

    source: int  # index into the dataset's scene sources
    scene_id: int
    im_id: int
    gt_id: int
    obj_id: int
    bbox_visib: tuple[int, int, int, int]  # BOP (x, y, w, h)


def resolve_config(kind: str, cfg: dict) -> dict:
    """cfg merged over the defaults of `kind`; unknown keys or bad values raise ConfigError."""
    if kind not in KINDS:
        raise ConfigError(f"dataset kind must be one of {KINDS}, got {kind!r}.")
    allowed = {**COMMON_DEFAULTS, **KIND_DEFAULTS[kind]}
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown {kind} dataset config keys {unknown}; allowed: {sorted(allowed)}.")
    out = {**allowed, **cfg}
    if out["scenes"] is None:
        raise ConfigError("dataset config needs 'scenes': a BOP scene folder, split folder or dataset root (or a list).")
    S = out["size"]
    if not isinstance(S, int) or S < PATCH or S % PATCH:
        raise ConfigError(f"dataset 'size' must be a multiple of the patch size {PATCH}, got {S!r}.")
    if not 0.0 <= float(out["val_fraction"]) < 1.0 or not 0.0 <= float(out["min_visib"]) <= 1.0:
        raise ConfigError(f"'val_fraction' must be in [0, 1) and 'min_visib' in [0, 1], got {out['val_fraction']}, {out['min_visib']}.")
    ids = out["obj_ids"]
    if ids is not None and not (isinstance(ids, list) and ids and all(isinstance(i, int) and not isinstance(i, bool) for i in ids)):
        raise ConfigError(f"'obj_ids' must be null or a non-empty list of object ids, got {ids!r}.")
    return out


def image_split(scene_id: int, im_id: int, val_fraction: float) -> str:
    """'val' for a fixed pseudo-random val_fraction of the (scene, image) pairs, else 'train'."""
    h = zlib.crc32(f"{scene_id:06d}/{im_id:06d}".encode()) / 2**32
    return "val" if h < val_fraction else "train"


def _is_scene(p: Path) -> bool:
    return p.is_dir() and p.name.isdigit() and (p / "scene_gt.json").is_file()


def scene_sources(scenes: Any) -> list[tuple[BopDataset, int]]:
    """(BopDataset, scene_id) of every scene under the given scene / split / dataset-root folder(s)."""
    paths = [scenes] if isinstance(scenes, (str, os.PathLike)) else list(scenes)
    out: list[tuple[BopDataset, int]] = []
    for p in map(Path, paths):
        if _is_scene(p):
            out.append((BopDataset(p.parent.parent, p.parent.name), int(p.name)))
            continue
        split_dirs = [p] if p.is_dir() and any(_is_scene(c) for c in p.iterdir()) else []
        if not split_dirs and p.is_dir():
            split_dirs = sorted(c for c in p.iterdir() if c.is_dir() and any(_is_scene(s) for s in c.iterdir()))
        if not split_dirs:
            raise DatasetError(
                f"{p} holds no BOP scenes (folders NNNNNN/ with scene_gt.json); give a scene, split or dataset folder "
                "made by `cooppose synth scenes`."
            )
        for d in split_dirs:
            ds = BopDataset(d.parent, d.name)
            out.extend((ds, s) for s in ds.scene_ids() if _is_scene(ds.scene_dir(s)))
    return out


def _lru_get(cache: OrderedDict, key, make, size: int):
    value = cache.get(key)
    if value is None:
        value = make()
        cache[key] = value
        while len(cache) > size:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return value


def _to_chw(rgb: np.ndarray) -> torch.Tensor:
    return normalize(np.ascontiguousarray(rgb))[0]  # (3, S, S) float32


def jitter_box(bbox_xywh: tuple[int, int, int, int], rng: np.random.Generator, shift: float, scale: float) -> tuple[float, float, float, float]:
    """An imprecise detection (x0, y0, x1, y1) around a BOP box: centre moved and sides rescaled at random."""
    x, y, w, h = (float(v) for v in bbox_xywh)
    cx, cy = x - 0.5 + w / 2, y - 0.5 + h / 2  # pixels x .. x + w - 1 span [x - 0.5, x + w - 0.5]
    cx += rng.normal(0.0, shift) * w
    cy += rng.normal(0.0, shift) * h
    w2 = max(2.0, w * math.exp(rng.normal(0.0, scale)))
    h2 = max(2.0, h * math.exp(rng.normal(0.0, scale)))
    return (cx - w2 / 2, cy - h2 / 2, cx + w2 / 2, cy + h2 / 2)


class _Local:
    """Per-process state: renderer, object meshes, template poses (never pickled, re-made after a fork)."""

    def __init__(self, models_dir: Path, object_cache: int, backend: str):
        from cooppose.data.synth.scenes import ObjectPool
        from cooppose.render import Renderer

        self.pid = os.getpid()
        self.pool = ObjectPool(models_dir, cache=object_cache)
        self.renderer = Renderer(backend=backend)
        self.template_poses: OrderedDict = OrderedDict()  # content hash -> (N, 4, 4)


class SceneInstances(Dataset):
    """Indexes the instances of BOP scenes and reads one (image, K, pose, masks) at a time; base of the three datasets."""

    kind = ""

    def __init__(self, cfg: dict, split: str):
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {split!r}.")
        self.cfg = resolve_config(self.kind, cfg)
        self.split = split
        self.size = int(self.cfg["size"])
        self.seed = int(self.cfg["seed"])
        self.augment = bool(self.cfg["augment"]) and split == "train"
        self.sources = scene_sources(self.cfg["scenes"])
        models = self.cfg["models"]
        self.models_dir = Path(models) if models is not None else self.sources[0][0].models_dir
        if not (self.models_dir / "models_info.json").is_file():
            raise DatasetError(f"{self.models_dir} has no models_info.json; set the dataset config 'models' to the objects folder.")
        self.known_objects = set(load_models_info(self.models_dir / "models_info.json"))
        if self.cfg["obj_ids"] is not None:
            self.known_objects &= set(self.cfg["obj_ids"])
        self.items = self._index()
        if not self.items:
            raise DatasetError(
                f"no {split} instances at least {self.cfg['min_visib']} visible with a model in {self.models_dir} "
                f"under {self.cfg['scenes']}; generate more images or lower 'min_visib' / change 'val_fraction'."
            )
        self._local: _Local | None = None

    def _index(self) -> list[InstanceRef]:
        out = []
        for k, (ds, scene_id) in enumerate(self.sources):
            gts, infos = ds.scene_gt(scene_id), ds.scene_gt_info(scene_id)
            for im_id in sorted(gts):
                if image_split(scene_id, im_id, float(self.cfg["val_fraction"])) != self.split:
                    continue
                for gt_id, (gt, info) in enumerate(zip(gts[im_id], infos.get(im_id, []))):
                    _, _, w, h = info.bbox_visib
                    if gt.obj_id in self.known_objects and info.visib_fract >= self.cfg["min_visib"] and w > 0 and h > 0:
                        out.append(InstanceRef(k, scene_id, im_id, gt_id, gt.obj_id, tuple(info.bbox_visib)))
        return out

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_local"] = None
        return state

    @property
    def local(self) -> _Local:
        """This process's renderer, mesh pool and template cache (created on first use)."""
        if self._local is None or self._local.pid != os.getpid():
            self._local = _Local(self.models_dir, int(self.cfg["object_cache"]), self.cfg["backend"])
        return self._local

    def sample(self, i: int) -> tuple[InstanceRef, np.random.Generator]:
        """The instance of sample i and its generator default_rng([seed, i]) (the same in every epoch)."""
        n = len(self.items)
        if not -n <= i < n:
            raise IndexError(f"sample {i} out of range for a dataset of {n}.")
        i = int(i) % n
        return self.items[i], np.random.default_rng([self.seed, i])

    def view(self, ref: InstanceRef, mask: bool = False, depth: bool = False) -> dict:
        """rgb (H, W, 3) uint8, K (3, 3), T_gt (4, 4) mm, obj, and when asked mask_visib (H, W) bool, depth (H, W) mm."""
        ds, _ = self.sources[ref.source]
        gt = ds.scene_gt(ref.scene_id)[ref.im_id][ref.gt_id]
        out = {
            "rgb": ds.read_rgb(ref.scene_id, ref.im_id),
            "K": ds.K(ref.scene_id, ref.im_id),
            "T_gt": make_pose(gt.R, gt.t),
            "obj": self.local.pool.get(ref.obj_id),
        }
        if mask:
            out["mask_visib"] = ds.read_mask(ref.scene_id, ref.im_id, ref.gt_id)
        if depth:
            if not ds.has_depth(ref.scene_id, ref.im_id):
                raise DatasetError(f"scene {ds.scene_dir(ref.scene_id)} image {ref.im_id} has no depth; the {self.kind} targets need it.")
            out["depth"] = ds.read_depth(ref.scene_id, ref.im_id)
        return out

    @staticmethod
    def in_front(T: np.ndarray, obj, margin_mm: float = 10.0) -> bool:
        """Whether the object's bounding sphere lies at least margin_mm in front of the camera at pose T."""
        return float(T[2, :3] @ obj.center + T[2, 3]) - obj.radius > margin_mm

    def draw_pose(self, draw, T_gt: np.ndarray, obj, tries: int = 20) -> np.ndarray:
        """draw() until the pose keeps the object in front of the camera (T_gt itself after `tries` failures)."""
        for _ in range(tries):
            T = draw()
            if self.in_front(T, obj):
                return T
        return np.array(T_gt, dtype=np.float64)

    def query(self, rgb: np.ndarray, crop, rng: np.random.Generator) -> np.ndarray:
        """The query crop (S, S, 3) uint8, augmented in the train split."""
        q = warp(rgb, crop)
        return augment_rgb(q, rng) if self.augment else q


class CoarseDataset(SceneInstances):
    """Coarse samples: jittered detection crop, one template, patch classes and offsets."""

    kind = "coarse"

    def template_poses(self, obj) -> np.ndarray:
        """Poses (N, 4, 4) of the object's templates, as `cooppose.onboarding.onboard` places them."""
        from cooppose.onboarding import DISTANCE_FACTOR
        from cooppose.render.viewpoints import template_poses

        make = lambda: template_poses(int(self.cfg["template_level"]), DISTANCE_FACTOR * obj.diameter, obj.center)  # noqa: E731
        return _lru_get(self.local.template_poses, obj.content_hash, make, int(self.cfg["object_cache"]))

    def template(self, obj, t: int) -> dict:
        """Template t of the object rendered alone, exactly as `onboard` renders it: rgb, depth, K, pose."""
        from cooppose.onboarding import template_crop_K

        pose = self.template_poses(obj)[t]
        K = template_crop_K(obj, pose, self.size)
        r = self.local.renderer.render(obj, K, pose, (self.size, self.size), TEMPLATE_LIGHT)
        return {"rgb": r.rgb, "depth": r.depth, "K": K, "pose": pose}

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ref, rng = self.sample(i)
        v = self.view(ref, mask=True)
        obj, S, c = v["obj"], self.size, self.cfg
        box = jitter_box(ref.bbox_visib, rng, float(c["box_shift"]), float(c["box_scale"]))
        crop = make_crop(box, v["K"], S, pad=float(c["query_pad"]))
        query = self.query(v["rgb"], crop, rng)
        r = self.local.renderer.render(obj, crop.K, v["T_gt"], size=(S, S))
        visible = r.mask & warp(v["mask_visib"], crop, nearest=True)
        t = choose_template(self.template_poses(obj), v["T_gt"], rng, float(c["p_negative"]), int(c["n_near"]), center=obj.center)
        tpl = self.template(obj, t)
        labels, offsets = coarse_labels(r.xyz, visible, tpl["K"], tpl["pose"], tpl["depth"], int(c["patch"]), float(c["label_tol"]) * obj.diameter)
        return {
            "query": _to_chw(query),
            "template": _to_chw(tpl["rgb"]),
            "labels": torch.from_numpy(labels),
            "offsets": torch.from_numpy(offsets),
        }


class RefinerDataset(SceneInstances):
    """Refiner samples: perturbed pose, pose-conditioned crop, rendering at it, GT flow and certainty."""

    kind = "refiner"

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ref, rng = self.sample(i)
        v = self.view(ref, depth=True)
        obj, S, c = v["obj"], self.size, self.cfg
        T_gt = v["T_gt"]
        T_init = self.draw_pose(lambda: perturb_pose(T_gt, rng, c["trans_std_mm"], float(c["rot_std_deg"])), T_gt, obj)
        crop = refiner_crop(T_init, obj, v["K"], None, S, pad=float(c["crop_pad"]))
        query = self.query(v["rgb"], crop, rng)
        r = self.local.renderer.render(obj, crop.K, T_init, (S, S), TEMPLATE_LIGHT)
        flow, valid = flow_targets(r.xyz, r.mask, crop.K, T_gt)
        query_depth = warp(v["depth"], crop, nearest=True)
        cert = certainty_targets(r.xyz, r.mask, crop.K, T_gt, query_depth, float(c["cert_tol"]) * obj.diameter)
        points = obj.sample_points(int(c["n_points"]), rng)
        f32 = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
        return {
            "query": _to_chw(query),
            "render": _to_chw(r.rgb),
            "K": f32(crop.K),
            "T_init": f32(T_init),
            "T_gt": f32(T_gt),
            "render_xyz": f32(np.where(r.mask[..., None], r.xyz, 0.0)),
            "render_mask": torch.from_numpy(np.ascontiguousarray(r.mask)),
            "flow": f32(flow),
            "flow_valid": torch.from_numpy(valid),
            "certainty": f32(cert),
            "points": f32(points),
        }


def _rotation_by(angle_deg: float, rng: np.random.Generator) -> np.ndarray:
    axis = rng.normal(size=3)
    return Rotation.from_rotvec(np.radians(angle_deg) * axis / np.linalg.norm(axis)).as_matrix()


def _direction(rng: np.random.Generator) -> np.ndarray:
    d = rng.normal(size=3)
    return d / np.linalg.norm(d)


def selection_hypothesis(T_gt: np.ndarray, diameter: float, rng: np.random.Generator, cfg: dict) -> np.ndarray:
    """A hypothesis around T_gt: inside the positive thresholds (p_positive), beyond them (1.2-4x), or with a random rotation (p_far of the negatives)."""
    thr_r, thr_t = float(cfg["rot_thresh_deg"]), float(cfg["trans_frac"]) * diameter
    R_gt, t_gt = T_gt[:3, :3], T_gt[:3, 3]
    if rng.random() < float(cfg["p_positive"]):
        R = _rotation_by(rng.uniform(0.0, 0.9 * thr_r), rng) @ R_gt
        return make_pose(R, t_gt + _direction(rng) * rng.uniform(0.0, 0.9 * thr_t))
    if rng.random() < float(cfg["p_far"]):
        return make_pose(random_rotations(1, rng)[0], t_gt + _direction(rng) * rng.uniform(0.0, thr_t))
    mode = rng.integers(3)  # 0: rotation off, 1: translation off, 2: both
    rot = rng.uniform(1.2, 4.0) * thr_r if mode != 1 else rng.uniform(0.0, thr_r)
    trans = rng.uniform(1.2, 4.0) * thr_t if mode != 0 else rng.uniform(0.0, thr_t)
    return make_pose(_rotation_by(rot, rng) @ R_gt, t_gt + _direction(rng) * trans)


class SelectionDataset(SceneInstances):
    """Selection samples: a hypothesis near or away from the GT, its pose-conditioned crop and rendering, the label."""

    kind = "selection"

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ref, rng = self.sample(i)
        v = self.view(ref)
        obj, S, c = v["obj"], self.size, self.cfg
        T_hyp = self.draw_pose(lambda: selection_hypothesis(v["T_gt"], obj.diameter, rng, c), v["T_gt"], obj)
        crop = refiner_crop(T_hyp, obj, v["K"], None, S, pad=float(c["crop_pad"]))
        query = self.query(v["rgb"], crop, rng)
        r = self.local.renderer.render(obj, crop.K, T_hyp, (S, S), TEMPLATE_LIGHT)
        label = selection_label(T_hyp, v["T_gt"], obj.diameter, float(c["rot_thresh_deg"]), float(c["trans_frac"]), obj.symmetries)
        return {"query": _to_chw(query), "render": _to_chw(r.rgb), "label": torch.tensor(float(label))}


DATASETS = {"coarse": CoarseDataset, "refiner": RefinerDataset, "selection": SelectionDataset}


def build_dataset(kind: str, cfg: dict, split: str) -> SceneInstances:
    """The training Dataset of `kind` ('coarse' | 'refiner' | 'selection') over the BOP scenes of cfg, one split."""
    if kind not in DATASETS:
        raise ConfigError(f"dataset kind must be one of {KINDS}, got {kind!r}.")
    return DATASETS[kind](cfg, split)


# ---------------------------------------------------------------------------------------------- pictures
def _to_uint8(chw: torch.Tensor) -> np.ndarray:
    from cooppose.models.croco import IMAGENET_MEAN, IMAGENET_STD

    x = chw.detach().cpu().float().numpy().transpose(1, 2, 0)
    return np.clip((x * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _coarse_picture(sample: dict, scale: int = 2) -> np.ndarray:
    import cv2

    from cooppose.viz import caption

    query, template = _to_uint8(sample["query"]), _to_uint8(sample["template"])
    S = query.shape[0]
    labels, offsets = sample["labels"].numpy(), sample["offsets"].numpy()
    Np = labels.shape[0]
    patch = S // int(round(math.sqrt(Np)))
    canvas = cv2.resize(np.hstack([query, template]), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    for k in range(0, S + 1, patch):  # patch grids
        for x0 in (0, S):
            cv2.line(canvas, ((x0 + k) * scale, 0), ((x0 + k) * scale, S * scale), (90, 90, 90), 1)
        cv2.line(canvas, (0, k * scale), (2 * S * scale, k * scale), (90, 90, 90), 1)
    q = patch_centers(S, patch)
    matched = labels < Np
    m = patch_pixels(labels[matched], offsets[matched], S, patch) if matched.any() else np.zeros((0, 2))
    to_px = lambda p, dx=0: (int(round((p[0] + 0.5 + dx) * scale)), int(round((p[1] + 0.5) * scale)))  # noqa: E731
    for qi in q[~matched]:
        cv2.drawMarker(canvas, to_px(qi), (230, 50, 50), cv2.MARKER_TILTED_CROSS, 6, 1)
    hues = (labels[matched] * 180 // max(Np, 1)).astype(np.uint8)
    colors = cv2.cvtColor(np.stack([hues, np.full_like(hues, 220), np.full_like(hues, 255)], -1)[None], cv2.COLOR_HSV2RGB)[0]
    for qi, mi, col in zip(q[matched], m, colors):
        col = tuple(int(x) for x in col)
        cv2.arrowedLine(canvas, to_px(qi), to_px(mi, S), col, 1, cv2.LINE_AA, tipLength=0.02)
        cv2.circle(canvas, to_px(qi), 3, col, -1, cv2.LINE_AA)
    return caption(canvas, f"query | template: {int(matched.sum())}/{Np} patches matched (x = no match)")


def _refiner_picture(sample: dict) -> np.ndarray:
    from cooppose.viz import caption, colorize, flow_to_color, grid

    query, render = _to_uint8(sample["query"]), _to_uint8(sample["render"])
    flow, valid = sample["flow"].numpy(), sample["flow_valid"].numpy()
    cert = sample["certainty"].numpy()
    S = query.shape[0]
    # splat the certain rendered pixels to where the GT flow sends them, over the query
    splat = query.copy()
    vv, uu = np.nonzero(valid & (cert > 0.5))
    qu = np.rint(uu + flow[0, vv, uu]).astype(int)
    qv = np.rint(vv + flow[1, vv, uu]).astype(int)
    inside = (qu >= 0) & (qu < S) & (qv >= 0) & (qv < S)
    splat[qv[inside], qu[inside]] = (0.5 * splat[qv[inside], qu[inside]] + 0.5 * render[vv[inside], uu[inside]]).astype(np.uint8)
    tiles = [
        caption(query, "query crop"),
        caption(render, "render at T_init"),
        caption(flow_to_color(flow, valid), f"GT flow (max {np.abs(flow[:, valid]).max() if valid.any() else 0:.1f} px)"),
        caption(colorize(cert, valid, 0.0, 1.0), f"certainty ({int(cert.sum())}/{int(valid.sum())} px)"),
        caption(splat, "render warped by GT flow"),
    ]
    return grid(tiles, len(tiles))


def _selection_picture(sample: dict) -> np.ndarray:
    import cv2

    from cooppose.viz import caption

    label = float(sample["label"])
    canvas = np.hstack([_to_uint8(sample["query"]), _to_uint8(sample["render"])])
    color = (60, 220, 60) if label > 0.5 else (230, 50, 50)
    cv2.rectangle(canvas, (0, 0), (canvas.shape[1] - 1, canvas.shape[0] - 1), color, 3)
    return caption(canvas, f"query | render at hypothesis: label {int(label)}")


def label_picture(sample: dict) -> np.ndarray:
    """An RGB uint8 picture of one sample's targets: coarse patch arrows, refiner flow/certainty, or selection label."""
    if "labels" in sample:
        return _coarse_picture(sample)
    if "flow" in sample:
        return _refiner_picture(sample)
    if "label" in sample:
        return _selection_picture(sample)
    raise DatasetError(f"not a coarse/refiner/selection sample: keys {sorted(sample)}.")


def save_label_picture(sample: dict, path: str | os.PathLike) -> Path:
    """Write `label_picture(sample)` as a PNG (atomically) so a person can check the targets by eye; returns the path."""
    from cooppose.viz import save_png

    return save_png(path, label_picture(sample))
