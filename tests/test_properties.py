"""Property tests (hypothesis) not covered by the module tests.

Already covered elsewhere, and not repeated here: pose composition / projection round trips
(test_transforms.py), crop <-> image pixel round trip and crop intrinsics (test_camera.py), results CSV
round trip (test_bop.py), MSSD/MSPD of a symmetric object under its symmetry = 0 (test_metrics.py).
Here: BOP JSON files and images round trip for any valid content; 3D points survive a crop
(containment, back-projection) and an integer-shift crop is a slice; metric invariances and orderings;
BOP recall never decreases with the threshold.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cooppose.data import bop
from cooppose.eval import metrics as M
from cooppose.geometry.camera import make_crop, warp
from cooppose.geometry.transforms import backproject, project, random_rotations
from cooppose.objects import symmetry_transformations

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)

finite = st.floats(-1e6, 1e6, allow_nan=False, width=64)
ids = st.integers(0, 999_999)
positive = st.floats(1e-3, 1e4, allow_nan=False)


def _rotation(seed: int) -> np.ndarray:
    return random_rotations(1, np.random.default_rng(seed))[0]


def _intrinsics(f: float, aspect: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[f, 0.0, cx], [0.0, f * aspect, cy], [0.0, 0.0, 1.0]])


# ---------------------------------------------------------------------------------------------- BOP round trips
gt_poses = st.builds(lambda obj, seed, t: bop.GtPose(obj, _rotation(seed), np.array(t)),
                     st.integers(1, 10_000), st.integers(0, 2**32 - 1), st.lists(finite, min_size=3, max_size=3))
boxes_xywh = st.tuples(st.integers(-1, 5000), st.integers(-1, 5000), st.integers(-1, 5000), st.integers(-1, 5000))
gt_infos = st.builds(bop.GtInfo, boxes_xywh, boxes_xywh, st.integers(0, 10**7), st.integers(0, 10**7),
                     st.integers(0, 10**7), st.floats(0, 1))
scene_cameras = st.builds(
    lambda K, scale, pose: bop.SceneCamera(K=K, depth_scale=scale, R_w2c=None if pose is None else _rotation(pose[0]),
                                           t_w2c=None if pose is None else np.array(pose[1])),
    st.builds(_intrinsics, positive, st.floats(0.5, 2.0), finite, finite),
    st.none() | positive,
    st.none() | st.tuples(st.integers(0, 2**32 - 1), st.lists(finite, min_size=3, max_size=3)),
)
model_infos = st.fixed_dictionaries(
    {"diameter": positive, "min_x": finite, "size_x": positive},
    optional={"symmetries_discrete": st.lists(st.lists(finite, min_size=16, max_size=16), max_size=2),
              "symmetries_continuous": st.lists(st.fixed_dictionaries({"axis": st.sampled_from([[0, 0, 1], [1, 0, 0]]),
                                                                       "offset": st.lists(finite, min_size=3, max_size=3)}),
                                                max_size=1)},
)


def _same_arrays(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return np.array_equal(np.asarray(a), np.asarray(b))


@SETTINGS
@given(st.dictionaries(ids, st.lists(gt_poses, max_size=4), max_size=4),
       st.dictionaries(ids, st.lists(gt_infos, max_size=4), max_size=4),
       st.dictionaries(ids, scene_cameras, max_size=4))
def test_scene_files_round_trip_exactly(tmp_path_factory, scene_gt, scene_gt_info, scene_camera):
    d = tmp_path_factory.mktemp("scene")
    bop.save_scene_gt(d / "scene_gt.json", scene_gt)
    bop.save_scene_gt_info(d / "scene_gt_info.json", scene_gt_info)
    bop.save_scene_camera(d / "scene_camera.json", scene_camera)
    gt, info, cam = bop.load_scene_gt(d / "scene_gt.json"), bop.load_scene_gt_info(d / "scene_gt_info.json"), \
        bop.load_scene_camera(d / "scene_camera.json")
    assert info == scene_gt_info
    assert gt.keys() == scene_gt.keys() and cam.keys() == scene_camera.keys()
    for im, poses in scene_gt.items():
        assert [(g.obj_id, g.R.tolist(), g.t.tolist()) for g in gt[im]] == [(g.obj_id, g.R.tolist(), g.t.tolist()) for g in poses]
    for im, c in scene_camera.items():
        back = cam[im]
        assert back.depth_scale == c.depth_scale
        assert all(_same_arrays(x, y) for x, y in ((back.K, c.K), (back.R_w2c, c.R_w2c), (back.t_w2c, c.t_w2c)))


@SETTINGS
@given(st.dictionaries(st.integers(1, 10_000), model_infos, max_size=5),
       st.lists(st.builds(bop.Target, ids, ids, st.integers(1, 10_000), st.integers(1, 50)), max_size=6),
       st.builds(bop.Camera, st.integers(1, 10_000), st.integers(1, 10_000),
                 st.builds(_intrinsics, positive, st.floats(0.5, 2.0), finite, finite), st.none() | positive))
def test_dataset_files_round_trip_exactly(tmp_path_factory, models_info, targets, camera):
    d = tmp_path_factory.mktemp("dataset")
    bop.save_models_info(d / "models_info.json", models_info)
    bop.save_targets(d / "targets.json", targets)
    bop.save_camera(d / "camera.json", camera)
    assert bop.load_models_info(d / "models_info.json") == models_info
    assert bop.load_targets(d / "targets.json") == targets
    back = bop.load_camera(d / "camera.json")
    assert (back.width, back.height, back.depth_scale) == (camera.width, camera.height, camera.depth_scale)
    assert np.array_equal(back.K, camera.K)


images = hnp.arrays(np.uint8, st.tuples(st.integers(1, 24), st.integers(1, 24), st.just(3)))


@SETTINGS
@given(images, st.integers(0, 2**32 - 1), st.sampled_from([0.1, 1.0, 0.05]), st.floats(0.0, 5000.0))
def test_images_round_trip(tmp_path_factory, rgb, seed, depth_scale, max_depth):
    d = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(seed)
    bop.write_rgb(d / "rgb.png", rgb)
    assert np.array_equal(bop.read_rgb(d / "rgb.png"), rgb)
    mask = rng.random(rgb.shape[:2]) < 0.5
    bop.write_mask(d / "mask.png", mask)
    assert np.array_equal(bop.read_mask(d / "mask.png"), mask)
    depth = rng.uniform(0.0, min(max_depth, 65535 * depth_scale), rgb.shape[:2])
    depth[rng.random(depth.shape) < 0.2] = 0.0
    bop.write_depth(d / "depth.png", depth, depth_scale)
    back = bop.read_depth(d / "depth.png", depth_scale)
    # quantised to depth_scale, stored in float32: within half a step (and float32 rounding)
    assert np.all(np.abs(back - depth) <= depth_scale / 2 + 1e-6 * depth + 1e-9)
    assert np.array_equal(back == 0, np.round(depth / depth_scale) == 0)


# ---------------------------------------------------------------------------------------------- crops of points
K = _intrinsics(600.0, 0.97, 318.0, 243.0)
points = hnp.arrays(np.float64, st.tuples(st.integers(2, 30), st.just(3)),
                    elements=st.floats(-300, 300, allow_nan=False)).map(lambda X: X + np.array([0.0, 0.0, 1000.0]))


@SETTINGS
@given(points, st.integers(16, 256), st.floats(1.0, 2.5))
def test_crop_of_the_projected_box_contains_the_points_and_backprojects_them(X, size, pad):
    uv = project(K, X)
    box = (*uv.min(0), *uv.max(0))
    if box[2] - box[0] < 1e-3 or box[3] - box[1] < 1e-3:
        return
    crop = make_crop(box, K, size, pad)
    uv_crop = crop.to_crop(uv)
    assert np.all(uv_crop >= -0.5 - 1e-6) and np.all(uv_crop <= size - 0.5 + 1e-6)
    # the box centre is the crop centre
    centre = crop.to_crop(np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]))
    assert np.allclose(centre, (size - 1) / 2)
    # lifting crop pixels with the crop intrinsics gives back the 3D points
    assert np.allclose(backproject(crop.K, uv_crop, X[:, 2]), X, atol=1e-6 * np.abs(X).max())


@SETTINGS
@given(hnp.arrays(np.uint8, st.tuples(st.integers(8, 40), st.integers(8, 40), st.sampled_from([1, 3]))),
       st.integers(-20, 50), st.integers(-20, 50), st.integers(1, 48), st.booleans())
def test_unit_scale_crop_at_an_integer_offset_is_a_slice(image, x0, y0, size, nearest):
    crop = make_crop((x0 - 0.5, y0 - 0.5, x0 + size - 0.5, y0 + size - 0.5), K, size)
    H, W = image.shape[:2]
    expected = np.zeros((size, size, image.shape[2]), np.uint8)
    ys, xs = slice(max(y0, 0), min(y0 + size, H)), slice(max(x0, 0), min(x0 + size, W))
    if ys.start < ys.stop and xs.start < xs.stop:
        expected[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = image[ys, xs]
    assert np.array_equal(warp(image, crop, nearest=nearest), expected)


# ---------------------------------------------------------------------------------------------- metrics
poses = st.tuples(st.integers(0, 2**32 - 1), st.lists(st.floats(-200, 200), min_size=2, max_size=2), st.floats(500, 2000)).map(
    lambda p: (_rotation(p[0]), np.array([*p[1], p[2]])))
model_points = hnp.arrays(np.float64, st.tuples(st.integers(3, 40), st.just(3)), elements=st.floats(-80, 80, allow_nan=False))
BOX_SYMS = symmetry_transformations({"diameter": 200.0, "symmetries_discrete": [[-1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]]})
CYL_SYMS = symmetry_transformations({"diameter": 200.0, "symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]}, 0.2)


@SETTINGS
@given(poses, poses, model_points, st.integers(0, 2**32 - 1), st.lists(st.floats(-500, 500), min_size=3, max_size=3))
def test_3d_errors_are_invariant_to_moving_the_camera(est, gt, pts, seed, shift):
    (R_e, t_e), (R_g, t_g) = est, gt
    A, b = _rotation(seed), np.array(shift)  # the same rigid motion applied to both poses
    for syms in (None, BOX_SYMS):
        before = M.mssd(R_e, t_e, R_g, t_g, pts, syms)
        after = M.mssd(A @ R_e, A @ t_e + b, A @ R_g, A @ t_g + b, pts, syms)
        assert np.isclose(before, after, rtol=1e-9, atol=1e-7)
    assert np.isclose(M.add(R_e, t_e, R_g, t_g, pts), M.add(A @ R_e, A @ t_e + b, A @ R_g, A @ t_g + b, pts), atol=1e-7)
    assert np.isclose(M.adi(R_e, t_e, R_g, t_g, pts), M.adi(A @ R_e, A @ t_e + b, A @ R_g, A @ t_g + b, pts), atol=1e-7)


@SETTINGS
@given(poses, poses, model_points, st.floats(0.1, 10.0))
def test_mspd_scales_with_the_image(est, gt, pts, s):
    (R_e, t_e), (R_g, t_g) = est, gt
    scaled = np.diag([s, s, 1.0]) @ K  # the same camera with an image s times larger
    for syms in (None, BOX_SYMS):
        assert np.isclose(M.mspd(R_e, t_e, R_g, t_g, scaled, pts, syms), s * M.mspd(R_e, t_e, R_g, t_g, K, pts, syms), rtol=1e-9)


@SETTINGS
@given(poses, poses, model_points, st.sampled_from(["box", "cyl"]))
def test_error_orderings_and_swap_symmetry(est, gt, pts, kind):
    (R_e, t_e), (R_g, t_g) = est, gt
    syms = BOX_SYMS if kind == "box" else CYL_SYMS
    plain = M.mssd(R_e, t_e, R_g, t_g, pts)
    assert M.adi(R_e, t_e, R_g, t_g, pts) <= M.add(R_e, t_e, R_g, t_g, pts) + 1e-9 <= plain + 2e-9
    assert M.mssd(R_e, t_e, R_g, t_g, pts, syms) <= plain + 1e-9  # the identity is one of the symmetries
    assert M.mspd(R_e, t_e, R_g, t_g, K, pts, syms) <= M.mspd(R_e, t_e, R_g, t_g, K, pts) + 1e-9
    # which pose is the estimate does not matter: always without symmetries; with them, for a model that has
    # them (its points closed under the symmetry group, which is closed under inverse)
    assert np.isclose(plain, M.mssd(R_g, t_g, R_e, t_e, pts), rtol=1e-12, atol=1e-9)
    closed = np.concatenate([pts @ S[:3, :3].T + S[:3, 3] for S in syms])
    assert np.isclose(M.mssd(R_e, t_e, R_g, t_g, closed, syms), M.mssd(R_g, t_g, R_e, t_e, closed, syms), rtol=1e-9, atol=1e-7)


depth_maps = hnp.arrays(np.float64, (12, 16), elements=st.sampled_from([0.0, 500.0, 510.0, 530.0, 700.0, 1000.0]))


@SETTINGS
@given(depth_maps, depth_maps, depth_maps, st.floats(10.0, 500.0))
def test_vsd_is_a_fraction_and_zero_for_the_gt_itself(depth_est, depth_gt, depth_test, diameter):
    K_small = _intrinsics(300.0, 1.0, 8.0, 6.0)
    e = M.vsd(depth_est, depth_gt, depth_test, K_small, diameter)
    assert e.shape == (len(M.VSD_TAUS),) and np.all((e >= 0) & (e <= 1))
    assert np.all(np.diff(e) <= 1e-12)  # a larger tolerance never increases the error
    same = M.vsd(depth_gt, depth_gt, depth_test, K_small, diameter)
    assert np.all(same == 0) or np.all(same == 1)  # 1 only when no GT pixel is visible in the test depth
    alone = M.vsd(depth_gt, depth_gt, depth_gt, K_small, diameter)  # the GT seen unoccluded
    assert np.all(alone == 0) if np.any(depth_gt > 0) else np.all(alone == 1)


@SETTINGS
@given(st.lists(st.tuples(hnp.arrays(np.float64, st.tuples(st.integers(0, 4), st.integers(1, 4)),
                                     elements=st.floats(0, 50) | st.just(np.inf)),
                          st.integers(0, 2**16)), min_size=1, max_size=5))
def test_recall_never_decreases_with_the_threshold(groups):
    gs = []
    for errors, bits in groups:
        valid = np.array([(bits >> g) & 1 for g in range(errors.shape[1])], dtype=bool)
        gs.append(M.MatchGroup(obj_id=1, errors=errors, valid=valid))
    thresholds = np.linspace(0, 60, 25)
    rec, tps, n_targets = M.recalls(gs, thresholds)
    assert n_targets == sum(int(g.valid.sum()) for g in gs)
    assert np.all(np.diff(tps, axis=-1) >= 0) and np.all((rec >= 0) & (rec <= 1))
    assert np.all(tps <= np.array([[min(g.errors.shape[0], int(g.valid.sum()))] for g in gs]))
