"""Rendering of object meshes (rgb, depth, mask, object-frame xyz) and template viewpoints."""

from cooppose.render.renderer import RENDERER_VERSION, Light, Renderer, RenderResult, SceneRender
from cooppose.render.viewpoints import icosphere_directions, template_poses

__all__ = ["RENDERER_VERSION", "Light", "RenderResult", "Renderer", "SceneRender", "icosphere_directions", "template_poses"]
