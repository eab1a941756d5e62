"""Synthetic BOP scenes: BOP round trip, masks vs depth, resumability (byte-identical), contact sheet, CLI."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cooppose.cli import main
from cooppose.data import bop
from cooppose.data.synth import scenes as scenes_mod
from cooppose.data.synth.models import make_object_set
from cooppose.data.synth.scenes import ObjectPool, SceneConfig, generate_scenes, random_intrinsics, random_poses
from cooppose.data.synth.show import annotate, contact_sheet
from cooppose.errors import ConfigError, DatasetError
from cooppose.render import Renderer

CFG = SceneConfig(width=128, height=96, objects=(3, 5), distractors=(1, 2), images_per_scene=4, flush_every=2)
N = 6  # images: two scenes (4 + 2)
SEED = 5


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("objects") / "models"
    make_object_set(d, 10, seed=2)
    return d


@pytest.fixture(scope="module")
def dataset(models_dir):
    root = models_dir.parent / "full"
    generate_scenes(models_dir, root, N, seed=SEED, cfg=CFG)
    return root


def _tree(root: Path) -> dict:
    """Relative path -> bytes (symlinks -> the folder they point to) of every file under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):  # does not descend into symlinked folders
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                out[str(p.relative_to(root))] = ("link", p.resolve())
            elif p.is_file():
                out[str(p.relative_to(root))] = p.read_bytes()
    return out


def test_scenes_round_trip_through_the_bop_reader(dataset, models_dir):
    ds = bop.BopDataset(dataset, split="train_synth")
    assert ds.scene_ids() == [0, 1]
    assert ds.image_ids(0) == [0, 1, 2, 3] and ds.image_ids(1) == [0, 1]
    assert ds.models_info.keys() == bop.load_models_info(models_dir / "models_info.json").keys()
    pool = ObjectPool(models_dir)
    for index in range(N):
        scene_id, im_id = divmod(index, CFG.images_per_scene)
        image = scenes_mod.generate_image(index, SEED, pool, CFG, Renderer())
        assert np.allclose(ds.K(scene_id, im_id), image.K)
        gts = ds.scene_gt(scene_id)[im_id]
        assert [g.obj_id for g in gts] == [g.obj_id for g in image.gt]
        for j, (g, ref) in enumerate(zip(gts, image.gt)):
            assert np.allclose(g.R, ref.R) and np.allclose(g.t, ref.t)
            assert np.array_equal(ds.read_mask(scene_id, im_id, j), image.masks_visib[j])
            assert np.array_equal(ds.read_mask(scene_id, im_id, j, visib=False), image.masks[j])
        assert ds.scene_gt_info(scene_id)[im_id] == image.info
        assert np.abs(ds.read_depth(scene_id, im_id) - image.depth).max() <= CFG.depth_scale / 2 + 1e-4
        rgb = ds.read_rgb(scene_id, im_id)
        assert rgb.shape == (CFG.height, CFG.width, 3)
        assert np.abs(rgb.astype(int) - image.rgb).mean() < 6  # JPEG q95
    expected = []
    for scene_id in ds.scene_ids():
        for im_id, infos in sorted(ds.scene_gt_info(scene_id).items()):
            counts = {}
            for g, info in zip(ds.scene_gt(scene_id)[im_id], infos):
                if info.visib_fract >= CFG.min_visib_fract:
                    counts[g.obj_id] = counts.get(g.obj_id, 0) + 1
            expected += [bop.Target(scene_id, im_id, o, n) for o, n in sorted(counts.items())]
    assert ds.targets() == expected and expected


def test_masks_agree_with_depth_and_gt_info(dataset, models_dir):
    ds = bop.BopDataset(dataset, split="train_synth")
    pool, renderer = ObjectPool(models_dir), Renderer()
    size = (CFG.height, CFG.width)
    seen_occlusion = False
    for scene_id in ds.scene_ids():
        for im_id in ds.image_ids(scene_id):
            depth, K = ds.read_depth(scene_id, im_id), ds.K(scene_id, im_id)
            union = np.zeros(size, bool)
            for j, (g, info) in enumerate(zip(ds.scene_gt(scene_id)[im_id], ds.scene_gt_info(scene_id)[im_id])):
                visib = ds.read_mask(scene_id, im_id, j)
                full = ds.read_mask(scene_id, im_id, j, visib=False)
                assert not (visib & ~full).any() and not (visib & union).any()
                union |= visib
                T = np.eye(4)
                T[:3, :3], T[:3, 3] = g.R, g.t
                alone = renderer.render(pool.get(g.obj_id), K, T, size)
                assert np.array_equal(alone.mask, full)
                # visible pixels carry this object's depth; hidden ones are nearer (another object in front)
                assert np.abs(depth[visib] - alone.depth[visib]).max() <= CFG.depth_scale / 2 + 1e-3
                hidden = full & ~visib
                assert np.all(depth[hidden] < alone.depth[hidden] + CFG.depth_scale)
                seen_occlusion |= hidden.any()
                assert info.px_count_all == full.sum() and info.px_count_visib == visib.sum()
                assert info.visib_fract == pytest.approx(visib.sum() / max(full.sum(), 1))
                if visib.any():
                    ys, xs = np.nonzero(visib)
                    assert info.bbox_visib == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
                    x, y, w, h = info.bbox_obj
                    ys, xs = np.nonzero(full)
                    assert x <= xs.min() and y <= ys.min() and x + w - 1 >= xs.max() and y + h - 1 >= ys.max()
            assert np.all(depth[union] > 0)
    assert seen_occlusion


def test_interrupted_run_resumes_to_identical_bytes(dataset, models_dir, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    real = scenes_mod.generate_image

    def dies_at_5(index, *args):
        if index == 5:
            raise KeyboardInterrupt  # a kill while image 5 is being made; image 4 is on disk, not recorded
        return real(index, *args)

    monkeypatch.setattr(scenes_mod, "generate_image", dies_at_5)
    with pytest.raises(KeyboardInterrupt):
        generate_scenes(models_dir, out, N, seed=SEED, cfg=CFG)
    monkeypatch.setattr(scenes_mod, "generate_image", real)
    assert sorted(bop.load_scene_gt(out / "train_synth/000000/scene_gt.json")) == [0, 1, 2, 3]
    assert not (out / "train_synth/000001/scene_gt.json").exists()  # image 4 of the set is not recorded
    assert (out / "train_synth/000001/rgb/000000.jpg").is_file()  # written, not yet finished
    finished = [p for p in (out / "train_synth/000000").rglob("*.png")]
    stamps = {p: p.stat().st_mtime_ns for p in finished}
    report = generate_scenes(models_dir, out, N, seed=SEED, cfg=CFG)
    assert report["skipped"] == 4 and report["generated"] == 2
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished images never rewritten
    a, b = _tree(dataset), _tree(out)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_stopped_run_continues_and_extends(dataset, models_dir, tmp_path):
    out = tmp_path / "steps"
    generate_scenes(models_dir, out, N, seed=SEED, cfg=CFG, stop_after=3)
    assert not (out / "test_targets_bop19.json").exists()  # written when the set is complete
    generate_scenes(models_dir, out, N, seed=SEED, cfg=CFG)
    assert _tree(out) == _tree(dataset)
    again = generate_scenes(models_dir, out, N, seed=SEED, cfg=CFG)
    assert again["generated"] == 0 and again["skipped"] == N


def test_resume_with_other_parameters_is_refused(dataset, models_dir):
    with pytest.raises(DatasetError, match="other parameters"):
        generate_scenes(models_dir, dataset, N, seed=SEED + 1, cfg=CFG)
    with pytest.raises(DatasetError, match="other parameters"):
        generate_scenes(models_dir, dataset, N, seed=SEED, cfg=SceneConfig(width=130, height=96, images_per_scene=4, flush_every=2,
                                                                            objects=(3, 5), distractors=(1, 2)))


def test_bad_arguments_are_refused(models_dir, tmp_path):
    with pytest.raises(DatasetError, match="models_info.json"):
        generate_scenes(tmp_path / "nothing", tmp_path / "o", 2)
    with pytest.raises(ConfigError):
        generate_scenes(models_dir, tmp_path / "o", 0)
    with pytest.raises(ConfigError):
        SceneConfig(objects=(0, 2)).check()
    with pytest.raises(ConfigError):
        SceneConfig(rgb_ext=".bmp").check()


def test_intrinsics_and_placements_stay_in_range(models_dir):
    cfg = SceneConfig()
    pool = ObjectPool(models_dir)
    rng = np.random.default_rng(0)
    for _ in range(50):
        K = random_intrinsics(rng, cfg)
        assert cfg.focal[0] * cfg.width <= K[0, 0] <= cfg.focal[1] * cfg.width
        assert abs(K[1, 1] / K[0, 0] - 1) <= cfg.aspect_jitter
        assert abs(K[0, 2] - (cfg.width - 1) / 2) <= cfg.principal_jitter * cfg.width
        models = [pool.get(i) for i in rng.choice(pool.ids, 4)]
        for model, T in zip(models, random_poses(rng, models, K, cfg)):
            c = T[:3, :3] @ model.center + T[:3, 3]
            assert c[2] - model.radius >= cfg.min_distance_mm - 1e-6
            u, v = K[0, 0] * c[0] / c[2] + K[0, 2], K[1, 1] * c[1] / c[2] + K[1, 2]
            assert cfg.centre_margin * cfg.width - 1e-6 <= u <= (1 - cfg.centre_margin) * cfg.width + 1e-6
            assert cfg.centre_margin * cfg.height - 1e-6 <= v <= (1 - cfg.centre_margin) * cfg.height + 1e-6


def test_contact_sheet_draws_over_masks_only(dataset, tmp_path):
    png = contact_sheet(dataset, tmp_path / "sheet.png", n=5, cols=3, tile_width=128)
    sheet = bop.read_rgb(png)
    assert sheet.shape == (2 * 96, 3 * 128, 3)
    scene = dataset / "train_synth" / "000000"
    gt, info = bop.load_scene_gt(scene / "scene_gt.json")[0], bop.load_scene_gt_info(scene / "scene_gt_info.json")[0]
    drawn = annotate(scene, 0, gt, info)
    raw = bop.read_rgb(scene / "rgb" / "000000.jpg")
    masks = np.zeros(raw.shape[:2], bool)
    for j in range(len(gt)):
        masks |= bop.read_mask(scene / "mask_visib" / f"000000_{j:06d}.png")
    assert (np.abs(drawn.astype(int) - raw).sum(-1)[masks] > 0).mean() > 0.9  # tinted
    with pytest.raises(DatasetError):
        contact_sheet(dataset, tmp_path / "sheet.jpg")


def test_cli_objects_scenes_show(tmp_path, capsys):
    models = tmp_path / "models"
    assert main(["synth", "objects", "--out", str(models), "--n", "3", "--seed", "1"]) == 0
    assert main(["synth", "scenes", "--objects", str(models), "--out", str(tmp_path), "--n-images", "2", "--size", "64x48"]) == 0
    assert "images/s" in capsys.readouterr().out
    assert bop.read_rgb(tmp_path / "train_synth/000000/rgb/000001.jpg").shape == (48, 64, 3)
    assert main(["synth", "show", "--scenes", str(tmp_path), "--out", str(tmp_path / "s.png")]) == 0
    assert main(["synth", "scenes", "--objects", str(models), "--out", str(tmp_path), "--n-images", "2", "--size", "64by48"]) == 2


@pytest.mark.slow
def test_killed_subprocess_resumes_to_identical_bytes(models_dir, tmp_path):
    cmd = [sys.executable, "-m", "cooppose.cli", "synth", "scenes", "--objects", str(models_dir), "--n-images", "40",
           "--size", "128x96", "--seed", "3"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(cmd + ["--out", str(full)], check=True, capture_output=True)
    proc = subprocess.Popen(cmd + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gt = killed / "train_synth/000000/scene_gt.json"
    deadline = time.time() + 120
    while time.time() < deadline and not (gt.is_file() and len(bop.load_scene_gt(gt)) >= 20):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 20 <= len(bop.load_scene_gt(gt)) < 40
    subprocess.run(cmd + ["--out", str(killed)], check=True, capture_output=True)
    assert _tree(full) == _tree(killed)
