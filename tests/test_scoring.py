"""BOP19 scoring end to end: a hand-built toy dataset, the official LM-O scores, the `score` CLI."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import trimesh

from cooppose.cli import main
from cooppose.data import bop
from cooppose.errors import DatasetError
from cooppose.eval.scoring import score_results

K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
T_GT = {0: [-150.0, 0.0, 1000.0], 1: [100.0, 0.0, 1000.0], 2: [0.0, 100.0, 1200.0]}  # GT instance -> t (mm)


class BlockRenderer:
    """Stand-in renderer: a 40 x 40 px block at the projected object centre, at depth t_z."""

    def render(self, mesh, K, T, size):
        H, W = size
        t = T[:3, 3]
        u, v = (int(round(K[i, i] * t[i] / t[2] + K[i, 2])) for i in (0, 1))
        d = np.zeros((H, W))
        d[max(v - 20, 0) : v + 20, max(u - 20, 0) : u + 20] = t[2]
        return SimpleNamespace(depth=d)


def make_toy_dataset(root, with_depth=False):
    """Two targets in one image: obj 1 (two instances, both < 10 % visible) and obj 2; cubes of 100 / 60 mm."""
    bop.save_camera(root / "camera.json", bop.Camera(640, 480, K, 1.0))
    (root / "models").mkdir()
    for obj, side in ((1, 100.0), (2, 60.0)):
        trimesh.creation.box(extents=(side, side, side)).export(root / "models" / f"obj_{obj:06d}.ply")
    bop.save_models_info(root / "models" / "models_info.json", {1: {"diameter": 100 * 3**0.5}, 2: {"diameter": 60 * 3**0.5}})
    bop.save_targets(root / "test_targets_bop19.json", [bop.Target(1, 0, 1, 1), bop.Target(1, 0, 2, 1)])
    scene = root / "test" / "000001"
    bop.save_scene_camera(scene / "scene_camera.json", {0: bop.SceneCamera(K, 1.0)})
    objs = {0: 1, 1: 1, 2: 2}
    bop.save_scene_gt(scene / "scene_gt.json", {0: [bop.GtPose(objs[g], np.eye(3), np.array(T_GT[g])) for g in range(3)]})
    vis = {0: 0.02, 1: 0.05, 2: 0.9}
    bop.save_scene_gt_info(scene / "scene_gt_info.json",
                           {0: [bop.GtInfo((0, 0, 1, 1), (0, 0, 1, 1), 100, 100, int(100 * vis[g]), vis[g]) for g in range(3)]})
    if with_depth:
        ren = BlockRenderer()
        blocks = [ren.render(None, K, _pose(T_GT[g]), (480, 640)).depth for g in range(3)]
        bop.write_depth(scene / "depth" / "000000.png", np.max(blocks, axis=0))  # blocks do not overlap
    return root


def _pose(t):
    T = np.eye(4)
    T[:3, 3] = t
    return T


def toy_estimates():
    e = lambda obj, score, t: bop.PoseEstimate(1, 0, obj, score, np.eye(3), np.array(t, dtype=float), 0.8)  # noqa: E731
    return [
        e(1, 0.9, [130.0, 0.0, 1000.0]),  # GT 1 + 30 mm in x: MSSD 30/173.2 = 0.173, MSPD 500*30/950 = 15.8 px
        e(1, 0.5, T_GT[1]),  # perfect but second-best score: ignored (inst_count 1)
        e(2, 0.7, [0.0, 100.0, 1205.0]),  # GT 2 + 5 mm in depth: MSSD 0.048, MSPD < 1 px
        e(3, 1.0, [0.0, 0.0, 900.0]),  # not a target: ignored (no model needed)
    ]


def test_toy_dataset_scores_by_hand(tmp_path):
    root = make_toy_dataset(tmp_path)
    csv = tmp_path / "toy_toy-test.csv"
    bop.write_results(csv, toy_estimates())
    s = score_results(root, csv)
    # 2 targets: valid GT of obj 1 is its most visible instance (GT 1), although it is only 5 % visible
    assert s["n_targets"] == 2 and s["n_estimates"] == 4 and s["n_estimates_evaluated"] == 2
    assert list(s["recall_MSSD_per_threshold"].values()) == [0.5, 0.5, 0.5] + [1.0] * 7
    assert list(s["recall_MSPD_per_threshold"].values()) == [0.5, 0.5, 0.5] + [1.0] * 7
    assert s["AR_MSSD"] == pytest.approx(0.85) and s["AR_MSPD"] == pytest.approx(0.85)
    assert s["AR_VSD"] is None and s["recall_VSD_per_threshold"] is None and s["AR"] == pytest.approx(0.85)
    assert s["per_object"]["1"] == {"n_targets": 1, "AR_VSD": None, "AR_MSSD": 0.7, "AR_MSPD": 0.7}
    assert s["mean_time_per_image"] == pytest.approx(0.8)
    # in-memory rows (as the evaluation runner passes them) give the same scores
    assert score_results(root, toy_estimates()) == s


def test_toy_dataset_vsd_with_depth(tmp_path):
    root = make_toy_dataset(tmp_path, with_depth=True)
    s = score_results(root, toy_estimates(), renderer=BlockRenderer())
    # obj 1: block shifted 15 px of 40 -> VSD 30/55 > 0.5 for every tau (never correct);
    # obj 2: 5 mm deeper -> |d|/diameter = 0.048 < every tau -> VSD 0, correct for all 100 (tau, theta)
    assert s["AR_VSD"] == pytest.approx(0.5)
    assert s["AR"] == pytest.approx((0.5 + 0.85 + 0.85) / 3)
    assert s["recall_VSD_per_threshold"]["0.05"]["0.50"] == 0.5
    assert score_results(root, toy_estimates(), vsd=False)["AR_VSD"] is None


def test_score_cli_prints_one_json_object(tmp_path, capsys):
    root = make_toy_dataset(tmp_path)
    csv = tmp_path / "toy_toy-test.csv"
    bop.write_results(csv, toy_estimates())
    assert main(["score", "--dataset", str(root), "--results", str(csv)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_targets"] == 2 and out["AR_MSSD"] == pytest.approx(0.85) and out["AR_VSD"] is None
    assert main(["score", "--dataset", str(root), "--results", str(tmp_path / "missing_toy-test.csv")]) == 2
    assert "not found" in capsys.readouterr().err


def test_bad_inputs_are_refused(tmp_path):
    root = make_toy_dataset(tmp_path)
    rows = toy_estimates()
    rows[2] = bop.PoseEstimate(1, 0, 2, 0.7, np.eye(3), np.zeros(3), 0.1)  # other time on the same image
    with pytest.raises(DatasetError, match="different times"):
        score_results(root, rows)
    with pytest.raises(DatasetError, match="test_targets_bop19.json not found"):
        score_results(root / "test", toy_estimates())  # not the dataset root
    (root / "models" / "models_info.json").write_text('{"1": {"diameter": 173.2}}')
    with pytest.raises(DatasetError, match="has no object 2"):
        score_results(root, toy_estimates())


def test_reproduces_official_bop_toolkit_on_lmo(shared_data):
    folder = shared_data / "lmo-gt-only"
    expected = json.loads((folder / "expected_scores.json").read_text())
    s = score_results(folder, folder / "results" / "thirdparty_lmo-test.csv")
    off = expected["official_visib_gt_min_minus1"]
    assert s["n_targets"] == 1445
    assert s["AR_MSSD"] == pytest.approx(0.588581, abs=1e-6)
    assert s["AR_MSPD"] == pytest.approx(0.795156, abs=1e-6)
    for key in ("recall_MSSD_per_threshold", "recall_MSPD_per_threshold"):
        for th, r in off[key].items():
            assert s[key][th] == pytest.approx(r, abs=1e-6), (key, th)
    # not the pre-2020 visib_fract >= 0.1 variant
    variant = expected["variant_visib_gt_min_0.1"]
    assert s["n_targets"] != variant["n_targets"] and abs(s["AR_MSSD"] - variant["AR_MSSD"]) > 1e-3
    assert s["AR_VSD"] is None and s["AR"] == pytest.approx(off["AR_MSSD_MSPD_mean"], abs=1e-6)


def test_vsd_end_to_end_on_real_lmo_depth(shared_data):
    folder = shared_data / "lmo-frame3"
    gts = bop.BopDataset(folder).scene_gt(2)[3]
    from cooppose.render import Renderer

    ren = Renderer()
    exact = score_results(folder, [bop.PoseEstimate(2, 3, g.obj_id, 1.0, g.R, g.t) for g in gts], renderer=ren)
    assert exact["n_targets"] == 8 and exact["AR_VSD"] == 1.0 and exact["AR"] == 1.0
    # 20 mm farther along the viewing ray: same image (MSPD 1), wrong depth (VSD and MSSD drop)
    far = [bop.PoseEstimate(2, 3, g.obj_id, 1.0, g.R, g.t * (1 + 20 / np.linalg.norm(g.t))) for g in gts]
    s = score_results(folder, far, renderer=ren)
    assert s["AR_MSPD"] == 1.0 and 0.6 < s["AR_VSD"] < 0.9 and 0.6 < s["AR_MSSD"] < 0.9
    assert s["recall_VSD_per_threshold"]["0.05"]["0.50"] < s["recall_VSD_per_threshold"]["0.50"]["0.50"]
