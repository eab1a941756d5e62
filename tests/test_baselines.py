"""Classical baselines (SIFT + PnP, FPFH + ICP) on a rendered, textured, asymmetric procedural object."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cooppose.errors import InputError
from cooppose.eval import baselines as B
from cooppose.geometry.transforms import look_at, make_pose, random_rotations, rotation_error_deg, so3_exp
from cooppose.objects import ObjectModel

K = np.array([[600.0, 0.0, 320.0], [0.0, 600.0, 240.0], [0.0, 0.0, 1.0]])
SIZE = (480, 640)

# unit-cube corners of each face (outward normal, counter-clockwise seen from outside)
_FACES = [
    [(1, 0, 0), (1, 1, 0), (1, 1, 1), (1, 0, 1)],
    [(0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, 0)],
    [(0, 1, 0), (0, 1, 1), (1, 1, 1), (1, 1, 0)],
    [(0, 0, 0), (1, 0, 0), (1, 0, 1), (0, 0, 1)],
    [(0, 0, 1), (1, 0, 1), (1, 1, 1), (0, 1, 1)],
    [(0, 0, 0), (0, 1, 0), (1, 1, 0), (1, 0, 0)],
]


def _photo(name: str, shape: tuple[int, int]) -> np.ndarray:
    """A photo shipped with scikit-image (not a pose-benchmark object), resized to (H, W)."""
    data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(cv2.resize(getattr(data, name)(), (shape[1], shape[0]), interpolation=cv2.INTER_AREA))


def textured_block() -> ObjectModel:
    """A big box with a small box on one corner of its top (no symmetry), every face its own cell of a 4 x 3 photo atlas."""
    parts = [((-40.0, -25.0, -15.0), (80.0, 50.0, 30.0)), ((15.0, 5.0, 15.0), (25.0, 20.0, 25.0))]
    verts, faces, uvs = [], [], []
    cell = 0
    for origin, extent in parts:
        for quad in _FACES:
            base = len(verts)
            col, row = cell % 4, cell // 4
            for k, corner in enumerate(quad):
                verts.append(np.array(origin) + np.array(corner) * np.array(extent))
                cu, cv = [(0, 0), (1, 0), (1, 1), (0, 1)][k]
                uvs.append(((col + 0.05 + 0.9 * cu) / 4, (row + 0.05 + 0.9 * cv) / 3))
            faces += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
            cell += 1
    texture = _photo("astronaut", (512, 512))
    return ObjectModel.from_arrays(np.array(verts), np.array(faces), uv=np.array(uvs), texture=texture, name="block")


@pytest.fixture(scope="module")
def block() -> ObjectModel:
    return textured_block()


@pytest.fixture(scope="module")
def renderer():
    from cooppose.render import Renderer

    return Renderer()


def _view(direction, roll_deg: float, distance: float = 500.0) -> np.ndarray:
    """T_cam_obj of a camera `distance` mm from the block's centre along `direction`, rolled about its axis."""
    d = np.asarray(direction, dtype=np.float64)
    centre = np.array([0.0, 0.0, 12.5])
    T = look_at(centre + distance * d / np.linalg.norm(d), centre)
    return make_pose(so3_exp(np.array([0.0, 0.0, np.radians(roll_deg)])), np.zeros(3)) @ T


def _scene(renderer, obj, T):
    """Lit RGB on a photo background, depth with a wall 200 mm behind the object, and the object's box."""
    from cooppose.render import Light

    r = renderer.render(obj, K, T, SIZE, light=Light(direction=(0.3, -0.5, -1.0)))
    rgb = np.where(r.mask[..., None], r.rgb, _photo("coffee", SIZE))
    depth = np.where(r.mask, r.depth, T[2, 3] + 200.0).astype(np.float32)
    ys, xs = np.nonzero(r.mask)
    box = (xs.min() - 0.5, ys.min() - 0.5, xs.max() + 0.5, ys.max() + 0.5)
    return rgb, depth, box


def _errors(h, T):
    return float(rotation_error_deg(h.R, T[:3, :3])), float(np.linalg.norm(h.t - T[:3, 3]))


# ---------------------------------------------------------------------------------------------- FPFH + ICP
def test_fpfh_is_invariant_to_rigid_motion(block):
    rng = np.random.default_rng(1)
    pts, nrm = B.sample_surface(block, 4000, rng)
    pts, nrm = B.voxel_downsample(pts, 4.0, nrm)
    R = random_rotations(1, rng)[0]
    f1 = B.fpfh(pts, nrm, 20.0)
    f2 = B.fpfh(pts @ R.T + np.array([5.0, -7.0, 300.0]), nrm @ R.T, 20.0)
    assert f1.shape == (len(pts), 33)
    np.testing.assert_allclose(f1, f2, atol=1e-6)
    # each of the three histograms of an SPFH sums to 100: the weighted FPFH sums stay positive and bounded
    assert np.all(f1.sum(1) > 0) and np.all(f1[:, :11].sum(1) <= 200 + 1e-6)


def test_icp_converges_from_a_small_offset(block):
    rng = np.random.default_rng(2)
    pts, nrm = B.sample_surface(block, 6000, rng)
    T_true = make_pose(so3_exp(np.array([0.05, -0.04, 0.03])), np.array([3.0, -2.0, 4.0]))
    src = (pts[:3000] - T_true[:3, 3]) @ T_true[:3, :3]  # T_true @ src = pts[:3000]
    T = B.icp_point_to_plane(src, pts, nrm, np.eye(4), max_dist=15.0, iterations=50)
    assert rotation_error_deg(T[:3, :3], T_true[:3, :3]) < 0.5 and np.linalg.norm(T[:3, 3] - T_true[:3, 3]) < 1.0


@pytest.fixture(scope="module")
def fpfh_icp(block):
    est = B.FpfhIcpBaseline()
    est.onboard(block)
    return est


@pytest.mark.parametrize("direction, roll, n", [((1.0, 0.6, 1.3), 30.0, 1), ((-0.5, 1.0, 0.8), -100.0, 2)])
def test_fpfh_icp_recovers_a_rendered_pose(block, renderer, fpfh_icp, direction, roll, n):
    T = _view(direction, roll)
    rgb, depth, box = _scene(renderer, block, T)
    hyps = fpfh_icp.estimate(rgb, K, block, box=box, depth=depth, n_hypotheses=n)
    assert 1 <= len(hyps) <= n and hyps[0].score >= hyps[-1].score
    rot, trans = _errors(hyps[0], T)
    assert rot < 2.0 and trans < 3.0, (rot, trans)
    assert hyps[0].score > 0.9  # nearly every scene point lies on the model


def test_fpfh_needs_depth(block):
    with pytest.raises(InputError, match="depth"):
        B.FpfhIcpBaseline().estimate(np.zeros((480, 640, 3), np.uint8), K, block, box=(100, 100, 200, 200))


# ---------------------------------------------------------------------------------------------- SIFT + PnP
@pytest.fixture(scope="module")
def sift(block, tmp_path_factory):
    est = B.SiftPnPBaseline(cache_dir=str(tmp_path_factory.mktemp("templates")))
    est.onboard(block)
    return est


def _near_template(k: int, off_deg: float) -> np.ndarray:
    """Icosphere (level 0) template direction k turned by off_deg about a perpendicular axis."""
    from cooppose.render.viewpoints import icosphere_directions

    d = icosphere_directions(0)[k]
    axis = np.cross(d, [0.3, 0.5, 0.8])
    return so3_exp(axis / np.linalg.norm(axis) * np.radians(off_deg)) @ d


@pytest.mark.parametrize("k, roll", [(3, 20.0), (11, -75.0)])
def test_sift_pnp_recovers_a_rendered_pose(block, renderer, sift, k, roll):
    T = _view(_near_template(k, 10.0), roll)
    rgb, _, box = _scene(renderer, block, T)
    hyps = sift.estimate(rgb, K, block, box=box, n_hypotheses=3)
    assert 1 <= len(hyps) <= 3 and all(a.score >= b.score for a, b in zip(hyps, hyps[1:]))
    rot, trans = _errors(hyps[0], T)
    assert rot < 3.0 and trans < 10.0, (rot, trans)
    assert 0 < hyps[0].score <= 1 and hyps[0].stage == "coarse" and 0 <= hyps[0].template_id < 42


def test_sift_estimate_many_and_bad_input(block, renderer, sift):
    T = _view(_near_template(3, 10.0), 20.0)
    rgb, _, box = _scene(renderer, block, T)
    mask = np.zeros(SIZE, dtype=bool)
    mask[int(box[1]) + 1:int(box[3]), int(box[0]) + 1:int(box[2])] = True
    many = sift.estimate_many(rgb, K, [(block, box), (block, mask)])
    assert len(many) == 2 and all(len(h) == 1 for h in many)
    assert _errors(many[1][0], T)[0] < 3.0  # a mask is a detection too (its box is used)
    with pytest.raises(InputError, match="box"):
        sift.estimate(rgb, K, block, box=None)
    with pytest.raises(InputError, match="pair"):
        sift.estimate_many(rgb, K, [block])


def test_sift_without_matches_falls_back_to_the_box_pose(block, renderer, sift):
    T = _view(_near_template(3, 10.0), 20.0)
    _, _, box = _scene(renderer, block, T)
    blank = np.full((480, 640, 3), 128, np.uint8)  # no keypoints at all
    h = sift.estimate(blank, K, block, box=box)
    assert len(h) == 1 and h[0].score == 0.0
    # the fallback puts the object's centre on the ray through the box centre, in front of the camera
    c = h[0].R @ block.center + h[0].t
    u, v = (K @ c)[:2] / c[2]
    assert abs(u - (box[0] + box[2]) / 2) < 1 and abs(v - (box[1] + box[3]) / 2) < 1 and c[2] > 0
    strict = B.SiftPnPBaseline(fallback=False, cache_dir=sift.cache_dir)
    assert strict.estimate(blank, K, block, box=box) == []
