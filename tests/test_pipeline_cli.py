"""`cooppose estimate`: reads the inputs, writes pose.json (atomically) and overlay.png, debug pictures, clear errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_pipeline_network import MICRO, MICRO_KIND
from test_pipeline_oracles import make_scene

from cooppose.cli import main
from cooppose.geometry.transforms import make_pose, so3_exp
from cooppose.models import build_model
from cooppose.models.checkpoint import save_model
from cooppose.objects import bundled_mesh_path, load_mesh
from cooppose.render import Renderer

pytestmark = pytest.mark.usefixtures("one_thread_module")

T_A = make_pose(so3_exp(np.array([0.4, -1.2, 2.0])), np.array([30.0, -20.0, 600.0]))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    for kind, extra in MICRO_KIND.items():
        save_model(build_model(kind, "tiny", **MICRO, **extra), root / "ckpt" / f"{kind}_tiny.pt")
    scene = make_scene(Renderer(), [load_mesh(bundled_mesh_path("duck"))], [T_A])
    Image.fromarray(scene.rgb).save(root / "rgb.png")
    Image.fromarray((scene.mask() * 255).astype(np.uint8)).save(root / "mask.png")
    Image.fromarray(np.round(scene.depth * 10).astype(np.uint16)).save(root / "depth.png")  # 0.1 mm units
    K = scene.K
    (root / "cam.json").write_text(json.dumps({"0": {"cam_K": K.ravel().tolist(), "depth_scale": 0.1}}))
    box = ",".join(f"{v:.1f}" for v in scene.box())
    k4 = f"{K[0, 0]},{K[1, 1]},{K[0, 2]},{K[1, 2]}"
    return root, box, k4


def base(root, out, *extra):
    return ["estimate", "--mesh", str(bundled_mesh_path("duck")), "--rgb", str(root / "rgb.png"),
            "--checkpoints", str(root / "ckpt"), "--cache-dir", str(root / "cache"), "--out", str(out), *extra]


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_estimate_writes_pose_and_overlay(files, capsys, keep_threads):
    root, box, k4 = files
    out = root / "out_rgb"
    assert main(base(root, out, "--K", k4, "--box", box, "--hypotheses", "2", "--refine", "1", "--save-debug", "--threads", "1")) == 0
    result = json.loads((out / "pose.json").read_text())
    assert result["mode"] == "rgb" and len(result["hypotheses"]) == 2
    T = np.array(result["best"]["T"])
    assert T.shape == (4, 4) and np.all(np.isfinite(T)) and np.allclose(T[3], [0, 0, 0, 1])
    assert result["best"]["stage"] == "select" and 0 <= result["best"]["score"] <= 1
    assert np.asarray(Image.open(out / "overlay.png")).shape == (480, 640, 3)
    names = sorted(p.name for p in (out / "debug").iterdir())
    assert names == ["h0_coarse.png", "h0_refine0.png", "h1_coarse.png", "h1_refine0.png"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    assert "wrote" in capsys.readouterr().out and torch.get_num_threads() == 1


def test_estimate_rgbd_from_mask_and_json_K(files):
    root, _, _ = files
    out = root / "out_rgbd"
    args = base(root, out, "--K", str(root / "cam.json"), "--mask", str(root / "mask.png"), "--depth",
                str(root / "depth.png"), "--depth-scale", "0.1", "--refine", "1")
    assert main(args) == 0
    result = json.loads((out / "pose.json").read_text())
    assert result["mode"] == "rgbd" and result["K"][0][2] == pytest.approx(331.0)


def test_estimate_errors_exit_2_with_the_fix(files, capsys):
    root, box, k4 = files
    out = root / "bad"
    assert main(base(root, out, "--K", "600,600,320", "--box", box)) == 2
    assert "--K" in capsys.readouterr().err
    assert main(base(root, out, "--K", k4, "--box", "1,2,3")) == 2
    assert "--box needs 4" in capsys.readouterr().err
    depth_m = ["--depth", str(root / "depth.png"), "--depth-scale", "0.0001"]  # 0.1 mm units read as metres
    assert main(base(root, out, "--K", k4, "--box", box, *depth_m)) == 2
    assert "depth_scale=1000" in capsys.readouterr().err
    missing = ["estimate", "--mesh", str(bundled_mesh_path("duck")), "--rgb", str(root / "nope.png"), "--K", k4,
               "--box", box, "--out", str(out)]
    assert main(missing) == 2
    assert "--rgb file not found" in capsys.readouterr().err
    no_ckpt = ["estimate", "--mesh", str(bundled_mesh_path("duck")), "--rgb", str(root / "rgb.png"), "--K", k4,
               "--box", box, "--checkpoints", str(root), "--out", str(out)]
    assert main(no_ckpt) == 2
    assert "coarse_tiny.pt" in capsys.readouterr().err
