"""Object models: mesh loading (mm), symmetries, the bundled demo object."""

from cooppose.objects.mesh import GREY, ObjectModel, bundled_mesh_path, load_mesh
from cooppose.objects.symmetry import symmetry_transformations

__all__ = ["GREY", "ObjectModel", "bundled_mesh_path", "load_mesh", "symmetry_transformations"]
