"""Ground-truth targets checked against exact ray casting of boxes (object and occluder) at chosen poses."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from cooppose.data.targets import (
    certainty_targets,
    choose_template,
    coarse_labels,
    flow_targets,
    nearest_template,
    patch_centers,
    patch_pixels,
    perturb_pose,
    refiner_crop,
    selection_label,
)
from cooppose.errors import InputError
from cooppose.geometry.transforms import look_at, make_pose, project, transform_points

S = 160
HALF = np.array([40.0, 30.0, 20.0])  # object: a 80 x 60 x 40 mm box centred at its origin
DIAM = float(2 * np.linalg.norm(HALF))
K = np.array([[600.0, 0.0, 79.5], [0.0, 620.0, 80.5], [0.0, 0.0, 1.0]])


def raycast(K, boxes, uv):
    """Exact hits of the pixel rays uv (N, 2) on boxes [(T_cam_box, half_extents)]: depth (N,), box id (N,), xyz in box frame (N, 3)."""
    d = np.linalg.solve(K, np.c_[uv, np.ones(len(uv))].T).T  # rays with z = 1
    best = np.full(len(uv), np.inf)
    ids = np.full(len(uv), -1)
    xyz = np.zeros((len(uv), 3))
    for i, (T, h) in enumerate(boxes):
        R, t = T[:3, :3], T[:3, 3]
        o = -R.T @ t
        db = d @ R  # ray directions in the box frame
        db = np.where(np.abs(db) < 1e-12, 1e-12, db)
        t1, t2 = (-h - o) / db, (h - o) / db
        tmin, tmax = np.minimum(t1, t2).max(1), np.maximum(t1, t2).min(1)
        hit = (tmax >= tmin) & (tmin > 0) & (tmin < best)
        best = np.where(hit, tmin, best)
        ids = np.where(hit, i, ids)
        xyz = np.where(hit[:, None], o + tmin[:, None] * db, xyz)
    return np.where(ids >= 0, best, 0.0), ids, xyz


def render(K, boxes, size=S):
    """Depth (S, S), box id (S, S) and box-frame xyz (S, S, 3) at every pixel centre."""
    u, v = np.meshgrid(np.arange(size, dtype=float), np.arange(size, dtype=float))
    depth, ids, xyz = raycast(K, boxes, np.c_[u.ravel(), v.ravel()])
    return depth.reshape(size, size), ids.reshape(size, size), xyz.reshape(size, size, 3)


def pose(rotvec_deg, t):
    return make_pose(Rotation.from_rotvec(np.radians(rotvec_deg)).as_matrix(), np.asarray(t, float))


T_Q = pose([25.0, -35.0, 10.0], [5.0, -3.0, 400.0])


def test_patch_convention_hand_computed():
    assert np.allclose(patch_centers(32, 16), [[7.5, 7.5], [23.5, 7.5], [7.5, 23.5], [23.5, 23.5]])
    assert np.allclose(patch_pixels([3, 0], [[0.5, -0.5], [0.0, 0.0]], 32, 16), [[31.5, 15.5], [7.5, 7.5]])
    with pytest.raises(InputError):
        patch_centers(30, 16)
    with pytest.raises(InputError):
        patch_pixels([4], [[0.0, 0.0]], 32, 16)


def test_coarse_labels_identity_template_maps_each_patch_to_itself():
    depth, ids, xyz = render(K, [(T_Q, HALF)])
    labels, offsets = coarse_labels(xyz, ids == 0, K, T_Q, depth, 16, 0.02 * DIAM)
    Np = (S // 16) ** 2
    matched = labels < Np
    assert matched.sum() >= 20
    assert np.array_equal(labels[matched], np.arange(Np)[matched])
    assert np.abs(offsets[matched]).max() < 0.01  # the patch centre itself (mean of its 2x2 central pixels)
    assert np.all(offsets[~matched] == 0)
    on_object = ids[7::16, 7::16].ravel() == 0
    assert np.all(on_object[matched])
    assert labels.dtype == np.int64 and offsets.dtype == np.float32


def test_coarse_labels_reproject_into_their_template_patch():
    K_T = np.array([[700.0, 0.0, 82.0], [0.0, 700.0, 77.0], [0.0, 0.0, 1.0]])
    T_T = pose([40.0, -20.0, 60.0], [-4.0, 6.0, 520.0])
    q_depth, q_ids, q_xyz = render(K, [(T_Q, HALF)])
    t_depth, t_ids, _ = render(K_T, [(T_T, HALF)])
    tol = 0.02 * DIAM
    labels, offsets = coarse_labels(q_xyz, q_ids == 0, K_T, T_T, t_depth, 16, tol)
    Np = (S // 16) ** 2
    matched = labels < Np
    assert matched.sum() >= 15
    # the exact object point at each query patch centre, projected into the template
    _, c_ids, c_xyz = raycast(K, [(T_Q, HALF)], patch_centers(S, 16))
    Xt = transform_points(T_T, c_xyz)
    m_true = project(K_T, Xt)
    m_pred = patch_pixels(labels[matched], offsets[matched], S, 16)
    assert np.abs(m_pred - m_true[matched]).max() < 0.5  # sub-pixel: well within a patch
    cell = np.floor((m_true[matched] + 0.5) / 16).astype(int)
    assert np.mean(cell[:, 1] * 10 + cell[:, 0] == labels[matched]) > 0.9  # others sit on a patch border
    # every matched point is truly visible in the template (exact ray cast at its template pixel)
    d_true, t_hit, _ = raycast(K_T, [(T_T, HALF)], m_true[matched])
    assert np.all(t_hit == 0) and np.abs(d_true - Xt[matched, 2]).max() < 1e-6
    # and most patch centres on the object and visible in the template are matched
    d_all, hit_all, _ = raycast(K_T, [(T_T, HALF)], m_true)
    visible = (c_ids == 0) & (hit_all == 0) & (np.abs(d_all - Xt[:, 2]) < 1e-6)
    inside = ((m_true > 2) & (m_true < S - 3)).all(1)
    assert np.mean(matched[visible & inside]) > 0.8


def test_coarse_labels_no_match_for_hidden_faces_and_template_occlusion():
    q_depth, q_ids, q_xyz = render(K, [(T_Q, HALF)])
    Np = (S // 16) ** 2
    # a template looking from the opposite side sees none of the query's faces
    cam_in_obj = -T_Q[:3, :3].T @ T_Q[:3, 3]
    T_back = look_at(-cam_in_obj, np.zeros(3))
    t_depth, _, _ = render(K, [(T_back, HALF)])
    labels, _ = coarse_labels(q_xyz, q_ids == 0, K, T_back, t_depth, 16, 0.02 * DIAM)
    assert np.all(labels == Np)
    # a template whose left half is covered by something 100 mm nearer: matches survive only on the right
    occluded = q_depth.copy()
    occluded[:, :80] = np.where(occluded[:, :80] > 0, occluded[:, :80] - 100.0, 0.0)
    labels, _ = coarse_labels(q_xyz, q_ids == 0, K, T_Q, occluded, 16, 0.02 * DIAM)
    cols = np.arange(Np) % 10
    assert np.all(labels[cols < 5] == Np) and np.any(labels[cols >= 5] < Np)


def test_coarse_labels_rejects_bad_input():
    depth, ids, xyz = render(K, [(T_Q, HALF)])
    with pytest.raises(InputError):
        coarse_labels(xyz[:150, :150], ids[:150, :150] == 0, K, T_Q, depth, 16, 1.0)
    with pytest.raises(InputError):
        coarse_labels(xyz, (ids == 0)[:, :100], K, T_Q, depth, 16, 1.0)
    with pytest.raises(InputError):
        coarse_labels(xyz, ids == 0, K, T_Q[:3], depth, 16, 1.0)
    with pytest.raises(InputError):
        coarse_labels(xyz, ids == 0, K, T_Q, depth, 16, 0.0)


def test_flow_hand_computed_for_a_sideways_shift():
    T_front = pose([0.0, 0.0, 0.0], [0.0, 0.0, 400.0])  # the -z face is fronto-parallel at z = 380
    T_gt = T_front.copy()
    T_gt[0, 3] += 19.0
    _, ids, xyz = render(K, [(T_front, HALF)])
    flow, valid = flow_targets(xyz, ids == 0, K, T_gt)
    assert flow.shape == (2, S, S) and flow.dtype == np.float32
    assert np.array_equal(valid, ids == 0)
    assert np.allclose(flow[0][valid], K[0, 0] * 19.0 / 380.0, atol=1e-4)
    assert np.allclose(flow[1][valid], 0.0, atol=1e-4)
    assert np.all(flow[:, ~valid] == 0)


def test_flow_warps_rendered_points_onto_the_query_points():
    rng = np.random.default_rng(3)
    T_gt = T_Q
    T_init = perturb_pose(T_gt, rng, (8.0, 8.0, 30.0), 10.0)
    _, r_ids, r_xyz = render(K, [(T_init, HALF)])
    flow, valid = flow_targets(r_xyz, r_ids == 0, K, T_gt)
    v, u = np.nonzero(valid)
    q = np.c_[u + flow[0, v, u], v + flow[1, v, u]]
    d, hit, q_xyz = raycast(K, [(T_gt, HALF)], q)
    z_gt = transform_points(T_gt, r_xyz[v, u])[:, 2]
    seen = (hit == 0) & (np.abs(d - z_gt) < 1e-6)
    assert seen.mean() > 0.5
    assert np.abs(q_xyz[seen] - r_xyz[v, u][seen]).max() < 1e-5  # the query shows the same point at p + flow
    # on the raster query map, bilinear xyz at p + flow reprojects within 1 px of p + flow (away from face edges)
    _, q_ids, q_raster = render(K, [(T_gt, HALF)])
    qs = q[seen]
    inside = ((qs >= 1) & (qs < S - 2)).all(1)
    qs = qs[inside]
    i0 = np.floor(qs).astype(int)
    w = qs - i0
    corners = [(0, 0), (1, 0), (0, 1), (1, 1)]
    weights = [(1 - w[:, 0]) * (1 - w[:, 1]), w[:, 0] * (1 - w[:, 1]), (1 - w[:, 0]) * w[:, 1], w[:, 0] * w[:, 1]]
    Xs = np.stack([q_raster[i0[:, 1] + dy, i0[:, 0] + dx] for dx, dy in corners])  # (4, n, 3)
    on = np.stack([q_ids[i0[:, 1] + dy, i0[:, 0] + dx] == 0 for dx, dy in corners]).all(0)
    flat = np.linalg.norm(Xs - Xs.mean(0), axis=-1).max(0) < 3.0  # the 4 pixels see one face (< 3 mm apart)
    X = sum(wt[:, None] * Xk for wt, Xk in zip(weights, Xs))
    ok = on & flat
    assert ok.mean() > 0.8
    assert np.abs(project(K, transform_points(T_gt, X[ok])) - qs[ok]).max() < 1.0


def test_certainty_is_zero_behind_an_occluder_and_out_of_the_crop():
    T_gt = pose([20.0, -30.0, 0.0], [0.0, 0.0, 400.0])
    occluder = (make_pose(np.eye(3), np.array([-45.0, 0.0, 300.0])), np.array([40.0, 80.0, 5.0]))  # covers the left part
    q_depth, q_ids, _ = render(K, [(T_gt, HALF), occluder])
    assert (q_ids == 1).sum() > 1000 and (q_ids == 0).sum() > 1000
    T_init = pose([23.0, -27.0, 2.0], [4.0, -3.0, 410.0])
    _, r_ids, r_xyz = render(K, [(T_init, HALF)])
    cert = certainty_targets(r_xyz, r_ids == 0, K, T_gt, q_depth, 0.02 * DIAM)
    assert cert.dtype == np.float32 and set(np.unique(cert)) <= {0.0, 1.0}
    flow, valid = flow_targets(r_xyz, r_ids == 0, K, T_gt)
    v, u = np.nonzero(valid)
    q = np.c_[u + flow[0, v, u], v + flow[1, v, u]]
    d, hit, _ = raycast(K, [(T_gt, HALF), occluder], q)
    z_gt = transform_points(T_gt, r_xyz[v, u])[:, 2]
    behind = hit == 1
    visible = (hit == 0) & (np.abs(d - z_gt) < 1e-6)
    assert behind.sum() > 500 and visible.sum() > 500
    pix = np.rint(q).astype(int).clip(0, S - 1)
    assert np.all(cert[v, u][q_ids[pix[:, 1], pix[:, 0]] == 1] == 0)  # landing on the occluder: never certain
    assert np.mean(cert[v, u][behind] == 0) > 0.97  # occluded ones, up to nearest-pixel sampling at its edge
    assert cert[v, u][visible].mean() > 0.97  # visible ones are, up to nearest-pixel depth sampling at edges
    assert np.all(cert[~valid] == 0)
    # pushed far to the right, the object leaves the query crop: no certainty there
    T_out = T_gt.copy()
    T_out[0, 3] += 150.0
    out_depth, _, _ = render(K, [(T_out, HALF)])
    cert_out = certainty_targets(r_xyz, r_ids == 0, K, T_out, out_depth, 0.02 * DIAM)
    flow_out, _ = flow_targets(r_xyz, r_ids == 0, K, T_out)
    leaves = valid & (np.arange(S)[None, :] + flow_out[0] > S - 0.5)
    assert leaves.sum() > 100 and np.all(cert_out[leaves] == 0)


def test_selection_label_thresholds_and_symmetry():
    T_gt = pose([10.0, 20.0, 30.0], [10.0, 20.0, 500.0])
    assert selection_label(T_gt, T_gt, DIAM)

    def turned(deg):
        return make_pose(Rotation.from_rotvec(np.radians([0, deg, 0])).as_matrix() @ T_gt[:3, :3], T_gt[:3, 3])

    assert selection_label(turned(4.9), T_gt, DIAM) and not selection_label(turned(5.1), T_gt, DIAM)
    assert selection_label(turned(9.0), T_gt, DIAM, rot_thresh_deg=10.0)
    shifted = T_gt.copy()
    shifted[2, 3] += 0.099 * DIAM
    assert selection_label(shifted, T_gt, DIAM)
    shifted[2, 3] += 0.002 * DIAM
    assert not selection_label(shifted, T_gt, DIAM)
    flip = pose([0.0, 0.0, 180.0], [0.0, 0.0, 0.0])  # the box is symmetric under a half turn about its z axis
    T_flip = T_gt @ flip
    assert not selection_label(T_flip, T_gt, DIAM)
    assert selection_label(T_flip, T_gt, DIAM, symmetries=[np.eye(4), flip])
    with pytest.raises(InputError):
        selection_label(T_gt, T_gt, 0.0)


def test_perturb_pose_statistics_and_determinism():
    T_gt = pose([10.0, 20.0, 30.0], [10.0, 20.0, 600.0])
    rng = np.random.default_rng(0)
    inits = np.stack([perturb_pose(T_gt, rng) for _ in range(3000)])
    dt = inits[:, :3, 3] - T_gt[:3, 3]
    assert np.allclose(dt.std(0), [10.0, 10.0, 50.0], rtol=0.08)
    R_noise = inits[:, :3, :3] @ T_gt[:3, :3].T
    euler = Rotation.from_matrix(R_noise).as_euler("xyz", degrees=True)
    assert np.allclose(euler.std(0), 15.0, rtol=0.08)
    assert np.allclose(np.linalg.det(inits[:, :3, :3]), 1.0)
    a = perturb_pose(T_gt, np.random.default_rng(5))
    b = perturb_pose(T_gt, np.random.default_rng(5))
    assert np.array_equal(a, b)
    near = pose([0.0, 0.0, 0.0], [0.0, 0.0, 60.0])
    zs = [perturb_pose(near, rng)[2, 3] for _ in range(300)]
    assert min(zs) >= 30.0


def test_refiner_crop_is_centred_and_covers_the_model():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-HALF, HALF, (500, 3)) + np.array([10.0, 0.0, 0.0])  # bbox centre not at the origin
    T = pose([30.0, 10.0, -20.0], [30.0, -20.0, 450.0])
    crop = refiner_crop(T, SimpleNamespace(vertices=pts), K, size=S)
    center = (pts.min(0) + pts.max(0)) / 2
    c_uv = crop.to_crop(project(K, transform_points(T, center[None])))[0]
    assert np.allclose(c_uv, (S - 1) / 2)
    uv = crop.to_crop(project(K, transform_points(T, pts)))
    assert np.isclose(np.abs(uv - (S - 1) / 2).max(), S / 2 / 1.4)
    assert np.allclose(crop.K, crop.A @ K)
    same = refiner_crop(T, pts, K, None, S)
    assert np.allclose(same.A, crop.A)
    wide = refiner_crop(T, pts, K, image_box=(0.0, 0.0, 400.0, 300.0), size=S)
    corners = wide.to_crop(np.array([[0.0, 0.0], [400.0, 300.0]]))
    assert np.all((corners >= -0.5) & (corners <= S - 0.5))
    import trimesh

    from cooppose.objects import ObjectModel

    sphere = trimesh.creation.icosphere(subdivisions=4, radius=50.0)  # 2562 vertices: the hull path
    model = ObjectModel.from_arrays(np.asarray(sphere.vertices) + 7.0, np.asarray(sphere.faces))
    assert np.allclose(refiner_crop(T, model, K, size=S).A, refiner_crop(T, model.vertices, K, size=S).A)
    behind = T.copy()
    behind[2, 3] = -100.0
    with pytest.raises(InputError):
        refiner_crop(behind, pts, K, size=S)
    with pytest.raises(InputError):
        refiner_crop(T, np.zeros((0, 3)), K, size=S)


def test_nearest_and_chosen_template():
    dirs = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], float)
    poses = np.stack([look_at(500.0 * d, np.zeros(3)) for d in dirs])
    T_gt = look_at(300.0 * np.array([0.2, -1.0, 0.3]), np.zeros(3))
    T_gt[:3, :3] = Rotation.from_rotvec([0, 0, 1.0]).as_matrix() @ T_gt[:3, :3]  # roll does not change the view
    T_gt[:3, 3] = Rotation.from_rotvec([0, 0, 1.0]).as_matrix() @ T_gt[:3, 3]
    assert nearest_template(poses, T_gt) == 3
    rng = np.random.default_rng(0)
    picks = np.array([choose_template(poses, T_gt, rng, p_negative=0.2) for _ in range(4000)])
    assert 0.8 <= np.mean(picks == 3) <= 0.9
    assert len(np.unique(picks)) == 6
    assert all(choose_template(poses, T_gt, rng, p_negative=0.0) == 3 for _ in range(50))
    with pytest.raises(InputError):
        nearest_template(poses[:, :3], T_gt)
