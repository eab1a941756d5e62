"""The one crop: affine, intrinsics, warping and input checks."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cooppose.errors import CameraError, InputError
from cooppose.geometry.camera import check_intrinsics, make_crop, square_box, warp
from cooppose.geometry.transforms import project

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
K = np.array([[600.0, 0.0, 320.0], [0.0, 580.0, 240.0], [0.0, 0.0, 1.0]])

boxes = st.tuples(
    st.floats(-50, 500), st.floats(-50, 400), st.floats(5, 300), st.floats(5, 300)
).map(lambda b: (b[0], b[1], b[0] + b[2], b[1] + b[3]))


def test_square_box_hand_computed():
    assert square_box((10, 20, 30, 60), pad=1.5) == (-10.0, 10.0, 50.0, 70.0)
    assert square_box(np.array([0.0, 0.0, 4.0, 2.0])) == (0.0, -1.0, 4.0, 3.0)


def test_identity_crop_hand_computed():
    crop = make_crop((-0.5, -0.5, 99.5, 99.5), K, 100)
    assert np.allclose(crop.A, np.eye(3)) and np.allclose(crop.K, K)
    half = make_crop((-0.5, -0.5, 199.5, 199.5), K, 100)
    assert np.allclose(half.to_crop(np.array([[0.0, 0.0], [1.0, 1.0]])), [[-0.25, -0.25], [0.25, 0.25]])


@SETTINGS
@given(boxes, st.integers(16, 256), st.floats(1.0, 2.0))
def test_crop_uncrop_round_trip(box, size, pad):
    crop = make_crop(box, K, size, pad)
    uv = np.random.default_rng(0).uniform(-100, 700, (10, 2))
    assert np.allclose(crop.to_image(crop.to_crop(uv)), uv, atol=1e-8)
    x0, y0, x1, y1 = crop.box
    assert np.isclose(x1 - x0, y1 - y0)
    assert np.allclose(crop.to_crop(np.array([x0, y0])), [-0.5, -0.5])
    assert np.allclose(crop.to_crop(np.array([x1, y1])), [size - 0.5, size - 0.5])


@SETTINGS
@given(boxes, st.integers(16, 256), st.floats(1.0, 2.0))
def test_crop_intrinsics_match_cropped_projection(box, size, pad):
    crop = make_crop(box, K, size, pad)
    X = np.random.default_rng(1).uniform([-200, -200, 300], [200, 200, 2000], (15, 3))
    assert np.allclose(project(crop.K, X), crop.to_crop(project(K, X)), atol=1e-8)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.integers(0, 2**32 - 1))
def test_warp_moves_bright_pixel_where_to_crop_says(seed):
    rng = np.random.default_rng(seed)
    H, W = 120, 160
    u, v = int(rng.integers(30, W - 30)), int(rng.integers(30, H - 30))
    side = rng.uniform(20, 60)
    cx, cy = u + rng.uniform(-side / 4, side / 4), v + rng.uniform(-side / 4, side / 4)
    size = int(rng.integers(64, 128))  # zoom >= 1: each source pixel spreads over >= 1 crop pixel
    crop = make_crop((cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2), K, size)
    image = np.zeros((H, W), np.float32)
    image[v, u] = 1.0
    out = warp(image, crop)
    ys, xs = np.nonzero(out)
    centroid = np.array([(xs * out[ys, xs]).sum(), (ys * out[ys, xs]).sum()]) / out.sum()
    assert np.all(np.abs(centroid - crop.to_crop(np.array([u, v], float))) < 0.5)
    nearest = warp(image, crop, nearest=True)
    ys, xs = np.nonzero(nearest)
    assert np.allclose(crop.to_image(np.c_[xs, ys].astype(float)).round(), [u, v])


def test_warp_keeps_dtype_channels_and_zero_border():
    crop = make_crop((-20, -20, 40, 40), K, 30)
    mask = np.ones((48, 64), bool)
    out = warp(mask, crop, nearest=True)
    assert out.dtype == bool and out[:5, :5].sum() == 0 and out[-5:, -5:].all()
    labels = np.arange(48 * 64, dtype=np.int64).reshape(48, 64, 1) + 2**40
    lab = warp(labels, crop, nearest=True)
    assert lab.shape == (30, 30, 1) and lab.dtype == np.int64
    assert set(np.unique(lab)) <= set(np.unique(labels)) | {0}
    xyz = np.random.default_rng(0).random((48, 64, 3)).astype(np.float32)
    assert warp(xyz, crop).shape == (30, 30, 3) and warp(xyz, crop).dtype == np.float32


def test_warp_rejects_bad_images():
    crop = make_crop((0, 0, 10, 10), K, 8)
    with pytest.raises(InputError, match="image"):
        warp(np.zeros((0, 5)), crop)
    with pytest.raises(InputError, match="image"):
        warp(np.zeros((4, 4, 3, 2)), crop)
    with pytest.raises(InputError, match="dtype"):
        warp(np.zeros((4, 4), complex), crop)


def test_check_intrinsics_accepts_good_and_rejects_bad():
    assert check_intrinsics(K.astype(np.float32), (480, 640)).dtype == np.float64
    bad = {
        "finite 3x3": [np.eye(2), np.where(np.eye(3) > 0, np.nan, 0.0)],
        "non-positive": [np.diag([-600.0, 580.0, 1.0]), K * np.array([[1, 1, 1], [1, 1, 1], [0, 0, 2]])],
        "does not fit": [np.array([[600.0, 0, 900], [0, 580, 240], [0, 0, 1]])],
    }
    for msg, Ks in bad.items():
        for Kb in Ks:
            with pytest.raises(CameraError, match=msg):
                check_intrinsics(Kb, (480, 640))


def test_boxes_and_sizes_are_checked():
    for box in [(10, 10, 10, 20), (10, 10, 5, 20), (0, np.nan, 5, 5), (0, 0, 5)]:
        with pytest.raises(InputError, match="box"):
            square_box(box)
    with pytest.raises(InputError, match="pad"):
        square_box((0, 0, 5, 5), pad=0.0)
    with pytest.raises(InputError, match="size"):
        make_crop((0, 0, 5, 5), K, 0)
    with pytest.raises(CameraError):
        make_crop((0, 0, 5, 5), np.eye(2), 16)
