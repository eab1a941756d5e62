"""Pictures: colour codings, pose overlays, the coarse and refiner panels written by `estimate --save-debug`."""

import cv2
import numpy as np
import pytest
from test_pipeline_oracles import OracleCoarse, OracleRefine, OracleSelect, make_scene

from cooppose import viz
from cooppose.geometry.transforms import make_pose, so3_exp
from cooppose.objects import bundled_mesh_path, load_mesh
from cooppose.pipeline import PoseEstimator
from cooppose.render import Renderer

pytestmark = pytest.mark.usefixtures("one_thread_module")

T_A = make_pose(so3_exp(np.array([0.4, -1.2, 2.0])), np.array([30.0, -20.0, 600.0]))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    renderer = Renderer()
    duck = load_mesh(bundled_mesh_path("duck"))
    scene = make_scene(renderer, [duck], [T_A])
    est = PoseEstimator(OracleCoarse(scene), OracleRefine(scene), OracleSelect(scene), renderer=renderer,
                        cache_dir=tmp_path_factory.mktemp("t"))
    return renderer, duck, scene, est


def test_flow_colour_wheel():
    flow = np.zeros((2, 4, 4), np.float32)
    flow[0, 0, 0], flow[0, 0, 1], flow[1, 0, 2] = 2.0, -2.0, 2.0
    valid = np.ones((4, 4), bool)
    valid[3, 3] = False
    img = viz.flow_to_color(flow, valid, max_norm=2.0)
    assert img.dtype == np.uint8 and img.shape == (4, 4, 3)
    assert tuple(img[1, 1]) == (255, 255, 255) and tuple(img[3, 3]) == (0, 0, 0)  # no motion: white; invalid: black
    right, left, down = (img[0, i].astype(int) for i in range(3))
    assert right.min() == left.min() == down.min() == 0  # full saturation at max_norm
    assert np.abs(right - left).sum() > 200 and np.abs(right - down).sum() > 200  # directions get distinct hues


def test_colorize_is_monotone_viridis():
    img = viz.colorize(np.array([[0.0, 0.5, 1.0]]), vmax=1.0)
    lum = img[0].astype(float) @ [0.299, 0.587, 0.114]
    assert lum[0] < lum[1] < lum[2] and img[0, 2, 0] > 200 and img[0, 2, 2] < 80  # dark purple -> yellow


def test_overlay_at_true_pose_shows_the_render(world):
    renderer, duck, scene, _ = world
    out = viz.overlay_pose(scene.rgb, duck, scene.K, T_A, renderer=renderer, alpha=1.0)
    inside = cv2.erode(scene.mask().astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)  # off the 2 px contour
    assert np.array_equal(out[inside], scene.rgb[inside])  # the render equals the (rendered) object
    far = ~cv2.dilate(scene.mask().astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert np.array_equal(out[far], scene.rgb[far])
    ring = ~inside & ~far
    assert np.any(np.all(out[ring] == viz.GREEN, axis=-1))  # the contour


def test_panels_from_debug_estimate(world, tmp_path):
    renderer, duck, scene, est = world
    (h,) = est.estimate(scene.rgb, scene.K, duck, box=scene.box(), n_hypotheses=1, n_refine=2, debug=True)
    panel = viz.coarse_panel(h.debug["coarse"])
    S = est.coarse.size
    assert panel.shape == (S + viz.CAPTION_PX, 2 * S, 3)
    green = np.all(panel == viz.GREEN, axis=-1).sum()
    red = np.all(panel == viz.RED, axis=-1).sum()
    assert green > 100 and red == 0  # exact matches: every correspondence is an inlier
    assert len(h.debug["refine"]) == 2
    rp = viz.refine_panel(h.debug["refine"][0], renderer, duck)
    assert rp.shape == (2 * (S + viz.CAPTION_PX), 4 * S, 3)
    path = viz.save_png(tmp_path / "sub" / "refine.png", rp)
    back = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(back, rp) and [p.name for p in path.parent.iterdir()] == ["refine.png"]
