"""Networks: normalisation, RoPE2D, forward passes of the three kinds (tiny and paper sizes), shipped files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cooppose.errors import CheckpointError, ConfigError, InputError
from cooppose.models import build_model, get_config, normalize, template_score
from cooppose.models.checkpoint import load_model, save_model, sidecar_path
from cooppose.models.vit import RoPE2D, patch_positions

S = 160


@pytest.fixture(scope="module")
def pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, S, S, generator=g), torch.randn(2, 3, S, S, generator=g)


def test_normalize_values_numpy_and_tensor():
    rgb = np.zeros((2, 4, 5, 3), np.uint8)
    rgb[0, 1, 2] = (255, 0, 128)
    out = normalize(rgb)
    assert out.shape == (2, 3, 4, 5) and out.dtype == torch.float32
    assert out[0, :, 1, 2].tolist() == pytest.approx([(1 - 0.485) / 0.229, -0.456 / 0.224, (128 / 255 - 0.406) / 0.225], abs=1e-5)
    assert out[1, 0, 0, 0].item() == pytest.approx(-0.485 / 0.229, abs=1e-6)
    assert torch.equal(normalize(torch.from_numpy(rgb)), out)
    assert normalize(rgb[0]).shape == (1, 3, 4, 5)


def test_normalize_rejects_bad_input():
    with pytest.raises(InputError, match="uint8"):
        normalize(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(InputError, match="shape"):
        normalize(np.zeros((1, 3, 4, 4), np.uint8))


def _rope_reference(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """Independent RoPE2D: rotate channel pairs (i, i + D/2) of each half by angle pos * base^(-2i/D)."""
    out = x.clone()
    d = x.shape[-1]
    half = d // 2
    for axis in range(2):  # 0: y on the first half, 1: x on the second half
        off = axis * half
        for i in range(half // 2):
            theta = pos[:, axis].double() * base ** (-2 * i / half)
            c, s = theta.cos().float(), theta.sin().float()
            a, b = x[..., off + i], x[..., off + i + half // 2]
            out[..., off + i] = a * c - b * s
            out[..., off + i + half // 2] = b * c + a * s
    return out


def test_rope2d_matches_reference_and_is_relative():
    rope = RoPE2D(100.0)
    pos = patch_positions(3, 4)[None]  # (1, 12, 2)
    x = torch.randn(2, 3, 12, 16, generator=torch.Generator().manual_seed(1))
    got = RoPE2D.apply(x, rope.tables(pos, 16))
    assert torch.allclose(got, _rope_reference(x, pos[0], 100.0), atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # rotations keep norms
    # q.k after RoPE depends only on the position difference
    q, k = torch.randn(16), torch.randn(16)
    p = torch.tensor([[[0, 0], [1, 2], [2, 1], [3, 3]]])
    rq = RoPE2D.apply(q.expand(1, 1, 4, 16).contiguous(), rope.tables(p, 16))[0, 0]
    rk = RoPE2D.apply(k.expand(1, 1, 4, 16).contiguous(), rope.tables(p, 16))[0, 0]
    assert (rq[1] @ rk[0]).item() == pytest.approx((rq[3] @ rk[2]).item(), abs=1e-4)  # both shifts (1, 2)


def test_coarse_forward_and_split_path(pair):
    torch.manual_seed(0)
    model = build_model("coarse", "tiny").eval()
    q, t = pair
    with torch.no_grad():
        out = model(q, t)
        split = model.match(model.encode_image(q), model.encode_image(t))
    assert out["logits"].shape == (2, 100, 101) and out["offsets"].shape == (2, 100, 2)
    assert out["offsets"].abs().max() <= 0.5
    assert torch.allclose(out["logits"], split["logits"], atol=1e-4)
    assert torch.allclose(out["offsets"], split["offsets"], atol=1e-5)
    score = template_score(out["logits"])
    assert score.shape == (2,) and bool(((score > 0) & (score < 1)).all())
    # the batch does not mix samples: sample 0 alone gives the same logits
    with torch.no_grad():
        alone = model(q[:1], t[:1])["logits"]
    assert torch.allclose(alone, out["logits"][:1], atol=1e-4)


def test_template_score_hand_computed():
    logits = torch.zeros(1, 2, 3)  # 2 query patches, 2 template patches + no match
    logits[0, 1, 2] = math.log(2.0)  # p_nomatch = 2/4 for patch 1; 1/3 for patch 0
    assert template_score(logits).item() == pytest.approx(1 - (1 / 3 + 1 / 2) / 2, abs=1e-6)


def test_refiner_outputs_bounds_and_products(pair):
    torch.manual_seed(0)
    model = build_model("refiner", "tiny").eval()
    cfg = model.cfg
    with torch.no_grad():
        out = model(*pair)
        out_r5 = model(*pair, flow_radius=5.0)
    for k in ("scale", "certainty", "sensitivity", "flow_probability", "confidence"):
        assert out[k].shape == (2, 1, S, S), k
    assert out["flow"].shape == (2, 2, S, S)
    assert cfg.scale_min <= out["scale"].min() and out["scale"].max() <= cfg.scale_max
    assert 0 < out["certainty"].min() and out["certainty"].max() < 1
    assert out["sensitivity"].min() >= 0
    assert torch.allclose(out["flow_probability"], 1 - torch.exp(-cfg.flow_radius / out["scale"]), atol=1e-6)
    assert torch.allclose(out["confidence"], out["flow_probability"] * out["certainty"] * out["sensitivity"], atol=1e-7)
    assert torch.allclose(out["certainty"], torch.sigmoid(out["certainty_logit"]))
    assert (out_r5["flow_probability"] > out["flow_probability"]).all()  # a larger radius is more probable


def test_selection_logit_per_pair(pair):
    torch.manual_seed(0)
    model = build_model("selection", "tiny").eval()
    with torch.no_grad():
        logit = model(*pair)
        alone = model(pair[0][1:], pair[1][1:])
    assert logit.shape == (2,) and torch.isfinite(logit).all()
    assert alone.item() == pytest.approx(logit[1].item(), abs=1e-4)


def test_selection_head_scores_aligned_patches_above_shifted_ones():
    from cooppose.models.heads import SelectionHead

    torch.manual_seed(0)
    D, grid = 8, 4
    head = SelectionHead(D, D, D, grid)
    head.reset_parameters()
    with torch.no_grad():
        for lin in (head.query_proj, head.template_proj):
            lin.weight.copy_(torch.eye(D))
            lin.bias.zero_()
        head.log_temperature.fill_(3.0)
        head.no_match.fc2.weight.zero_()
        head.no_match.fc2.bias.fill_(-20.0)  # every query patch has a partner
    render = torch.randn(1, grid * grid, D)
    query = head.template_norm(render).detach()  # query patch i looks exactly like render patch i
    far = torch.cat([render[:, 10:], render[:, :10]], 1)  # every partner moved >= 2 patches away
    with torch.no_grad():
        aligned, shifted = head(query, render).item(), head(query, far).item()
    assert aligned == pytest.approx(10.0 - 1.0, abs=0.05)  # same-patch probability 1 through the initial weights
    assert shifted == pytest.approx(-1.0, abs=0.05)  # same-patch probability 0


def test_wrong_input_size_is_refused(pair):
    model = build_model("selection", "tiny")
    with pytest.raises(ValueError, match="160x160"):
        model(torch.zeros(1, 3, 224, 224), torch.zeros(1, 3, 224, 224))


def test_tiny_sizes_fit_the_shipping_budget():
    for kind in ("coarse", "refiner", "selection"):
        n = sum(p.numel() for p in build_model(kind, "tiny").parameters())
        assert 1e6 < n and 2 * n < 20e6, (kind, n)  # fp16 file < 20 MB


@pytest.mark.parametrize("kind,millions", [("coarse", (400, 440)), ("refiner", (420, 460)), ("selection", (110, 130))])
def test_paper_sizes_on_meta_device(kind, millions):
    with torch.device("meta"):
        model = build_model(kind, "paper")
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert millions[0] < n < millions[1]
    cfg = model.cfg
    assert cfg.img_size == 224 and cfg.num_patches == 196
    with torch.device("meta"):
        q = torch.empty(1, 3, 224, 224)
        out = model(q, q)
    if kind == "coarse":
        assert out["logits"].shape == (1, 196, 197)
    elif kind == "refiner":
        assert out["flow"].shape == (1, 2, 224, 224)
    else:
        assert out.shape == (1,)


def test_config_validation():
    with pytest.raises(ConfigError, match="kind"):
        get_config("detector")
    with pytest.raises(ConfigError, match="head width"):
        get_config("coarse", "tiny", enc_embed_dim=190)
    with pytest.raises(ConfigError, match="dpt_hooks"):
        get_config("refiner", "tiny", dpt_hooks=(5, 6, 7, 30))
    with pytest.raises(ConfigError, match="dpt_hooks"):
        get_config("refiner", "tiny", dpt_hooks=(5, 6, 7, 8))  # the last decoder block would be unused
    with pytest.raises(ConfigError, match="dpt_head_stride"):
        get_config("refiner", "tiny", dpt_head_stride=4)
    with pytest.raises(ConfigError, match="flow_unit"):
        get_config("refiner", "tiny", flow_unit=0.0)
    with pytest.raises(ConfigError, match="flow_match_dim"):
        get_config("refiner", "tiny", flow_match_dim=-1)
    with pytest.raises(ConfigError, match="dpt_image_channels"):
        get_config("refiner", "tiny", dpt_image_channels=-1)


def test_patch_correlation_flow_points_to_the_matching_query_patch():
    from cooppose.models.heads import PatchCorrelationFlow

    g, patch, n = 4, 16, 16
    corr = PatchCorrelationFlow(n, n, n, g, patch, g * patch)
    with torch.no_grad():
        for lin in (corr.render_proj, corr.query_proj):
            lin.weight.copy_(torch.eye(n))
            lin.bias.zero_()
        corr.log_temperature.fill_(6.0)
    codes = torch.eye(n)
    query = torch.zeros(1, n, n)
    for j in range(n):
        if j % g:  # query patch j shows what rendered patch j - 1 shows: one patch to the right
            query[0, j] = codes[j - 1]
    flow = corr(codes[None], query)  # (1, 2, 64, 64)
    inner = flow[0, :, :, : (g - 2) * patch]  # columns whose patch and right neighbour both move by +1 patch
    assert torch.allclose(inner[0], torch.full_like(inner[0], 16.0), atol=0.05)
    assert torch.allclose(inner[1], torch.zeros_like(inner[1]), atol=0.05)


def test_refiner_flow_adds_the_correlation_prior_and_image_stem_only_when_configured():
    torch.manual_seed(0)
    plain = build_model("refiner", "tiny", flow_match_dim=0, dpt_image_channels=0, enc_depth=1, dec_depth=3,
                        dpt_hooks=(0, 1, 2, 3))
    paper = get_config("refiner", "paper")
    assert plain.head.correlation is None and plain.head.dpt.image_stem is None
    assert paper.flow_match_dim == 0 and paper.dpt_image_channels == 0 and paper.flow_unit == 1.0
    model = build_model("refiner", "tiny", enc_depth=1, dec_depth=3, dpt_hooks=(0, 1, 2, 3))
    q, r = torch.randn(1, 3, 160, 160), torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        out = model(q, r)
        enc_r, enc_q = model.encode_image(r), model.encode_image(q)
        tokens = [enc_r] + model.decode_blocks(enc_r, enc_q)
        images = torch.cat([r, q], 1)
        raw = model.head.dpt(tokens, images)[:, 0:2] * model.cfg.flow_unit
        prior = model.head.correlation(tokens[-1], enc_q)
        without_stem = model.head.dpt(tokens, torch.zeros_like(images))[:, 0:2] * model.cfg.flow_unit
    assert torch.allclose(out["flow"], raw + prior, atol=1e-3)
    assert (raw - without_stem).abs().max() > 1e-3  # the images reach the flow through the stem



def test_shipped_file_roundtrip_and_corruption(tmp_path):
    torch.manual_seed(0)
    model = build_model("selection", "tiny", enc_depth=1, dec_depth=1)
    path = save_model(model, tmp_path / "sel.pt", info={"objects": "procedural"})
    assert sidecar_path(path).read_text().split()[1] == "sel.pt"
    loaded = load_model(path, kind="selection")
    ref = {k: v.half().float() for k, v in model.state_dict().items()}
    assert all(torch.equal(ref[k], v) for k, v in loaded.state_dict().items())
    with pytest.raises(CheckpointError, match="refiner"):
        load_model(path, kind="refiner")
    # tampered: one byte changed -> checksum mismatch
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(data))
    sidecar_path(bad).write_text(sidecar_path(path).read_text())
    with pytest.raises(CheckpointError, match="bad.pt.*checksum"):
        load_model(bad)
    # truncated without a sidecar -> unreadable
    cut = tmp_path / "cut.pt"
    cut.write_bytes(path.read_bytes()[: len(data) // 3])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_model(cut)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pt")
