"""Onboarding: template geometry (crop framing, K, poses), cache hit / corrupt cache / atomic write, CLI."""

import numpy as np
import pytest

from cooppose.cli import main
from cooppose.errors import InputError
from cooppose.geometry.transforms import transform_points
from cooppose.objects import bundled_mesh_path, load_mesh
from cooppose.onboarding import DISTANCE_FACTOR, TEMPLATE_PAD, ObjectTemplates, onboard
from cooppose.render import Renderer


@pytest.fixture(scope="module")
def duck():
    return load_mesh(bundled_mesh_path("duck"))


class CountingRenderer(Renderer):
    """A renderer that counts its calls (to tell a cache hit from a re-render)."""

    def __init__(self):
        super().__init__("auto")
        self.calls = 0

    def render(self, *args, **kwargs):
        self.calls += 1
        return super().render(*args, **kwargs)


def test_templates_frame_the_object(duck, tmp_path):
    S = 96
    t = onboard(duck, size=S, cache_dir=tmp_path)
    assert isinstance(t, ObjectTemplates) and len(t) == 42 and t.size == S and t.object_hash == duck.content_hash
    assert t.rgb.shape == (42, S, S, 3) and t.xyz.shape == (42, S, S, 3) and t.K.shape == (42, 3, 3)
    # camera 2.5 diameters from the bbox centre, which sits on the optical axis
    c_cam = transform_points(t.poses, np.broadcast_to(duck.center, (42, 1, 3)))[:, 0]
    np.testing.assert_allclose(c_cam[:, 2], DISTANCE_FACTOR * duck.diameter, rtol=1e-9)
    for i in range(42):
        ys, xs = np.nonzero(t.mask[i])
        extent = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
        assert abs(extent - S / TEMPLATE_PAD) <= 2  # the projected bbox fills S / pad of the crop
        assert xs.min() >= 4 and ys.min() >= 4 and xs.max() <= S - 5 and ys.max() <= S - 5
        # xyz projects back onto its own pixel with the stored K and pose
        uvw = transform_points(t.poses[i], t.xyz[i][ys, xs].astype(np.float64)) @ t.K[i].T
        np.testing.assert_allclose(uvw[:, :2] / uvw[:, 2:], np.stack([xs, ys], 1), atol=0.05)
        np.testing.assert_allclose(uvw[:, 2], t.depth[i][ys, xs], atol=0.05)
    assert t.rgb[t.mask].mean(0)[2] < 60 and t.rgb[~t.mask].max() == 0  # yellow duck on black


def test_cache_hit_corrupt_and_atomic(duck, tmp_path):
    r = CountingRenderer()
    first = onboard(duck, size=48, cache_dir=tmp_path, renderer=r)
    assert r.calls == 42 and first.cache_path.is_file() and first.cache_path.parent == tmp_path
    assert [p.name for p in tmp_path.iterdir()] == [first.cache_path.name]  # no temporary files left
    second = onboard(duck, size=48, cache_dir=tmp_path, renderer=r)
    assert r.calls == 42  # cache hit: nothing rendered
    for f in ("rgb", "depth", "mask", "xyz", "K", "poses"):
        np.testing.assert_array_equal(getattr(first, f), getattr(second, f))
    assert second.mask.dtype == bool and second.rgb.dtype == np.uint8 and second.xyz.dtype == np.float32
    first.cache_path.write_bytes(first.cache_path.read_bytes()[:1000])  # truncated by a crash
    with pytest.warns(UserWarning, match="re-rendering"):
        third = onboard(duck, size=48, cache_dir=tmp_path, renderer=r)
    assert r.calls == 84
    np.testing.assert_array_equal(third.depth, first.depth)
    onboard(duck, size=48, cache_dir=tmp_path, renderer=r)
    assert r.calls == 84  # the re-rendered file is valid again
    other = onboard(duck, size=32, cache_dir=tmp_path, renderer=r)
    assert other.cache_path != first.cache_path and r.calls == 126  # another size: another entry


def test_default_cache_dir_from_env(duck, tmp_path, monkeypatch):
    monkeypatch.setenv("COOPPOSE_CACHE", str(tmp_path))
    t = onboard(duck, size=32)
    assert t.cache_path.parent == tmp_path / "templates"


def test_bad_arguments(duck, tmp_path):
    with pytest.raises(InputError, match="ObjectModel"):
        onboard("duck.ply", cache_dir=tmp_path)
    with pytest.raises(InputError, match="template size"):
        onboard(duck, size=8, cache_dir=tmp_path)


def test_cli_onboard(tmp_path, capsys):
    assert main(["onboard", str(bundled_mesh_path("duck")), "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "42 templates in" in out and str(tmp_path) in out
    assert main(["onboard", str(tmp_path / "missing.ply"), "--cache-dir", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err
