"""The CroCo-style siamese pair network and the three Co-op models built on it (coarse, refiner, selection).

One encoder (shared weights) encodes both images; `decoder_embed` maps both token sets to the decoder
width; the decoder updates one stream (x) with self-attention and cross-attention to the other (y),
which passes through unchanged. Parameter names match CroCo v2 so its checkpoints load by name
(`load_croco_weights`); heads live under `head.`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cooppose.errors import CheckpointError, InputError
from cooppose.models.configs import ModelConfig, get_config
from cooppose.models.heads import CoarseHead, PatchCorrelationFlow, RefinerHead, SelectionHead
from cooppose.models.vit import LN_EPS, Block, DecoderBlock, PatchEmbed, RoPE2D, patch_positions

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
    """ImageNet-normalise uint8 RGB images (B, H, W, 3) (numpy or tensor; (H, W, 3) gets B = 1) -> float32 (B, 3, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)) if isinstance(rgb, np.ndarray) else rgb
    if x.dtype != torch.uint8:
        raise InputError(f"normalize expects uint8 RGB images, got dtype {x.dtype}; convert with .astype(np.uint8) from 0..255.")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise InputError(f"normalize expects RGB images of shape (B, H, W, 3) or (H, W, 3), got {tuple(x.shape)}.")
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x.permute(0, 3, 1, 2).float() / 255.0 - mean) / std


class CroCoPair(nn.Module):
    """Shared ViT encoder + cross-attention decoder (CroCo v2 layout, RoPE2D positions, no mask token)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.rope = RoPE2D(cfg.rope_base)
        self.patch_embed = PatchEmbed(cfg.img_size, cfg.patch_size, cfg.enc_embed_dim)
        self.enc_blocks = nn.ModuleList(
            Block(cfg.enc_embed_dim, cfg.enc_num_heads, cfg.mlp_ratio) for _ in range(cfg.enc_depth)
        )
        self.enc_norm = nn.LayerNorm(cfg.enc_embed_dim, eps=LN_EPS)
        self.decoder_embed = nn.Linear(cfg.enc_embed_dim, cfg.dec_embed_dim)
        self.dec_blocks = nn.ModuleList(
            DecoderBlock(cfg.dec_embed_dim, cfg.dec_num_heads, cfg.mlp_ratio) for _ in range(cfg.dec_depth)
        )
        self.dec_norm = nn.LayerNorm(cfg.dec_embed_dim, eps=LN_EPS)
        self.register_buffer("pos", patch_positions(cfg.grid, cfg.grid)[None], persistent=False)  # (1, N, 2)

    def init_weights(self) -> None:
        """CroCo's initialisation: xavier-uniform Linear weights (and patch conv), zero biases, unit LayerNorms."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))

    def encode_blocks(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Normalised images (B, 3, S, S) -> output of every encoder block (B, N, De); the last after enc_norm."""
        x = self.patch_embed(img)
        rope = self.rope.tables(self.pos, self.cfg.enc_embed_dim // self.cfg.enc_num_heads)
        out = []
        for blk in self.enc_blocks:
            x = blk(x, rope)
            out.append(x)
        out[-1] = self.enc_norm(out[-1])
        return out

    def encode_image(self, img: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, S, S) -> tokens (B, N, De) after enc_norm."""
        return self.encode_blocks(img)[-1]

    def decode_blocks(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Encoder tokens of the decoded image x and the other image y (B, N, De) -> every decoder block's x (B, N, Dd); the last after dec_norm."""
        x, y = self.decoder_embed(x), self.decoder_embed(y)
        rope = self.rope.tables(self.pos, self.cfg.dec_embed_dim // self.cfg.dec_num_heads)
        out = []
        for blk in self.dec_blocks:
            x = blk(x, y, rope, rope)
            out.append(x)
        out[-1] = self.dec_norm(out[-1])
        return out

    def decode(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Decoded x stream (B, N, Dd) after dec_norm, x cross-attending y (encoder tokens (B, N, De))."""
        return self.decode_blocks(x, y)[-1]

    def encode_pair(self, img1: torch.Tensor, img2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode two image batches (B, 3, S, S) in one encoder pass -> two token sets (B, N, De)."""
        tokens = self.encode_image(torch.cat([img1, img2]))
        return tokens[: img1.shape[0]], tokens[img1.shape[0]:]


class CoarseNet(CroCoPair):
    """Coarse model: the query stream is decoded against a template; heads classify each query patch (CoarseHead)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.head = CoarseHead(cfg.dec_embed_dim, cfg.enc_embed_dim, cfg.match_dim)
        self.init_weights()

    def match(self, query_tokens: torch.Tensor, template_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encoded query and template (B, Np, De) -> logits (B, Np, Np+1), offsets (B, Np, 2) in [-0.5, 0.5]."""
        return self.head(self.decode(query_tokens, template_tokens), template_tokens)

    def forward(self, query: torch.Tensor, template: torch.Tensor) -> dict[str, torch.Tensor]:
        """Normalised query and template crops (B, 3, S, S) -> logits (B, Np, Np+1), offsets (B, Np, 2)."""
        return self.match(*self.encode_pair(query, template))


class RefinerNet(CroCoPair):
    """Refiner: the rendered stream is decoded (flow lives on the rendered grid); a DPT head taps encoder + decoder blocks."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        token_dims = tuple(cfg.enc_embed_dim if h < cfg.enc_depth else cfg.dec_embed_dim for h in cfg.dpt_hooks)
        correlation = None
        if cfg.flow_match_dim:
            correlation = PatchCorrelationFlow(cfg.dec_embed_dim, cfg.enc_embed_dim, cfg.flow_match_dim, cfg.grid,
                                               cfg.patch_size, cfg.img_size)
        self.head = RefinerHead(token_dims, cfg.dpt_layer_dims, cfg.dpt_feature_dim, cfg.grid, cfg.img_size,
                                cfg.dpt_last_dim, cfg.dpt_head_stride, cfg.flow_radius, cfg.scale_min, cfg.scale_max,
                                cfg.flow_unit, correlation, cfg.dpt_image_channels)
        self.init_weights()

    def forward(self, query: torch.Tensor, render: torch.Tensor, flow_radius: float | None = None) -> dict[str, torch.Tensor]:
        """Normalised query crop and rendering (B, 3, S, S) -> flow (B,2,S,S) px, scale, certainty, sensitivity,
        flow_probability, confidence (B,1,S,S) and certainty_logit, all on the rendered image grid."""
        B = render.shape[0]
        enc = self.encode_blocks(torch.cat([render, query]))
        blocks = [e[:B] for e in enc] + self.decode_blocks(enc[-1][:B], enc[-1][B:])
        images = torch.cat([render, query], 1) if self.cfg.dpt_image_channels else None  # (B, 6, S, S) for the stem
        return self.head([blocks[h] for h in self.cfg.dpt_hooks], flow_radius, query_tokens=enc[-1][B:], images=images)


class SelectionNet(CroCoPair):
    """Selection: the query stream is decoded against the rendering of a hypothesis; patch alignment -> one logit."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.head = SelectionHead(cfg.dec_embed_dim, cfg.enc_embed_dim, cfg.match_dim, cfg.grid)
        self.init_weights()
        self.head.reset_parameters()

    def forward(self, query: torch.Tensor, render: torch.Tensor) -> torch.Tensor:
        """Normalised query crop and rendering (B, 3, S, S) -> logit (B,) that the hypothesis is correct."""
        query_tokens, render_tokens = self.encode_pair(query, render)
        return self.head(self.decode(query_tokens, render_tokens), render_tokens)


_NETS = {"coarse": CoarseNet, "refiner": RefinerNet, "selection": SelectionNet}


def build_from_config(cfg: ModelConfig) -> CroCoPair:
    """Instantiate the network described by `cfg` (randomly initialised)."""
    return _NETS[cfg.kind](cfg)


def build_model(kind: str, size: str = "tiny", **overrides) -> CroCoPair:
    """A randomly initialised `kind` network ("coarse", "refiner", "selection") of `size` ("tiny", "paper")."""
    return build_from_config(get_config(kind, size, **overrides))


@dataclass
class LoadReport:
    """Outcome of `load_croco_weights`: parameter names loaded, left missing (heads) and ignored."""

    loaded: list[str]
    missing: list[str]
    unexpected: list[str]


_CROCO_ONLY = ("mask_token", "prediction_head.")
_CROCO_KWARGS = ("enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim", "dec_depth", "dec_num_heads")


def plan_croco_load(model: CroCoPair, state: dict[str, torch.Tensor], path: str = "<state dict>") -> LoadReport:
    """Match a CroCo v2 state dict to `model` by name and shape (no copying; works on meta tensors)."""
    own = model.state_dict()
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if "enc_pos_embed" in state or "dec_pos_embed" in state:
        raise CheckpointError(f"{path}: a CroCo v1 checkpoint (cosine position embeddings); use a CroCo v2 (RoPE100) one.")
    loaded, unexpected = [], []
    for name, value in state.items():
        if name.startswith(_CROCO_ONLY):
            unexpected.append(name)
        elif name not in own:
            raise CheckpointError(f"{path}: parameter {name!r} has no counterpart in the {model.cfg.kind} model; is it a CroCo v2 checkpoint?")
        elif tuple(value.shape) != tuple(own[name].shape):
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(value.shape)}, the model expects {tuple(own[name].shape)}; "
                f"use the checkpoint that matches size {model.cfg.size!r}."
            )
        else:
            loaded.append(name)
    missing = [k for k in own if k not in state]
    backbone_missing = [k for k in missing if not k.startswith("head.")]
    if backbone_missing:
        raise CheckpointError(f"{path}: backbone parameters missing from the checkpoint: {backbone_missing[:5]} ...")
    return LoadReport(loaded=loaded, missing=missing, unexpected=unexpected)


def load_croco_weights(model: CroCoPair, path: str) -> LoadReport:
    """Load a CroCo v2 checkpoint (a dict with `model` and `croco_kwargs`) into the backbone of `model`; heads stay as they are."""
    from pathlib import Path

    from cooppose.models.checkpoint import load_torch_file  # imported here: checkpoint imports this module

    if not Path(path).is_file():
        raise CheckpointError(f"{path}: CroCo checkpoint not found; download it from naver/croco and pass its path.")
    ckpt = load_torch_file(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{path}: expected a dict with a 'model' state dict (CroCo v2 release format).")
    kwargs = ckpt.get("croco_kwargs") or {}
    wrong = {k: (kwargs[k], getattr(model.cfg, k)) for k in _CROCO_KWARGS if k in kwargs and kwargs[k] != getattr(model.cfg, k)}
    if wrong:
        raise CheckpointError(f"{path}: CroCo sizes (checkpoint, model) differ: {wrong}; pick the checkpoint for this model size.")
    pos_embed = kwargs.get("pos_embed", "RoPE100")
    if not str(pos_embed).startswith("RoPE") or float(str(pos_embed)[4:]) != model.cfg.rope_base:
        raise CheckpointError(f"{path}: position embedding {pos_embed!r}; cooppose needs RoPE{model.cfg.rope_base:g}.")
    state = {k.removeprefix("module."): v for k, v in ckpt["model"].items()}
    report = plan_croco_load(model, state, path)
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    return report
