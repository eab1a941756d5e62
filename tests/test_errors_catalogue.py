"""The rows of docs/errors.md not already proven by a module's own tests: each bad input, what cooppose does.

Rows proven elsewhere are referenced in docs/errors.md (test file and name) and not repeated here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from cooppose.cli import main
from cooppose.data import bop
from cooppose.errors import CameraError, CheckpointError, ConfigError, DatasetError, InputError, MeshError
from cooppose.geometry.camera import check_intrinsics
from cooppose.geometry.transforms import make_pose, so3_exp
from cooppose.objects import load_mesh
from cooppose.pipeline import checks

W, H = 128, 96
K = np.array([[150.0, 0.0, 63.5], [0.0, 150.0, 47.5], [0.0, 0.0, 1.0]])
POSES = {0: make_pose(so3_exp(np.array([0.3, -0.5, 0.2])), np.array([5.0, -3.0, 400.0])),
         1: make_pose(so3_exp(np.array([-1.0, 0.4, 0.9])), np.array([-8.0, 6.0, 450.0]))}
REPO = Path(__file__).resolve().parents[1]


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def _cube_mesh(path: Path, extents=(60.0, 40.0, 30.0)) -> Path:
    trimesh.creation.box(extents=extents).export(path)
    return path


# ---------------------------------------------------------------------------------------------- a tiny BOP dataset
@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-image BOP dataset of one box (no rendering needed: scoring with MSSD/MSPD) and a results CSV of its GT."""
    root = tmp_path_factory.mktemp("bop") / "tiny"
    (root / "models").mkdir(parents=True)
    model = load_mesh(_cube_mesh(root / "models" / "obj_000001.ply"))
    bop.save_models_info(root / "models" / "models_info.json", {1: {"diameter": model.diameter}})
    bop.save_camera(root / "camera.json", bop.Camera(W, H, K, depth_scale=1.0))
    scene = root / "test" / "000001"
    bop.save_scene_camera(scene / "scene_camera.json", {i: bop.SceneCamera(K=K, depth_scale=1.0) for i in POSES})
    bop.save_scene_gt(scene / "scene_gt.json", {i: [bop.GtPose(1, T[:3, :3], T[:3, 3])] for i, T in POSES.items()})
    bop.save_scene_gt_info(scene / "scene_gt_info.json",
                           {i: [bop.GtInfo((40, 30, 40, 30), (40, 30, 40, 30), 900, 900, 900, 1.0)] for i in POSES})
    for i in POSES:
        bop.write_rgb(scene / "rgb" / f"{i:06d}.png", np.full((H, W, 3), 90, np.uint8))
        bop.write_depth(scene / "depth" / f"{i:06d}.png", np.full((H, W), 400.0), 1.0)
    bop.save_targets(root / "test_targets_bop19.json", [bop.Target(1, i, 1, 1) for i in POSES])
    results = root.parent / "gt_tiny-test.csv"
    bop.write_results(results, [bop.PoseEstimate(1, i, 1, 1.0, T[:3, :3], T[:3, 3], 0.5) for i, T in POSES.items()])
    return root, results


def _mutated(dataset, tmp_path: Path, edit) -> Path:
    root = tmp_path / "tiny"
    shutil.copytree(dataset[0], root)
    edit(root)
    return root


def _score(root: Path, results: Path, capsys) -> tuple[int, str]:
    return _run(["score", "--dataset", str(root), "--results", str(results), "--no-vsd"], capsys)


def test_the_tiny_dataset_scores_ar_one(dataset, capsys):
    code = main(["score", "--dataset", str(dataset[0]), "--results", str(dataset[1]), "--no-vsd"])
    assert code == 0 and json.loads(capsys.readouterr().out)["AR"] == pytest.approx(1.0)


MISSING = {
    "dataset folder": ("", "BOP dataset folder .* not found"),
    "camera.json": ("camera.json", "camera.json not found"),
    "targets": ("test_targets_bop19.json", "test_targets_bop19.json not found"),
    "models_info": ("models/models_info.json", "models_info.json not found"),
    "mesh": ("models/obj_000001.ply", "mesh file not found: .*obj_000001.ply"),
    "split folder": ("test", "test/000001/scene_gt.json not found; check the BOP dataset folder \\(and the split name\\)"),
    "scene_gt": ("test/000001/scene_gt.json", "scene_gt.json not found"),
    "scene_gt_info": ("test/000001/scene_gt_info.json", "scene_gt_info.json not found"),
    "scene_camera": ("test/000001/scene_camera.json", "scene_camera.json not found"),
}


@pytest.mark.parametrize("part", sorted(MISSING))
def test_missing_dataset_part_is_named(dataset, tmp_path, capsys, part):
    rel, message = MISSING[part]

    def remove(root: Path) -> None:
        target = root / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    code, err = _score(_mutated(dataset, tmp_path, remove), dataset[1], capsys)
    assert code == 2 and "Traceback" not in err
    assert err.startswith("cooppose score: error: ")
    assert re.search(message, err), err


def test_missing_image_is_named(dataset, tmp_path):
    root = _mutated(dataset, tmp_path, lambda r: (r / "test/000001/rgb/000001.png").unlink())
    with pytest.raises(DatasetError, match=r"no rgb \(or gray\) image 000001 in .*000001/rgb"):
        bop.BopDataset(root).read_rgb(1, 1)


def _write(rel: str, content) -> callable:
    def edit(root: Path) -> None:
        p = root / rel
        p.write_bytes(content) if isinstance(content, bytes) else p.write_text(json.dumps(content))
    return edit


CAM = {"cx": 63.5, "cy": 47.5, "fx": 150.0, "fy": 150.0, "height": H, "width": W, "depth_scale": 1.0}
INCONSISTENT = {
    "image width 0": (_write("camera.json", {**CAM, "width": 0}), "width must be positive"),
    "negative focal length": (_write("camera.json", {**CAM, "fx": -150.0}), "fx must be positive"),
    "infinite image height": (_write("camera.json", {**CAM, "height": float("inf")}), "height must be an integer"),
    "inst_count 0": (_write("test_targets_bop19.json", [{"scene_id": 1, "im_id": 0, "obj_id": 1, "inst_count": 0}]),
                     "inst_count must be positive"),
    "cam_K of zeros": (_write("test/000001/scene_camera.json", {"0": {"cam_K": [0] * 9}, "1": {"cam_K": [0] * 9}}),
                       "image 0 cam_K must be .* fx, fy > 0"),
    "gt_info disagrees with gt": (_write("test/000001/scene_gt_info.json", {"0": [], "1": []}),
                                  "scene 1 image 0 is a target but .* disagree on its number of instances"),
    "target of an unknown object": (_write("test_targets_bop19.json", [{"scene_id": 1, "im_id": 0, "obj_id": 7, "inst_count": 1}]),
                                    "models_info.json has no object 7"),
    "truncated JSON": (_write("camera.json", b'{"cx": 63.5, "cy"'), "camera.json is not valid JSON"),
    "JSON that is not UTF-8": (_write("camera.json", b"\xff\xfe\x00{"), "camera.json is not valid JSON"),
    "symmetry that is not a list": (_write("models/models_info.json", {"1": {"diameter": 80.0, "symmetries_continuous": 1}}),
                                    "symmetries_continuous must be a list"),
}


@pytest.mark.parametrize("case", sorted(INCONSISTENT))
def test_inconsistent_dataset_values_are_refused(dataset, tmp_path, capsys, case):
    edit, message = INCONSISTENT[case]
    code, err = _score(_mutated(dataset, tmp_path, edit), dataset[1], capsys)
    assert code == 2 and "Traceback" not in err and re.search(message, err), err


def test_corrupt_depth_image_is_refused(dataset, tmp_path):
    root = _mutated(dataset, tmp_path, _write("test/000001/depth/000000.png", b"\x89PNG\r\n\x1a\ngarbage"))
    with pytest.raises(DatasetError, match="000000.png could not be decoded"):
        bop.BopDataset(root).read_depth(1, 0)


def test_results_csv_with_inconsistent_times_fails_the_score_command(dataset, tmp_path, capsys):
    lines = dataset[1].read_text().splitlines()
    second = lines[1].rsplit(",", 1)[0] + ",0.9"  # the same image again, another time
    bad = tmp_path / "gt_tiny-test.csv"
    bad.write_text("\n".join([lines[0], lines[1], second.replace("1.0,", "0.5,", 1)]) + "\n")
    code, err = _score(dataset[0], bad, capsys)
    assert code == 2 and "scene 1 image 0 has different times (0.5 s and 0.9 s)" in err


def test_non_finite_estimates_are_not_written(tmp_path):
    p = tmp_path / "coop_lmo-test.csv"
    for R, t, score in [(np.eye(3), [0, np.nan, 500], 1.0), (np.full((3, 3), np.inf), [0, 0, 500], 1.0), (np.eye(3), [0, 0, 500], np.nan)]:
        with pytest.raises(DatasetError, match="image 0 obj 2 has a non-finite or malformed R"):
            bop.write_results(p, [bop.PoseEstimate(1, 0, 2, score, R, np.array(t, float), 0.1)])
    assert not p.exists() and list(tmp_path.iterdir()) == []


def test_results_csv_that_is_not_text_is_refused(tmp_path):
    p = tmp_path / "coop_lmo-test.csv"
    p.write_bytes(b"\x80\x81 binary")
    with pytest.raises(DatasetError, match="is not a text CSV"):
        bop.read_results(p)


# ---------------------------------------------------------------------------------------------- meshes
PLY_HEAD = ("ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
            "property float z\nelement face 1\nproperty list uchar int vertex_indices\nend_header\n").encode()
CORRUPT = {
    "truncated binary PLY": ("t.ply", PLY_HEAD + b"\x00\x00\x80"),
    "face index out of range": ("f.obj", b"v 0 0 0\nv 100 0 0\nv 0 100 0\nf 1 2 9\n"),
    "junk GLB": ("j.glb", b"glTF\x02\x00\x00\x00garbage"),
    "empty GLB": ("e.glb", b""),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_mesh_is_refused_naming_the_file(tmp_path, case):
    name, data = CORRUPT[case]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(MeshError, match=f"cannot read mesh .*{name}: .*valid PLY/OBJ/GLB"):
        load_mesh(tmp_path / name)


EMPTY = {
    "0-byte OBJ": ("e.obj", b""),
    "PLY without vertices": ("z.ply", b"ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\n"
                                      b"property float z\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n"),
    "text that is no OBJ": ("t.obj", b"hello\n"),
}


@pytest.mark.parametrize("case", sorted(EMPTY))
def test_empty_mesh_is_refused(tmp_path, case):
    name, data = EMPTY[case]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(MeshError, match="no triangles"):
        load_mesh(tmp_path / name)


def test_degenerate_mesh_is_refused(tmp_path):
    (tmp_path / "point.obj").write_text("v 5 5 5\nv 5 5 5\nv 5 5 5\nf 1 2 3\n")
    (tmp_path / "line.obj").write_text("v 0 0 0\nv 50 0 0\nv 100 0 0\nf 1 2 3\n")
    for name in ("point.obj", "line.obj"):
        for units in ("mm", "m"):
            with pytest.raises(MeshError, match="zero area"):
                load_mesh(tmp_path / name, units=units)


def _renders(model) -> int:
    from cooppose.render import Renderer

    T = make_pose(so3_exp(np.array([0.4, 0.3, 0.1])), np.array([0.0, 0.0, 3.0 * model.diameter]))
    return int(Renderer().render(model, K, T, (H, W)).mask.sum())


def test_non_manifold_mesh_warns_and_still_renders(tmp_path):
    v = np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, -100, 0], [0, 0, 100.0]])
    (tmp_path / "fin.obj").write_text("".join(f"v {x} {y} {z}\n" for x, y, z in v) + "f 1 2 3\nf 1 2 4\nf 1 2 5\n")
    with pytest.warns(UserWarning, match="non-manifold"):
        model = load_mesh(tmp_path / "fin.obj")
    assert _renders(model) > 50


def _grid_box(n: int, half: float = 50.0) -> trimesh.Trimesh:
    """A closed box whose 6 faces are n x n grids: 12 n^2 triangles, and only 8 convex-hull vertices."""
    g = np.linspace(-half, half, n + 1)
    u, v = (a.ravel() for a in np.meshgrid(g, g, indexing="ij"))
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    quads = np.stack([idx[:-1, :-1], idx[1:, :-1], idx[1:, 1:], idx[:-1, 1:]], -1).reshape(-1, 4)
    tri = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])
    verts, faces = [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            p = np.zeros(((n + 1) ** 2, 3))
            others = [a for a in range(3) if a != axis]
            p[:, axis], p[:, others[0]], p[:, others[1]] = sign * half, u, v
            faces.append(tri + len(verts) * len(p))
            verts.append(p)
    return trimesh.Trimesh(np.concatenate(verts), np.concatenate(faces), process=False)


def test_huge_mesh_warns_and_still_renders(tmp_path):
    _grid_box(300).export(tmp_path / "huge.ply")  # 1,080,000 triangles
    with pytest.warns(UserWarning, match="1080000 faces .* rendering will be slow. Decimate it"):
        model = load_mesh(tmp_path / "huge.ply")
    assert model.diameter == pytest.approx(100 * np.sqrt(3))
    assert _renders(model) > 500


@pytest.mark.slow
def test_huge_mesh_with_every_vertex_on_its_hull_still_loads(tmp_path):
    trimesh.creation.icosphere(subdivisions=8, radius=50.0).export(tmp_path / "sphere.ply")  # 1.3 M triangles
    with pytest.warns(UserWarning, match="1310720 faces"):
        model = load_mesh(tmp_path / "sphere.ply")
    assert model.diameter == pytest.approx(100.0, rel=1e-4)
    assert _renders(model) > 500


# ---------------------------------------------------------------------------------------------- camera, image, detection, depth
def test_K_of_another_resolution_warns_when_its_principal_point_is_still_inside():
    full = np.array([[1200.0, 0.0, 639.5], [0.0, 1200.0, 479.5], [0.0, 0.0, 1.0]])  # a 1280x960 camera
    with pytest.warns(UserWarning, match=r"principal point \(639.5, 479.5\) is far from the centre of the 640x480 image"):
        check_intrinsics(full, (480, 640))
    with pytest.warns(UserWarning, match="far from the centre"):
        check_intrinsics(full / np.array([[4.0], [4.0], [1.0]]), (480, 640))  # K of a 320x240 image
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_intrinsics(full / np.array([[2.0], [2.0], [1.0]]), (480, 640))  # the right K: silent
    with pytest.raises(CameraError, match="does not fit the 320x240 image"):
        check_intrinsics(full, (240, 320))  # principal point outside the image


def test_image_of_another_integer_dtype_is_refused():
    with pytest.raises(InputError, match="uint8 image, got dtype uint16; convert it to 8-bit RGB"):
        checks.check_image(np.zeros((480, 640, 3), np.uint16))
    with pytest.raises(InputError, match="dtype bool"):
        checks.check_image(np.zeros((480, 640, 3), bool))


def test_zero_area_box_is_refused():
    for box in [(100, 50, 100, 150), (100, 50, 200, 50), (0, 0, 0, 0)]:
        with pytest.raises(InputError, match="empty or inverted"):
            checks.check_box(box, (480, 640))


def test_depth_of_another_size_or_type_is_refused():
    with pytest.raises(InputError, match=r"depth has shape \(240, 320\) but the image is \(480, 640\); register depth"):
        checks.check_depth(np.full((240, 320), 500.0), (480, 640))
    with pytest.raises(InputError, match="depth must be numeric"):
        checks.check_depth(np.full((480, 640), "500"), (480, 640))
    d = checks.check_depth(np.where(np.arange(640) % 2, np.nan, 500.0)[None].repeat(480, 0), (480, 640))
    assert d.dtype == np.float32 and np.all(d[:, 1::2] == 0) and np.all(d[:, ::2] == 500)  # NaN = unknown


# ---------------------------------------------------------------------------------------------- checkpoints
class _RunsCode:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _evil(path: Path, marker: Path, payload: dict) -> Path:
    torch.save({**payload, "x": _RunsCode(marker)}, path)
    return path


def test_pickle_with_code_is_refused_by_every_loader_and_never_run(tmp_path):
    from cooppose.models import build_model, load_croco_weights
    from cooppose.models.checkpoint import export_model, load_model
    from cooppose.pipeline import PoseEstimator
    from cooppose.train import train

    marker = tmp_path / "code_ran"
    model_file = _evil(tmp_path / "coarse_tiny.pt", marker, {"format": "cooppose-model"})
    loaders = {
        "load_model": lambda: load_model(model_file),
        "export_model": lambda: export_model(model_file, tmp_path / "out.pt"),
        "from_pretrained": lambda: PoseEstimator.from_pretrained(tmp_path),
        "load_croco_weights": lambda: load_croco_weights(build_model("coarse", "tiny", enc_depth=1, dec_depth=1), str(model_file)),
    }
    for name, load in loaders.items():
        with pytest.raises(CheckpointError, match="coarse_tiny.pt: refused: it holds Python objects") as err:
            load()
        assert "weights_only" not in str(err.value), name
    run = tmp_path / "run"
    run.mkdir()
    _evil(run / "checkpoint.pt", marker, {"format": "cooppose-train"})
    cfg = {"kind": "selection", "model": {"size": "tiny", "enc_depth": 1, "dec_depth": 1}, "steps": 1, "batch_size": 1,
           "num_workers": 0}
    with pytest.raises(CheckpointError, match="cannot resume: .*checkpoint.pt: refused.*--no-resume"):
        train(cfg, run, datasets=([{}], None), progress=False)
    assert not marker.exists()


def test_shipped_checkpoints_have_matching_sidecars():
    from cooppose.models.checkpoint import load_model, sha256_file, sidecar_path

    shipped = sorted((REPO / "cooppose" / "assets").rglob("*.pt"))
    if not shipped:
        pytest.skip("no checkpoints are shipped yet in cooppose/assets")
    for path in shipped:
        side = sidecar_path(path)
        assert side.is_file(), f"{path} has no {side.name}"
        assert side.read_text().split() == [sha256_file(path), path.name]
        assert load_model(path).cfg.kind in path.name


# ---------------------------------------------------------------------------------------------- templates cache
def test_unwritable_template_cache_warns_and_still_onboards(tmp_path):
    from cooppose.onboarding import onboard

    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    model = load_mesh(_cube_mesh(tmp_path / "box.ply"))
    with pytest.warns(UserWarning, match="cannot write the template cache .* Pass a writable cache_dir"):
        templates = onboard(model, size=32, cache_dir=blocker)
    assert templates.cache_path is None and len(templates) == 42 and templates.mask.any(axis=(1, 2)).all()


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_prints_errors_without_traceback_and_exits_2(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "cfg.json").write_text(json.dumps({"kind": "coarse", "lr": "fast"}))
    cases = [
        (["onboard", str(tmp_path / "missing.ply")], "cooppose onboard: error: mesh file not found"),
        (["score", "--dataset", str(tmp_path / "nope"), "--results", str(tmp_path / "r.csv")],
         "cooppose score: error: BOP dataset folder"),
        (["train", "coarse", "--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "run")],
         "cooppose train: error: training config values of the wrong type or range: lr='fast'"),
        (["synth", "objects", "--out", str(tmp_path / "a_file" / "models"), "--n", "1"],
         "cooppose synth: error: [Errno 20] Not a directory"),
    ]
    for argv, message in cases:
        code, err = _run(argv, capsys)
        assert code == 2 and message in err and "Traceback" not in err, (argv, err)
        assert len([line for line in err.splitlines() if "error:" in line]) == 1  # (progress bars aside)


def test_cli_threads_and_device_are_checked_by_the_parser(capsys):
    cases = [(["demo", "--threads", "-1"], "argument --threads: must be a positive integer, got '-1'"),
             (["estimate", "--device", "gpu0", "--mesh", "m.ply", "--rgb", "x.png", "--K", "1,1,1,1", "--box", "1,2,3,4",
               "--out", "o"], "argument --device: 'gpu0' is not a torch device")]
    if not torch.cuda.is_available():
        cases.append((["demo", "--device", "cuda"], "'cuda': CUDA is not available on this machine; use cpu"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_cli_subprocess_exit_code_and_message(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cooppose.cli", "onboard", str(tmp_path / "missing.ply")],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == f"cooppose onboard: error: mesh file not found: {tmp_path / 'missing.ply'}; check the path."


def test_training_config_of_the_wrong_kind_of_value_is_refused(tmp_path):
    from cooppose.train import load_train_config

    for bad in ({"kind": "coarse", "model": ["tiny"]}, {"kind": "coarse", "betas": [0.9]}, {"kind": "refiner", "steps": 1.5}):
        (tmp_path / "c.json").write_text(json.dumps(bad))
        with pytest.raises(ConfigError, match="training config"):
            load_train_config(tmp_path / "c.json")
    with pytest.raises(ConfigError, match="is a folder"):
        load_train_config(tmp_path)
