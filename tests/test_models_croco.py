"""Loading CroCo v2 checkpoints by name: a state dict written here with CroCo's key names and shapes."""

from __future__ import annotations

import pytest
import torch

from cooppose.errors import CheckpointError
from cooppose.models import build_model, load_croco_weights
from cooppose.models.croco import plan_croco_load


def croco_v2_shapes(enc: int, enc_depth: int, dec: int, dec_depth: int, patch: int = 16) -> dict[str, tuple]:
    """Parameter names and shapes of a CroCo v2 (RoPE) pretraining checkpoint, as in naver/croco's CroCoNet."""
    shapes: dict[str, tuple] = {"patch_embed.proj.weight": (enc, 3, patch, patch), "patch_embed.proj.bias": (enc,)}

    def linear(name: str, n_out: int, n_in: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (n_out, n_in), (n_out,)

    def norm(name: str, d: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (d,), (d,)

    for i in range(enc_depth):
        b = f"enc_blocks.{i}"
        norm(f"{b}.norm1", enc), norm(f"{b}.norm2", enc)
        linear(f"{b}.attn.qkv", 3 * enc, enc), linear(f"{b}.attn.proj", enc, enc)
        linear(f"{b}.mlp.fc1", 4 * enc, enc), linear(f"{b}.mlp.fc2", enc, 4 * enc)
    norm("enc_norm", enc)
    shapes["mask_token"] = (1, 1, dec)
    linear("decoder_embed", dec, enc)
    for i in range(dec_depth):
        b = f"dec_blocks.{i}"
        for n in ("norm1", "norm2", "norm3", "norm_y"):
            norm(f"{b}.{n}", dec)
        linear(f"{b}.attn.qkv", 3 * dec, dec), linear(f"{b}.attn.proj", dec, dec)
        for n in ("projq", "projk", "projv", "proj"):
            linear(f"{b}.cross_attn.{n}", dec, dec)
        linear(f"{b}.mlp.fc1", 4 * dec, dec), linear(f"{b}.mlp.fc2", dec, 4 * dec)
    norm("dec_norm", dec)
    linear("prediction_head", patch * patch * 3, dec)
    return shapes


@pytest.mark.parametrize("kind,sizes", [("coarse", (1024, 24, 768, 12)), ("refiner", (1024, 24, 768, 12)),
                                        ("selection", (768, 12, 512, 8))])
def test_paper_key_set_matches_croco_v2(kind, sizes):
    """The full paper-size key set, checked on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = build_model(kind, "paper")
        state = {k: torch.empty(s) for k, s in croco_v2_shapes(*sizes).items()}
    report = plan_croco_load(model, state)
    assert sorted(report.unexpected) == ["mask_token", "prediction_head.bias", "prediction_head.weight"]
    assert report.missing and all(k.startswith("head.") for k in report.missing)
    assert len(report.loaded) == len(state) - 3


def _write_croco(path, shapes, kwargs, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    torch.save({"model": state, "croco_kwargs": kwargs}, path)
    return state


SMALL = dict(enc_embed_dim=1024, enc_depth=1, enc_num_heads=16, dec_embed_dim=768, dec_depth=1, dec_num_heads=12)


def test_load_reduced_depth_paper_like_checkpoint(tmp_path):
    model = build_model("coarse", "paper", **SMALL)
    path = tmp_path / "croco.pth"
    state = _write_croco(path, croco_v2_shapes(1024, 1, 768, 1), {**SMALL, "img_size": 224, "pos_embed": "RoPE100"})
    head_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("head.")}
    report = load_croco_weights(model, str(path))
    own = model.state_dict()
    assert set(report.unexpected) == {"mask_token", "prediction_head.weight", "prediction_head.bias"}
    assert all(torch.equal(own[k], state[k]) for k in report.loaded)
    assert set(report.missing) == set(head_before)
    assert all(torch.equal(own[k], v) for k, v in head_before.items())  # heads untouched


def test_croco_loading_errors(tmp_path):
    model = build_model("selection", "tiny", enc_depth=1, dec_depth=1)
    tiny = dict(enc_embed_dim=160, enc_depth=1, enc_num_heads=4, dec_embed_dim=160, dec_depth=1, dec_num_heads=4)
    shapes = croco_v2_shapes(160, 1, 160, 1)
    wrong = tmp_path / "wrong.pth"
    _write_croco(wrong, shapes, {**tiny, "enc_depth": 2})
    with pytest.raises(CheckpointError, match="enc_depth"):
        load_croco_weights(model, str(wrong))
    extra = tmp_path / "extra.pth"
    _write_croco(extra, {**shapes, "enc_blocks.5.norm1.weight": (160,)}, tiny)
    with pytest.raises(CheckpointError, match="enc_blocks.5"):
        load_croco_weights(model, str(extra))
    v1 = tmp_path / "v1.pth"
    _write_croco(v1, {**shapes, "enc_pos_embed": (100, 160)}, tiny)
    with pytest.raises(CheckpointError, match="v1"):
        load_croco_weights(model, str(v1))
    cut = tmp_path / "cut.pth"
    cut.write_bytes(wrong.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cut.pth"):
        load_croco_weights(model, str(cut))
    ok = tmp_path / "ok.pth"
    _write_croco(ok, shapes, tiny)
    assert len(load_croco_weights(model, str(ok)).loaded) == len(shapes) - 3
