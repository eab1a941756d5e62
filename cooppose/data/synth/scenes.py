"""Synthetic BOP scenes: several objects at random poses over random backgrounds, rendered with occlusion.

Image number i of a set is made from `numpy.random.default_rng([seed, i])` alone, so any image can be
regenerated on its own and a killed run resumes exactly: images are written in order, the scene
JSON files are rewritten atomically every `SceneConfig.flush_every` images, and an image counts as
finished once it is in the scene's scene_gt.json (a restart regenerates the unrecorded ones, with the
same bytes). Layout (BOP): OUT/camera.json, OUT/test_targets_bop19.json, OUT/models -> objects dir
(a symlink when OUT has none), OUT/SPLIT/SCENE/{rgb,depth,mask,mask_visib}/, scene_{camera,gt,gt_info}.json,
OUT/SPLIT/synth_params.json (the parameters; a resume with other parameters is refused).
Image i is image i % images_per_scene of scene i // images_per_scene.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cooppose.data import bop
from cooppose.data.bop import Camera, GtInfo, GtPose, SceneCamera, Target
from cooppose.data.synth.textures import random_background
from cooppose.errors import ConfigError, DatasetError
from cooppose.fileio import remove_stale_temps
from cooppose.geometry.transforms import make_pose, random_rotations
from cooppose.objects.mesh import ObjectModel, load_mesh
from cooppose.render import Light, Renderer

PARAMS_FILE = "synth_params.json"
TARGETS_FILE = "test_targets_bop19.json"


@dataclass(frozen=True)
class SceneConfig:
    """What a synthetic image looks like; lengths in mm, sizes in pixels."""

    width: int = 640
    height: int = 480
    objects: tuple[int, int] = (3, 8)  # annotated objects per image (inclusive)
    distractors: tuple[int, int] = (0, 3)  # unannotated objects per image (inclusive)
    focal: tuple[float, float] = (0.9, 1.6)  # fx / width
    aspect_jitter: float = 0.03  # fy = fx * (1 + U(-j, j))
    principal_jitter: float = 0.06  # principal point off-centre by up to this fraction of W / H
    projected_size: tuple[float, float] = (0.12, 0.5)  # object diameter on screen / min(W, H)
    centre_margin: float = 0.08  # object centres at least this fraction of W / H inside the image
    min_distance_mm: float = 100.0  # nearest allowed object surface (bounding sphere) to the camera
    depth_scale: float = 0.1  # mm per depth unit in depth PNGs
    ambient: tuple[float, float] = (0.25, 0.6)
    diffuse: tuple[float, float] = (0.4, 0.9)
    rgb_ext: str = ".jpg"
    jpg_quality: int = 95
    images_per_scene: int = 1000
    flush_every: int = 20  # rewrite the scene JSON files after this many images
    min_visib_fract: float = 0.1  # test_targets_bop19.json lists instances at least this visible

    @property
    def max_depth_mm(self) -> float:
        """The deepest depth a uint16 PNG holds at depth_scale."""
        return 65535 * self.depth_scale

    def check(self) -> "SceneConfig":
        """Raise ConfigError on inconsistent values; return self."""
        if self.width < 16 or self.height < 16:
            raise ConfigError(f"image size {self.width}x{self.height} is too small; use at least 16x16.")
        for name in ("objects", "distractors", "focal", "projected_size", "ambient", "diffuse"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ConfigError(f"SceneConfig.{name} must be an interval 0 <= lo <= hi, got {(lo, hi)}.")
        if self.objects[0] < 1 or self.focal[0] <= 0 or self.projected_size[0] <= 0:
            raise ConfigError("SceneConfig needs at least one object per image, focal > 0 and projected_size > 0.")
        if self.rgb_ext not in (".jpg", ".png"):
            raise ConfigError(f"rgb_ext must be '.jpg' or '.png', got {self.rgb_ext!r}.")
        if self.images_per_scene < 1 or self.flush_every < 1:
            raise ConfigError("images_per_scene and flush_every must be >= 1.")
        return self


@dataclass
class SceneImage:
    """One generated image with its annotations (annotated objects only, in scene_gt order)."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 mm, 0 = background
    K: np.ndarray  # (3, 3)
    gt: list[GtPose]
    info: list[GtInfo]
    masks: np.ndarray  # (N, H, W) bool, full silhouettes
    masks_visib: np.ndarray  # (N, H, W) bool, visible parts


class ObjectPool:
    """The objects of a BOP models folder, loaded lazily (LRU of `cache` models) with their models_info."""

    def __init__(self, models_dir: str | os.PathLike, cache: int = 256):
        self.models_dir = Path(models_dir)
        self.info = bop.load_models_info(self.models_dir / "models_info.json")
        self.ids = sorted(self.info)
        if not self.ids:
            raise DatasetError(f"{self.models_dir / 'models_info.json'} lists no objects; run `cooppose synth objects` first.")
        self._cache: OrderedDict[int, ObjectModel] = OrderedDict()
        self._size = cache

    def get(self, obj_id: int) -> ObjectModel:
        """The model of obj_id (mm, with its symmetries)."""
        model = self._cache.get(obj_id)
        if model is None:
            path = self.models_dir / f"obj_{obj_id:06d}.ply"
            model = load_mesh(path, units="mm", models_info=self.info[obj_id], name=f"obj_{obj_id:06d}")
            self._cache[obj_id] = model
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(obj_id)
        return model


# ---------------------------------------------------------------- one image


def random_intrinsics(rng: np.random.Generator, cfg: SceneConfig) -> np.ndarray:
    """K (3, 3): focal fx/W in cfg.focal, fy slightly different, off-centre principal point."""
    W, H = cfg.width, cfg.height
    fx = rng.uniform(*cfg.focal) * W
    fy = fx * (1 + rng.uniform(-cfg.aspect_jitter, cfg.aspect_jitter))
    cx = (W - 1) / 2 + rng.uniform(-1, 1) * cfg.principal_jitter * W
    cy = (H - 1) / 2 + rng.uniform(-1, 1) * cfg.principal_jitter * H
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def random_light(rng: np.random.Generator, cfg: SceneConfig) -> Light:
    """A Lambert light from a random direction on the camera's side of the scene."""
    d = rng.normal(size=3)
    d[2] = -abs(d[2]) - 0.3  # towards the camera (camera looks along +z)
    return Light(direction=tuple(float(x) for x in d / np.linalg.norm(d)), ambient=float(rng.uniform(*cfg.ambient)), diffuse=float(rng.uniform(*cfg.diffuse)))


def random_poses(rng: np.random.Generator, models: list[ObjectModel], K: np.ndarray, cfg: SceneConfig, tries: int = 20) -> list[np.ndarray]:
    """T_cam_obj per model: random rotation, centre at a random pixel, depth from a random screen size.

    A placement whose bounding sphere intersects an earlier one is redrawn up to `tries` times.
    """
    W, H = cfg.width, cfg.height
    placed: list[tuple[np.ndarray, float]] = []
    poses = []
    for model in models:
        for _ in range(tries):
            size_px = rng.uniform(*cfg.projected_size) * min(W, H)
            z = K[0, 0] * model.diameter / size_px
            z = float(np.clip(z, cfg.min_distance_mm + model.radius, cfg.max_depth_mm * 0.95 - model.radius))
            u = rng.uniform(cfg.centre_margin, 1 - cfg.centre_margin) * W
            v = rng.uniform(cfg.centre_margin, 1 - cfg.centre_margin) * H
            centre = np.array([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z])
            if all(np.linalg.norm(centre - c) > model.radius + r for c, r in placed):
                break
        R = random_rotations(1, rng)[0]
        placed.append((centre, model.radius))
        poses.append(make_pose(R, centre - R @ model.center))
    return poses


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    """BOP box (x, y, w, h) of a mask's pixels; (-1, -1, -1, -1) when empty."""
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    if len(cols) == 0:
        return (-1, -1, -1, -1)
    return (int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1))


def _isolated(k: int, boxes: list[tuple[int, int, int, int]], size: tuple[int, int]) -> bool:
    """True when box k lies inside the image and meets no other box: nothing can hide that object."""
    H, W = size
    x, y, w, h = boxes[k]
    if x < 0 or y < 0 or x + w > W or y + h > H:
        return False
    for j, (x2, y2, w2, h2) in enumerate(boxes):
        if j != k and x < x2 + w2 and x2 < x + w and y < y2 + h2 and y2 < y + h:
            return False
    return True


def projected_bbox(model: ObjectModel, K: np.ndarray, T: np.ndarray) -> tuple[int, int, int, int]:
    """Box (x, y, w, h) of the pixel centres inside the projected vertices' extent, unclipped by the image."""
    X = model.vertices[model.hull_indices] @ T[:3, :3].T + T[:3, 3]
    uv = X[:, :2] / X[:, 2:3] * np.diag(K)[:2] + K[:2, 2]
    x0, y0 = np.ceil(uv.min(0) - 1e-9).astype(int)
    x1, y1 = np.floor(uv.max(0) + 1e-9).astype(int)
    return (int(x0), int(y0), int(max(x1 - x0 + 1, 0)), int(max(y1 - y0 + 1, 0)))


def silhouette(renderer: Renderer, model: ObjectModel, K: np.ndarray, T: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Unoccluded mask (H, W) bool and BOP bbox_obj (x, y, w, h) of the whole silhouette, even beyond the image.

    The object is rendered alone over its projected box (1 px margin), unclipped by the image, with the
    same pixel centres as a full-image render, so the box is that of the covered pixels as BOP computes it.
    """
    H, W = size
    x, y, w, h = projected_bbox(model, K, T)
    x0, y0 = x - 1, y - 1
    Kc = K.copy()
    Kc[0, 2] -= x0
    Kc[1, 2] -= y0
    region = renderer.render(model, Kc, T, (h + 2, w + 2)).mask
    ys, xs = np.nonzero(region)
    if len(xs) == 0:
        return np.zeros((H, W), bool), (-1, -1, -1, -1)
    bbox = (int(xs.min() + x0), int(ys.min() + y0), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
    mask = np.zeros((H, W), bool)
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + w + 2, W), min(y0 + h + 2, H)
    if cx1 > cx0 and cy1 > cy0:
        mask[cy0:cy1, cx0:cx1] = region[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return mask, bbox


def generate_image(index: int, seed: int, pool: ObjectPool, cfg: SceneConfig, renderer: Renderer) -> SceneImage:
    """Image number `index` of the set made with `seed` (depends on nothing else)."""
    rng = np.random.default_rng([seed, index])
    H, W = cfg.height, cfg.width
    K = random_intrinsics(rng, cfg)
    n_obj = int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))
    ann_ids = [int(i) for i in rng.choice(pool.ids, size=n_obj, replace=True)]
    others = [i for i in pool.ids if i not in set(ann_ids)]  # a distractor is never a copy of a target
    n_dis = min(int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1)), len(others))
    dis_ids = [int(i) for i in rng.choice(others, size=n_dis, replace=False)] if n_dis else []
    models = [pool.get(i) for i in ann_ids + dis_ids]
    poses = random_poses(rng, models, K, cfg)
    light = random_light(rng, cfg)
    background = random_background(rng, H, W)
    scene = renderer.render_scene(models, poses, K, (H, W), light)
    fg = scene.instance >= 0
    rgb = np.where(fg[..., None], scene.rgb, background)
    gt, info, masks, masks_visib = [], [], [], []
    boxes = [projected_bbox(m, K, T) for m, T in zip(models, poses)]  # contain every covered pixel centre
    for k, obj_id in enumerate(ann_ids):
        visib = scene.instance == k
        if _isolated(k, boxes, (H, W)):  # unoccluded and uncut: the visible mask is the whole silhouette
            full, bbox_obj = visib, _bbox(visib)
        else:
            full, bbox_obj = silhouette(renderer, models[k], K, poses[k], (H, W))
        n_all, n_visib = int(full.sum()), int(visib.sum())
        gt.append(GtPose(obj_id=obj_id, R=poses[k][:3, :3], t=poses[k][:3, 3]))
        info.append(
            GtInfo(
                bbox_obj=bbox_obj,
                bbox_visib=_bbox(visib),
                px_count_all=n_all,
                px_count_valid=int((full & (scene.depth > 0)).sum()),
                px_count_visib=n_visib,
                visib_fract=n_visib / n_all if n_all else 0.0,
            )
        )
        masks.append(full)
        masks_visib.append(visib)
    return SceneImage(
        rgb=np.ascontiguousarray(rgb, dtype=np.uint8),
        depth=scene.depth.astype(np.float32),
        K=K,
        gt=gt,
        info=info,
        masks=np.stack(masks),
        masks_visib=np.stack(masks_visib),
    )


# ---------------------------------------------------------------- writing a set


def _params(seed: int, cfg: SceneConfig, models_dir: Path) -> dict:
    models_info = (models_dir / "models_info.json").read_bytes()
    import hashlib

    return {
        "seed": int(seed),
        "config": json.loads(json.dumps(asdict(cfg))),
        "models_info_sha1": hashlib.sha1(models_info).hexdigest(),
    }


@dataclass
class _SceneState:
    """The JSON content of one scene being written."""

    scene_id: int
    camera: dict[int, SceneCamera] = field(default_factory=dict)
    gt: dict[int, list[GtPose]] = field(default_factory=dict)
    info: dict[int, list[GtInfo]] = field(default_factory=dict)


class SceneWriter:
    """Writes SceneImages of a split as BOP files and keeps the scene JSON files up to date."""

    def __init__(self, root: str | os.PathLike, split: str, cfg: SceneConfig):
        self.root, self.split, self.cfg = Path(root), split, cfg
        self.state: _SceneState | None = None
        self.pending = 0

    def scene_dir(self, scene_id: int) -> Path:
        """Folder of a scene."""
        return self.root / self.split / f"{scene_id:06d}"

    def load(self, scene_id: int) -> _SceneState:
        """The recorded content of a scene (empty when it has no JSON files yet)."""
        d = self.scene_dir(scene_id)
        st = _SceneState(scene_id)
        if (d / "scene_gt.json").is_file():
            st.gt = bop.load_scene_gt(d / "scene_gt.json")
            st.camera = bop.load_scene_camera(d / "scene_camera.json")
            st.info = bop.load_scene_gt_info(d / "scene_gt_info.json")
            if not (set(st.gt) == set(st.camera) == set(st.info)):
                # the three files are written in the order info, camera, gt: keep what all of them hold
                common = set(st.gt) & set(st.camera) & set(st.info)
                st.gt, st.camera, st.info = ({k: v for k, v in x.items() if k in common} for x in (st.gt, st.camera, st.info))
        return st

    def add(self, index: int, image: SceneImage) -> None:
        """Write image number `index` (files first, then JSON every flush_every images)."""
        scene_id, im_id = divmod(index, self.cfg.images_per_scene)
        if self.state is None or self.state.scene_id != scene_id:
            self.flush()
            self.state = self.load(scene_id)
        d = self.scene_dir(scene_id)
        bop.write_rgb(d / "rgb" / f"{im_id:06d}{self.cfg.rgb_ext}", image.rgb, jpg_quality=self.cfg.jpg_quality)
        bop.write_depth(d / "depth" / f"{im_id:06d}.png", image.depth, depth_scale=self.cfg.depth_scale)
        for j in range(len(image.gt)):
            bop.write_mask(d / "mask" / f"{im_id:06d}_{j:06d}.png", image.masks[j])
            bop.write_mask(d / "mask_visib" / f"{im_id:06d}_{j:06d}.png", image.masks_visib[j])
        self.state.camera[im_id] = SceneCamera(K=image.K, depth_scale=self.cfg.depth_scale)
        self.state.gt[im_id] = image.gt
        self.state.info[im_id] = image.info
        self.pending += 1
        if self.pending >= self.cfg.flush_every:
            self.flush()

    def flush(self) -> None:
        """Rewrite the current scene's JSON files atomically (gt last: it marks images as finished)."""
        if self.state is None or self.pending == 0:
            return
        d = self.scene_dir(self.state.scene_id)
        bop.save_scene_gt_info(d / "scene_gt_info.json", self.state.info)
        bop.save_scene_camera(d / "scene_camera.json", self.state.camera)
        bop.save_scene_gt(d / "scene_gt.json", self.state.gt)
        self.pending = 0

    def finished(self) -> int:
        """Number of images recorded (they are always a prefix 0..n-1 of the set)."""
        n = 0
        while True:
            scene_id, im_id = divmod(n, self.cfg.images_per_scene)
            st = self.load(scene_id)
            done = 0
            while done in st.gt:
                done += 1
            n += done
            if done < self.cfg.images_per_scene:
                return n

    def write_targets(self) -> list[Target]:
        """Rewrite test_targets_bop19.json from every scene of the split (instances >= min_visib_fract visible)."""
        targets = []
        split_dir = self.root / self.split
        scenes = sorted(int(p.name) for p in split_dir.iterdir() if p.is_dir() and p.name.isdigit()) if split_dir.is_dir() else []
        for scene_id in scenes:
            st = self.load(scene_id)
            for im_id in sorted(st.gt):
                counts: dict[int, int] = {}
                for g, i in zip(st.gt[im_id], st.info[im_id]):
                    if i.visib_fract >= self.cfg.min_visib_fract:
                        counts[g.obj_id] = counts.get(g.obj_id, 0) + 1
                targets += [Target(scene_id, im_id, obj_id, n) for obj_id, n in sorted(counts.items())]
        bop.save_targets(self.root / TARGETS_FILE, targets)
        return targets


_worker_state: dict = {}


def _worker_init(models_dir: str, seed: int, cfg: SceneConfig, backend: str) -> None:
    """Per-process state; the renderer (and its GL context) is created lazily on first use."""
    _worker_state.update(pool=ObjectPool(models_dir), seed=seed, cfg=cfg, renderer=Renderer(backend))


def _worker_image(index: int) -> tuple[int, SceneImage]:
    s = _worker_state
    return index, generate_image(index, s["seed"], s["pool"], s["cfg"], s["renderer"])


def _prepare_root(root: Path, split: str, models_dir: Path, seed: int, cfg: SceneConfig) -> None:
    params = _params(seed, cfg, models_dir)
    params_path = root / split / PARAMS_FILE
    if params_path.is_file():
        old = json.loads(params_path.read_text())
        if old != params:
            raise DatasetError(
                f"{root / split} was generated with other parameters ({params_path}); "
                "resume with the same --seed, size, settings and objects, or write to a new --out."
            )
    else:
        bop.save_json(params_path, params)
    models_link = root / "models"
    if not models_link.exists() and models_dir.resolve() != models_link.resolve():
        models_link.symlink_to(os.path.relpath(models_dir.resolve(), root.resolve()), target_is_directory=True)
    K = np.array([[cfg.width * sum(cfg.focal) / 2, 0, (cfg.width - 1) / 2], [0, cfg.width * sum(cfg.focal) / 2, (cfg.height - 1) / 2], [0, 0, 1]])
    bop.save_camera(root / "camera.json", Camera(width=cfg.width, height=cfg.height, K=K, depth_scale=cfg.depth_scale))


def generate_scenes(
    models_dir: str | os.PathLike,
    out: str | os.PathLike,
    n_images: int,
    seed: int = 0,
    cfg: SceneConfig = SceneConfig(),
    split: str = "train_synth",
    workers: int = 1,
    backend: str = "auto",
    progress: bool = False,
    stop_after: int | None = None,
) -> dict:
    """Generate (or resume) images 0..n_images-1 of the set `seed` into the BOP dataset `out`.

    `stop_after` ends the run after that many new images without the final steps (tests simulate a kill
    with it). Returns {"generated", "skipped", "seconds", "images_per_s"}.
    """
    cfg.check()
    models_dir, root = Path(models_dir), Path(out)
    if not (models_dir / "models_info.json").is_file():
        raise DatasetError(f"{models_dir} has no models_info.json; make objects with `cooppose synth objects --out {models_dir}`.")
    if n_images < 1:
        raise ConfigError(f"n_images must be >= 1, got {n_images}.")
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}.")
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(root)  # left by a killed run: this process is the folder's only writer
    _prepare_root(root, split, models_dir, seed, cfg)
    writer = SceneWriter(root, split, cfg)
    start = writer.finished()
    todo = list(range(start, n_images))
    if stop_after is not None:
        todo = todo[:stop_after]
    from tqdm import tqdm

    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), desc="images", unit="img", disable=not progress)
    if workers == 1:
        _worker_init(str(models_dir), seed, cfg, backend)
        results = map(_worker_image, todo)
        pool = None
    else:  # spawn: no GL context is ever inherited through fork (render.md)
        pool = mp.get_context("spawn").Pool(workers, _worker_init, (str(models_dir), seed, cfg, backend))
        results = pool.imap(_worker_image, todo)
    try:
        for index, image in results:
            writer.add(index, image)
            bar.update(1)
        writer.flush()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    seconds = time.perf_counter() - t0
    if stop_after is None or start + len(todo) >= n_images:
        writer.write_targets()
    return {
        "generated": len(todo),
        "skipped": start,
        "seconds": seconds,
        "images_per_s": len(todo) / seconds if seconds > 0 else math.inf,
    }
