"""The pipeline with randomly initialised tiny networks: it runs end to end (no accuracy claim), batches match single calls,
checkpoints load from files or memory, and template tokens are cached next to the templates."""

import numpy as np
import pytest
import torch
from test_pipeline_oracles import make_scene

from cooppose.errors import CheckpointError
from cooppose.geometry.transforms import make_pose, so3_exp
from cooppose.models import build_model
from cooppose.models.checkpoint import save_model
from cooppose.objects import bundled_mesh_path, load_mesh
from cooppose.pipeline import CoarseQuery, PoseEstimator
from cooppose.pipeline.coarse import query_crop
from cooppose.pipeline.refine import make_view
from cooppose.render import Renderer

pytestmark = pytest.mark.usefixtures("one_thread_module")

T_A = make_pose(so3_exp(np.array([0.4, -1.2, 2.0])), np.array([30.0, -20.0, 600.0]))
T_B = make_pose(so3_exp(np.array([-1.9, 0.3, 0.5])), np.array([-120.0, 60.0, 700.0]))


# "micro" networks (64 px, 2+2 blocks) keep these tests fast; one test runs the shipped "tiny" size
MICRO = dict(img_size=64, enc_embed_dim=64, enc_depth=2, enc_num_heads=2, dec_embed_dim=64, dec_depth=2, dec_num_heads=2)
MICRO_KIND = {"coarse": dict(match_dim=32), "selection": {},
              "refiner": dict(dpt_hooks=(1, 2, 3, 3), dpt_layer_dims=(16, 16, 32, 32), dpt_feature_dim=16)}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {kind: build_model(kind, "tiny", **MICRO, **extra) for kind, extra in MICRO_KIND.items()}


@pytest.fixture(scope="module")
def setup(models, tmp_path_factory):
    renderer = Renderer()
    duck = load_mesh(bundled_mesh_path("duck"))
    scene = make_scene(renderer, [duck, duck], [T_A, T_B], seed=2)
    cache = tmp_path_factory.mktemp("cache")
    est = PoseEstimator.from_pretrained(coarse=models["coarse"], refiner=models["refiner"], selection=models["selection"],
                                        renderer=renderer, cache_dir=cache)
    return est, scene, duck, cache


@pytest.mark.parametrize("use_depth", [False, True], ids=["rgb", "rgbd"])
def test_random_networks_run_end_to_end(setup, use_depth):
    est, scene, duck, _ = setup
    depth = scene.depth if use_depth else None
    hyps = est.estimate(scene.rgb, scene.K, duck, box=scene.box(0), depth=depth, n_hypotheses=2, n_refine=1)
    assert len(hyps) == 2 and hyps[0].score >= hyps[1].score
    for h in hyps:
        assert h.stage == "select" and 0.0 <= h.score <= 1.0
        assert np.all(np.isfinite(h.T)) and h.t[2] > 0
        assert np.allclose(h.R @ h.R.T, np.eye(3), atol=1e-6)


@pytest.mark.slow
def test_tiny_networks_smoke(setup):
    _, scene, duck, cache = setup
    torch.manual_seed(1)
    tiny = {kind: build_model(kind, "tiny") for kind in ("coarse", "refiner", "selection")}
    est = PoseEstimator.from_pretrained(coarse=tiny["coarse"], refiner=tiny["refiner"], selection=tiny["selection"],
                                        renderer=setup[0].renderer, cache_dir=cache)
    (h,) = est.estimate(scene.rgb, scene.K, duck, box=scene.box(0), n_hypotheses=1, n_refine=1)
    assert est.coarse.size == 160 and np.all(np.isfinite(h.T)) and h.t[2] > 0 and 0.0 <= h.score <= 1.0


def test_network_batches_equal_single_calls(setup):
    est, scene, duck, _ = setup
    templates = est.onboard(duck)
    queries = []
    for i in range(2):
        rgb, crop = query_crop(scene.rgb, scene.K, scene.box(i), est.coarse.size)
        queries.append(CoarseQuery(rgb=rgb, crop=crop, templates=templates))
    batch = est.coarse.predict_batch(queries)
    for q, b in zip(queries, batch):
        one = est.coarse.predict(q)
        assert b.logits.shape == (42, 16, 17) and b.offsets.shape == (42, 16, 2)
        assert np.allclose(one.logits, b.logits, atol=1e-4) and np.allclose(one.offsets, b.offsets, atol=1e-5)
        assert np.abs(b.offsets).max() <= 0.5
    views = [make_view(est.renderer, duck, scene.rgb, scene.K, T, est.refiner.size) for T in (T_A, T_B)]
    preds = est.refiner.predict_batch(views)
    for v, p in zip(views, preds):
        one = est.refiner.predict(v)
        assert np.allclose(one.flow, p.flow, atol=1e-3) and np.allclose(one.confidence, p.confidence, atol=1e-4)
        assert np.allclose(p.confidence, p.flow_probability * p.certainty * p.sensitivity, rtol=1e-4, atol=1e-6)
    scores = est.selector.score_batch(views)
    assert np.allclose(scores, [est.selector.score(v) for v in views], atol=1e-5) and np.all((scores > 0) & (scores < 1))


def test_template_tokens_cached_next_to_templates(setup, models):
    est, scene, duck, cache = setup
    templates = est.onboard(duck)
    files = list(cache.glob(f"{templates.cache_path.stem}.coarse-tokens-*.pt"))
    assert len(files) == 1
    other = PoseEstimator.from_pretrained(coarse=models["coarse"], refiner=models["refiner"], selection=models["selection"],
                                          renderer=est.renderer, cache_dir=cache)
    fresh = other.coarse.template_tokens(other.onboard(duck))
    assert torch.equal(fresh, est.coarse.template_tokens(templates))


def test_from_pretrained_files_and_missing(models, tmp_path):
    with pytest.raises(CheckpointError, match="coarse_tiny.pt"):
        PoseEstimator.from_pretrained(tmp_path)
    for kind, m in models.items():
        save_model(m, tmp_path / f"{kind}_tiny.pt")
    est = PoseEstimator.from_pretrained(tmp_path)
    assert est.coarse.size == est.refiner.size == est.selector.size == 64
    with pytest.raises(CheckpointError, match="selection"):
        PoseEstimator.from_pretrained(tmp_path, selection=tmp_path / "refiner_tiny.pt")
    with pytest.raises(CheckpointError, match="refiner"):
        PoseEstimator.from_pretrained(coarse=models["coarse"], refiner=models["coarse"], selection=models["selection"])
