"""Synthetic training data: procedural and pybullet objects (BOP models/), rendered BOP scenes, contact sheets."""

from cooppose.data.synth.models import make_object_set, model_info, write_models
from cooppose.data.synth.objects import SynthObject, make_object, procedural_object
from cooppose.data.synth.scenes import ObjectPool, SceneConfig, SceneImage, generate_image, generate_scenes
from cooppose.data.synth.show import contact_sheet
from cooppose.data.synth.sources import package_meshes, package_objects

__all__ = [
    "ObjectPool",
    "SceneConfig",
    "SceneImage",
    "SynthObject",
    "contact_sheet",
    "generate_image",
    "generate_scenes",
    "make_object",
    "make_object_set",
    "model_info",
    "package_meshes",
    "package_objects",
    "procedural_object",
    "write_models",
]
