"""BOP19 scores of pose estimates on a BOP dataset: AR_MSSD, AR_MSPD, AR_VSD (with depth) and AR.

Protocol (bop_toolkit `eval_bop19_pose.py`, localisation, official `visib_gt_min = -1`): targets from
`test_targets_bop19.json`; per target the `inst_count` most visible GT instances of the object are valid;
per (image, object) the `inst_count` best-scored estimates count, others (and estimates of non-target
pairs) are ignored; each is matched greedily in score order to a valid GT; recall = matched / valid GT.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cooppose.data.bop import BopDataset, PoseEstimate, as_estimate, check_consistent_times, load_models_info, read_results
from cooppose.errors import DatasetError
from cooppose.eval import metrics as M

MAX_SYM_DISC_STEP = 0.01


@dataclass
class _Model:
    points: np.ndarray  # (N, 3) mm, vertices of the evaluation mesh
    symmetries: list[np.ndarray]  # 4x4, identity first
    diameter: float  # mm, from models_info
    mesh: Any  # cooppose.objects.ObjectModel, for rendering (VSD)


def _load_models(models_dir: Path, obj_ids: Iterable[int]) -> dict[int, _Model]:
    from cooppose.objects import load_mesh, symmetry_transformations

    info = load_models_info(models_dir / "models_info.json")
    out = {}
    for obj in sorted(set(obj_ids)):
        if obj not in info:
            raise DatasetError(f"{models_dir / 'models_info.json'} has no object {obj}, which the targets need.")
        with warnings.catch_warnings():  # evaluation meshes are used as given; topology warnings are noise here
            warnings.filterwarnings("ignore", message=".*non-manifold.*")
            mesh = load_mesh(models_dir / f"obj_{obj:06d}.ply")
        syms = symmetry_transformations(info[obj], MAX_SYM_DISC_STEP)
        out[obj] = _Model(points=mesh.vertices, symmetries=syms, diameter=float(info[obj]["diameter"]), mesh=mesh)
    return out


def _estimates(results: str | os.PathLike | Iterable[PoseEstimate | Mapping[str, Any]]) -> list[PoseEstimate]:
    if isinstance(results, (str, os.PathLike)):
        return read_results(results)
    rows = [as_estimate(r) for r in results]
    check_consistent_times(rows, source="pose estimates")
    return rows


def _mean_time(rows: list[PoseEstimate]) -> float:
    times = {(r.scene_id, r.im_id): r.time for r in rows}
    if not times or any(t < 0 for t in times.values()):
        return -1.0
    return float(np.mean(list(times.values())))


def _recall_dict(thresholds: np.ndarray, rec: np.ndarray, fmt: str) -> dict[str, float]:
    return {format(float(th), fmt): float(r) for th, r in zip(thresholds, rec)}


def score_results(
    dataset_dir: str | os.PathLike,
    results: str | os.PathLike | Iterable[PoseEstimate | Mapping[str, Any]],
    split: str = "test",
    models_dir: str | os.PathLike | None = None,
    *,
    vsd: bool | None = None,
    vsd_delta: float = M.VSD_DELTA,
    targets_filename: str = "test_targets_bop19.json",
    renderer: Any = None,
) -> dict[str, Any]:
    """BOP19 scores of `results` (CSV path or PoseEstimate rows / dicts) on the dataset's targets.

    Models: `models_dir`, else models_eval/ if present, else models/. VSD is computed when `vsd` is True,
    or when it is None and every target image has a depth map; AR is the mean of the available ARs.
    Returns n_targets, AR_MSSD, AR_MSPD, AR_VSD (None without depth), AR, per-threshold recalls,
    per-object ARs, estimate counts and the mean time per image (-1 when unknown).
    """
    ds = BopDataset(dataset_dir, split)
    rows = _estimates(results)
    targets = ds.targets(targets_filename)
    if not targets:
        raise DatasetError(f"{ds.root / targets_filename} lists no targets.")
    by_image: dict[tuple[int, int], dict[int, int]] = defaultdict(dict)
    for t in targets:
        by_image[(t.scene_id, t.im_id)][t.obj_id] = t.inst_count
    ests: dict[tuple[int, int, int], list[PoseEstimate]] = defaultdict(list)
    for r in rows:
        ests[(r.scene_id, r.im_id, r.obj_id)].append(r)

    do_vsd = vsd if vsd is not None else all(ds.has_depth(s, i) for s, i in by_image)
    models = _load_models(Path(models_dir) if models_dir else ds.models_dir, {t.obj_id for t in targets})
    if do_vsd and renderer is None:
        from cooppose.render import Renderer

        renderer = Renderer()
    width = ds.camera.width
    groups: dict[str, list[M.MatchGroup]] = {"mssd": [], "mspd": [], "vsd": []}
    n_used = 0
    for (scene, im), inst_counts in by_image.items():
        gts, infos = ds.scene_gt(scene).get(im), ds.scene_gt_info(scene).get(im)
        if gts is None or infos is None or len(gts) != len(infos):
            raise DatasetError(
                f"scene {scene} image {im} is a target but scene_gt.json / scene_gt_info.json of {ds.scene_dir(scene)} "
                "lack it or disagree on its number of instances."
            )
        valid = M.valid_gt_mask([g.obj_id for g in gts], [i.visib_fract for i in infos], inst_counts)
        K = ds.K(scene, im)
        depth_test = ds.read_depth(scene, im) if do_vsd else None
        for obj, n in inst_counts.items():
            model = models[obj]
            cand = ests.get((scene, im, obj), [])
            kept = [cand[i] for i in M.top_estimates([e.score for e in cand], n)]
            n_used += len(kept)
            gt_ids = [g for g, gt in enumerate(gts) if gt.obj_id == obj]
            mssd = np.full((len(kept), len(gt_ids)), np.inf)
            mspd = np.full((len(kept), len(gt_ids)), np.inf)
            vsd_err = np.ones((len(kept), len(gt_ids), len(M.VSD_TAUS)))
            gt_depth: dict[int, np.ndarray] = {}
            for a, e in enumerate(kept):
                for b, g in enumerate(gt_ids):
                    R_g, t_g = gts[g].R, gts[g].t
                    if M.spheres_overlap(e.t, t_g, model.diameter):
                        mssd[a, b] = M.mssd(e.R, e.t, R_g, t_g, model.points, model.symmetries) / model.diameter
                    mspd[a, b] = M.mspd(e.R, e.t, R_g, t_g, K, model.points, model.symmetries) * (640.0 / width)
                    if do_vsd and M.sphere_projections_overlap(0.5 * model.diameter, e.t, t_g):
                        if g not in gt_depth:
                            gt_depth[g] = renderer.render(model.mesh, K, M.render_pose(R_g, t_g), size=depth_test.shape).depth
                        vsd_err[a, b] = M.vsd_rendered(renderer, model.mesh, e.R, e.t, R_g, t_g, depth_test, K,
                                                       model.diameter, vsd_delta, M.VSD_TAUS, depth_gt=gt_depth[g])
            v = valid[gt_ids]
            groups["mssd"].append(M.MatchGroup(obj, mssd, v))
            groups["mspd"].append(M.MatchGroup(obj, mspd, v))
            groups["vsd"].append(M.MatchGroup(obj, vsd_err, v))

    rec_mssd, tp_mssd, n_targets = M.recalls(groups["mssd"], M.MSSD_THRESHOLDS)
    rec_mspd, tp_mspd, _ = M.recalls(groups["mspd"], M.MSPD_THRESHOLDS)
    out: dict[str, Any] = {
        "n_targets": n_targets,
        "AR_MSSD": float(rec_mssd.mean()),
        "AR_MSPD": float(rec_mspd.mean()),
        "AR_VSD": None,
    }
    per_obj_tp = {"MSSD": tp_mssd, "MSPD": tp_mspd}
    if do_vsd:
        rec_vsd, tp_vsd, _ = M.recalls(groups["vsd"], M.VSD_THRESHOLDS)  # (n_tau, n_theta)
        out["AR_VSD"] = float(rec_vsd.mean())
        per_obj_tp["VSD"] = tp_vsd
    available = [out[k] for k in ("AR_VSD", "AR_MSSD", "AR_MSPD") if out[k] is not None]
    out["AR"] = float(np.mean(available))
    out["recall_MSSD_per_threshold"] = _recall_dict(M.MSSD_THRESHOLDS, rec_mssd, ".2f")
    out["recall_MSPD_per_threshold"] = _recall_dict(M.MSPD_THRESHOLDS, rec_mspd, "g")
    out["recall_VSD_per_threshold"] = (
        {format(float(tau), ".2f"): _recall_dict(M.VSD_THRESHOLDS, r, ".2f") for tau, r in zip(M.VSD_TAUS, rec_vsd)}
        if do_vsd else None
    )
    out["per_object"] = _per_object(groups["mssd"], per_obj_tp)
    out["n_estimates"] = len(rows)
    out["n_estimates_evaluated"] = n_used
    out["mean_time_per_image"] = _mean_time(rows)
    out["protocol"] = (
        "BOP19 localisation: valid GT = inst_count most visible instances per target (visib_gt_min = -1); "
        "top inst_count estimates per (image, object); greedy matching by score; recall over valid GT"
    )
    return out


def _per_object(groups: list[M.MatchGroup], tps: dict[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per object: its number of valid GT and AR per error (mean over the threshold grid of its recalls)."""
    obj_ids = np.array([g.obj_id for g in groups])
    n_valid = np.array([int(np.sum(g.valid)) for g in groups])
    out = {}
    for obj in sorted(set(obj_ids.tolist())):
        sel = obj_ids == obj
        n = int(n_valid[sel].sum())
        entry: dict[str, Any] = {"n_targets": n}
        for name in ("VSD", "MSSD", "MSPD"):
            if name in tps:
                entry[f"AR_{name}"] = float(tps[name][sel].sum(axis=0).mean() / n) if n else 0.0
            else:
                entry[f"AR_{name}"] = None
        out[str(obj)] = entry
    return out
