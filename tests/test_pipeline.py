"""The pipeline with oracle predictors recovers known poses (RGB and RGB-D); estimate_many equals one call per detection."""

import numpy as np
import pytest
from test_pipeline_oracles import OracleCoarse, OracleRefine, OracleSelect, make_scene, perturb, pose_errors

from cooppose.errors import CameraError, InputError, MeshError
from cooppose.geometry.transforms import make_pose, so3_exp
from cooppose.objects import ObjectModel, bundled_mesh_path, load_mesh
from cooppose.pipeline import PoseEstimator
from cooppose.pipeline.coarse import CoarseQuery, coarse_hypotheses, query_crop
from cooppose.pipeline.refine import make_view, refine_step
from cooppose.render import Renderer

pytestmark = pytest.mark.usefixtures("one_thread_module")

T_A = make_pose(so3_exp(np.array([0.4, -1.2, 2.0])), np.array([30.0, -20.0, 600.0]))
T_B = make_pose(so3_exp(np.array([-1.9, 0.3, 0.5])), np.array([-120.0, 60.0, 700.0]))


@pytest.fixture(scope="module")
def renderer():
    return Renderer()


@pytest.fixture(scope="module")
def duck():
    return load_mesh(bundled_mesh_path("duck"))


@pytest.fixture(scope="module")
def scene(renderer, duck):
    return make_scene(renderer, [duck], [T_A])


@pytest.fixture(scope="module")
def estimator(renderer, scene, tmp_path_factory):
    est = PoseEstimator(OracleCoarse(scene), OracleRefine(scene), OracleSelect(scene), renderer=renderer,
                        cache_dir=tmp_path_factory.mktemp("templates"))
    return est


@pytest.mark.parametrize("use_depth", [False, True], ids=["rgb", "rgbd"])
def test_coarse_with_exact_labels_recovers_pose(estimator, scene, duck, use_depth):
    templates = estimator.onboard(duck)
    box = scene.box()
    rgb_crop, crop = query_crop(scene.rgb, scene.K, box, 160)
    q = CoarseQuery(rgb=rgb_crop, crop=crop, templates=templates)
    depth = scene.depth if use_depth else None
    hyps = coarse_hypotheses(q, estimator.coarse.predict(q), duck, scene.K, box, k=3, depth=depth, debug=True)
    assert len(hyps) == 3 and [h.stage for h in hyps] == ["coarse"] * 3
    assert hyps[0].score >= hyps[1].score >= hyps[2].score
    for h in hyps:
        rot, trans = pose_errors(h.T, T_A)
        assert not h.debug["fallback"] and h.debug["inliers"].sum() >= 20
        assert rot < 2.0 and trans < 0.01 * T_A[2, 3], (rot, trans)


@pytest.mark.parametrize("use_depth", [False, True], ids=["rgb", "rgbd"])
def test_refine_with_true_flow_converges(estimator, renderer, scene, duck, use_depth):
    depth = scene.depth if use_depth else None
    for seed in range(2):
        T = perturb(T_A, 10.0, 20.0, seed)
        assert pose_errors(T, T_A)[0] == pytest.approx(10.0)
        for _ in range(3):
            view = make_view(renderer, duck, scene.rgb, scene.K, T, 160, depth)
            T = refine_step([view], [estimator.refiner.predict(view)], [duck.diameter])[0]
        rot, trans = pose_errors(T, T_A)
        assert rot < 0.5 and trans < 2.0, (seed, rot, trans)


@pytest.mark.parametrize("use_depth", [False, True], ids=["rgb", "rgbd"])
def test_estimate_best_first(estimator, scene, duck, use_depth):
    depth = scene.depth if use_depth else None
    hyps = estimator.estimate(scene.rgb, scene.K, duck, box=scene.box(), depth=depth, n_hypotheses=3, n_refine=2)
    assert len(hyps) == 3
    scores = [h.score for h in hyps]
    assert scores == sorted(scores, reverse=True) and all(h.stage == "select" for h in hyps)
    rot, trans = pose_errors(hyps[0].T, T_A)
    assert rot < 0.5 and trans < 2.0
    assert hyps[0].score > 0.99 and set(hyps[0].timings) == {"coarse", "refine", "select"}


def test_estimate_from_mask_and_without_selector(renderer, scene, duck, tmp_path):
    est = PoseEstimator(OracleCoarse(scene), OracleRefine(scene), None, renderer=renderer, cache_dir=tmp_path)
    hyps = est.estimate(scene.rgb, scene.K, duck, mask=scene.mask(), n_hypotheses=2, n_refine=1)
    assert [h.stage for h in hyps] == ["refine", "refine"] and hyps[0].score >= hyps[1].score
    assert pose_errors(hyps[0].T, T_A)[0] < 1.0


def test_estimate_many_equals_one_call_per_detection(renderer, duck, tmp_path):
    two = make_scene(renderer, [duck, duck], [T_A, T_B], seed=1)
    est = PoseEstimator(OracleCoarse(two), OracleRefine(two), OracleSelect(two), renderer=renderer, cache_dir=tmp_path)
    dets = [(duck, two.box(0)), (duck, two.mask(1))]
    many = est.estimate_many(two.rgb, two.K, dets, n_hypotheses=2, n_refine=1)
    single = [est.estimate(two.rgb, two.K, duck, box=two.box(0), n_hypotheses=2, n_refine=1),
              est.estimate(two.rgb, two.K, duck, mask=two.mask(1), n_hypotheses=2, n_refine=1)]
    for hs_many, hs_one, T_gt in zip(many, single, [T_A, T_B]):
        assert [h.template_id for h in hs_many] == [h.template_id for h in hs_one]
        for a, b in zip(hs_many, hs_one):
            assert np.allclose(a.T, b.T, atol=1e-9) and a.score == pytest.approx(b.score)
        assert pose_errors(hs_many[0].T, T_gt)[0] < 1.0


def test_bad_inputs_raise_clear_errors(estimator, scene, duck):
    box = scene.box()
    with pytest.raises(InputError, match="uint8"):
        estimator.estimate(scene.rgb.astype(np.float32) / 255, scene.K, duck, box=box)
    with pytest.raises(InputError, match="box"):
        estimator.estimate(scene.rgb, scene.K, duck, box=(900, 10, 990, 90))
    with pytest.raises(InputError, match="box .* or an instance mask"):
        estimator.estimate(scene.rgb, scene.K, duck)
    with pytest.raises(InputError, match="non-empty"):
        estimator.estimate(scene.rgb, scene.K, duck, mask=np.zeros(scene.rgb.shape[:2], bool))
    with pytest.raises(InputError, match="metres"):
        estimator.estimate(scene.rgb, scene.K, duck, box=box, depth=scene.depth / 1000.0)
    with pytest.raises(InputError, match="all zero"):
        estimator.estimate(scene.rgb, scene.K, duck, box=box, depth=np.zeros_like(scene.depth))
    with pytest.raises(InputError, match="pair"):
        estimator.estimate_many(scene.rgb, scene.K, [duck])
    tiny = ObjectModel.from_arrays(vertices=duck.vertices / 1000.0, faces=duck.faces, name="duck_m")
    with pytest.raises(MeshError, match="units='m'"):
        estimator.estimate(scene.rgb, scene.K, tiny, box=box)
    with pytest.raises(CameraError, match="principal point"):
        estimator.estimate(scene.rgb, scene.K * np.array([[1, 1, 10], [1, 1, 10], [1, 1, 1]]), duck, box=box)


class NoMatchCoarse(OracleCoarse):
    """A coarse predictor that finds no match at all: every pose must come from the box fallback."""

    def predict(self, query):
        m = super().predict(query)
        m.logits[..., :-1] = 0.0
        m.logits[..., -1] = 20.0
        return m


def test_box_fallback_when_no_correspondences(renderer, scene, duck, tmp_path):
    from cooppose.data.targets import nearest_template
    from cooppose.geometry.transforms import project, transform_points

    est = PoseEstimator(NoMatchCoarse(scene), OracleRefine(scene), None, renderer=renderer, cache_dir=tmp_path)
    templates = est.onboard(duck)
    t = nearest_template(templates.poses, T_A, duck.center)
    rgb_crop, crop = query_crop(scene.rgb, scene.K, scene.box(), 160)
    q = CoarseQuery(rgb=rgb_crop, crop=crop, templates=templates)
    matches = est.coarse.predict(q)
    matches.logits[:, :, -1] = np.where(np.arange(42) == t, 0.0, 20.0)[:, None]  # rank the nearest view first
    (h,) = coarse_hypotheses(q, matches, duck, scene.K, scene.box(), k=1, debug=True)
    assert h.debug["fallback"] and h.template_id == t and len(h.debug["q"]) == 0
    box = scene.box()
    centre = project(scene.K, transform_points(h.T, duck.center[None]))[0]
    assert np.allclose(centre, [(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], atol=1e-6)
    def view_dir(T):  # object centre -> camera, in the object frame (the roll about it is unknown to the fallback)
        d = -T[:3, :3].T @ T[:3, 3] - duck.center
        return d / np.linalg.norm(d)

    angle = np.degrees(np.arccos(np.clip(view_dir(h.T) @ view_dir(T_A), -1, 1)))
    assert angle < 25.0 and abs(h.t[2] / T_A[2, 3] - 1) < 0.25  # the nearest of 42 views, depth from the box size
    hyps = est.estimate(scene.rgb, scene.K, duck, box=box, n_hypotheses=2, n_refine=1)
    assert all(np.all(np.isfinite(x.T)) and x.t[2] > 0 for x in hyps)


def test_agrees_with_box_accepts_the_true_pose_and_rejects_poses_off_the_detection(scene, duck):
    from cooppose.pipeline.coarse import agrees_with_box

    box = scene.box()
    assert agrees_with_box(T_A, duck, scene.K, box)
    far = T_A.copy()
    far[2, 3] *= 4.0  # 4x deeper: projects to a quarter of the box side
    assert not agrees_with_box(far, duck, scene.K, box)
    near = T_A.copy()
    near[2, 3] *= 0.25  # 4x closer: four times the box side
    assert not agrees_with_box(near, duck, scene.K, box)
    side = T_A.copy()
    side[0, 3] += 2.0 * duck.diameter  # right size, beside the detection
    assert not agrees_with_box(side, duck, scene.K, box)


def test_coarse_rejects_a_solved_pose_that_misses_the_box(estimator, scene, duck):
    """Matches that all point to one wrong template patch give a PnP pose off the detection: the box fallback wins."""
    templates = estimator.onboard(duck)
    box = scene.box()
    rgb_crop, crop = query_crop(scene.rgb, scene.K, box, 160)
    q = CoarseQuery(rgb=rgb_crop, crop=crop, templates=templates)
    matches = estimator.coarse.predict(q)
    (good,) = coarse_hypotheses(q, matches, duck, scene.K, box, k=1, debug=True)
    assert not good.debug["fallback"]
    t = good.template_id
    shrunk = (box[0] + 0.45 * (box[2] - box[0]), box[1] + 0.45 * (box[3] - box[1]),
              box[0] + 0.55 * (box[2] - box[0]), box[1] + 0.55 * (box[3] - box[1]))  # a detection 10x smaller
    (h,) = coarse_hypotheses(q, matches, duck, scene.K, shrunk, k=1, debug=True)
    assert h.debug["fallback"] and h.template_id == t
