"""Training datasets on a small synthetic BOP set: contract keys, dtypes, ranges, determinism, GT consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cooppose.data.datasets import (
    build_dataset,
    image_split,
    jitter_box,
    label_picture,
    save_label_picture,
    selection_hypothesis,
)
from cooppose.data.targets import selection_label
from cooppose.errors import ConfigError, DatasetError
from cooppose.geometry.transforms import project, transform_points

S = 160
NP = (S // 16) ** 2
LO, HI = (0 - 0.485) / 0.229 - 1e-4, (1 - 0.406) / 0.225 + 1e-4  # range of normalised images


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    """Three procedural objects and 8 images (2 scenes) of 2-3 of them, 256 x 192."""
    from cooppose.data.synth.models import make_object_set
    from cooppose.data.synth.scenes import SceneConfig, generate_scenes

    tmp = tmp_path_factory.mktemp("synth")
    make_object_set(tmp / "objects", 3, seed=0)
    cfg = SceneConfig(width=256, height=192, images_per_scene=4, objects=(2, 3), distractors=(0, 1))
    generate_scenes(tmp / "objects", tmp / "ds", 8, seed=0, cfg=cfg, split="train_synth")
    return tmp / "ds"


def _cfg(root, **kw):
    return {"scenes": root, "val_fraction": 0.25, **kw}


def _check_image(x: torch.Tensor):
    assert x.shape == (3, S, S) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and x.min() >= LO and x.max() <= HI


def _rigid(T: torch.Tensor):
    R = T[:3, :3].double()
    assert T.dtype == torch.float32 and T.shape == (4, 4)
    assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(T[3], torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_config_and_folder_errors(synth_root, tmp_path):
    with pytest.raises(ConfigError):
        build_dataset("pose", _cfg(synth_root), "train")
    with pytest.raises(ConfigError):
        build_dataset("refiner", _cfg(synth_root, trans_std=3.0), "train")
    with pytest.raises(ConfigError):
        build_dataset("refiner", {"size": 160}, "train")
    with pytest.raises(ConfigError):
        build_dataset("refiner", _cfg(synth_root, size=150), "train")
    with pytest.raises(ConfigError):
        build_dataset("refiner", _cfg(synth_root), "test")
    with pytest.raises(DatasetError):
        build_dataset("refiner", _cfg(tmp_path), "train")
    with pytest.raises(DatasetError):
        build_dataset("refiner", _cfg(synth_root, val_fraction=0.0), "val")  # no image in the split


def test_image_split_is_fixed_and_disjoint(synth_root):
    ids = [(s, i) for s in range(20) for i in range(500)]
    val = [image_split(s, i, 0.1) for s, i in ids]
    assert val == [image_split(s, i, 0.1) for s, i in ids]
    assert abs(np.mean([v == "val" for v in val]) - 0.1) < 0.01
    train = build_dataset("selection", _cfg(synth_root), "train")
    valid = build_dataset("selection", _cfg(synth_root), "val")
    img = lambda ds: {(r.source, r.scene_id, r.im_id) for r in ds.items}  # noqa: E731
    assert img(train) and img(valid) and not img(train) & img(valid)
    assert len(img(train) | img(valid)) == 8
    # every scene form points at the same instances: dataset root, split folder, list of scene folders
    split_dir = synth_root / "train_synth"
    by_split = build_dataset("selection", _cfg(split_dir), "train")
    by_scenes = build_dataset("selection", _cfg([split_dir / "000000", split_dir / "000001"]), "train")
    key = lambda ds: [(r.scene_id, r.im_id, r.gt_id) for r in ds.items]  # noqa: E731
    assert key(by_split) == key(train) == key(by_scenes)


def test_obj_ids_keeps_only_those_objects(synth_root):
    every = build_dataset("selection", _cfg(synth_root), "train")
    first = sorted({r.obj_id for r in every.items})[:2]
    some = build_dataset("selection", _cfg(synth_root, obj_ids=first), "train")
    assert {r.obj_id for r in some.items} == set(first)
    assert len(some) == sum(r.obj_id in first for r in every.items)
    for bad in ([], [1.5], "1,2"):
        with pytest.raises(ConfigError, match="obj_ids"):
            build_dataset("selection", _cfg(synth_root, obj_ids=bad), "train")


def test_jitter_box_without_noise_is_the_bop_box():
    rng = np.random.default_rng(0)
    assert jitter_box((10, 20, 30, 40), rng, 0.0, 0.0) == (9.5, 19.5, 39.5, 59.5)
    boxes = np.array([jitter_box((100, 100, 50, 50), rng, 0.1, 0.15) for _ in range(2000)])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert np.allclose(centres.std(0), 5.0, rtol=0.1)
    assert np.allclose(np.log((boxes[:, 2] - boxes[:, 0]) / 50).std(), 0.15, rtol=0.1)


def test_refiner_samples_follow_the_contract(synth_root):
    ds = build_dataset("refiner", _cfg(synth_root), "train")
    keys = {"query", "render", "K", "T_init", "T_gt", "render_xyz", "render_mask", "flow", "flow_valid", "certainty", "points"}
    cert_share = []
    for i in range(min(len(ds), 6)):
        s = ds[i]
        assert set(s) == keys
        _check_image(s["query"])
        _check_image(s["render"])
        _rigid(s["T_init"])
        _rigid(s["T_gt"])
        obj = ds.local.pool.get(ds.items[i].obj_id)
        # the crop is centred on the model centre projected at T_init (pose-conditioned crop)
        K, T_init = s["K"].double().numpy(), s["T_init"].double().numpy()
        assert K.dtype == np.float64 and s["K"].shape == (3, 3)
        c = project(K, transform_points(T_init, obj.center[None]))[0]
        assert np.allclose(c, (S - 1) / 2, atol=1e-2)
        mask, xyz = s["render_mask"], s["render_xyz"]
        assert mask.dtype == torch.bool and mask.shape == (S, S) and mask.sum() > 50
        assert xyz.shape == (S, S, 3) and xyz.dtype == torch.float32 and torch.all(xyz[~mask] == 0)
        lo, hi = torch.from_numpy(obj.bbox_min).float() - 1e-2, torch.from_numpy(obj.bbox_max).float() + 1e-2
        assert torch.all((xyz[mask] >= lo) & (xyz[mask] <= hi))
        assert s["flow"].shape == (2, S, S) and s["flow"].dtype == torch.float32
        assert torch.equal(s["flow_valid"], mask) and torch.all(s["flow"][:, ~mask] == 0)
        cert = s["certainty"]
        assert cert.dtype == torch.float32 and set(cert.unique().tolist()) <= {0.0, 1.0}
        assert torch.all(cert[~mask] == 0)
        cert_share.append(float(cert.sum() / mask.sum()))
        assert s["points"].shape == (512, 3) and s["points"].dtype == torch.float32
        assert torch.all((s["points"] >= lo) & (s["points"] <= hi))
    assert np.mean(cert_share) > 0.4  # most of what is rendered is seen in the query


def test_refiner_flow_lands_on_the_same_object_points(synth_root):
    from cooppose.render import Renderer

    ds = build_dataset("refiner", _cfg(synth_root, augment=False), "train")
    renderer = Renderer()
    for i in range(3):
        s = ds[i]
        obj = ds.local.pool.get(ds.items[i].obj_id)
        K, T_gt = s["K"].double().numpy(), s["T_gt"].double().numpy()
        gt = renderer.render(obj, K, T_gt, size=(S, S))  # what the query crop shows of the object
        cert, flow, xyz = s["certainty"].numpy() > 0, s["flow"].numpy(), s["render_xyz"].numpy()
        v, u = np.nonzero(cert)
        q = np.rint(np.c_[u + flow[0, v, u], v + flow[1, v, u]]).astype(int)
        assert np.all((q >= 0) & (q < S))
        assert gt.mask[q[:, 1], q[:, 0]].mean() > 0.98
        dist = np.linalg.norm(gt.xyz[q[:, 1], q[:, 0]] - xyz[v, u], axis=-1)
        assert np.percentile(dist, 95) < 0.02 * obj.diameter  # within about a pixel's footprint


def test_samples_are_deterministic_and_seeded(synth_root):
    a = build_dataset("refiner", _cfg(synth_root), "train")
    b = build_dataset("refiner", _cfg(synth_root), "train")
    c = build_dataset("refiner", _cfg(synth_root, seed=1), "train")
    s1, s2, s3 = a[2], b[2], c[2]
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert all(torch.equal(s1[k], a[2][k]) for k in s1)  # same sample every epoch
    assert not torch.equal(s1["T_init"], s3["T_init"])
    last = a[-1]
    assert all(torch.equal(last[k], a[len(a) - 1][k]) for k in last)
    with pytest.raises(IndexError):
        a[len(a)]


def test_drawn_poses_keep_a_near_object_in_front(synth_root):
    from cooppose.data.targets import perturb_pose, refiner_crop

    ds = build_dataset("refiner", _cfg(synth_root), "train")
    obj = ds.local.pool.get(ds.items[0].obj_id)
    T_gt = np.eye(4)
    T_gt[:3, 3] = np.array([0.0, 0.0, obj.radius + 40.0]) - obj.center  # bounding sphere 40 mm from the camera
    K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
    rng = np.random.default_rng(0)
    cfg = {"p_positive": 0.0, "p_far": 0.5, "rot_thresh_deg": 5.0, "trans_frac": 0.1}
    for _ in range(100):
        for draw in (lambda: perturb_pose(T_gt, rng), lambda: selection_hypothesis(T_gt, obj.diameter, rng, cfg)):
            T = ds.draw_pose(draw, T_gt, obj)
            assert ds.in_front(T, obj)
            refiner_crop(T, obj, K, None, S)  # never raises "behind the camera"


def test_selection_samples_and_hypotheses(synth_root):
    ds = build_dataset("selection", _cfg(synth_root), "train")
    labels = []
    for i in range(min(len(ds), 8)):
        s = ds[i]
        assert set(s) == {"query", "render", "label"}
        _check_image(s["query"])
        _check_image(s["render"])
        assert s["label"].shape == () and s["label"].dtype == torch.float32
        labels.append(float(s["label"]))
    assert set(labels) == {0.0, 1.0}
    rng = np.random.default_rng(0)
    T_gt = np.eye(4)
    T_gt[:3, 3] = (10.0, -5.0, 500.0)
    cfg = {"p_positive": 0.5, "p_far": 0.2, "rot_thresh_deg": 5.0, "trans_frac": 0.1}
    hyp = [selection_hypothesis(T_gt, 100.0, rng, cfg) for _ in range(2000)]
    lab = np.array([selection_label(T, T_gt, 100.0) for T in hyp])
    assert abs(lab.mean() - 0.5) < 0.04  # positives exactly when drawn inside the thresholds (asymmetric object)
    assert all(T[2, 3] > 0 for T in hyp)


def test_dataloader_workers_give_the_same_samples(synth_root):
    ds = build_dataset("selection", _cfg(synth_root), "train")
    direct = [ds[i] for i in range(4)]
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    batches = [b for _, b in zip(range(2), loader)]
    for j, b in enumerate(batches):
        for k in ("query", "render", "label"):
            assert torch.equal(b[k], torch.stack([direct[2 * j][k], direct[2 * j + 1][k]]))


def test_coarse_samples_follow_the_contract(synth_root):
    ds = build_dataset("coarse", _cfg(synth_root, p_negative=0.0, augment=False), "train")
    matched = []
    for i in range(min(len(ds), 6)):
        s = ds[i]
        assert set(s) == {"query", "template", "labels", "offsets"}
        _check_image(s["query"])
        _check_image(s["template"])
        labels, offsets = s["labels"], s["offsets"]
        assert labels.shape == (NP,) and labels.dtype == torch.int64
        assert labels.min() >= 0 and labels.max() <= NP
        assert offsets.shape == (NP, 2) and offsets.dtype == torch.float32
        assert offsets.abs().max() <= 0.5 and torch.all(offsets[labels == NP] == 0)
        matched.append(float((labels < NP).float().mean()))
    assert np.mean(matched) > 0.15  # the nearest template shows much of what the query sees


def test_coarse_template_is_the_onboarded_view(synth_root, tmp_path):
    from cooppose.onboarding import onboard

    ds = build_dataset("coarse", _cfg(synth_root), "train")
    obj = ds.local.pool.get(ds.items[0].obj_id)
    ref = onboard(obj, size=S, level=0, cache_dir=tmp_path, renderer=ds.local.renderer)
    assert np.array_equal(ds.template_poses(obj), ref.poses)
    for t in (0, 17, 41):
        tpl = ds.template(obj, t)
        assert np.array_equal(tpl["K"], ref.K[t]) and np.array_equal(tpl["pose"], ref.poses[t])
        assert np.array_equal(tpl["rgb"], ref.rgb[t]) and np.array_equal(tpl["depth"], ref.depth[t])


def test_label_pictures(synth_root, tmp_path):
    for kind in ("coarse", "refiner", "selection"):
        s = build_dataset(kind, _cfg(synth_root), "train")[0]
        pic = label_picture(s)
        assert pic.dtype == np.uint8 and pic.ndim == 3 and pic.shape[2] == 3 and pic.std() > 5
        path = save_label_picture(s, tmp_path / f"{kind}.png")
        assert path.is_file() and path.stat().st_size > 1000
    with pytest.raises(DatasetError):
        label_picture({"image": torch.zeros(3)})


def test_synth_show_labels_writes_the_target_picture_of_one_sample(synth_root, tmp_path):
    """`cooppose synth show --labels refiner` writes that sample's label picture (query | render | flow | ...)."""
    from PIL import Image

    from cooppose.cli import main
    from cooppose.data.datasets import build_dataset, label_picture

    out = tmp_path / "labels.png"
    assert main(["synth", "show", "--scenes", str(synth_root), "--labels", "refiner", "--index", "2", "--out", str(out)]) == 0
    expected = label_picture(build_dataset("refiner", {"scenes": str(synth_root), "augment": False, "val_fraction": 0.0}, "train")[2])
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), expected)
