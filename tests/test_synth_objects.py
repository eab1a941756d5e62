"""Procedural objects, textures, the BOP models writer and the pybullet mesh list."""

import json
import warnings

import numpy as np
import pytest
import trimesh
from scipy.spatial import cKDTree

from cooppose.data import bop
from cooppose.data.synth import make_object_set, procedural_object
from cooppose.data.synth.models import ply_bytes, write_models
from cooppose.data.synth.objects import (
    DIAMETER_RANGE_MM,
    KIND_PROBS,
    box_uv,
    corner_normals,
    diameter,
    make_object,
    star_prism,
)
from cooppose.data.synth.textures import PHOTOS, TEXTURES, load_photo, plain, random_background
from cooppose.errors import ConfigError, DatasetError
from cooppose.objects.mesh import load_mesh
from cooppose.objects.symmetry import symmetry_transformations

OBJECTS = [procedural_object(7, i) for i in range(24)]


def test_procedural_objects_are_deterministic_per_seed_and_index():
    a, b, c = procedural_object(7, 3), procedural_object(7, 3), procedural_object(8, 3)
    assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces)
    assert (a.texture is None) == (b.texture is None)
    if a.texture is not None:
        assert np.array_equal(a.texture, b.texture) and np.array_equal(a.uv, b.uv)
    assert a.source == b.source
    assert a.vertices.shape != c.vertices.shape or not np.allclose(a.vertices, c.vertices)


@pytest.mark.parametrize("obj", OBJECTS, ids=lambda o: f"{o.source['index']}-{o.source['kind']}")
def test_procedural_object_is_closed_centred_and_in_size_range(obj):
    mesh = trimesh.Trimesh(obj.vertices, obj.faces, process=False)
    mesh.merge_vertices(merge_tex=True, merge_norm=True)  # seams only split attributes, not geometry
    assert mesh.is_watertight
    assert mesh.volume > 0  # outward-facing triangles
    d = diameter(obj.vertices)
    assert DIAMETER_RANGE_MM[0] - 1e-6 <= d <= DIAMETER_RANGE_MM[1] + 1e-6
    centre = (obj.vertices.min(0) + obj.vertices.max(0)) / 2
    assert np.abs(centre).max() < 1e-9 * d + 1e-9
    assert np.allclose(np.linalg.norm(obj.normals, axis=1), 1.0, atol=1e-5)
    if obj.texture is not None:
        assert obj.uv.min() >= 0 and obj.uv.max() <= 1 and obj.texture.dtype == np.uint8
        assert obj.colors is None
    else:
        assert obj.colors.shape == (len(obj.vertices), 3) and obj.colors.dtype == np.uint8


def test_every_kind_is_produced_and_plain_objects_have_several_parts():
    rng = np.random.default_rng(0)
    for kind in KIND_PROBS:
        obj = make_object(rng, kind)
        assert obj.source["kind"] == kind
        if kind in ("plain", "multicolor"):
            assert len(obj.source["parts"]) >= 2  # a single plain primitive could be an unlabelled symmetric object
        if kind == "plain":
            assert len(np.unique(obj.colors, axis=0)) == 1
    with pytest.raises(ValueError):
        make_object(rng, "glass")


def test_star_prism_volume_is_polygon_area_times_height():
    mesh = star_prism(np.random.default_rng(4))
    assert mesh.is_watertight
    v = mesh.vertices
    h = np.ptp(v[:, 2])
    ring = v[2 : 2 + (len(v) - 2) // 2, :2]  # bottom ring, counter-clockwise
    area = 0.5 * np.sum(ring[:, 0] * np.roll(ring[:, 1], -1) - np.roll(ring[:, 0], -1) * ring[:, 1])
    assert area > 0
    assert mesh.volume == pytest.approx(area * h, rel=1e-9)


def test_symmetric_objects_map_onto_themselves():
    rng = np.random.default_rng(1)
    for _ in range(8):
        obj = make_object(rng, "symmetric")
        info = {k: v for k, v in {"symmetries_discrete": obj.symmetries_discrete,
                                   "symmetries_continuous": obj.symmetries_continuous}.items() if v}
        assert info, "a symmetric object must declare its symmetries"
        d = diameter(obj.vertices)
        tree = cKDTree(obj.vertices)
        for T in [np.asarray(s).reshape(4, 4) for s in obj.symmetries_discrete]:
            moved = obj.vertices @ T[:3, :3].T + T[:3, 3]
            assert tree.query(moved)[0].max() < 1e-6 * d
        for s in obj.symmetries_continuous:  # 64 sections: rotations by multiples of 2 pi / 64 keep the mesh
            axis = np.asarray(s["axis"], float)
            for k in (1, 5, 16):
                a = 2 * np.pi * k / 64
                K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
                R = np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K
                assert tree.query(obj.vertices @ R.T)[0].max() < 1e-6 * d
        assert len(symmetry_transformations(info)) > 1


def test_corner_normals_keep_box_edges_sharp_and_box_uv_uses_the_face_axis():
    box = trimesh.creation.box(extents=(2.0, 3.0, 4.0))
    n = corner_normals(np.asarray(box.vertices), np.asarray(box.faces))
    assert np.allclose(n, box.face_normals[:, None, :])  # 90 degree edges are above the crease angle
    uv = box_uv(np.asarray(box.vertices), np.asarray(box.faces))
    axis = np.argmax(np.abs(box.face_normals), 1)
    sign = box.face_normals[np.arange(12), axis] > 0
    assert np.all((uv[..., 0] >= axis[:, None] / 3) & (uv[..., 0] <= (axis[:, None] + 1) / 3))
    assert np.all((uv[..., 1] >= sign[:, None] / 2) & (uv[..., 1] <= (sign[:, None] + 1) / 2))


def test_models_folder_round_trips_through_load_mesh(tmp_path):
    objs = [(i + 1, o) for i, o in enumerate(OBJECTS[:8])]
    infos = write_models(tmp_path, objs)
    assert bop.load_models_info(tmp_path / "models_info.json").keys() == infos.keys()
    sources = json.loads((tmp_path / "sources.json").read_text())
    for obj_id, obj in objs:
        model = load_mesh(tmp_path / f"obj_{obj_id:06d}.ply", models_info=infos[obj_id])
        assert np.allclose(model.vertices, obj.vertices, atol=1e-3)
        assert np.array_equal(model.faces, obj.faces)
        if obj.texture is not None:
            assert np.allclose(model.uv, obj.uv) and np.array_equal(model.texture, obj.texture)
        else:
            assert np.array_equal(model.vertex_colors, obj.colors)
        assert model.diameter == pytest.approx(infos[obj_id]["diameter"], rel=1e-5)
        size = obj.vertices.max(0) - obj.vertices.min(0)
        assert [infos[obj_id][f"size_{a}"] for a in "xyz"] == pytest.approx(size)
        assert sources[str(obj_id)]["kind"] == obj.source["kind"]
        n_sym = len(symmetry_transformations(infos[obj_id]))
        assert len(model.symmetries) == n_sym
    with pytest.raises(DatasetError):
        write_models(tmp_path / "dup", [(1, OBJECTS[0]), (1, OBJECTS[1])])


def test_textured_ply_needs_its_texture_name():
    textured = next(o for o in OBJECTS if o.texture is not None)
    with pytest.raises(DatasetError):
        ply_bytes(textured)
    assert b"comment TextureFile obj_000009.png" in ply_bytes(textured, "obj_000009.png")[:400]


def test_make_object_set_is_deterministic(tmp_path):
    make_object_set(tmp_path / "a", 4, seed=11)
    make_object_set(tmp_path / "b", 4, seed=11)
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir())
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with pytest.raises(DatasetError):
        make_object_set(tmp_path / "c", 0, seed=1)


@pytest.mark.parametrize("name", sorted(TEXTURES))
def test_textures_are_deterministic_and_not_flat(name):
    a = TEXTURES[name](np.random.default_rng(3), 64, 96)
    b = TEXTURES[name](np.random.default_rng(3), 64, 96)
    assert a.dtype == np.uint8 and a.shape == (64, 96, 3)
    assert np.array_equal(a, b)
    assert a.reshape(-1, 3).std(0).max() > 1.0


def test_plain_texture_background_and_photos():
    img = plain(np.random.default_rng(0), 8, 8)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) == 1
    bg = random_background(np.random.default_rng(5), 48, 64)
    assert bg.shape == (48, 64, 3) and bg.dtype == np.uint8
    for name in PHOTOS:
        photo = load_photo(name)
        assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3
    with pytest.raises(ConfigError):
        load_photo("lena")


def test_pybullet_meshes_exclude_the_duck_and_keep_urdf_sizes():
    pytest.importorskip("pybullet_data")
    from cooppose.data.synth.sources import CURATED, load_package_object, package_meshes

    meshes = package_meshes()
    assert not any("duck" in m.path.lower() for m in meshes)
    assert sum(m.path.startswith("random_urdfs/") for m in meshes) == 1000
    jenga = load_package_object(CURATED[0], np.random.default_rng(0))
    assert np.ptp(jenga.vertices, axis=0) == pytest.approx([150.0, 50.0, 30.0])  # jenga.urdf scale, in mm
    assert jenga.texture is not None and jenga.source["path"] == "jenga/jenga.obj"
    blob = load_package_object(meshes[len(CURATED)], np.random.default_rng(0))
    assert DIAMETER_RANGE_MM[0] <= diameter(blob.vertices) <= DIAMETER_RANGE_MM[1]


def test_broken_package_meshes_are_skipped_with_a_warning(tmp_path):
    from cooppose.data.synth.sources import CURATED, package_meshes, package_objects

    blob = tmp_path / "random_urdfs" / "000"
    blob.mkdir(parents=True)
    (blob / "000.urdf").write_text('<mesh filename="000.obj" scale="0.015 0.015 0.015"/><color rgba="0.1 0.2 0.3 1"/>')
    (blob / "000.obj").write_text("v nan nan nan\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    assert len(package_meshes(tmp_path)) == len(CURATED) + 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert list(package_objects(0, root=tmp_path)) == []
    messages = [str(w.message) for w in caught]
    assert sum("non-finite" in m for m in messages) == 1
    assert sum("not found" in m for m in messages) == len(CURATED)  # the curated files are absent here


def test_surface_moments_of_a_box_match_the_hand_computed_values():
    from cooppose.data.synth.symmetry import surface_moments

    box = trimesh.creation.box(extents=(2.0, 4.0, 6.0))  # half extents a, b, c = 1, 2, 3
    centre, cov = surface_moments(np.asarray(box.vertices) + [5.0, 0.0, 0.0], np.asarray(box.faces))
    assert centre == pytest.approx([5.0, 0.0, 0.0])
    # E[x^2] = (2 * 4bc * a^2 + (2 * 4ac + 2 * 4ab) * a^2 / 3) / (8 (bc + ac + ab)), likewise for y, z
    a, b, c = 1.0, 2.0, 3.0
    total = 8 * (b * c + a * c + a * b)
    ex2 = (8 * b * c * a**2 + 8 * (a * c + a * b) * a**2 / 3) / total
    ey2 = (8 * a * c * b**2 + 8 * (b * c + a * b) * b**2 / 3) / total
    ez2 = (8 * a * b * c**2 + 8 * (b * c + a * c) * c**2 / 3) / total
    assert np.diag(cov) == pytest.approx([ex2, ey2, ez2])
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 1e-12


def test_find_symmetries_recovers_the_analytic_ones_and_none_on_asymmetric_objects():
    from cooppose.data.synth.symmetry import find_symmetries

    rng = np.random.default_rng(3)
    for _ in range(6):
        obj = make_object(rng, "symmetric")
        disc, cont = find_symmetries(obj)
        assert len(disc) == len(obj.symmetries_discrete) and len(cont) == len(obj.symmetries_continuous)
        for found, true in zip(cont, obj.symmetries_continuous):
            assert abs(np.dot(found["axis"], true["axis"])) == pytest.approx(1.0, abs=1e-6)
        for T in disc:
            R = np.asarray(T).reshape(4, 4)[:3, :3]
            if cont:  # any half turn about an axis perpendicular to the continuous one is a symmetry
                assert np.trace(R) == pytest.approx(-1.0) and R @ cont[0]["axis"] == pytest.approx(-np.asarray(cont[0]["axis"]))
            else:  # the box's three half turns
                assert min(np.abs(R - np.asarray(s).reshape(4, 4)[:3, :3]).max() for s in obj.symmetries_discrete) < 1e-6
    for obj in OBJECTS[:12]:
        if obj.source["kind"] != "symmetric":
            assert find_symmetries(obj) == ([], [])


def test_cli_writes_given_mesh_files_as_a_models_folder(tmp_path):
    """`synth objects --mesh F --units m` writes the user's mesh in mm with its colours, ids from 1."""
    from cooppose.cli import main
    from cooppose.objects import load_mesh

    mesh = trimesh.creation.box(extents=(0.1, 0.05, 0.02))
    mesh.visual.vertex_colors = np.tile([10, 200, 30, 255], (len(mesh.vertices), 1))
    src = tmp_path / "box.ply"
    mesh.export(src)
    out = tmp_path / "models"
    assert main(["synth", "objects", "--out", str(out), "--mesh", str(src), "--units", "m"]) == 0
    info = bop.load_models_info(out / "models_info.json")
    assert list(info) == [1]
    assert info[1]["diameter"] == pytest.approx(np.sqrt(100**2 + 50**2 + 20**2), rel=1e-6)
    obj = load_mesh(out / "obj_000001.ply")
    assert np.all(obj.vertex_colors == (10, 200, 30))
