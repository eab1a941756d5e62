"""Task heads of the three Co-op networks: coarse patch classification + offsets, refiner DPT, selection score."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cooppose.models.vit import LN_EPS, Mlp, patch_positions


def scaled_similarity(a: torch.Tensor, b: torch.Tensor, log_temperature: torch.Tensor) -> torch.Tensor:
    """Matching logits <a_i, b_k> * exp(tau) / sqrt(d) of projected tokens a (B, N, d), b (B, K, d) -> (B, N, K)."""
    return a @ b.transpose(1, 2) * (log_temperature.exp() / math.sqrt(a.shape[-1]))


def add_patch_matcher(head: nn.Module, dec_dim: int, enc_dim: int, match_dim: int) -> None:
    """Give `head` the patch-matching layers that patch_match_logits uses (the same names in every head)."""
    head.query_proj = nn.Linear(dec_dim, match_dim)
    head.template_norm = nn.LayerNorm(enc_dim, eps=LN_EPS)
    head.template_proj = nn.Linear(enc_dim, match_dim)
    head.log_temperature = nn.Parameter(torch.zeros(()))
    head.no_match = Mlp(dec_dim, dec_dim, 1)


def patch_match_logits(head: nn.Module, query_dec: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query patch: logits over the other image's Np patches + "no match", from the patch-matching layers
    that CoarseHead and SelectionHead share (query_proj, template_norm, template_proj, log_temperature, no_match).

    Decoded query (B, Np, Dd) + the other image's encoder tokens (B, Np, De) -> logits (B, Np, Np+1) and the
    projected other-image tokens (B, Np, M)."""
    q = head.query_proj(query_dec)  # (B, Np, M)
    t = head.template_proj(head.template_norm(tokens))  # (B, Np, M)
    match = scaled_similarity(q, t, head.log_temperature)  # (B, Np, Np)
    return torch.cat([match, head.no_match(query_dec)], -1), t


class CoarseHead(nn.Module):
    """Per query patch: logits over the template's Np patches + "no match" (index Np), and a sub-patch offset.

    Design (method.md 2.3 leaves the head form open):
    - Match logits are a scaled dot product between projected decoded query tokens and projected
      template encoder tokens, logit[i, k] = <q_i, t_k> * exp(tau) / sqrt(d). A per-class Linear layer
      would tie class k to a fixed weight vector, i.e. to the absolute patch index; the dot product
      instead compares content, so permuting the template's patches permutes the logits the same
      way (equivariance), and the head has no parameters per class, so it works at any Np.
    - The template side uses the cached encoder tokens (after enc_norm), so at inference the 42
      templates are encoded once and only the decoder + this head run per query-template pair.
    - The "no match" logit comes from an MLP on the decoded query token alone: whether a query patch
      has a partner (background, occlusion, hidden surface) is a property of the query in context.
    - The offset (x, y) in patch units comes from an MLP on the decoded query token concatenated
      with the softmax-attended projected template token, bounded to [-0.5, 0.5] by 0.5 * tanh; it
      sees the appearance of the template patch it is being placed in.
    """

    def __init__(self, dec_dim: int, enc_dim: int, match_dim: int):
        super().__init__()
        add_patch_matcher(self, dec_dim, enc_dim, match_dim)
        self.offset = Mlp(dec_dim + match_dim, dec_dim, 2)

    def forward(self, query_dec: torch.Tensor, template_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Decoded query (B, Np, Dd) + template encoder tokens (B, Np, De) -> logits (B, Np, Np+1), offsets (B, Np, 2)."""
        logits, t = patch_match_logits(self, query_dec, template_tokens)
        attended = logits[..., :-1].softmax(-1) @ t  # (B, Np, M)
        offsets = 0.5 * torch.tanh(self.offset(torch.cat([query_dec, attended], -1)))  # (B, Np, 2)
        return {"logits": logits, "offsets": offsets}


def template_score(logits: torch.Tensor) -> torch.Tensor:
    """Template ranking score (method.md 2.4 (a)): mean over query patches of 1 - p(no match); logits (B, Np, Np+1) -> (B,)."""
    return 1.0 - logits.float().softmax(-1)[..., -1].mean(-1)


class _ResidualConv(nn.Module):
    """ReLU-conv3x3-ReLU-conv3x3 with a skip connection (DPT's residual conv unit)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _Fusion(nn.Module):
    """DPT fusion: add the refined skip feature (when it has one), refine, upsample (bilinear), 1x1 conv."""

    def __init__(self, ch: int, with_skip: bool = True):
        super().__init__()
        self.res_skip = _ResidualConv(ch) if with_skip else None
        self.res_out = _ResidualConv(ch)
        self.out_conv = nn.Conv2d(ch, ch, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None) -> torch.Tensor:
        """x (B, C, h, w) [+ skip of the same size when built with_skip] -> (B, C, size or 2h x 2w)."""
        if self.res_skip is not None:
            x = x + self.res_skip(skip)
        x = self.res_out(x)
        size = size or (2 * x.shape[-2], 2 * x.shape[-1])
        return self.out_conv(F.interpolate(x, size=size, mode="bilinear", align_corners=True))


class DPTHead(nn.Module):
    """Dense head on 4 token maps (DPT): reassemble at 1/4, 1/8, 1/16, 1/32 of the input, fuse coarse-to-fine, predict at full size.

    Outputs `out_channels` maps at img_size x img_size; no batch norm, so a batch split across
    processes gives the same result as the whole batch. With head_stride 2 the last two convolutions
    run at half resolution and their output is upsampled bilinearly (CPU sizes: convolution backward
    at full resolution is the largest cost of the head).

    With image_channels > 0 a two-layer convolution stem over the two input images, stacked as 6
    channels, adds image_channels maps at half resolution to the last fusion stage (an early-fusion skip:
    local differences between the rendering and the query at pixel scale, which the 16-pixel tokens
    only reach after long training).
    """

    def __init__(self, token_dims: tuple[int, ...], layer_dims: tuple[int, ...], feature_dim: int, grid: int,
                 img_size: int, out_channels: int, last_dim: int, head_stride: int = 1, image_channels: int = 0):
        super().__init__()
        self.grid = grid
        self.img_size = img_size
        resample = [
            nn.ConvTranspose2d(layer_dims[0], layer_dims[0], 4, stride=4),
            nn.ConvTranspose2d(layer_dims[1], layer_dims[1], 2, stride=2),
            nn.Identity(),
            nn.Conv2d(layer_dims[3], layer_dims[3], 3, stride=2, padding=1),
        ]
        self.reassemble = nn.ModuleList(
            nn.Sequential(nn.Conv2d(td, ld, 1), rs) for td, ld, rs in zip(token_dims, layer_dims, resample)
        )
        self.project = nn.ModuleList(nn.Conv2d(ld, feature_dim, 3, padding=1, bias=False) for ld in layer_dims)
        self.fusion = nn.ModuleList(_Fusion(feature_dim, with_skip=i < 3) for i in range(4))  # the coarsest has no skip
        self.head_stride = head_stride
        self.image_stem = None
        if image_channels:
            self.image_stem = nn.Sequential(
                nn.Conv2d(6, image_channels, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(image_channels, image_channels, 3, padding=1), nn.ReLU(),
            )
        self.out = nn.Sequential(
            nn.Conv2d(feature_dim + image_channels, feature_dim // 2, 3, padding=1),
            nn.Upsample(size=(img_size // head_stride,) * 2, mode="bilinear", align_corners=True),
            nn.Conv2d(feature_dim // 2, last_dim, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(last_dim, out_channels, 1),
        )

    def forward(self, tokens: list[torch.Tensor], images: torch.Tensor | None = None) -> torch.Tensor:
        """4 token sets (B, N, C_i), N = grid^2 [+ the two images (B, 6, S, S) for the stem] -> maps (B, out_channels, S, S)."""
        B = tokens[0].shape[0]
        maps = [t.transpose(1, 2).reshape(B, t.shape[-1], self.grid, self.grid) for t in tokens]
        feats = [proj(re(m)) for m, re, proj in zip(maps, self.reassemble, self.project)]  # 1/4 .. 1/32
        x = self.fusion[3](feats[3], size=feats[2].shape[-2:])
        x = self.fusion[2](x, feats[2], size=feats[1].shape[-2:])
        x = self.fusion[1](x, feats[1], size=feats[0].shape[-2:])
        x = self.fusion[0](x, feats[0])  # (B, F, S/2, S/2)
        if self.image_stem is not None:
            x = torch.cat([x, self.image_stem(images)], 1)
        out = self.out(x)
        if self.head_stride > 1:  # the last convs ran at 1/head_stride: bilinear (pixel-centre aligned) to full size
            out = F.interpolate(out, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
        return out


class PatchCorrelationFlow(nn.Module):
    """Patch-level flow from matching: each decoded rendered token attends over the query's encoder tokens;
    flow = expected query patch centre - own centre, in pixels, upsampled bilinearly to the image
    (method.md leaves the refiner head open; see flow_match_dim).

    Attention logits = scaled dot product (as CoarseHead) - |c_i - c_j|^2 / (2 sigma^2), a locality prior
    with a learned width sigma (patches, starts at 1): the refiner's initial pose is close, so its flow is
    local, and the prior makes the untrained flow start near zero instead of pointing at the crop centre."""

    def __init__(self, dec_dim: int, enc_dim: int, match_dim: int, grid: int, patch: int, img_size: int):
        super().__init__()
        self.grid = grid
        self.img_size = img_size
        self.render_proj = nn.Linear(dec_dim, match_dim)
        self.query_norm = nn.LayerNorm(enc_dim, eps=LN_EPS)
        self.query_proj = nn.Linear(enc_dim, match_dim)
        self.log_temperature = nn.Parameter(torch.zeros(()))
        self.log_sigma = nn.Parameter(torch.zeros(()))  # locality width, log patches
        idx = (torch.arange(grid, dtype=torch.float32) + 0.5) * patch - 0.5  # patch centres, pixels
        v, u = torch.meshgrid(idx, idx, indexing="ij")
        centers = torch.stack([u, v], -1).reshape(-1, 2)  # (N, 2)
        self.register_buffer("centers", centers, persistent=False)
        self.register_buffer("dist2", torch.cdist(centers, centers).square() / patch**2, persistent=False)  # (N, N) patches^2

    def forward(self, render_dec: torch.Tensor, query_enc: torch.Tensor) -> torch.Tensor:
        """Decoded rendered tokens (B, N, Dd), query encoder tokens (B, N, De) -> flow (B, 2, S, S) pixels."""
        r = self.render_proj(render_dec)  # (B, N, M)
        q = self.query_proj(self.query_norm(query_enc))  # (B, N, M)
        logits = scaled_similarity(r, q, self.log_temperature)  # (B, N, N)
        attn = (logits - self.dist2 / (2 * torch.exp(2 * self.log_sigma))).softmax(-1)
        flow = attn.float() @ self.centers - self.centers  # (B, N, 2)
        flow = flow.transpose(1, 2).reshape(flow.shape[0], 2, self.grid, self.grid)
        return F.interpolate(flow, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)


class RefinerHead(nn.Module):
    """DPT trunk with 5 channels -> flow (2), Laplace scale b, certainty, sensitivity, and their products.

    - flow (B, 2, S, S): displacement in pixels from each rendered pixel into the query crop (raw output x flow_unit,
      plus the PatchCorrelationFlow prior when the head has one)
    - scale b (B, 1, S, S) in [scale_min, scale_max] pixels (bounded sigmoid, as CroCo-Flow)
    - certainty (B, 1, S, S) in (0, 1): the rendered pixel is visible in the query
    - sensitivity (B, 1, S, S) >= 0 (softplus): pose-informativeness, trained through the pose loss only
    - flow_probability = 1 - exp(-R / b) = P(|flow error|_1 < R) under the Laplace model
    - confidence = flow_probability * certainty * sensitivity (the PnP weights)
    """

    def __init__(self, token_dims: tuple[int, ...], layer_dims: tuple[int, ...], feature_dim: int, grid: int,
                 img_size: int, last_dim: int, head_stride: int, flow_radius: float, scale_min: float, scale_max: float,
                 flow_unit: float = 1.0, correlation: PatchCorrelationFlow | None = None, image_channels: int = 0):
        super().__init__()
        self.dpt = DPTHead(token_dims, layer_dims, feature_dim, grid, img_size, out_channels=5, last_dim=last_dim,
                           head_stride=head_stride, image_channels=image_channels)
        self.flow_radius = flow_radius
        self.scale_min = scale_min
        self.scale_max = scale_max
        self.flow_unit = flow_unit
        self.correlation = correlation

    def forward(self, tokens: list[torch.Tensor], flow_radius: float | None = None,
                query_tokens: torch.Tensor | None = None, images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """4 token sets (B, N, C_i) [+ query encoder tokens (B, N, De) for the correlation prior, the rendering
        and query stacked (B, 6, S, S) for the image stem] -> dict of (B, C, S, S) maps."""
        raw = self.dpt(tokens, images).float()  # (B, 5, S, S)
        flow = raw[:, 0:2] * self.flow_unit
        if self.correlation is not None:
            flow = flow + self.correlation(tokens[-1], query_tokens)
        scale = self.scale_min + (self.scale_max - self.scale_min) * torch.sigmoid(raw[:, 2:3])
        certainty_logit = raw[:, 3:4]
        certainty = torch.sigmoid(certainty_logit)
        sensitivity = F.softplus(raw[:, 4:5])
        prob = flow_probability(scale, self.flow_radius if flow_radius is None else flow_radius)
        return {
            "flow": flow,
            "scale": scale,
            "certainty": certainty,
            "certainty_logit": certainty_logit,
            "sensitivity": sensitivity,
            "flow_probability": prob,
            "confidence": prob * certainty * sensitivity,
        }


def flow_probability(scale: torch.Tensor, radius: float) -> torch.Tensor:
    """P(|e|_1 < R) for a Laplace flow error of scale b: 1 - exp(-R / b); same shape as scale."""
    return -torch.expm1(-radius / scale)


class SelectionHead(nn.Module):
    """Hypothesis score from patch alignment: is each query patch matched to the rendered patch at its own place?

    Design (method.md 4 leaves the selector's form open): with the query cropped and the mesh rendered at
    the same hypothesis, a right pose puts each object point at the same patch in both images. The head
    matches every decoded query patch to the rendering's patches with the coarse head's patch-matching
    layers (same names, so a selection network can start from the trained coarse network), and pools three
    per-patch probabilities: matched to the same patch, to its 3x3 neighbourhood, and "no match". Same and
    neighbourhood are averaged with weights p(match), so background patches do not count. A Linear layer on
    the mean decoded token adds appearance cues; it starts at zero, so training starts from the alignment
    score. A pooled-token-only head (run 1) stayed at chance (validation accuracy 0.50-0.58); the trained
    coarse network's same-patch probability alone separates right from wrong hypotheses (AUC 0.86).
    """

    def __init__(self, dec_dim: int, enc_dim: int, match_dim: int, grid: int):
        super().__init__()
        add_patch_matcher(self, dec_dim, enc_dim, match_dim)
        self.alignment = nn.Linear(3, 1)
        self.appearance = nn.Linear(dec_dim, 1)
        ij = patch_positions(grid, grid)  # (Np, 2)
        self.register_buffer("near", ((ij[:, None] - ij[None]).abs().amax(-1) <= 1).float(), persistent=False)  # (Np, Np)

    def reset_parameters(self) -> None:
        """Alignment weights that start at a useful score (same-patch probability), appearance at zero."""
        with torch.no_grad():
            self.alignment.weight.copy_(torch.tensor([[10.0, 0.0, 0.0]]))
            self.alignment.bias.fill_(-1.0)
            self.appearance.weight.zero_()
            self.appearance.bias.zero_()

    def forward(self, query_dec: torch.Tensor, render_tokens: torch.Tensor) -> torch.Tensor:
        """Decoded query (B, Np, Dd) + the rendering's encoder tokens (B, Np, De) -> logit (B,)."""
        logits, _ = patch_match_logits(self, query_dec, render_tokens)
        p = logits.float().softmax(-1)  # (B, Np, Np+1)
        matched = 1.0 - p[..., -1]  # (B, Np)
        w = matched / matched.sum(-1, keepdim=True).clamp_min(1e-6)
        same = (w * p[..., :-1].diagonal(dim1=1, dim2=2)).sum(-1)  # (B,)
        near = (w * (p[..., :-1] * self.near).sum(-1)).sum(-1)  # (B,)
        feats = torch.stack([same, near, matched.mean(-1)], -1).to(query_dec.dtype)  # (B, 3)
        return (self.alignment(feats) + self.appearance(query_dec.mean(1)))[:, 0]
