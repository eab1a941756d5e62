"""Renderer: analytic depth (cube, sphere), xyz/depth consistency, GL vs torch agreement, K handling,
colours (texture orientation, the duck, BOP vertex colours), lighting, scenes with occlusion, errors, fork."""

import multiprocessing as mp

import numpy as np
import pytest
from scipy.ndimage import binary_erosion
from scipy.spatial import cKDTree

from cooppose.errors import RenderError
from cooppose.geometry.transforms import look_at, make_pose, so3_exp, transform_points
from cooppose.objects import ObjectModel, bundled_mesh_path, load_mesh
from cooppose.render import Light, Renderer

K_OFF = np.array([[500.0, 0, 140.3], [0, 480.0, 118.7], [0, 0, 1]])  # fx != fy, off-centre (render.md)
SIZE = (256, 256)


def _gl_or_skip() -> Renderer:
    r = Renderer("gl")
    try:
        r.backend
    except RenderError as err:
        pytest.skip(f"no GL context here: {err}")
    return r


@pytest.fixture(scope="module", params=["torch", "gl"])
def renderer(request) -> Renderer:
    return _gl_or_skip() if request.param == "gl" else Renderer("torch")


@pytest.fixture(scope="module")
def duck() -> ObjectModel:
    return load_mesh(bundled_mesh_path("duck"))


def _cube(side: float = 100.0, colors=None) -> ObjectModel:
    v = (np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float) - 0.5) * side
    f = [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
    return ObjectModel.from_arrays(v, np.array(f), vertex_colors=colors, name=f"cube{side}")


def _rays(K: np.ndarray, size) -> np.ndarray:
    """Camera-frame ray directions (H, W, 3) with z = 1 through each pixel centre."""
    H, W = size
    u, v = np.meshgrid(np.arange(W), np.arange(H))
    return np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, float)], -1)


def _box_depth(K, T, size, half: float) -> np.ndarray:
    """Analytic camera z of the first hit of each pixel ray with the box [-half, half]^3 (0 = miss)."""
    R, t = T[:3, :3], T[:3, 3]
    d = _rays(K, size) @ R  # object-frame directions (rows: R^T d)
    o = -R.T @ t
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half - o) / d, (half - o) / d
    t_near = np.nanmax(np.minimum(t1, t2), -1)
    t_far = np.nanmin(np.maximum(t1, t2), -1)
    return np.where((t_near <= t_far) & (t_far > 0), t_near, 0.0)


def _pose(rotvec, t) -> np.ndarray:
    return make_pose(so3_exp(np.asarray(rotvec, float)), np.asarray(t, float))


def test_cube_depth_matches_analytic(renderer):
    T = _pose([0.5, -0.4, 0.3], [12.0, -8.0, 600.0])
    out = renderer.render(_cube(), K_OFF, T, SIZE)
    ref = _box_depth(K_OFF, T, SIZE, 50.0)
    inner = binary_erosion(ref > 0, iterations=1)
    assert np.all(out.mask[inner])
    assert np.abs(out.depth[inner] - ref[inner]).max() < 0.5
    assert np.median(np.abs(out.depth[inner] - ref[inner])) < 0.01
    assert not out.mask[binary_erosion(ref == 0, iterations=1)].any()
    assert np.all(out.depth[~out.mask] == 0) and np.all(out.xyz[~out.mask] == 0) and np.all(out.rgb[~out.mask] == 0)
    iou = (out.mask & (ref > 0)).sum() / (out.mask | (ref > 0)).sum()
    assert iou > 0.99


def test_sphere_depth_matches_analytic(renderer):
    import trimesh

    ico = trimesh.creation.icosphere(subdivisions=4, radius=50.0)
    sphere = ObjectModel.from_arrays(ico.vertices, ico.faces, name="sphere")
    c = np.array([-20.0, 15.0, 400.0])
    out = renderer.render(sphere, K_OFF, make_pose(np.eye(3), c), SIZE)
    d = _rays(K_OFF, SIZE)
    a, b, cc = (d * d).sum(-1), -2 * d @ c, c @ c - 50.0**2
    disc = b * b - 4 * a * cc
    hit = disc > 0
    z = np.where(hit, (-b - np.sqrt(np.where(hit, disc, 0))) / (2 * a), 0)
    p = d * z[..., None]
    facing = hit & (((c - p) / 50.0 * d / np.linalg.norm(d, axis=-1, keepdims=True)).sum(-1) > 0.5)
    assert out.mask[facing].all()
    assert np.abs(out.depth[facing] - z[facing]).max() < 0.5


def test_xyz_is_backprojected_depth(renderer, duck):
    T = look_at(np.array([120.0, -250.0, 90.0]), duck.center)
    out = renderer.render(duck, K_OFF, T, SIZE)
    v, u = np.nonzero(out.mask)
    X_cam = np.stack([(u - K_OFF[0, 2]) / K_OFF[0, 0], (v - K_OFF[1, 2]) / K_OFF[1, 1], np.ones_like(u, float)], -1) * out.depth[v, u, None]
    X_obj = transform_points(np.linalg.inv(T), X_cam)
    assert out.mask.sum() > 3000
    assert np.abs(X_obj - out.xyz[v, u]).max() < 0.05


def test_gl_matches_torch(duck):
    gl, ref = _gl_or_skip(), Renderer("torch")
    for eye, light in [([0, -300.0, 100], None), ([200.0, 100, -150], Light()), ([10, 5, 250.0], Light((0.3, -0.5, -1), 0.3, 0.7))]:
        T = look_at(np.array(eye), duck.center)
        a, b = ref.render(duck, K_OFF, T, SIZE, light), gl.render(duck, K_OFF, T, SIZE, light)
        both = a.mask & b.mask
        assert both.sum() / (a.mask | b.mask).sum() >= 0.999
        assert np.median(np.abs(a.depth - b.depth)[both]) < 0.01
        assert np.median(np.abs(a.xyz - b.xyz)[both]) < 0.01
        assert (np.abs(a.depth - b.depth)[both] > 0.1).mean() < 0.001  # only edge-rule pixels may differ
        assert np.abs(a.rgb.astype(int) - b.rgb)[both].mean() < 2.0  # GL uses mipmaps, torch plain bilinear


def test_off_centre_principal_point_bbox(renderer, duck):
    T = look_at(np.array([-150.0, -200.0, 120.0]), duck.center)
    out = renderer.render(duck, K_OFF, T, SIZE)
    uv = transform_points(T, duck.vertices) @ K_OFF.T
    uv = uv[:, :2] / uv[:, 2:]
    v, u = np.nonzero(out.mask)
    assert abs(u.min() - np.ceil(uv[:, 0].min())) <= 1 and abs(u.max() - np.floor(uv[:, 0].max())) <= 1
    assert abs(v.min() - np.ceil(uv[:, 1].min())) <= 1 and abs(v.max() - np.floor(uv[:, 1].max())) <= 1
    assert u.min() > 5 and v.min() > 5 and u.max() < 250 and v.max() < 250  # fully inside: the test is meaningful


def test_texture_orientation(renderer):
    """A square with uv (0,0) at its bottom-left: the texture's top rows must appear at the top of the image."""
    tex = np.zeros((4, 4, 3), np.uint8)
    tex[:2, :2] = [255, 0, 0]  # top-left red
    tex[:2, 2:] = [0, 255, 0]  # top-right green
    tex[2:, :2] = [0, 0, 255]  # bottom-left blue
    tex[2:, 2:] = [255, 255, 0]  # bottom-right yellow
    # object frame: x right, y up; camera looks along +z of the object with image y down = object -y
    v = np.array([[-50, -50, 0], [50, -50, 0], [50, 50, 0], [-50, 50, 0.0]])
    uv = np.array([[0, 0], [1, 0], [1, 1], [0, 1.0]])
    quad = ObjectModel.from_arrays(v, np.array([[0, 1, 2], [0, 2, 3]]), uv=uv, texture=tex, name="quad")
    T = make_pose(np.diag([1.0, -1.0, -1.0]), [0, 0, 300.0])
    K = np.array([[300.0, 0, 63.5], [0, 300.0, 63.5], [0, 0, 1]])
    out = renderer.render(quad, K, T, (128, 128))
    assert out.rgb[40, 40].tolist() == [255, 0, 0]
    assert out.rgb[40, 88].tolist() == [0, 255, 0]
    assert out.rgb[88, 40].tolist() == [0, 0, 255]
    assert out.rgb[88, 88].tolist() == [255, 255, 0]


def test_duck_colours_follow_its_texture(renderer, duck):
    T = look_at(np.array([0.0, -300.0, 100.0]), duck.center)  # side view: body, beak and eye visible
    out = renderer.render(duck, K_OFF, T, SIZE)
    v, u = np.nonzero(out.mask)
    nearest = cKDTree(duck.vertices).query(out.xyz[v, u])[1]
    uvs = duck.uv[nearest]
    Ht, Wt = duck.texture.shape[:2]
    expected = duck.texture[np.clip(((1 - uvs[:, 1]) * Ht).astype(int), 0, Ht - 1), np.clip((uvs[:, 0] * Wt).astype(int), 0, Wt - 1)]
    err = np.abs(out.rgb[v, u].astype(int) - expected).max(1)
    assert np.median(err) <= 6
    mean = out.rgb[v, u].mean(0)
    assert mean[0] > 200 and mean[1] > 150 and mean[2] < 60  # yellow, not the untextured grey


def test_bop_vertex_colours(renderer, shared_data):
    ape = load_mesh(shared_data / "lmo-frame3" / "models" / "obj_000001.ply")
    T = look_at(np.array([0.0, -250.0, 80.0]), ape.center)
    out = renderer.render(ape, K_OFF, T, SIZE)
    v, u = np.nonzero(out.mask)
    nearest = cKDTree(ape.vertices).query(out.xyz[v, u])[1]
    err = np.abs(out.rgb[v, u].astype(int) - ape.vertex_colors[nearest]).max(1)
    assert out.mask.sum() > 3000 and np.median(err) <= 8


def test_lambert_shading(renderer):
    grey = _cube(100.0, colors=np.full((8, 3), 200, np.uint8))
    K = np.array([[400.0, 0, 64], [0, 400.0, 64], [0, 0, 1]])
    T = make_pose(np.eye(3), [0, 0, 500.0])  # face z = -50 looks straight at the camera
    unlit = renderer.render(grey, K, T, (128, 128))
    assert unlit.rgb[64, 64].tolist() == [200, 200, 200]
    head = renderer.render(grey, K, T, (128, 128), Light((0, 0, -1), ambient=0.2, diffuse=0.6))
    assert np.abs(head.rgb[64, 64].astype(int) - round(200 * 0.8)).max() <= 1
    side = renderer.render(grey, K, T, (128, 128), Light((np.sin(np.pi / 3), 0, -np.cos(np.pi / 3)), ambient=0.2, diffuse=0.6))
    assert np.abs(side.rgb[64, 64].astype(int) - round(200 * (0.2 + 0.6 * 0.5))).max() <= 1
    back = renderer.render(grey, K, T, (128, 128), Light((0, 0, 1), ambient=0.2, diffuse=0.6))
    assert np.abs(back.rgb[64, 64].astype(int) - 40).max() <= 1


def test_scene_occlusion_and_instance(renderer):
    a, b = _cube(100.0), _cube(60.0)
    K = np.array([[500.0, 0, 80], [0, 500.0, 60], [0, 0, 1]])
    Ta = make_pose(np.eye(3), [0, 0, 600.0])  # big cube behind, front face at z = 550
    Tb = make_pose(so3_exp(np.array([0, 0, 0.4])), [30.0, 10, 450.0])  # small cube in front, face at 420
    s = renderer.render_scene([a, b], [Ta, Tb], K, (120, 160))
    assert set(np.unique(s.instance)) == {-1, 0, 1}
    assert s.instance[70, 113] == 1 and abs(s.depth[70, 113] - 420.0) < 0.01  # overlap: the front cube wins
    assert s.instance[25, 45] == 0 and abs(s.depth[25, 45] - 550.0) < 0.01
    for k, half in ((0, 50.0), (1, 30.0)):  # xyz in each object's own frame, on its surface
        xyz = s.xyz[s.instance == k]
        assert np.abs(np.abs(xyz).max(1) - half).max() < 0.01
    alone = renderer.render(a, K, Ta, (120, 160))
    assert (alone.mask & (s.instance == 1)).sum() > 500  # b really hides part of a


def test_behind_camera_and_near_plane(renderer, duck):
    K = np.array([[300.0, 0, 64], [0, 300.0, 64], [0, 0, 1]])
    behind = renderer.render(duck, K, make_pose(np.eye(3), [0, 0, -300.0]), (128, 128))
    assert not behind.mask.any() and behind.depth.max() == 0
    crossing = renderer.render(_cube(100.0), K, make_pose(np.eye(3), [0, 0, 20.0]), (128, 128))  # camera inside the cube
    assert np.all(crossing.depth[crossing.mask] >= 1.0)  # nothing nearer than the near plane


def test_render_batch_stacks_and_per_view_K(renderer, duck):
    Ts = np.stack([look_at(np.array(e), duck.center) for e in ([0, -400.0, 0], [0, -400.0, 0])])  # same pose, two K
    K = np.array([[250.0, 0, 63.5], [0, 250.0, 47.5], [0, 0, 1]])
    Ks = np.stack([K, np.diag([0.5, 0.5, 1]) @ K + np.array([[0, 0, 32], [0, 0, 24], [0, 0, 0]])])  # half focal, same centre
    batch = renderer.render_batch(duck, Ks, Ts, (96, 128))
    assert batch.rgb.shape == (2, 96, 128, 3) and batch.mask.shape == (2, 96, 128) and batch.xyz.shape == (2, 96, 128, 3)
    one = renderer.render(duck, Ks[1], Ts[1], (96, 128))
    np.testing.assert_array_equal(batch.depth[1], one.depth)
    assert batch.mask[1].sum() == pytest.approx(batch.mask[0].sum() / 4, rel=0.15)  # half the focal length: a quarter of the area
    with pytest.raises(RenderError, match="render_batch needs K"):
        renderer.render_batch(duck, np.stack([K] * 3), Ts, (96, 128))


def test_bad_requests_raise(duck):
    r = Renderer("torch")
    T = look_at(np.array([0, -300.0, 0]), duck.center)
    with pytest.raises(RenderError, match="fx, fy > 0"):
        r.render(duck, np.diag([0.0, 500, 1]), T, SIZE)
    with pytest.raises(RenderError, match="rigid"):
        r.render(duck, K_OFF, T * 2, SIZE)
    with pytest.raises(RenderError, match="size"):
        r.render(duck, K_OFF, T, (0, 10))
    with pytest.raises(RenderError, match="ObjectModel"):
        r.render("duck.ply", K_OFF, T, SIZE)
    with pytest.raises(RenderError, match="backend must be"):
        Renderer("vulkan")
    with pytest.raises(RenderError, match="direction"):
        r.render(duck, K_OFF, T, SIZE, Light((0, 0, 0)))


def test_auto_falls_back_to_torch_with_one_warning(monkeypatch):
    import cooppose.render.gl_backend as glb
    import cooppose.render.renderer as rr

    import moderngl

    def no_egl(**kwargs):
        raise OSError("simulated: libEGL.so.1 not found")

    monkeypatch.setattr(glb, "_STATE", None)
    monkeypatch.setattr(moderngl, "create_standalone_context", no_egl)
    monkeypatch.setattr(rr, "_warned_fallback", False)
    monkeypatch.delenv(rr.ENV_BACKEND, raising=False)
    with pytest.warns(UserWarning, match="torch rasterizer"):
        assert Renderer("auto").name == "torch"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Renderer("auto").name == "torch"
    with pytest.raises(RenderError, match="libegl1"):
        Renderer("gl").backend


def _render_in_child(queue) -> None:
    duck = load_mesh(bundled_mesh_path("duck"))
    out = Renderer("gl").render(duck, K_OFF, look_at(np.array([0, -300.0, 100]), duck.center), (64, 64))
    queue.put(int(out.mask.sum()))


def test_gl_works_in_forked_child_after_parent_rendered(duck):
    gl = _gl_or_skip()
    parent = gl.render(duck, K_OFF, look_at(np.array([0, -300.0, 100]), duck.center), (64, 64))
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_render_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
        pytest.fail("GL rendering hung in a forked child")
    assert child.exitcode == 0 and queue.get(timeout=5) == int(parent.mask.sum())


def test_gl_refuses_cpu_rasterizer_when_gpu_requested():
    gl = _gl_or_skip()
    if "llvmpipe" not in gl.backend.ensure_context().lower():
        pytest.skip("this machine's EGL is a GPU")
    with pytest.raises(RenderError, match="NVIDIA_DRIVER_CAPABILITIES"):
        Renderer("gl", device="cuda").backend


def test_renderer_pickles_without_its_backend(duck):
    import pickle

    r = Renderer("torch")
    r.render(duck, K_OFF, look_at(np.array([0, -300.0, 100]), duck.center), (32, 32))
    clone = pickle.loads(pickle.dumps(r))
    assert clone._backend is None and clone.requested == "torch" and clone.name == "torch"


def test_torch_chunked_rasterization_matches_single_pass(duck, monkeypatch):
    import cooppose.render.torch_backend as tb

    T = look_at(np.array([120.0, -250.0, 90.0]), duck.center)
    whole = Renderer("torch").render(duck, K_OFF, T, (128, 128))
    monkeypatch.setattr(tb, "MAX_CANDIDATES", 3000)  # dozens of chunks, two passes
    chunked = Renderer("torch").render(duck, K_OFF, T, (128, 128))
    for f in ("rgb", "depth", "mask", "xyz"):
        np.testing.assert_array_equal(getattr(whole, f), getattr(chunked, f))
