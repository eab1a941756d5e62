"""Template viewpoints: icosphere vertex counts, uniformity, look-at poses."""

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from cooppose.errors import RenderError
from cooppose.geometry.transforms import transform_points
from cooppose.render.viewpoints import icosphere_directions, template_poses


@pytest.mark.parametrize("level,n", [(0, 42), (1, 162), (2, 642)])
def test_icosphere_counts_unit_and_distinct(level, n):
    d = icosphere_directions(level)
    assert d.shape == (n, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1, atol=1e-12)
    assert pdist(d).min() > 0.5 * np.sqrt(4 * np.pi / n)  # no duplicates, roughly even spacing
    np.testing.assert_allclose(d.mean(0), 0, atol=1e-12)  # symmetric about the centre


def test_level0_neighbour_angle():
    d = icosphere_directions(0)
    nearest = np.sort(np.degrees(np.arccos(np.clip(d @ d.T, -1, 1))), 1)[:, 1]
    assert 30 < nearest.min() and nearest.max() < 38  # the 42-vertex sphere: neighbours ~31.7-36 deg apart


def test_template_poses_look_at_center():
    center = np.array([5.0, -3.0, 12.0])
    T = template_poses(0, 250.0, center)
    assert T.shape == (42, 4, 4)
    c_cam = transform_points(T, np.broadcast_to(center, (42, 1, 3)))[:, 0]
    np.testing.assert_allclose(c_cam, np.tile([0, 0, 250.0], (42, 1)), atol=1e-9)  # centre on the optical axis
    R = T[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), (42, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1, atol=1e-12)
    eyes = np.einsum("nji,nj->ni", R, -T[:, :3, 3])  # camera centres in the object frame
    np.testing.assert_allclose((eyes - center) / 250.0, icosphere_directions(0), atol=1e-9)


def test_bad_arguments():
    with pytest.raises(RenderError, match="level"):
        icosphere_directions(-1)
    with pytest.raises(RenderError, match="distance_mm"):
        template_poses(0, 0.0, np.zeros(3))
