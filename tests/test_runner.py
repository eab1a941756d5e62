"""BOP evaluation runner on a tiny rendered 3-image BOP dataset of procedural (non-reserved) objects.

An ORACLE estimator returns the ground-truth poses (optionally shifted), found from the image content and
the detection box, so that the scores it gets are known by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh

from cooppose.data import bop
from cooppose.errors import ConfigError, DatasetError, InputError
from cooppose.eval import runner
from cooppose.eval.runner import Detection, run_eval
from cooppose.geometry.transforms import make_pose, random_rotations
from cooppose.pipeline.hypothesis import PoseHypothesis

W, H = 320, 240
K = np.array([[300.0, 0.0, 160.0], [0.0, 300.0, 120.0], [0.0, 0.0, 1.0]])
# (scene_id, im_id) -> [(obj_id, x mm, y mm, z mm)]; image (2, 0) holds two instances of object 1
LAYOUT = {
    (1, 0): [(1, -50.0, 0.0, 450.0), (2, 55.0, 10.0, 480.0)],
    (1, 1): [(1, 40.0, -30.0, 420.0), (2, -60.0, 25.0, 500.0)],
    (2, 0): [(1, -70.0, -20.0, 460.0), (1, 70.0, 30.0, 470.0), (2, 0.0, 40.0, 520.0)],
}
TESTS_DIR = Path(__file__).resolve().parent


def _objects() -> dict[int, trimesh.Trimesh]:
    """Two procedural objects without symmetries: a flat box and a box with a cylinder on one side."""
    rng = np.random.default_rng(3)
    box = trimesh.creation.box((70.0, 45.0, 25.0))
    cyl = trimesh.creation.cylinder(12.0, 50.0, sections=24)
    cyl.apply_translation([15.0, 0.0, 35.0])
    compound = trimesh.util.concatenate([trimesh.creation.box((60.0, 30.0, 20.0)), cyl])
    out = {}
    for obj_id, m in ((1, box), (2, compound)):
        m = trimesh.Trimesh(m.vertices - m.bounds.mean(0), m.faces, process=False)
        m.visual.vertex_colors = np.hstack([rng.integers(40, 255, (len(m.vertices), 3)), np.full((len(m.vertices), 1), 255)])
        out[obj_id] = m
    return out


def make_dataset(root: Path) -> Path:
    """Render the 3-image dataset (RGB-D, GT, gt_info, targets) with cooppose.render and write it with cooppose.data.bop."""
    from cooppose.objects import load_mesh
    from cooppose.render import Renderer

    root.mkdir(parents=True, exist_ok=True)
    meshes = _objects()
    info = {}
    (root / "models").mkdir(exist_ok=True)
    for obj_id, m in meshes.items():
        m.export(root / "models" / f"obj_{obj_id:06d}.ply")
    models = {obj_id: load_mesh(root / "models" / f"obj_{obj_id:06d}.ply") for obj_id in meshes}
    for obj_id, o in models.items():
        lo, hi = o.bbox_min, o.bbox_max
        info[obj_id] = {"diameter": o.diameter, "min_x": lo[0], "min_y": lo[1], "min_z": lo[2],
                        "size_x": hi[0] - lo[0], "size_y": hi[1] - lo[1], "size_z": hi[2] - lo[2]}
    bop.save_models_info(root / "models" / "models_info.json", info)
    bop.save_camera(root / "camera.json", bop.Camera(W, H, K, depth_scale=1.0))

    renderer = Renderer()
    rng = np.random.default_rng(7)
    targets = []
    scenes: dict[int, dict] = {}
    for (scene, im), layout in LAYOUT.items():
        objs = [models[o] for o, *_ in layout]
        poses = [make_pose(random_rotations(1, rng)[0], np.array(xyz)) for _, *xyz in layout]
        full = renderer.render_scene(objs, poses, K, (H, W))
        noise = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
        rgb = np.where((full.instance >= 0)[..., None], full.rgb, noise)
        sdir = root / "test" / f"{scene:06d}"
        bop.write_rgb(sdir / "rgb" / f"{im:06d}.png", rgb)
        bop.write_depth(sdir / "depth" / f"{im:06d}.png", full.depth, 1.0)
        s = scenes.setdefault(scene, {"cam": {}, "gt": {}, "info": {}})
        s["cam"][im] = bop.SceneCamera(K=K, depth_scale=1.0)
        s["gt"][im] = [bop.GtPose(o, T[:3, :3], T[:3, 3]) for (o, *_), T in zip(layout, poses)]
        infos, counts = [], {}
        for k, (o, T) in enumerate(zip(objs, poses)):
            alone = renderer.render(o, K, T, (H, W)).mask
            visib = full.instance == k
            infos.append(bop.GtInfo(_bbox(alone), _bbox(visib), int(alone.sum()), int(alone.sum()), int(visib.sum()),
                                    float(visib.sum() / alone.sum())))
            if visib.sum() / alone.sum() >= 0.1:
                counts[layout[k][0]] = counts.get(layout[k][0], 0) + 1
        s["info"][im] = infos
        targets += [bop.Target(scene, im, o, n) for o, n in sorted(counts.items())]
    for scene, s in scenes.items():
        sdir = root / "test" / f"{scene:06d}"
        bop.save_scene_camera(sdir / "scene_camera.json", s["cam"])
        bop.save_scene_gt(sdir / "scene_gt.json", s["gt"])
        bop.save_scene_gt_info(sdir / "scene_gt_info.json", s["info"])
    bop.save_targets(root / "test_targets_bop19.json", targets)
    return root


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (-1, -1, -1, -1)
    return (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))


class Oracle:
    """Returns the GT pose of the instance whose GT box is the detection box, translated by `shift` x diameter (camera x)."""

    def __init__(self, dataset: Path, shift: float = 0.0, stop_after: int | None = None, delay: float = 0.0):
        ds = bop.BopDataset(dataset)
        self.poses = {}
        for scene in ds.scene_ids():
            for im in ds.image_ids(scene):
                key = self._image_key(ds.read_rgb(scene, im))
                gts = ds.scene_gt(scene)[im]
                for gt, det in zip(gts, runner.gt_detections(ds, scene, im)):
                    self.poses[(key, np.round(det.box, 1).tobytes())] = (gt.R, gt.t, det.score)
        self.shift, self.stop_after, self.delay = shift, stop_after, delay
        self.calls: list[tuple[str, tuple]] = []
        self.onboarded: list[str] = []

    @staticmethod
    def _image_key(rgb: np.ndarray) -> str:
        return hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest()

    def onboard(self, obj) -> None:
        self.onboarded.append(obj.name)

    def estimate(self, rgb, K, obj, box=None, depth=None, n_hypotheses=1):
        key = self._image_key(rgb)
        if self.stop_after is not None and len({c[0] for c in self.calls} | {key}) > self.stop_after:
            raise KeyboardInterrupt("simulated kill")
        time.sleep(self.delay)
        self.calls.append((key, tuple(box)))
        R, t, visib = self.poses[(key, np.round(box, 1).tobytes())]
        t = t + np.array([self.shift * obj.diameter, 0.0, 0.0])
        return [PoseHypothesis(R=R, t=t, score=visib, stage="select", template_id=-1)]


class BatchOracle(Oracle):
    """The oracle with `estimate_many` (the path PoseEstimator and the baselines take)."""

    def estimate_many(self, rgb, K, detections, depth=None, n_hypotheses=1):
        return [self.estimate(rgb, K, obj, box=box, depth=depth, n_hypotheses=n_hypotheses) for obj, box in detections]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("bop") / "tiny")


def _rows(path: Path) -> list[tuple]:
    """CSV rows without the time column."""
    return [line.rsplit(",", 1)[0] for line in path.read_text().splitlines()]


def _n_instances(dataset: Path) -> int:
    return sum(t.inst_count for t in bop.load_targets(dataset / "test_targets_bop19.json"))


# ---------------------------------------------------------------------------------------------- scores
def test_oracle_scores_ar_one_with_vsd(dataset, tmp_path):
    oracle = Oracle(dataset)
    scores = run_eval(dataset, tmp_path, oracle, mode="rgbd", method_name="oracle", progress=False)
    n = _n_instances(dataset)
    assert n == 7 and scores["n_targets"] == n
    assert scores["AR"] == pytest.approx(1.0)
    assert scores["AR_VSD"] == pytest.approx(1.0) and scores["AR_MSSD"] == 1.0 and scores["AR_MSPD"] == 1.0
    csv = tmp_path / "oracle_tiny-test.csv"
    rows = bop.read_results(csv)
    assert len(rows) == n and len(oracle.calls) == n
    assert len(oracle.onboarded) == 2  # each object onboarded once
    times = {}
    for r in rows:  # one time per image, the same on all its rows
        assert times.setdefault((r.scene_id, r.im_id), r.time) == r.time and r.time >= 0
    assert json.loads((tmp_path / "scores.json").read_text())["AR"] == pytest.approx(1.0)
    md = (tmp_path / "scores.md").read_text()
    assert "| oracle | tiny | test | rgbd | GT bbox_visib |" in md and "| 100.0 | 100.0 | 100.0 | 100.0 |" in md


def test_shifted_poses_give_the_recalls_the_thresholds_imply(dataset, tmp_path):
    shift = 0.12  # x diameter, along the camera x axis
    scores = run_eval(dataset, tmp_path, BatchOracle(dataset, shift=shift), mode="rgb", method_name="shift", progress=False)
    assert 0 <= scores["AR_VSD"] < 0.5  # RGB runs are scored with VSD too when the dataset has depth (as BOP)
    # MSSD: every point moves by 0.12 diameter -> correct for the thresholds 0.15 ... 0.50 (8 of 10)
    assert scores["AR_MSSD"] == pytest.approx(0.8)
    assert scores["recall_MSSD_per_threshold"]["0.10"] == 0.0 and scores["recall_MSSD_per_threshold"]["0.15"] == 1.0
    # MSPD: a shift s along x moves the projection of a point at depth z by fx s / z pixels; the largest move is at the
    # nearest vertex; BOP scales errors by 640 / width
    ds = bop.BopDataset(dataset)
    from cooppose.objects import load_mesh

    errs = []
    for t in ds.targets():
        gts = [g for g in ds.scene_gt(t.scene_id)[t.im_id] if g.obj_id == t.obj_id]
        mesh = load_mesh(dataset / "models" / f"obj_{t.obj_id:06d}.ply")
        for g in gts:
            z_min = (mesh.vertices @ g.R.T + g.t)[:, 2].min()
            errs.append(K[0, 0] * shift * mesh.diameter / z_min * 640.0 / W)
    errs = np.array(errs)
    expected = {th: float(np.mean(errs < th)) for th in range(5, 51, 5)}
    assert 0 < np.mean(list(expected.values())) < 1  # the shift lands inside the MSPD grid
    for th, rec in expected.items():
        assert scores["recall_MSPD_per_threshold"][str(th)] == pytest.approx(rec)
    assert scores["AR_MSPD"] == pytest.approx(np.mean(list(expected.values())))
    assert scores["AR"] == pytest.approx((scores["AR_VSD"] + 0.8 + scores["AR_MSPD"]) / 3)


def test_images_every_scores_only_the_images_run(dataset, tmp_path):
    scores = run_eval(dataset, tmp_path, Oracle(dataset), images_every=2, method_name="every", progress=False)
    kept = {(1, 0), (2, 0)}  # images 0 and 2 of the sorted list
    n = sum(t.inst_count for t in bop.load_targets(dataset / "test_targets_bop19.json") if (t.scene_id, t.im_id) in kept)
    assert scores["n_targets"] == n and scores["AR"] == pytest.approx(1.0)
    assert {(r.scene_id, r.im_id) for r in bop.read_results(tmp_path / "every_tiny-test.csv")} == kept


def test_detections_file_top_inst_count_and_detector_time(dataset, tmp_path):
    ds = bop.BopDataset(dataset)
    dets = []
    for scene in ds.scene_ids():
        for im in ds.image_ids(scene):
            for gt, info in zip(ds.scene_gt(scene)[im], ds.scene_gt_info(scene)[im]):
                dets.append({"scene_id": scene, "image_id": im, "category_id": gt.obj_id, "score": 0.9,
                             "bbox": list(info.bbox_visib), "time": 0.25})
    # a worse-scored spurious detection of object 2 in image (1, 0): with inst_count 1 it must not be estimated
    dets.append({"scene_id": 1, "image_id": 0, "category_id": 2, "score": 0.1, "bbox": [1, 1, 30, 30], "time": 0.25})
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    oracle = Oracle(dataset)
    scores = run_eval(dataset, tmp_path / "out", oracle, detections=path, method_name="dets", progress=False)
    assert scores["AR"] == pytest.approx(1.0)
    assert len(oracle.calls) == _n_instances(dataset)
    assert all(r.time >= 0.25 for r in bop.read_results(tmp_path / "out" / "dets_tiny-test.csv"))


def test_rejected_detection_is_skipped_not_fatal(dataset, tmp_path):
    class Picky(Oracle):
        def estimate(self, rgb, K, obj, box=None, depth=None, n_hypotheses=1):
            if box[2] - box[0] < 60:  # pretend small boxes are unusable
                raise InputError("box too small")
            return super().estimate(rgb, K, obj, box=box, depth=depth, n_hypotheses=n_hypotheses)

    with pytest.warns(UserWarning, match=r"rejected \d detection\(s\).*box too small"):
        scores = run_eval(dataset, tmp_path, Picky(dataset), method_name="picky", progress=False)
    n_rows = len(bop.read_results(tmp_path / "picky_tiny-test.csv"))
    assert 0 < n_rows < _n_instances(dataset)
    assert scores["AR"] == pytest.approx(n_rows / _n_instances(dataset))


# ---------------------------------------------------------------------------------------------- resume, shards
def test_resume_after_interrupt_skips_finished_images(dataset, tmp_path):
    ref = tmp_path / "ref"
    run_eval(dataset, ref, Oracle(dataset), method_name="oracle", progress=False)

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_eval(dataset, out, Oracle(dataset, stop_after=2), method_name="oracle", progress=False)
    done = sorted(p.name for p in (out / "journal").glob("*.csv"))
    assert done == ["000001_000000.csv", "000001_000001.csv"]
    assert not (out / "oracle_tiny-test.csv").exists()

    again = Oracle(dataset)
    scores = run_eval(dataset, out, again, method_name="oracle", progress=False)
    assert {c[0] for c in again.calls} == {again._image_key(bop.BopDataset(dataset).read_rgb(2, 0))}
    assert _rows(out / "oracle_tiny-test.csv") == _rows(ref / "oracle_tiny-test.csv")
    assert scores["AR"] == pytest.approx(1.0)

    idle = Oracle(dataset)
    run_eval(dataset, out, idle, method_name="oracle", progress=False)
    assert idle.calls == []


def test_resume_with_other_settings_is_refused(dataset, tmp_path):
    run_eval(dataset, tmp_path, Oracle(dataset), method_name="oracle", progress=False)
    with pytest.raises(ConfigError, match="mode"):
        run_eval(dataset, tmp_path, Oracle(dataset), mode="rgbd", method_name="oracle", progress=False)


_CHILD = """
import sys
sys.path.insert(0, {tests!r})
from test_runner import BatchOracle
from cooppose.eval.runner import run_eval
run_eval({dataset!r}, {out!r}, BatchOracle({dataset!r}, delay={delay}), method_name="oracle", progress=False,
         shard={shard})
"""


def _child(dataset: Path, out: Path, shard, delay: float = 0.0, env: dict | None = None) -> subprocess.Popen:
    code = _CHILD.format(tests=str(TESTS_DIR), dataset=str(dataset), out=str(out), delay=delay, shard=shard)
    return subprocess.Popen([sys.executable, "-c", code], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_shard_processes_give_the_single_process_csv(dataset, tmp_path):
    one = tmp_path / "one"
    run_eval(dataset, one, Oracle(dataset), method_name="oracle", progress=False)
    two = tmp_path / "two"
    # two processes at once: a child gets shard 1 from torchrun's environment variables, this one runs shard 0
    child = _child(dataset, two, None, env={"RANK": "1", "WORLD_SIZE": "2"})
    run_eval(dataset, two, BatchOracle(dataset), method_name="oracle", progress=False, shard=(0, 2))
    _, err = child.communicate(timeout=180)
    assert child.returncode == 0, err
    assert (two / "shards" / "shard-0-of-2.csv").is_file() and (two / "shards" / "shard-1-of-2.csv").is_file()
    assert _rows(two / "oracle_tiny-test.csv") == _rows(one / "oracle_tiny-test.csv")
    s1, s2 = (json.loads((d / "scores.json").read_text()) for d in (one, two))
    assert {k: v for k, v in s1.items() if k != "mean_time_per_image"} == {k: v for k, v in s2.items() if k != "mean_time_per_image"}


@pytest.mark.slow
def test_killed_process_resumes_without_rerunning_finished_images(dataset, tmp_path):
    out = tmp_path / "killed"
    proc = _child(dataset, out, (0, 1), delay=0.6)
    deadline = time.time() + 60
    while time.time() < deadline and not list((out / "journal").glob("*.csv")):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name for p in (out / "journal").glob("*.csv")}
    assert 1 <= len(done) < 3, "the child should be killed mid-run"
    assert not (out / "oracle_tiny-test.csv").exists()
    again = Oracle(dataset)
    run_eval(dataset, out, again, method_name="oracle", progress=False)
    ds = bop.BopDataset(dataset)
    rerun = {again._image_key(ds.read_rgb(s, i)) for s, i in LAYOUT if f"{s:06d}_{i:06d}.csv" not in done}
    assert {c[0] for c in again.calls} == rerun
    assert len(bop.read_results(out / "oracle_tiny-test.csv")) == _n_instances(dataset)


def test_incomplete_shard_returns_none_until_the_last_one(dataset, tmp_path):
    assert run_eval(dataset, tmp_path, Oracle(dataset), shard=(1, 3), method_name="oracle", progress=False) is None
    assert run_eval(dataset, tmp_path, Oracle(dataset), shard=(0, 3), method_name="oracle", progress=False) is None
    scores = run_eval(dataset, tmp_path, Oracle(dataset), shard=(2, 3), method_name="oracle", progress=False)
    assert scores["AR"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------- small parts
def test_parse_shard_and_env():
    assert runner.parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ConfigError):
            runner.parse_shard(bad)
    assert runner.shard_from_env({"RANK": "2", "WORLD_SIZE": "3"}) == (2, 3)
    assert runner.shard_from_env({}) == (0, 1)
    assert runner.shard_images([(0, i) for i in range(5)], (1, 2)) == [(0, 1), (0, 3)]


def test_boxes_and_detection_selection():
    assert runner.bop_box_to_xyxy([10, 20, 5, 4]) == (9.5, 19.5, 14.5, 23.5)
    dets = [Detection(1, (0, 0, 5, 5), 0.2), Detection(2, (0, 0, 5, 5), 0.9), Detection(1, (1, 1, 5, 5), 0.7),
            Detection(1, (2, 2, 5, 5), 0.5)]
    chosen = runner.select_detections(dets, bop.Target(0, 0, 1, 2))
    assert [d.score for d in chosen] == [0.7, 0.5]


def test_bad_detections_file_and_overlapping_shards(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"scene_id": 1, "image_id": 0, "category_id": 1, "bbox": [0, 0, -3, 4], "score": 1}]))
    with pytest.raises(DatasetError, match="w, h > 0"):
        runner.load_detections(p)
    p.write_text(json.dumps([{"scene_id": 1, "bbox": [0, 0, 3, 4]}]))
    with pytest.raises(DatasetError, match="image_id"):
        runner.load_detections(p)
    row = bop.PoseEstimate(1, 0, 1, 0.5, np.eye(3), np.zeros(3), 0.1)
    bop.write_results(tmp_path / "a.csv", [row])
    bop.write_results(tmp_path / "b.csv", [row])
    with pytest.raises(DatasetError, match="overlap"):
        runner.merge_shards([tmp_path / "a.csv", tmp_path / "b.csv"])


def test_bad_settings_are_refused(dataset, tmp_path):
    with pytest.raises(ConfigError, match="mode"):
        run_eval(dataset, tmp_path, Oracle(dataset), mode="depth", progress=False)
    with pytest.raises(DatasetError, match="_"):
        run_eval(dataset, tmp_path, Oracle(dataset), method_name="my_method", progress=False)
    with pytest.raises(ConfigError, match="unknown method"):
        run_eval(dataset, tmp_path, "magic", progress=False)
    with pytest.raises(ConfigError, match="needs depth"):
        run_eval(dataset, tmp_path, "fpfh", mode="rgb", progress=False)


def test_cli_eval_runs_a_baseline_and_prints_the_table(dataset, tmp_path, capsys):
    from cooppose.cli import main

    out = tmp_path / "fpfh"
    args = ["eval", "--dataset", str(dataset), "--method", "fpfh", "--mode", "rgbd", "--images-every", "3",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| fpfh | tiny | test | rgbd | GT bbox_visib | 1 | 1 |" in printed
    scores = json.loads((out / "scores.json").read_text())
    assert scores["n_targets"] == 2 and 0.0 <= scores["AR"] <= 1.0
    rows = bop.read_results(out / "fpfh_tiny-test.csv")
    assert {r.obj_id for r in rows} == {1, 2} and len({r.time for r in rows}) == 1
    assert main(args + ["--shard", "3/2"]) == 2  # a bad shard is a CoopposeError: message and exit status 2
    assert "shard 3/2 is invalid" in capsys.readouterr().err


def test_staged_estimator_stops_at_the_stage():
    class Fake:
        def __init__(self):
            self.refiner, self.selector, self.kwargs = "refiner", "selector", []

        def estimate(self, rgb, K, obj, box=None, depth=None, n_hypotheses=1, **kw):
            self.kwargs.append(kw)
            return []

        def estimate_many(self, rgb, K, detections, depth=None, n_hypotheses=1, **kw):
            self.kwargs.append(kw)
            return [[] for _ in detections]

    coarse, refine, full = (runner.StagedEstimator(Fake(), s) for s in ("coarse", "refine", "select"))
    assert (coarse.estimator.refiner, coarse.estimator.selector) == (None, None)
    assert (refine.estimator.refiner, refine.estimator.selector) == ("refiner", None)
    assert (full.estimator.refiner, full.estimator.selector) == ("refiner", "selector")
    coarse.estimate(None, K, None, box=(0, 0, 1, 1))
    coarse.estimate_many(None, K, [(None, (0, 0, 1, 1))])
    full.estimate(None, K, None, box=(0, 0, 1, 1))
    assert coarse.estimator.kwargs == [{"n_refine": 0}, {"n_refine": 0}] and full.estimator.kwargs == [{}]
    with pytest.raises(ConfigError, match="stage"):
        runner.StagedEstimator(Fake(), "polish")


@pytest.mark.parametrize("stage", ["coarse", pytest.param("select", marks=pytest.mark.slow)])
def test_cli_eval_runs_coop_from_checkpoints(dataset, tmp_path, monkeypatch, capsys, stage):
    """Co-op with random micro networks saved as checkpoints: the whole path runs (no accuracy claim)."""
    import torch

    from cooppose.cli import main
    from cooppose.models import build_model
    from cooppose.models.checkpoint import save_model

    micro = dict(img_size=64, enc_embed_dim=64, enc_depth=2, enc_num_heads=2, dec_embed_dim=64, dec_depth=2, dec_num_heads=2)
    extra = {"coarse": dict(match_dim=32), "selection": {},
             "refiner": dict(dpt_hooks=(1, 2, 3, 3), dpt_layer_dims=(16, 16, 32, 32), dpt_feature_dim=16)}
    torch.manual_seed(0)
    for kind, kw in extra.items():
        save_model(build_model(kind, "tiny", **micro, **kw), tmp_path / "ckpt" / f"{kind}_tiny.pt")
    monkeypatch.setenv("COOPPOSE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "coop"
    args = ["eval", "--dataset", str(dataset), "--method", "coop", "--checkpoints", str(tmp_path / "ckpt"),
            "--stage", stage, "--images-every", "3", "--hypotheses", "2", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    rows = bop.read_results(out / "coop_tiny-test.csv")
    assert {r.obj_id for r in rows} == {1, 2} and all(r.t[2] > 0 for r in rows)
    assert json.loads((out / "run.json").read_text())["stage"] == stage
    assert main(args + ["--stage", "refine"]) == 2  # resuming with another stage is refused
    torch.manual_seed(1)  # other weights in the same folder: resuming would mix two networks' results
    save_model(build_model("refiner", "tiny", **micro, **extra["refiner"]), tmp_path / "ckpt" / "refiner_tiny.pt")
    assert main(args) == 2 and "weights" in capsys.readouterr().err
