"""ViT building blocks in the CroCo v2 layout: patch embedding, RoPE2D, attention, encoder and decoder blocks.

Parameter names follow naver/croco (`models/blocks.py`) so that CroCo v2 checkpoints load by name:
`patch_embed.proj`, `attn.qkv`, `attn.proj`, `cross_attn.projq/projk/projv/proj`, `norm1/2/3`,
`norm_y`, `mlp.fc1/fc2`. Attention runs through `torch.nn.functional.scaled_dot_product_attention`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LN_EPS = 1e-6  # CroCo's LayerNorm epsilon


def patch_positions(grid_h: int, grid_w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Integer (y, x) grid position of each patch in row-major order: (grid_h * grid_w, 2) int64."""
    ys = torch.arange(grid_h, device=device)
    xs = torch.arange(grid_w, device=device)
    return torch.cartesian_prod(ys, xs)


RopeTables = tuple[torch.Tensor, torch.Tensor]  # cos, signed sin: (1, 1, N, head_dim) each


class RoPE2D(nn.Module):
    """2D rotary position embedding: the first half of each head's channels is rotated by y, the second by x.

    Each half of size D uses 1D RoPE with inverse frequencies base^(-2i/D), i < D/2, and the
    "rotate half" pairing (channel i with channel i + D/2), as CroCo's `RoPE100`. Tables for a
    position set are made once by `tables` (cached per head width and device) and applied by
    `apply` with one swap, two multiplies and an add.
    """

    def __init__(self, base: float = 100.0):
        super().__init__()
        self.base = float(base)
        self._cache: dict[tuple, RopeTables] = {}

    def tables(self, pos: torch.Tensor, head_dim: int) -> RopeTables:
        """float32 cos and signed sin tables (1, 1, N, head_dim) for positions (1, N, 2) int64 (y, x)."""
        if head_dim % 4:
            raise ValueError(f"RoPE2D needs a head dimension divisible by 4, got {head_dim}")
        key = (pos.device, pos.data_ptr(), tuple(pos.shape), head_dim)
        if key not in self._cache:
            half = head_dim // 2
            inv_freq = 1.0 / (self.base ** (torch.arange(0, half, 2, device=pos.device, dtype=torch.float64) / half))
            ang = pos[0].double()[:, :, None] * inv_freq  # (N, 2, half/2): y then x
            ang = torch.cat([ang, ang], -1)  # (N, 2, half): each 1D half repeats its angles
            sign = torch.tensor([-1.0, 1.0], device=pos.device, dtype=torch.float64).repeat_interleave(half // 2)
            cos = ang.cos().reshape(1, 1, -1, head_dim).float()
            sin = (ang.sin() * sign).reshape(1, 1, -1, head_dim).float()
            self._cache[key] = (cos, sin)
        return self._cache[key]

    @staticmethod
    def apply(x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
        """Rotate tokens (B, heads, N, d) with tables from `tables`; returns the same shape and dtype."""
        B, H, N, d = x.shape
        cos, sin = (t.to(x.dtype) for t in rope)
        swapped = x.reshape(B, H, N, 2, 2, d // 4).flip(-2).reshape(B, H, N, d)
        return torch.addcmul(x * cos, swapped, sin)


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: Conv2d(3 -> dim, kernel = stride = patch) on a fixed img_size square."""

    def __init__(self, img_size: int, patch_size: int, embed_dim: int):
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = (img_size // patch_size, img_size // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, S, S) -> tokens (B, N, dim), N = (S / patch)^2 in row-major patch order."""
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"expected images of {self.img_size}x{self.img_size}, got {tuple(x.shape[-2:])}")
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """Two-layer perceptron with GELU (fc1 -> GELU -> fc2)."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., out_dim)."""
        return self.fc2(self.act(self.fc1(x)))


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    B, N, C = x.shape
    return x.reshape(B, N, n_heads, C // n_heads).transpose(1, 2)  # (B, H, N, d)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (with bias) and RoPE2D on q and k."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
        """Tokens (B, N, C) with their RoPE tables -> (B, N, C)."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, H, N, d)
        q, k = RoPE2D.apply(q, rope), RoPE2D.apply(k, rope)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class CrossAttention(nn.Module):
    """Multi-head cross-attention from x (queries) to y (keys, values) with RoPE2D on q and k."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim, bias=True)
        self.projk = nn.Linear(dim, dim, bias=True)
        self.projv = nn.Linear(dim, dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor, xrope: RopeTables, yrope: RopeTables) -> torch.Tensor:
        """Queries (B, Nx, C) attend keys/values (B, Ny, C) -> (B, Nx, C)."""
        B, N, C = x.shape
        q = RoPE2D.apply(_heads(self.projq(x), self.num_heads), xrope)
        k = RoPE2D.apply(_heads(self.projk(y), self.num_heads), yrope)
        v = _heads(self.projv(y), self.num_heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-LN encoder block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)."""
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Pre-LN decoder block: self-attention on x, cross-attention x -> norm_y(y), MLP; y passes unchanged."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.norm3 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor, y: torch.Tensor, xrope: RopeTables, yrope: RopeTables) -> torch.Tensor:
        """Decoded stream x (B, Nx, C) conditioned on y (B, Ny, C) -> new x (B, Nx, C)."""
        x = x + self.attn(self.norm1(x), xrope)
        x = x + self.cross_attn(self.norm2(x), self.norm_y(y), xrope, yrope)
        return x + self.mlp(self.norm3(x))
