"""Rendering of object meshes (rgb, depth, mask, object-frame xyz) and template viewpoints."""

from cooppose.render.renderer import RENDERER_VERSION, Light, Renderer, RenderResult, SceneRender

__all__ = ["RENDERER_VERSION", "Light", "RenderResult", "Renderer", "SceneRender"]
