"""BOP evaluation runner: estimate every test target of a BOP dataset, resumably, optionally in shards.

One run lives in an output folder:
- `run.json`: the settings of the run; resuming with other settings is refused.
- `journal/SCENE_IMID.csv`: the BOP rows of each finished image, written atomically when the image is
  done. An image with a journal file is never estimated again, so a killed run resumes where it stopped.
- `shards/shard-I-of-N.csv`: the rows of shard I (images I, I + N, I + 2N, ... of the run's image list).
- `METHOD_DATASET-SPLIT.csv`, `scores.json`, `scores.md`: written by whichever shard finishes last,
  merging the N shard files (`merge_shards`) and scoring them with `cooppose.eval.scoring`.

Per image, every target (obj_id, inst_count) gets the `inst_count` best-scored detections of its object
(ground-truth `bbox_visib` boxes by default, ordered by visible fraction), each estimated once; the best
hypothesis of each detection becomes one row. The time column is the wall time of all estimates of the
image (plus the detector's time when a detections file gives one), identical on all its rows.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from cooppose.data.bop import (
    BopDataset,
    PoseEstimate,
    Target,
    load_json,
    read_results,
    results_filename,
    save_json,
    save_targets,
    write_results,
)
from cooppose.errors import ConfigError, DatasetError, InputError
from cooppose.fileio import atomic_write_text

Box = tuple[float, float, float, float]
ImageKey = tuple[int, int]  # (scene_id, im_id)
METHODS = ("coop", "sift", "fpfh")
MODES = ("rgb", "rgbd")
STAGES = ("coarse", "refine", "select")


@dataclass(frozen=True)
class Detection:
    """A 2D detection of one object: box (x0, y0, x1, y1) in continuous pixels, score, detector time (s, whole image)."""

    obj_id: int
    box: Box
    score: float = 1.0
    time: float = 0.0


class Estimator(Protocol):
    """What the runner needs: PoseEstimator and the baselines all fit (`onboard` is optional)."""

    def estimate(self, rgb: np.ndarray, K: np.ndarray, obj: Any, box: Box | None = None,
                 depth: np.ndarray | None = None, n_hypotheses: int = 1) -> list: ...


# ---------------------------------------------------------------------------------------------- detections
def bop_box_to_xyxy(bbox: Sequence[float]) -> Box:
    """BOP/COCO box [x, y, w, h] (pixels x .. x + w - 1) to continuous (x0, y0, x1, y1) pixel edges."""
    x, y, w, h = (float(v) for v in bbox)
    return (x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5)


def gt_detections(ds: BopDataset, scene_id: int, im_id: int) -> list[Detection]:
    """Ground-truth detections of an image: the `bbox_visib` box of every visible instance, score = visible fraction."""
    gts = ds.scene_gt(scene_id).get(im_id, [])
    infos = ds.scene_gt_info(scene_id).get(im_id)
    if infos is None or len(infos) != len(gts):
        raise DatasetError(
            f"{ds.scene_dir(scene_id) / 'scene_gt_info.json'} has no entry for image {im_id} matching scene_gt.json; "
            "GT detections need bbox_visib (recompute scene_gt_info or pass a detections file)."
        )
    out = []
    for gt, info in zip(gts, infos):
        _, _, w, h = info.bbox_visib
        if w > 0 and h > 0 and info.visib_fract > 0:
            out.append(Detection(gt.obj_id, bop_box_to_xyxy(info.bbox_visib), float(info.visib_fract)))
    return out


def load_detections(path: str | os.PathLike) -> dict[ImageKey, list[Detection]]:
    """Read a BOP detections JSON (list of {scene_id, image_id, category_id, bbox [x,y,w,h], score, time?}).

    A dict with the list under "annotations" (COCO results style) is accepted too; `im_id`/`obj_id` may
    replace `image_id`/`category_id`.
    """
    content = load_json(path)
    if isinstance(content, Mapping) and "annotations" in content:
        content = content["annotations"]
    if not isinstance(content, list):
        raise DatasetError(f"detections file {path} must hold a JSON list of detections, got {type(content).__name__}.")
    out: dict[ImageKey, list[Detection]] = defaultdict(list)
    for i, d in enumerate(content):
        try:
            scene = int(d["scene_id"])
            im = int(d["image_id"] if "image_id" in d else d["im_id"])
            obj = int(d["category_id"] if "category_id" in d else d["obj_id"])
            bbox = [float(v) for v in d["bbox"]]
            score = float(d.get("score", 1.0))
            det_time = float(d.get("time", 0.0))
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(
                f"detections file {path}, entry {i}: {err!r}; each entry needs scene_id, image_id, category_id, "
                "bbox [x, y, w, h] and score."
            ) from None
        if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox) or bbox[2] <= 0 or bbox[3] <= 0:
            raise DatasetError(f"detections file {path}, entry {i}: bbox {bbox} must be 4 finite numbers [x, y, w, h] with w, h > 0.")
        out[(scene, im)].append(Detection(obj, bop_box_to_xyxy(bbox), score, det_time))
    return dict(out)


def select_detections(detections: Sequence[Detection], target: Target) -> list[Detection]:
    """The `inst_count` best-scored detections of the target's object (stable order for equal scores)."""
    mine = [d for d in detections if d.obj_id == target.obj_id]
    return sorted(mine, key=lambda d: -d.score)[: target.inst_count]


# ---------------------------------------------------------------------------------------------- images, shards
def parse_shard(text: str) -> tuple[int, int]:
    """Parse "I/N" (0 <= I < N) into (I, N)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"shard {text!r} must be written I/N, e.g. 0/4 for the first of 4 shards.") from None
    return check_shard((i, n))


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """Validate a shard (I, N) with 0 <= I < N."""
    i, n = (int(v) for v in shard)
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"shard {i}/{n} is invalid: need N >= 1 and 0 <= I < N.")
    return i, n


def shard_from_env(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(RANK, WORLD_SIZE) set by torchrun, else (0, 1)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        try:
            return check_shard((int(env["RANK"]), int(env["WORLD_SIZE"])))
        except ValueError:
            raise ConfigError(f"RANK={env['RANK']!r} / WORLD_SIZE={env['WORLD_SIZE']!r} are not integers.") from None
    return 0, 1


def run_images(ds: BopDataset, images_every: int = 1) -> list[ImageKey]:
    """The images of the run: those with targets, sorted, keeping every `images_every`-th."""
    if images_every < 1:
        raise ConfigError(f"images_every must be >= 1, got {images_every}.")
    keys = sorted({(t.scene_id, t.im_id) for t in ds.targets()})
    return keys[::images_every]


def shard_images(images: Sequence[ImageKey], shard: tuple[int, int]) -> list[ImageKey]:
    """Images of shard (I, N): I, I + N, I + 2N, ..."""
    i, n = check_shard(shard)
    return list(images[i::n])


def dataset_name(dataset_dir: str | os.PathLike) -> str:
    """BOP dataset name from its folder name, without the '_' and '-' a results file name cannot hold."""
    name = Path(dataset_dir).resolve().name.replace("_", "").replace("-", "")
    if not name:
        raise DatasetError(f"cannot derive a dataset name from {dataset_dir}; pass dataset_name.")
    return name


# ---------------------------------------------------------------------------------------------- output folder
def journal_path(out_dir: str | os.PathLike, key: ImageKey) -> Path:
    """Journal file of one image: out_dir/journal/SCENE_IMID.csv."""
    return Path(out_dir) / "journal" / f"{key[0]:06d}_{key[1]:06d}.csv"


def shard_path(out_dir: str | os.PathLike, shard: tuple[int, int]) -> Path:
    """Rows of one shard: out_dir/shards/shard-I-of-N.csv."""
    return Path(out_dir) / "shards" / f"shard-{shard[0]}-of-{shard[1]}.csv"


def _check_settings(out_dir: Path, settings: dict) -> None:
    """Write run.json, or refuse to resume a run whose recorded settings differ."""
    path = out_dir / "run.json"
    if path.is_file():
        old = load_json(path)
        diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if diff:
            details = "; ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff)
            raise ConfigError(
                f"{out_dir} holds a run with other settings ({details}); use a new output folder or delete {out_dir}."
            )
        return
    save_json(path, settings)


def merge_shards(paths: Sequence[str | os.PathLike]) -> list[PoseEstimate]:
    """Rows of several shard (or journal) CSVs, ordered by (scene_id, im_id), each image's rows in their order."""
    rows: list[PoseEstimate] = []
    owner: dict[ImageKey, Path] = {}
    for p in paths:
        part = read_results(p)
        for key in {(r.scene_id, r.im_id) for r in part}:
            if key in owner:
                raise DatasetError(f"image {key} appears in both {owner[key]} and {p}; shards must not overlap.")
            owner[key] = Path(p)
        rows.extend(part)
    return sorted(rows, key=lambda r: (r.scene_id, r.im_id))


# ---------------------------------------------------------------------------------------------- estimation
class _Objects:
    """Meshes of the dataset's objects, loaded and onboarded on first use."""

    def __init__(self, ds: BopDataset, estimator: Any) -> None:
        self.ds, self.estimator, self.cache = ds, estimator, {}

    def get(self, obj_id: int) -> Any:
        if obj_id not in self.cache:
            from cooppose.objects import load_mesh

            path = self.ds.root / "models" / f"obj_{obj_id:06d}.ply"
            if not path.is_file():
                path = self.ds.model_path(obj_id)
            obj = load_mesh(path, units="mm")
            if hasattr(self.estimator, "onboard"):
                self.estimator.onboard(obj)
            self.cache[obj_id] = obj
        return self.cache[obj_id]


def _best(hyps: Sequence[Any]) -> Any:
    return max(hyps, key=lambda h: h.score) if hyps else None


def estimate_image(estimator: Any, objects: Any, rgb: np.ndarray, K: np.ndarray, depth: np.ndarray | None,
                   targets: Sequence[Target], detections: Sequence[Detection], n_hypotheses: int = 1,
                   rejected: list[str] | None = None) -> list[tuple[int, Any]]:
    """(obj_id, best hypothesis) for the selected detections of each target, in target (obj_id) order.

    Uses `estimator.estimate_many` (one batched call per image) when it exists, else `estimate` per detection.
    A detection the estimator rejects (InputError, e.g. a box with no depth) gets no row and its message is
    appended to `rejected`; if a batched call rejects the image, its detections are retried one by one so
    that only the bad ones are lost.
    """
    chosen = [(t.obj_id, det) for t in sorted(targets, key=lambda t: t.obj_id) for det in select_detections(detections, t)]
    if not chosen:
        return []
    objs = [objects.get(obj_id) for obj_id, _ in chosen]
    if hasattr(estimator, "estimate_many"):
        try:
            batch = estimator.estimate_many(rgb, K, [(o, d.box) for o, (_, d) in zip(objs, chosen)], depth=depth,
                                            n_hypotheses=n_hypotheses)
            return [(obj_id, _best(h)) for (obj_id, _), h in zip(chosen, batch) if h]
        except InputError:
            pass
    out = []
    for obj, (obj_id, det) in zip(objs, chosen):
        try:
            hyps = estimator.estimate(rgb, K, obj, box=det.box, depth=depth, n_hypotheses=n_hypotheses)
        except InputError as err:
            if rejected is not None:
                rejected.append(f"object {obj_id}, box {tuple(round(v, 1) for v in det.box)}: {err}")
            continue
        if hyps:
            out.append((obj_id, _best(hyps)))
    return out


@dataclass
class StagedEstimator:
    """A PoseEstimator run up to `stage`: "coarse" (no refinement), "refine" (no selection) or "select" (all)."""

    estimator: Any
    stage: str = "select"

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"stage {self.stage!r} must be one of {STAGES}.")
        if self.stage != "select":
            self.estimator.selector = None
        if self.stage == "coarse":
            self.estimator.refiner = None

    def _kwargs(self) -> dict:
        return {"n_refine": 0} if self.stage == "coarse" else {}

    def onboard(self, obj: Any) -> Any:
        """Onboard through the wrapped estimator."""
        return self.estimator.onboard(obj)

    def estimate(self, rgb: np.ndarray, K: np.ndarray, obj: Any, box: Box | None = None, depth: np.ndarray | None = None,
                 n_hypotheses: int = 1) -> list:
        """`PoseEstimator.estimate` up to the stage."""
        return self.estimator.estimate(rgb, K, obj, box=box, depth=depth, n_hypotheses=n_hypotheses, **self._kwargs())

    def estimate_many(self, rgb: np.ndarray, K: np.ndarray, detections: list, depth: np.ndarray | None = None,
                      n_hypotheses: int = 1) -> list[list]:
        """`PoseEstimator.estimate_many` up to the stage."""
        return self.estimator.estimate_many(rgb, K, detections, depth=depth, n_hypotheses=n_hypotheses, **self._kwargs())


def _progress(items: Sequence, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="img")


def run_eval(
    dataset_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    estimator_or_method: Estimator | str,
    split: str = "test",
    mode: str = "rgb",
    n_hypotheses: int = 1,
    detections: str | os.PathLike | None = None,
    images_every: int = 1,
    shard: tuple[int, int] | None = None,
    method_name: str = "coop",
    progress: bool = True,
    dataset_name_override: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict | None:
    """Estimate all test targets of a BOP dataset into out_dir (resumable) and score them.

    `estimator_or_method`: an object with `estimate(rgb, K, obj, box=, depth=, n_hypotheses=)` (and
    optionally `onboard(obj)`), or a method name of `METHODS` (built by `make_estimator` with defaults).
    `detections`: None for GT `bbox_visib` boxes, or a BOP detections JSON. `shard`: (I, N); None reads
    torchrun's RANK/WORLD_SIZE. `settings`: extra settings recorded in run.json (e.g. stage, checkpoints).
    Returns the scores (keys of `cooppose.eval.scoring.score_results`) once every shard has finished,
    None when this shard finished but others have not yet.
    """
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} must be one of {MODES}.")
    if n_hypotheses < 1:
        raise ConfigError(f"n_hypotheses must be >= 1, got {n_hypotheses}.")
    ds = BopDataset(dataset_dir, split=split)
    name = dataset_name_override or dataset_name(dataset_dir)
    final_csv = Path(out_dir) / results_filename(method_name, name, split)
    shard = shard_from_env() if shard is None else check_shard(shard)
    estimator = make_estimator(estimator_or_method) if isinstance(estimator_or_method, str) else estimator_or_method
    if getattr(estimator, "needs_depth", False) and mode != "rgbd":
        raise ConfigError(f"{type(estimator).__name__} needs depth; run it with mode 'rgbd' (--mode rgbd).")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(out_dir, {
        "dataset": str(ds.root.resolve()), "split": split, "mode": mode, "n_hypotheses": int(n_hypotheses),
        "detections": str(Path(detections).resolve()) if detections else "gt_bbox_visib",
        "images_every": int(images_every), "method": method_name, **dict(settings or {}),
    })
    images = run_images(ds, images_every)
    mine = shard_images(images, shard)
    dets_file = load_detections(detections) if detections else None
    targets_by_image: dict[ImageKey, list[Target]] = defaultdict(list)
    for t in ds.targets():
        targets_by_image[(t.scene_id, t.im_id)].append(t)
    objects = _Objects(ds, estimator)

    todo = [k for k in mine if not journal_path(out_dir, k).is_file()]
    rejected: list[str] = []
    bar = _progress(todo, progress, f"{method_name} {name}-{split} shard {shard[0]}/{shard[1]}")
    for key in bar:
        scene_id, im_id = key
        rgb = ds.read_rgb(scene_id, im_id)
        depth = ds.read_depth(scene_id, im_id) if mode == "rgbd" else None
        K = ds.K(scene_id, im_id)
        dets = dets_file.get(key, []) if dets_file is not None else gt_detections(ds, scene_id, im_id)
        for t in targets_by_image[key]:  # onboarding is offline work: not part of the image's time
            if any(d.obj_id == t.obj_id for d in dets):
                objects.get(t.obj_id)
        t0 = time.perf_counter()
        results = estimate_image(estimator, objects, rgb, K, depth, targets_by_image[key], dets, n_hypotheses, rejected)
        elapsed = time.perf_counter() - t0 + max((d.time for d in dets), default=0.0)
        rows = [PoseEstimate(scene_id, im_id, obj_id, h.score, h.R, h.t, elapsed) for obj_id, h in results]
        write_results(journal_path(out_dir, key), rows)
        if progress:
            bar.set_postfix(s_per_img=f"{elapsed:.2f}", estimates=len(rows))

    if rejected:
        warnings.warn(f"the estimator rejected {len(rejected)} detection(s), which got no estimate; first: {rejected[0]}",
                      stacklevel=2)
    write_results(shard_path(out_dir, shard), merge_shards([journal_path(out_dir, k) for k in mine]))
    shard_files = [shard_path(out_dir, (i, shard[1])) for i in range(shard[1])]
    if not all(p.is_file() for p in shard_files):
        return None
    info = {"method": method_name, "dataset": name, "split": split, "mode": mode, "hypotheses": n_hypotheses,
            "detections": Path(detections).name if detections else "GT bbox_visib"}
    return finalize(ds, out_dir, final_csv, shard_files, images, info)


def finalize(ds: BopDataset, out_dir: Path, final_csv: Path, shard_files: Sequence[Path], images: Sequence[ImageKey],
             info: Mapping[str, Any]) -> dict:
    """Merge shard files into the final CSV, score it on the run's images' targets, write scores.json and scores.md."""
    from cooppose.eval.report import run_report
    from cooppose.eval.scoring import score_results

    rows = merge_shards(shard_files)
    write_results(final_csv, rows)
    keep = set(images)
    targets_file = out_dir / "test_targets_run.json"  # the targets of the run's images (all, or every N-th image)
    save_targets(targets_file, [t for t in ds.targets() if (t.scene_id, t.im_id) in keep])
    scores = score_results(ds.root, rows, ds.split, targets_filename=str(targets_file.resolve()))
    info = {**info, "images": len(images)}
    save_json(out_dir / "scores.json", scores)
    save_json(out_dir / "info.json", info)
    atomic_write_text(out_dir / "scores.md", run_report(info, scores))
    return scores


def coop_weights(checkpoints: str | os.PathLike | None = None, size: str = "tiny") -> dict[str, str]:
    """First 16 hex digits of the sha256 of each Co-op model file an eval loads (recorded in run.json, so a
    resumed run never mixes results of two sets of weights)."""
    from cooppose.models.checkpoint import sha256_file
    from cooppose.models.configs import KINDS
    from cooppose.pipeline.estimator import checkpoint_path

    return {kind: sha256_file(checkpoint_path(kind, size, checkpoints))[:16] for kind in KINDS}


def make_estimator(method: str, checkpoints: str | os.PathLike | None = None, stage: str = "select", **kwargs: Any) -> Any:
    """Estimator of a method name: "coop" (PoseEstimator from `checkpoints`, run up to `stage`), "sift" or "fpfh" (baselines)."""
    if method == "coop":
        from cooppose.pipeline.estimator import PoseEstimator

        return StagedEstimator(PoseEstimator.from_pretrained(checkpoints, **kwargs), stage)
    if method == "sift":
        from cooppose.eval.baselines import SiftPnPBaseline

        return SiftPnPBaseline(**kwargs)
    if method == "fpfh":
        from cooppose.eval.baselines import FpfhIcpBaseline

        return FpfhIcpBaseline(**kwargs)
    raise ConfigError(f"unknown method {method!r}; use one of {METHODS}.")
