"""Named network sizes: `paper` (Co-op's CroCo v2 ViT-L/B and ViT-B/S at 224 px) and `tiny` (CPU, 160 px).

`tiny` was sized by measurement on the 2-core CPU (benchmarks/bench_models.py). One training step
costs, in single-thread CPU ms per sample at batch 16 (best of 12 interleaved rounds on the shared
machine): width 192 (6 + 4 blocks, 3 heads): coarse 95, refiner 115; width 160 (6 + 4 blocks, 4
heads): coarse 71, refiner 94; the refiner's DPT head with its last convolutions at half resolution
costs 24 ms of these (38 ms at full resolution). Two threads on an idle machine give about
1.4-1.7x, so width 160 is the widest that keeps coarse and refiner at >= 15 samples/s. Each shipped
fp16 file stays under 10 MB.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cooppose.errors import ConfigError

KINDS = ("coarse", "refiner", "selection")
SIZES = ("tiny", "paper")
# ModelConfig fields that fix the shapes of the encoder and decoder (shared by the three kinds' CroCoPair)
BACKBONE_FIELDS = ("img_size", "patch_size", "enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim", "dec_depth",
                   "dec_num_heads", "mlp_ratio", "rope_base")


@dataclass(frozen=True)
class ModelConfig:
    """Every hyper-parameter of one network; fields of the other kinds' heads are ignored."""

    kind: str
    size: str
    img_size: int
    enc_embed_dim: int
    enc_depth: int
    enc_num_heads: int
    dec_embed_dim: int
    dec_depth: int
    dec_num_heads: int
    patch_size: int = 16
    mlp_ratio: float = 4.0
    rope_base: float = 100.0
    # coarse head: width of the query/template projections compared by scaled dot product
    match_dim: int = 128
    # refiner head: DPT taps (global block index: encoder blocks first, then decoder blocks)
    dpt_hooks: tuple[int, int, int, int] = (5, 7, 8, 9)
    dpt_layer_dims: tuple[int, int, int, int] = (24, 48, 96, 192)
    dpt_feature_dim: int = 32
    dpt_last_dim: int = 16  # channels of the last 3x3 conv
    dpt_head_stride: int = 2  # 1: last convs at full resolution (CroCo); 2: at half, then bilinear upsampling
    dpt_image_channels: int = 0  # > 0: early-fusion convolution stem over both images into the last DPT stage (not in Co-op)
    flow_radius: float = 2.0  # R (pixels) in flow_probability = 1 - exp(-R / b)
    # bounds (pixels) of the Laplace scale b. CroCo-Flow uses 0.25..4; refiner flows at the first
    # iteration (15 deg init noise) are off by tens of pixels, and with b <= 4 the flow probability
    # 1 - exp(-R/b) could not go below 0.39 (R = 2), so uncertain pixels would keep much PnP weight.
    scale_min: float = 0.25
    scale_max: float = 16.0
    # pixels per unit of the raw flow output. 1 (pixels, as CroCo-Flow) suits pretrained weights; trained
    # from scratch, a head whose outputs start near 0 +- 0.5 needs thousands of steps to reach flows of tens
    # of pixels, so the tiny refiner predicts flow in patch units (16 px) instead.
    flow_unit: float = 1.0
    # width of the patch-correlation flow prior (0: off, as Co-op). When > 0, each decoded rendered token
    # is matched against the query's encoder tokens (softmax of scaled dot products, as the coarse head)
    # and the expected query patch centre gives a patch-level flow that the DPT output refines. Trained
    # from scratch on a CPU, the DPT regression alone stays at a constant flow for thousands of steps.
    flow_match_dim: int = 0

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patches per image, Np."""
        return self.grid * self.grid

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


_BASE = {
    ("coarse", "tiny"): dict(img_size=160, enc_embed_dim=160, enc_depth=6, enc_num_heads=4,
                             dec_embed_dim=160, dec_depth=4, dec_num_heads=4, match_dim=128),
    ("refiner", "tiny"): dict(img_size=160, enc_embed_dim=160, enc_depth=6, enc_num_heads=4,
                              dec_embed_dim=160, dec_depth=4, dec_num_heads=4,
                              dpt_hooks=(5, 7, 8, 9), dpt_layer_dims=(24, 48, 96, 192), dpt_feature_dim=32,
                              dpt_last_dim=16, flow_unit=16.0, flow_match_dim=64,
                              dpt_image_channels=16),
    # The tiny selector shares the coarse backbone so it can start from the trained coarse network (a
    # smaller one trained alone stayed at chance on our CPU budget; docs/training.md, run 4).
    ("selection", "tiny"): dict(img_size=160, enc_embed_dim=160, enc_depth=6, enc_num_heads=4,
                                dec_embed_dim=160, dec_depth=4, dec_num_heads=4, match_dim=128),
    ("coarse", "paper"): dict(img_size=224, enc_embed_dim=1024, enc_depth=24, enc_num_heads=16,
                              dec_embed_dim=768, dec_depth=12, dec_num_heads=12, match_dim=256),
    ("refiner", "paper"): dict(img_size=224, enc_embed_dim=1024, enc_depth=24, enc_num_heads=16,
                               dec_embed_dim=768, dec_depth=12, dec_num_heads=12,
                               dpt_hooks=(23, 27, 31, 35), dpt_layer_dims=(96, 192, 384, 768), dpt_feature_dim=256,
                               dpt_last_dim=32, dpt_head_stride=1),
    ("selection", "paper"): dict(img_size=224, enc_embed_dim=768, enc_depth=12, enc_num_heads=12,
                                 dec_embed_dim=512, dec_depth=8, dec_num_heads=16),
}


def get_config(kind: str, size: str = "tiny", **overrides) -> ModelConfig:
    """The named configuration of `kind` x `size`, with optional field overrides (checked)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown model kind {kind!r}; choose one of {KINDS}.")
    if size not in SIZES:
        raise ConfigError(f"unknown model size {size!r}; choose one of {SIZES}.")
    return config_from_dict({"kind": kind, "size": size, **_BASE[kind, size], **overrides})


def config_from_dict(d: dict) -> ModelConfig:
    """Rebuild and validate a ModelConfig from `to_dict()` output (lists become tuples)."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = set(d) - fields
    if unknown:
        raise ConfigError(f"unknown model config fields {sorted(unknown)}; valid fields are {sorted(fields)}.")
    try:
        cfg = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
    except TypeError as err:
        raise ConfigError(f"incomplete model config: {err}") from err
    _validate(cfg)
    return cfg


def _validate(cfg: ModelConfig) -> None:
    if cfg.kind not in KINDS:
        raise ConfigError(f"model config kind {cfg.kind!r} is not one of {KINDS}.")
    if cfg.img_size % cfg.patch_size:
        raise ConfigError(f"img_size {cfg.img_size} must be a multiple of patch_size {cfg.patch_size}.")
    for name in ("enc", "dec"):
        dim, heads = getattr(cfg, f"{name}_embed_dim"), getattr(cfg, f"{name}_num_heads")
        if dim % heads or (dim // heads) % 4:
            raise ConfigError(f"{name}_embed_dim {dim} / {name}_num_heads {heads} must give a head width divisible by 4 (RoPE2D).")
    if cfg.kind == "refiner":
        n_blocks = cfg.enc_depth + cfg.dec_depth
        hooks = cfg.dpt_hooks
        if len(hooks) != 4 or not all(0 <= h < n_blocks for h in hooks) or hooks[1] < cfg.enc_depth or hooks[3] != n_blocks - 1:
            raise ConfigError(
                f"dpt_hooks {hooks} must be 4 block indices in [0, {n_blocks}), the last three in the decoder "
                f"(>= enc_depth {cfg.enc_depth}) and the last one the final block {n_blocks - 1} (every block is used)."
            )
        if cfg.dpt_head_stride not in (1, 2):
            raise ConfigError(f"dpt_head_stride must be 1 or 2, got {cfg.dpt_head_stride}.")
        if cfg.dpt_image_channels < 0:
            raise ConfigError(f"dpt_image_channels must be >= 0 (0: no image stem), got {cfg.dpt_image_channels}.")
        if cfg.flow_match_dim < 0:
            raise ConfigError(f"flow_match_dim must be >= 0 (0: no correlation prior), got {cfg.flow_match_dim}.")
        if not cfg.flow_unit > 0:
            raise ConfigError(f"flow_unit must be > 0 pixels, got {cfg.flow_unit}.")
        if not 0 < cfg.scale_min < cfg.scale_max:
            raise ConfigError(f"need 0 < scale_min < scale_max, got {cfg.scale_min}, {cfg.scale_max}.")
