"""Mesh loading: units, appearance (texture / vertex colours / grey), errors, diameter and surface sampling."""

import json
import shutil
import warnings

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from cooppose.errors import DatasetError, MeshError
from cooppose.objects import GREY, ObjectModel, bundled_mesh_path, load_mesh


def _cube(side: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    v = (np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], float) - 0.5) * side
    f = np.array(
        [[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]]
    )
    return v, f


def _write_obj(path, v, f):
    lines = [f"v {x:.9g} {y:.9g} {z:.9g}" for x, y, z in v] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in f]
    path.write_text("\n".join(lines) + "\n")


def test_bundled_duck_is_textured_mm_and_centred():
    m = load_mesh(bundled_mesh_path("duck"))
    assert m.name == "duck" and m.is_textured and m.vertex_colors is None
    assert m.texture.shape == (512, 512, 3) and m.uv.shape == (2277, 2) and m.faces.shape == (4212, 3)
    assert m.diameter == pytest.approx(pdist(m.vertices).max(), rel=1e-12)
    assert 90 < m.diameter < 100  # an 8 cm toy, in mm
    np.testing.assert_allclose(m.center, 0, atol=1e-4)
    # the texture is mostly the duck's yellow: red and green high, blue low
    mean = m.texture.reshape(-1, 3).mean(0)
    assert mean[0] > 150 and mean[1] > 120 and mean[2] < 100
    assert load_mesh(bundled_mesh_path("duck")).content_hash == m.content_hash
    with pytest.raises(MeshError, match="looks like millimetres"):
        load_mesh(bundled_mesh_path("duck"), units="m")
    with pytest.raises(MeshError, match="available"):
        bundled_mesh_path("teapot")


def test_units_m_scaled_and_mm_mistake_caught(tmp_path):
    v, f = _cube(0.1)  # a 10 cm cube written in metres
    _write_obj(tmp_path / "cube.obj", v, f)
    with pytest.raises(MeshError, match="looks like metres; pass units='m'"):
        load_mesh(tmp_path / "cube.obj")
    m = load_mesh(tmp_path / "cube.obj", units="m")
    assert m.diameter == pytest.approx(100 * np.sqrt(3))
    np.testing.assert_allclose(m.bbox_max - m.bbox_min, [100, 100, 100])
    np.testing.assert_array_equal(m.vertex_colors, np.full((8, 3), GREY))  # untextured -> uniform grey
    with pytest.raises(MeshError, match="units='cm'"):
        load_mesh(tmp_path / "cube.obj", units="cm")


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(MeshError, match="not found"):
        load_mesh(tmp_path / "nope.ply")
    (tmp_path / "junk.ply").write_bytes(b"\x00\x01garbage that is no ply")
    with pytest.raises(MeshError, match="cannot read mesh"):
        load_mesh(tmp_path / "junk.ply")
    (tmp_path / "pts.ply").write_text(
        "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
        "end_header\n0 0 0\n10 0 0\n0 10 0\n"
    )
    with pytest.raises(MeshError, match="no triangles"):
        load_mesh(tmp_path / "pts.ply")
    v, f = _cube()
    v[3, 1] = np.nan
    _write_obj(tmp_path / "nan.obj", v, f)
    with pytest.raises(MeshError, match="NaN or infinite"):
        load_mesh(tmp_path / "nan.obj")
    (tmp_path / "m.stl").write_text("solid x\nendsolid x\n")
    with pytest.raises(MeshError, match="unsupported mesh format"):
        load_mesh(tmp_path / "m.stl")


def test_ply_with_missing_texture_warns_and_is_grey(tmp_path):
    shutil.copy(bundled_mesh_path("duck"), tmp_path / "duck.ply")  # header names duck.png, not copied
    with pytest.warns(UserWarning, match="'duck.png' named in .* is missing"):
        m = load_mesh(tmp_path / "duck.ply")
    assert not m.is_textured and m.uv is None
    np.testing.assert_array_equal(np.unique(m.vertex_colors), [GREY])


def test_non_manifold_warns_but_loads(tmp_path):
    v = np.array([[0, 0, 0], [100, 0, 0], [0, 100, 0], [0, -100, 0], [0, 0, 100.0]])
    f = np.array([[0, 1, 2], [0, 1, 3], [0, 1, 4]])  # edge 0-1 shared by three faces
    _write_obj(tmp_path / "fin.obj", v, f)
    with pytest.warns(UserWarning, match="non-manifold"):
        m = load_mesh(tmp_path / "fin.obj")
    assert len(m.faces) == 3


def test_glb_vertex_colours_roundtrip(tmp_path):
    import trimesh

    v, f = _cube(0.2)
    colors = np.tile(np.array([[200, 30, 40, 255]], np.uint8), (8, 1))
    colors[0] = [10, 220, 30, 255]
    trimesh.Trimesh(v, f, vertex_colors=colors, process=False).export(tmp_path / "cube.glb")
    m = load_mesh(tmp_path / "cube.glb", units="m")
    assert m.diameter == pytest.approx(200 * np.sqrt(3), rel=1e-6)
    got = {tuple(c) for c in m.vertex_colors}
    assert got == {(200, 30, 40), (10, 220, 30)}


def test_obj_with_mtl_texture():
    pybullet_data = pytest.importorskip("pybullet_data")
    from pathlib import Path

    m = load_mesh(Path(pybullet_data.getDataPath()) / "duck.obj", units="m")  # OBJ + MTL + duckCM.png
    duck = load_mesh(bundled_mesh_path("duck"))
    np.testing.assert_array_equal(m.texture, duck.texture)
    assert m.faces.shape == duck.faces.shape
    assert m.diameter == pytest.approx(duck.diameter / 50 * 1000, rel=1e-5)  # raw unit = 50 mm in the bundle


def test_from_arrays_and_area_weighted_sampling():
    v = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [100, 0, 0], [130, 0, 0], [100, 10, 0.0]])
    f = np.array([[0, 1, 2], [3, 4, 5]])  # areas 50 and 150
    m = ObjectModel.from_arrays(v, f, name="two")
    assert m.diameter == pytest.approx(np.hypot(130, 10))
    pts = m.sample_points(20000, np.random.default_rng(0))
    frac_big = (pts[:, 0] >= 100).mean()
    assert frac_big == pytest.approx(0.75, abs=0.015)
    small = pts[pts[:, 0] < 100]
    assert np.all(small[:, 0] + small[:, 1] <= 10 + 1e-9) and np.all(small >= -1e-9)
    assert ObjectModel.from_arrays(v, f).content_hash == m.content_hash
    assert ObjectModel.from_arrays(v * 2, f).content_hash != m.content_hash
    with pytest.raises(MeshError, match="face indices"):
        ObjectModel.from_arrays(v, f + 10)
    with pytest.raises(MeshError, match="both `uv`"):
        ObjectModel.from_arrays(v, f, texture=np.zeros((4, 4, 3), np.uint8))


def test_large_mesh_diameter_on_hull_is_exact():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(6000, 3)) * [50, 20, 10]
    m = ObjectModel.from_arrays(v, np.array([[0, 1, 2]]))
    assert len(m.hull_indices) < len(v)
    assert m.diameter == pytest.approx(pdist(v).max(), rel=1e-12)


def test_bop_vertex_colours_and_symmetries(shared_data):
    models = shared_data / "lmo-frame3" / "models"
    info = json.loads((models / "models_info.json").read_text())
    ape = load_mesh(models / "obj_000001.ply", models_info=info)
    assert ape.diameter == pytest.approx(info["1"]["diameter"], abs=1e-3)
    assert ape.vertex_colors is not None and len(ape.symmetries) == 1
    assert ape.vertex_colors[0].tolist() == [148, 57, 57]  # first vertex of the file
    egg = load_mesh(models / "obj_000010.ply", models_info=info)  # whole file: entry picked by obj id
    assert len(egg.symmetries) == 2
    np.testing.assert_allclose(egg.symmetries[1].ravel(), info["10"]["symmetries_discrete"][0])
    assert len(load_mesh(models / "obj_000010.ply", models_info=info["10"]).symmetries) == 2
    with pytest.raises(DatasetError, match="none matches"):
        load_mesh(models / "obj_000010.ply", models_info={"1": info["1"]})


def test_ycbv_missing_texture(shared_data):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = load_mesh(shared_data / "ycbv-crackers" / "models" / "obj_000002.ply")
    assert any("obj_000002.png" in str(w.message) for w in caught)
    assert not m.is_textured and m.diameter == pytest.approx(269.573, abs=1e-3)


def test_hope_textured_ply(shared_data):
    m = load_mesh(shared_data / "hope-bbq" / "hope_000002.ply")
    assert m.is_textured and m.texture.shape == (2048, 2048, 3)
    assert 0 <= m.uv.min() and m.uv.max() <= 1


def test_huge_hull_diameter_from_extreme_points(monkeypatch):
    import cooppose.objects.mesh as mesh_mod

    monkeypatch.setattr(mesh_mod, "EXACT_DIAMETER_MAX_HULL", 1000)  # force the path used above 20k hull points
    rng = np.random.default_rng(2)
    v = rng.normal(size=(6000, 3))
    v = v / np.linalg.norm(v, axis=1, keepdims=True) * [80, 30, 10]  # every point on the hull
    m = ObjectModel.from_arrays(v, np.array([[0, 1, 2]]))
    assert len(m.hull_indices) == 6000
    exact = pdist(v).max()
    assert exact * 0.999 <= m.diameter <= exact


def test_obj_texture_named_with_a_relative_parent_path_is_loaded(tmp_path):
    """An OBJ whose MTL names its texture as ../textures/x.png (as robosuite's do) gets that texture."""
    from PIL import Image

    (tmp_path / "textures").mkdir()
    Image.fromarray(np.full((8, 8, 3), (200, 30, 40), np.uint8)).save(tmp_path / "textures" / "red.png")
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    (meshes / "q.mtl").write_text("newmtl m\nKd 1 1 1\nmap_Kd ../textures/red.png\n")
    (meshes / "q.obj").write_text(
        "mtllib q.mtl\nv 0 0 0\nv 50 0 0\nv 0 50 0\nv 0 0 50\nvt 0 0\nvt 1 0\nvt 0 1\nvt 1 1\nusemtl m\n"
        "f 1/1 3/3 2/2\nf 1/1 2/2 4/4\nf 1/1 4/4 3/3\nf 2/2 3/3 4/4\n"
    )
    obj = load_mesh(meshes / "q.obj")
    assert obj.texture is not None and tuple(obj.texture[0, 0]) == (200, 30, 40)
    assert obj.uv is not None and len(obj.uv) == len(obj.vertices)
