"""MegaPose's Pillow augmentation group: determinism, dtype, probabilities and hand-computed factors."""

import numpy as np
import pytest

from cooppose.data.augment import AugmentConfig, augment_rgb
from cooppose.errors import InputError


def _image(seed=0, shape=(24, 32, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_same_seed_same_output_and_shape_dtype_kept():
    img = _image()
    outs = [augment_rgb(img, np.random.default_rng(s)) for s in (5, 5, 6)]
    assert np.array_equal(outs[0], outs[1])
    assert all(o.dtype == np.uint8 and o.shape == img.shape for o in outs)
    assert np.array_equal(img, _image())  # input untouched


def test_rng_stream_consumed_does_not_depend_on_the_image():
    a, b = np.random.default_rng(9), np.random.default_rng(9)
    augment_rgb(_image(1), a)
    augment_rgb(_image(2, (5, 7, 3)), b)
    assert a.random() == b.random()


def test_group_probability_matches_megapose():
    # unchanged output = group skipped (0.2) or group run with no op drawn: 0.8 * 0.6 * 0.7 * 0.7 * 0.5 * 0.7
    rng = np.random.default_rng(0)
    img = _image(3, (8, 8, 3))
    n = 3000
    unchanged = sum(np.array_equal(augment_rgb(img, rng), img) for _ in range(n)) / n
    expected = 0.2 + 0.8 * 0.6 * 0.7 * 0.7 * 0.5 * 0.7
    assert abs(unchanged - expected) < 0.035  # ~4 standard deviations


def test_brightness_alone_scales_pixels_by_the_factor():
    cfg = AugmentConfig(p_group=1.0, p_blur=0.0, p_sharpness=0.0, p_contrast=0.0, p_color=0.0,
                        p_brightness=1.0, brightness=(0.5, 0.5))
    img = _image(4)
    out = augment_rgb(img, np.random.default_rng(0), cfg)
    assert np.abs(out.astype(int) - np.round(img * 0.5).astype(int)).max() <= 1


def test_blur_alone_smooths_and_keeps_the_mean():
    cfg = AugmentConfig(p_group=1.0, p_blur=1.0, p_sharpness=0.0, p_contrast=0.0, p_brightness=0.0, p_color=0.0)
    img = _image(5, (64, 64, 3))
    out = augment_rgb(img, np.random.default_rng(1), cfg)
    assert np.abs(np.diff(out.astype(float), axis=1)).mean() < 0.5 * np.abs(np.diff(img.astype(float), axis=1)).mean()
    assert abs(out.mean() - img.mean()) < 3.0


def test_group_off_returns_a_copy():
    img = _image()
    out = augment_rgb(img, np.random.default_rng(0), AugmentConfig(p_group=0.0))
    assert np.array_equal(out, img) and out is not img


@pytest.mark.parametrize("bad", [np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8), [[1, 2, 3]]])
def test_bad_input_is_refused(bad):
    with pytest.raises(InputError):
        augment_rgb(bad, np.random.default_rng(0))
