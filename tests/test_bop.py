"""BOP dataset I/O: JSON/image round trips, results CSV, file names, clear errors on bad files."""

import json
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cooppose.data import bop
from cooppose.errors import DatasetError

K = np.array([[572.4114, 0.0, 325.2611], [0.0, 573.57043, 242.04899], [0.0, 0.0, 1.0]])


def _rot(seed):
    q = np.random.default_rng(seed).normal(size=4)
    q /= np.linalg.norm(q)
    x, y, z, w = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def test_json_files_round_trip(tmp_path):
    cam = bop.Camera(width=640, height=480, K=K, depth_scale=0.1)
    bop.save_camera(tmp_path / "camera.json", cam)
    back = bop.load_camera(tmp_path / "camera.json")
    assert (back.width, back.height, back.depth_scale) == (640, 480, 0.1)
    np.testing.assert_array_equal(back.K, K)

    info = {1: {"diameter": 102.099, "min_x": -37.9}, 10: {"diameter": 164.6, "symmetries_discrete": [list(np.eye(4).ravel())]}}
    bop.save_models_info(tmp_path / "models_info.json", info)
    assert bop.load_models_info(tmp_path / "models_info.json") == info

    targets = [bop.Target(2, 3, 1, 1), bop.Target(2, 3, 5, 2)]
    bop.save_targets(tmp_path / "t.json", targets)
    assert bop.load_targets(tmp_path / "t.json") == targets

    sc = {3: bop.SceneCamera(K=K, depth_scale=1.0), 10: bop.SceneCamera(K=2 * K, R_w2c=_rot(0), t_w2c=np.array([1.0, 2, 3]))}
    bop.save_scene_camera(tmp_path / "scene_camera.json", sc)
    back = bop.load_scene_camera(tmp_path / "scene_camera.json")
    assert sorted(back) == [3, 10] and back[3].depth_scale == 1.0 and back[10].depth_scale is None
    np.testing.assert_array_equal(back[10].K, 2 * K)
    np.testing.assert_array_equal(back[10].R_w2c, _rot(0))

    gt = {3: [bop.GtPose(1, _rot(1), np.array([10.0, -20.5, 900.25])), bop.GtPose(5, _rot(2), np.array([0.0, 0.0, 1000.0]))]}
    bop.save_scene_gt(tmp_path / "scene_gt.json", gt)
    back = bop.load_scene_gt(tmp_path / "scene_gt.json")
    assert [g.obj_id for g in back[3]] == [1, 5]
    np.testing.assert_array_equal(back[3][0].R, _rot(1))
    np.testing.assert_array_equal(back[3][0].t, [10.0, -20.5, 900.25])

    gi = {3: [bop.GtInfo((1, 2, 30, 40), (3, 4, 20, 30), 1200, 1100, 900, 0.75)]}
    bop.save_scene_gt_info(tmp_path / "scene_gt_info.json", gi)
    assert bop.load_scene_gt_info(tmp_path / "scene_gt_info.json") == gi
    # BOP layout: one image per line, numeric key order, nothing left behind by the atomic writes
    lines = (tmp_path / "scene_camera.json").read_text().splitlines()
    assert lines[1].startswith('  "3": ') and lines[2].startswith('  "10": ')
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_images_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    bop.write_rgb(tmp_path / "rgb" / "000001.png", rgb)
    np.testing.assert_array_equal(bop.read_rgb(tmp_path / "rgb" / "000001.png"), rgb)
    smooth = np.tile(np.linspace(0, 255, 16, dtype=np.uint8)[None, :, None], (12, 1, 3))
    bop.write_rgb(tmp_path / "000002.jpg", smooth)
    assert np.abs(bop.read_rgb(tmp_path / "000002.jpg").astype(int) - smooth).max() <= 8

    gray = rng.integers(0, 65535, (12, 16), dtype=np.uint16)
    bop.write_gray(tmp_path / "g.png", gray)
    np.testing.assert_array_equal(bop.read_gray(tmp_path / "g.png"), gray)

    depth = rng.uniform(300, 4000, (12, 16)).astype(np.float32)
    depth[0, 0] = 0.0
    bop.write_depth(tmp_path / "d.png", depth, depth_scale=0.1)
    back = bop.read_depth(tmp_path / "d.png", depth_scale=0.1)
    assert back.dtype == np.float32 and back[0, 0] == 0
    assert np.abs(back - depth).max() <= 0.05 + 1e-3  # quantised to 0.1 mm

    mask = rng.random((12, 16)) > 0.5
    bop.write_mask(tmp_path / "m.png", mask)
    np.testing.assert_array_equal(bop.read_mask(tmp_path / "m.png"), mask)


def test_bad_depth_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="depth_scale"):
        bop.write_depth(tmp_path / "d.png", np.full((4, 4), 70000.0), depth_scale=1.0)
    with pytest.raises(DatasetError, match=">= 0"):
        bop.write_depth(tmp_path / "d.png", np.full((4, 4), -1.0))
    with pytest.raises(DatasetError, match="not found"):
        bop.read_depth(tmp_path / "none.png", 1.0)


def test_malformed_json_names_file_and_problem(tmp_path):
    p = tmp_path / "scene_gt.json"
    p.write_text('{"3": [{"obj_id": 1, "cam_R_m2c": [1, 0, 0]')
    with pytest.raises(DatasetError, match="scene_gt.json is not valid JSON"):
        bop.load_scene_gt(p)
    p.write_text(json.dumps({"3": [{"obj_id": 1, "cam_R_m2c": [1, 0, 0], "cam_t_m2c": [0, 0, 1]}]}))
    with pytest.raises(DatasetError, match=r"scene_gt.json: image 3 instance 0 cam_R_m2c must be 9 finite numbers"):
        bop.load_scene_gt(p)
    p.write_text(json.dumps({"3": [{"obj_id": 1, "cam_R_m2c": list(range(9))}]}))
    with pytest.raises(DatasetError, match="has no 'cam_t_m2c'"):
        bop.load_scene_gt(p)
    c = tmp_path / "scene_camera.json"
    c.write_text(json.dumps({"x": {"cam_K": list(range(9))}}))
    with pytest.raises(DatasetError, match="not an integer id"):
        bop.load_scene_camera(c)
    with pytest.raises(DatasetError, match="not found"):
        bop.load_targets(tmp_path / "test_targets_bop19.json")
    m = tmp_path / "models_info.json"
    m.write_text(json.dumps({"1": {"diameter": 0}}))
    with pytest.raises(DatasetError, match="non-positive diameter"):
        bop.load_models_info(m)


def _row(scene=1, im=2, obj=3, score=0.5, time=0.25, seed=0):
    return bop.PoseEstimate(scene, im, obj, score, _rot(seed), np.array([1.5, -2.25, 800.0]), time)


finite = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e6, max_value=1e6)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(1, 30), finite,
                          st.lists(finite, min_size=9, max_size=9), st.lists(finite, min_size=3, max_size=3)),
                max_size=12),
       st.floats(0, 100, allow_nan=False))
def test_results_csv_round_trip(tmp_path_factory, rows, time):
    ests = [bop.PoseEstimate(s, i, o, sc, np.array(R).reshape(3, 3), np.array(t), time + s + 10 * i)
            for s, i, o, sc, R, t in rows]
    path = tmp_path_factory.mktemp("res") / "coop_lmo-test.csv"
    bop.write_results(path, ests)
    back = bop.read_results(path)
    assert len(back) == len(ests)
    for a, b in zip(ests, back):
        assert (a.scene_id, a.im_id, a.obj_id, a.score, a.time) == (b.scene_id, b.im_id, b.obj_id, b.score, b.time)
        np.testing.assert_array_equal(a.R, b.R)
        np.testing.assert_array_equal(a.t, b.t)


def test_results_csv_format_and_dict_rows(tmp_path):
    path = tmp_path / "coop_lmo-test.csv"
    bop.write_results(path, [{"scene_id": 2, "im_id": 3, "obj_id": 5, "score": 1.0, "R": np.eye(3), "t": [0, 0, 1000], "time": 1.5}])
    lines = path.read_text().splitlines()
    assert lines == ["scene_id,im_id,obj_id,score,R,t,time",
                     "2,3,5,1.0,1.0 0.0 0.0 0.0 1.0 0.0 0.0 0.0 1.0,0.0 0.0 1000.0,1.5"]


def test_inconsistent_times_are_refused(tmp_path):
    rows = [_row(time=0.5), _row(obj=4, time=0.9)]
    with pytest.raises(DatasetError, match="scene 1 image 2 has different times"):
        bop.write_results(tmp_path / "a_b-c.csv", rows)
    p = tmp_path / "a_b-c.csv"
    p.write_text("scene_id,im_id,obj_id,score,R,t,time\n"
                 "1,2,3,0.5,1 0 0 0 1 0 0 0 1,0 0 1,0.5\n1,2,4,0.5,1 0 0 0 1 0 0 0 1,0 0 1,0.9\n")
    with pytest.raises(DatasetError, match="different times"):
        bop.read_results(p)
    bop.write_results(tmp_path / "ok.csv", [_row(time=0.5), _row(obj=4, time=0.5), _row(im=9, time=2.0)])
    assert len(bop.read_results(tmp_path / "ok.csv")) == 3


def test_malformed_csv_line_is_named(tmp_path):
    p = tmp_path / "a_b-c.csv"
    p.write_text("scene_id,im_id,obj_id,score,R,t,time\n1,2,3,0.5,1 0 0 0 1 0 0 0,0 0 1,-1\n")
    with pytest.raises(DatasetError, match="line 2: R has 8 values"):
        bop.read_results(p)
    p.write_text("1,2,3,0.5\n")
    with pytest.raises(DatasetError, match="line 1: 4 comma-separated fields"):
        bop.read_results(p)


def test_results_filenames():
    assert bop.results_filename("coop", "lmo", "test") == "coop_lmo-test.csv"
    assert bop.results_filename("coop-coarse", "tless", "test", "primesense") == "coop-coarse_tless-test-primesense.csv"
    assert bop.parse_results_filename("/x/thirdparty_lmo-test.csv") == bop.ResultsName("thirdparty", "lmo", "test")
    assert bop.parse_results_filename("a-b_tless-test-primesense.csv") == bop.ResultsName("a-b", "tless", "test", "primesense")
    with pytest.raises(DatasetError, match="without '_'"):
        bop.results_filename("co_op", "lmo", "test")
    for bad in ("results_lmo.csv", "coop-lmo-test.csv", "a_b_lmo-test.csv", "_lmo-test.csv"):
        with pytest.raises(DatasetError, match="METHOD_DATASET-SPLIT"):
            bop.parse_results_filename(bad)


def test_dataset_index_on_real_lmo_frame(shared_data):
    ds = bop.BopDataset(shared_data / "lmo-frame3", "test")
    assert ds.scene_ids() == [2] and ds.image_ids(2) == [3]
    assert ds.models_dir.name == "models_eval" and sorted(ds.models_info) == [1, 5, 6, 8, 9, 10, 11, 12]
    assert [t.obj_id for t in ds.targets()] == [1, 5, 6, 8, 9, 10, 11, 12]
    np.testing.assert_allclose(ds.K(2, 3), ds.camera.K)
    assert ds.read_rgb(2, 3).shape == (480, 640, 3)
    depth = ds.read_depth(2, 3)
    assert depth.dtype == np.float32 and 0.04 < (depth == 0).mean() < 0.07 and 500 < np.median(depth[depth > 0]) < 1500
    assert ds.scene_gt(2)[3][1].obj_id == 5 and abs(ds.scene_gt_info(2)[3][0].visib_fract - 0.1996) < 1e-3
    assert ds.image_path(2, 3, "gray") is None
    with pytest.raises(DatasetError, match="split folder"):
        bop.BopDataset(shared_data / "lmo-frame3", "val").scene_ids()
