"""Input checks before estimating: each bad input raises a CoopposeError naming the fix (or warns)."""

import numpy as np
import pytest

from cooppose.errors import InputError, MeshError
from cooppose.pipeline import checks

K = np.array([[600.0, 0, 320], [0, 600, 240], [0, 0, 1]])
SIZE = (480, 640)


def test_image_grey_and_rgba_become_rgb():
    grey = np.arange(480 * 640, dtype=np.int64).reshape(SIZE).astype(np.uint8)
    out = checks.check_image(grey)
    assert out.shape == (480, 640, 3) and np.array_equal(out[..., 2], grey)
    rgba = np.zeros((480, 640, 4), np.uint8)
    rgba[..., 1] = 7
    rgba[..., 3] = 255
    out = checks.check_image(rgba)
    assert out.shape == (480, 640, 3) and np.all(out[..., 1] == 7) and np.all(out[..., 2] == 0)


def test_image_float_and_bad_shapes_refused():
    with pytest.raises(InputError, match=r"uint8.*\* 255"):
        checks.check_image(np.zeros((480, 640, 3), np.float32))
    with pytest.raises(InputError, match="shape"):
        checks.check_image(np.zeros((480, 640, 2), np.uint8))
    with pytest.raises(InputError, match="full camera image"):
        checks.check_image(np.zeros((8, 8, 3), np.uint8))


def test_box_checks():
    assert checks.check_box((10, 20, 110, 220), SIZE) == (10.0, 20.0, 110.0, 220.0)
    with pytest.raises(InputError, match="inverted"):
        checks.check_box((110, 20, 10, 220), SIZE)
    with pytest.raises(InputError, match="4 finite numbers"):
        checks.check_box((1, 2, 3), SIZE)
    with pytest.raises(InputError, match="4 finite numbers"):
        checks.check_box((0, 0, np.nan, 5), SIZE)
    with pytest.raises(InputError, match="normalised"):
        checks.check_box((0.1, 0.2, 0.5, 0.6), SIZE)  # normalised coordinates: < 4 px
    with pytest.raises(InputError, match="inside"):
        checks.check_box((700, 10, 800, 100), SIZE)  # right of the image
    with pytest.warns(UserWarning, match="clipped"):
        b = checks.check_box((-50, 10, 100, 100), SIZE)
    assert b == (-0.5, 10.0, 100.0, 100.0)


def test_mask_checks_and_box():
    m = np.zeros(SIZE, bool)
    with pytest.raises(InputError, match="non-empty"):
        checks.check_mask(m, SIZE)
    with pytest.raises(InputError, match="shape"):
        checks.check_mask(np.ones((10, 10), bool), SIZE)
    m[100:150, 200:260] = True
    assert checks.mask_box(checks.check_mask(m.astype(np.uint8) * 255, SIZE)) == (199.5, 99.5, 259.5, 149.5)


def test_depth_zero_nan_and_metres():
    with pytest.raises(InputError, match="all zero"):
        checks.check_depth(np.full(SIZE, np.nan), SIZE)
    with pytest.raises(InputError, match="depth_scale"):
        checks.check_depth(np.ones(SIZE), SIZE, depth_scale=0)
    d = checks.check_depth(np.full(SIZE, 800, np.uint16), SIZE, depth_scale=0.1)
    assert d.dtype == np.float32 and np.allclose(d, 80.0)
    # a 100 mm object filling a 100 px box at f = 600 is at most 600 mm away
    box = (200, 200, 300, 300)
    checks.check_depth_units(np.full(SIZE, 500.0, np.float32), box, K, 100.0)
    with pytest.raises(InputError, match="metres.*depth_scale=1000"):
        checks.check_depth_units(np.full(SIZE, 0.5, np.float32), box, K, 100.0)
    with pytest.warns(UserWarning, match="farther"):
        checks.check_depth_units(np.full(SIZE, 5000.0, np.float32), box, K, 100.0)
    empty = np.zeros(SIZE, np.float32)
    empty[:50] = 500
    with pytest.raises(InputError, match="zero inside the box"):
        checks.check_depth_units(empty, box, K, 100.0)


def test_mesh_units():
    with pytest.raises(MeshError, match="units='m'"):
        checks.check_object_units(0.2)
    checks.check_object_units(200.0)


def test_detection_needs_box_or_mask():
    with pytest.raises(InputError, match="box .* or an instance mask"):
        checks.check_detection(100.0, None, None, SIZE, K)
    m = np.zeros(SIZE, bool)
    m[100:150, 200:260] = True
    box, mask = checks.check_detection(100.0, None, m, SIZE, K)
    assert box == (199.5, 99.5, 259.5, 149.5) and mask.sum() == 50 * 60


def test_real_lmo_depth_passes_and_metres_refused(shared_data):
    import json
    import warnings

    from cooppose.data.bop import read_gray
    from cooppose.objects import load_mesh

    root = shared_data / "lmo-frame3"
    cam = json.loads((root / "test/000002/scene_camera.json").read_text())["3"]
    Kr = np.array(cam["cam_K"]).reshape(3, 3)
    raw = read_gray(root / "test/000002/depth/000003.png")
    gt = json.loads((root / "test/000002/scene_gt.json").read_text())["3"]
    info = json.loads((root / "test/000002/scene_gt_info.json").read_text())["3"]
    depth_mm = checks.check_depth(raw, raw.shape, cam["depth_scale"])
    depth_m = checks.check_depth(raw, raw.shape, cam["depth_scale"] / 1000.0)
    for g, i in zip(gt, info):
        diameter = load_mesh(root / "models" / f"obj_{g['obj_id']:06d}.ply").diameter
        x, y, w, h = i["bbox_visib"]
        box = (x - 0.5, y - 0.5, x + w - 0.5, y + h - 0.5)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # real data in mm: no warning either
            checks.check_detection(diameter, box, None, raw.shape, Kr, depth_mm)
        with pytest.raises(InputError, match="metres"):
            checks.check_detection(diameter, box, None, raw.shape, Kr, depth_m)
