"""Object models: mesh loading (mm), symmetries, the bundled demo object."""

from cooppose.objects.symmetry import symmetry_transformations

__all__ = ["symmetry_transformations"]
