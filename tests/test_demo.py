"""`cooppose demo`: the bundled scene is what the script makes and what it claims, errors are scored right, and the
command runs end to end on randomly initialised tiny networks (no accuracy claim) or fails clearly without them."""

import json
import math
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cooppose import demo
from cooppose.cli import main
from cooppose.errors import InputError
from cooppose.geometry.transforms import look_at, make_pose, so3_exp
from cooppose.models import build_model
from cooppose.models.checkpoint import export_model
from cooppose.objects import ObjectModel, bundled_mesh_path, load_mesh
from cooppose.pipeline import PoseHypothesis
from cooppose.render import Renderer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundled():
    return demo.load_demo_scene()



def test_script_regenerates_the_bundled_scene(bundled, tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    monkeypatch.setattr(sys, "argv", ["make_demo_scene.py", "--out", str(out)])
    runpy.run_path(str(ROOT / "scripts" / "make_demo_scene.py"), run_name="__main__")
    assert "visible fraction 0.69" in capsys.readouterr().out
    fresh = demo.load_demo_scene(out)
    same_backend = fresh.info["renderer"] == bundled.info["renderer"]
    assert {k: v for k, v in fresh.info.items() if k != "renderer"} == {k: v for k, v in bundled.info.items() if k != "renderer"}
    assert np.array_equal(fresh.mask, bundled.mask)
    if same_backend:
        assert np.array_equal(fresh.depth, bundled.depth) and np.array_equal(fresh.rgb, bundled.rgb)
    else:  # the two rasterizers agree on coverage; depth may differ by rounding at a few pixels
        diff = np.abs(fresh.depth.astype(np.int64) - bundled.depth)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    assert sum(p.stat().st_size for p in demo.DEMO_DIR.iterdir()) < 1_000_000


def test_bundled_scene_matches_its_ground_truth(bundled):
    duck = load_mesh(bundled_mesh_path("duck"))
    assert bundled.rgb.shape == (480, 640, 3) and bundled.depth.dtype == np.uint16
    r = Renderer().render(duck, bundled.K, bundled.T_gt, (480, 640))
    visible = bundled.mask
    assert not np.any(visible & ~r.mask)  # the visible duck lies inside its unoccluded silhouette
    fraction = visible.sum() / r.mask.sum()
    assert 0.5 < fraction < 0.9  # partly hidden by a distractor
    assert bundled.info["visib_fract"] == pytest.approx(fraction, abs=1e-6)
    assert np.abs(bundled.depth[visible].astype(np.float64) - r.depth[visible]).max() <= 0.5  # depth in mm, rounded
    occluded = r.mask & ~visible
    assert np.all(bundled.depth[occluded] < r.depth[occluded])  # something nearer hides those pixels
    assert np.all(bundled.depth > 0)  # the table fills the background
    ys, xs = np.nonzero(visible)
    assert bundled.box == (xs.min() - 0.5, ys.min() - 0.5, xs.max() + 0.5, ys.max() + 0.5)


def test_table_depth_seen_from_straight_above():
    K = np.array([[500.0, 0.0, 20.0], [0.0, 500.0, 15.0], [0.0, 0.0, 1.0]])
    T = look_at(np.array([0.0, 0.0, 300.0]), np.zeros(3), up=np.array([0.0, 1.0, 0.0]))
    assert np.allclose(demo.table_depth(K, T, (30, 40)), 300.0)
    tilted = look_at(np.array([0.0, -300.0, 300.0]), np.zeros(3))  # 45 degrees: the centre ray travels 300 * sqrt(2)
    d = demo.table_depth(K, tilted, (31, 41))
    assert d[15, 20] == pytest.approx(300 * math.sqrt(2))
    assert d[0, 20] > d[15, 20] > d[30, 20]  # farther towards the top of the image


def test_pose_errors_by_hand():
    cube = ObjectModel.from_arrays(np.array([[x, y, z] for x in (-50, 50) for y in (-50, 50) for z in (-50, 50)], float),
                                   np.array([[0, 1, 2]]), name="cube")
    T_gt = make_pose(np.eye(3), np.array([0.0, 0.0, 500.0]))
    T = make_pose(so3_exp(np.array([0.0, 0.0, np.pi / 2])), np.array([0.0, 0.0, 510.0]))
    e = demo.pose_errors(T, T_gt, cube)
    assert e["rot_err_deg"] == pytest.approx(90.0) and e["trans_err_mm"] == pytest.approx(10.0)
    assert e["mssd_mm"] == pytest.approx(math.sqrt(100**2 + 10**2))  # every corner moves 100 mm in xy and 10 in z
    assert e["mssd_over_diameter"] == pytest.approx(e["mssd_mm"] / (100 * math.sqrt(3)))


def test_stage_poses_need_debug_data():
    h = PoseHypothesis.from_T(np.eye(4), score=0.5, stage="select")
    with pytest.raises(InputError, match="debug=True"):
        demo.stage_poses(h)


def test_broken_scene_folder_is_refused(tmp_path):
    with pytest.raises(InputError, match="make_demo_scene"):
        demo.load_demo_scene(tmp_path)


@pytest.fixture(scope="module")
def random_checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    for kind in ("coarse", "refiner", "selection"):
        model = build_model(kind, "tiny")
        export_model({"model": model.state_dict(), "model_config": model.cfg.to_dict(), "step": 0}, folder / f"{kind}_tiny.pt")
    return folder


@pytest.mark.parametrize("mode", ["rgb", "rgbd"])
def test_demo_json_with_random_networks(random_checkpoints, tmp_path_factory, capsys, one_thread, mode):
    out = tmp_path_factory.mktemp(f"demo_{mode}")
    cache = tmp_path_factory.getbasetemp() / "demo_cache"
    args = ["demo", "--json", "--checkpoints", str(random_checkpoints), "--out", str(out), "--cache-dir", str(cache),
            "--hypotheses", "1", "--refine", "1", "--threads", "1"] + (["--rgbd"] if mode == "rgbd" else [])
    assert main(args) == 0
    stdout = capsys.readouterr().out
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["mode"] == mode and [s["stage"] for s in result["stages"]] == ["coarse", "refine", "select"]
    diameter = load_mesh(bundled_mesh_path("duck")).diameter
    for s in result["stages"]:
        values = [s["rot_err_deg"], s["trans_err_mm"], s["mssd_over_diameter"], s["seconds"]]
        assert all(math.isfinite(v) for v in values) and 0 <= s["rot_err_deg"] <= 180
        assert s["mssd_over_diameter"] == pytest.approx(s["mssd_mm"] / diameter)
        assert np.allclose(np.array(s["T"])[3], [0, 0, 0, 1])
    assert result["stages"][2]["T"] == result["stages"][1]["T"]  # one hypothesis: selection keeps the refined pose
    assert result["hypotheses"][0]["mssd_mm"] == result["stages"][2]["mssd_mm"]
    assert set(result["timings"]) == {"load_s", "onboard_s", "estimate_s"}
    assert "MSSD/diameter" in stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == ["coarse.png", "input.png", "overlay.png", "refine_0.png", "stages.png"]


def test_demo_without_checkpoints_exits_2_with_the_fix(tmp_path, capsys):
    assert main(["demo", "--checkpoints", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "coarse checkpoint not found" in err and "cooppose train" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
