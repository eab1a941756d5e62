"""The three Co-op networks (coarse, refiner, selection) on one CroCo-style backbone, and their files."""

from cooppose.models.configs import KINDS, SIZES, ModelConfig, get_config
from cooppose.models.croco import (
    CoarseNet,
    CroCoPair,
    LoadReport,
    RefinerNet,
    SelectionNet,
    build_from_config,
    build_model,
    load_croco_weights,
    normalize,
)
from cooppose.models.heads import flow_probability, template_score

__all__ = [
    "KINDS",
    "SIZES",
    "CoarseNet",
    "CroCoPair",
    "LoadReport",
    "ModelConfig",
    "RefinerNet",
    "SelectionNet",
    "build_from_config",
    "build_model",
    "flow_probability",
    "get_config",
    "load_croco_weights",
    "normalize",
    "template_score",
]
