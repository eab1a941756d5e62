"""Oracle predictors built from ground truth, and the rendered scenes they see (shared by the pipeline tests).

The oracles answer what a perfect network would: the coarse oracle returns the true template patch
class and offset of every query patch (`data.targets.coarse_labels` on the scene's object
coordinates), the refine oracle the true flow and visibility (`flow_targets`, `certainty_targets`),
the select oracle a score that falls with the pose error. They read the geometry the pipeline hands
to every predictor (the crop, the rendered pose and object coordinates), never the pipeline's answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cooppose.data.targets import certainty_targets, coarse_labels, flow_targets
from cooppose.geometry.camera import warp
from cooppose.geometry.transforms import make_pose, project, rotation_error_deg, so3_exp, transform_points
from cooppose.pipeline import (CoarseMatches, CoarsePredictor, CoarseQuery, RefinePrediction, RefinePredictor, RefineView,
                               SelectPredictor)

K_SCENE = np.array([[600.0, 0.0, 331.0], [0.0, 605.0, 236.0], [0.0, 0.0, 1.0]])
SIZE = (480, 640)



@dataclass
class Scene:
    """A rendered test image: rgb, depth (mm), the true poses and, per object, object coordinates and masks."""

    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32 mm
    K: np.ndarray
    objects: list
    poses: list[np.ndarray]
    xyz: np.ndarray  # (H, W, 3) object coordinates of the visible object
    instance: np.ndarray  # (H, W) int, -1 = background

    def mask(self, i: int = 0) -> np.ndarray:
        """Visible mask of object i."""
        return self.instance == i

    def box(self, i: int = 0) -> tuple[float, float, float, float]:
        """Tight box of object i's visible mask."""
        ys, xs = np.nonzero(self.mask(i))
        return (xs.min() - 0.5, ys.min() - 0.5, xs.max() + 0.5, ys.max() + 0.5)

    def nearest(self, uv: np.ndarray) -> int:
        """Index of the object whose projected centre is closest to the image point uv."""
        c = [project(self.K, transform_points(T, o.center[None]))[0] for o, T in zip(self.objects, self.poses)]
        return int(np.argmin([np.linalg.norm(ci - uv) for ci in c]))


def make_scene(renderer, objects: list, poses: list, seed: int = 0) -> Scene:
    """Objects rendered over a random texture background on a plane 400 mm behind the farthest object."""
    rng = np.random.default_rng(seed)
    sc = renderer.render_scene(objects, poses, K_SCENE, SIZE)
    noise = rng.integers(0, 256, (SIZE[0] // 8, SIZE[1] // 8, 3), dtype=np.uint8)
    bg = np.kron(noise, np.ones((8, 8, 1), np.uint8))
    fg = sc.instance >= 0
    rgb = np.where(fg[..., None], sc.rgb, bg)
    back = max(T[2, 3] for T in poses) + 400.0
    depth = np.where(fg, sc.depth, back).astype(np.float32)
    return Scene(rgb=rgb, depth=depth, K=K_SCENE, objects=objects, poses=[np.asarray(T, float) for T in poses],
                 xyz=sc.xyz, instance=sc.instance)


def perturb(T: np.ndarray, deg: float, mm: float, seed: int) -> np.ndarray:
    """T rotated by `deg` about a random axis through the object origin and moved `mm` in a random direction."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    shift = rng.normal(size=3)
    R = so3_exp(axis / np.linalg.norm(axis) * np.radians(deg)) @ T[:3, :3]
    return make_pose(R, T[:3, 3] + shift / np.linalg.norm(shift) * mm)


def pose_errors(T: np.ndarray, T_gt: np.ndarray) -> tuple[float, float]:
    """(rotation error in degrees, translation error in mm)."""
    return float(rotation_error_deg(T[:3, :3], T_gt[:3, :3])), float(np.linalg.norm(T[:3, 3] - T_gt[:3, 3]))


class OracleCoarse(CoarsePredictor):
    """True patch classes (as one-hot logits) and offsets of the query crop against every template."""

    def __init__(self, scene: Scene, size: int = 160):
        self.scene = scene
        self.size = size

    def predict(self, query: CoarseQuery) -> CoarseMatches:
        """Ground-truth matches for the object nearest to the crop centre."""
        i = self.scene.nearest(query.crop.to_image(np.array([(self.size - 1) / 2] * 2)))
        xyz = warp(self.scene.xyz, query.crop, nearest=True)
        valid = warp(self.scene.mask(i), query.crop, nearest=True)
        tpl = query.templates
        tol = 0.02 * self.scene.objects[i].diameter
        logits, offsets = [], []
        for t in range(len(tpl.poses)):
            lab, off = coarse_labels(xyz, valid, tpl.K[t], tpl.poses[t], tpl.depth[t], depth_tol_mm=tol)
            lg = np.zeros((len(lab), len(lab) + 1), np.float32)
            lg[np.arange(len(lab)), lab] = 20.0
            logits.append(lg)
            offsets.append(off)
        return CoarseMatches(logits=np.stack(logits), offsets=np.stack(offsets))


class OracleRefine(RefinePredictor):
    """True flow from the rendering to the query crop and the true visibility (confidence = certainty)."""

    def __init__(self, scene: Scene, size: int = 160):
        self.scene = scene
        self.size = size

    def predict(self, view: RefineView) -> RefinePrediction:
        """Ground truth for the object nearest to the rendered pose's projected centre."""
        i = self.scene.nearest(view.crop.to_image(np.array([(self.size - 1) / 2] * 2)))
        T_gt, obj = self.scene.poses[i], self.scene.objects[i]
        flow, _ = flow_targets(view.xyz, view.mask, view.crop.K, T_gt)
        cert = certainty_targets(view.xyz, view.mask, view.crop.K, T_gt, warp(self.scene.depth, view.crop, nearest=True),
                                 0.02 * obj.diameter)
        return RefinePrediction(flow=flow, certainty=cert, confidence=cert, flow_probability=cert, sensitivity=np.ones_like(cert))


class OracleSelect(SelectPredictor):
    """Score exp(-(rotation error / 10 deg)^2) of the rendered pose against the nearest true pose."""

    def __init__(self, scene: Scene, size: int = 160):
        self.scene = scene
        self.size = size

    def score(self, view: RefineView) -> float:
        """Closer to the truth scores higher."""
        i = self.scene.nearest(view.crop.to_image(np.array([(self.size - 1) / 2] * 2)))
        rot, _ = pose_errors(view.T, self.scene.poses[i])
        return float(np.exp(-(rot / 10.0) ** 2))
