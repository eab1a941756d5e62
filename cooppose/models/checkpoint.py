"""Shipped model files: fp16 weights + kind, size and config, a `.sha256` sidecar, safe loading (weights_only).

A shipped file is a torch-saved dict:
`{"format": "cooppose-model", "format_version": 1, "kind", "size", "config" (ModelConfig.to_dict()),
"state_dict" (fp16 floating tensors), "info" (free-form JSON-able metadata)}`.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch

from cooppose.errors import CheckpointError, ConfigError
from cooppose.fileio import atomic_open, atomic_write_bytes
from cooppose.models.configs import config_from_dict
from cooppose.models.croco import CroCoPair, build_from_config

FORMAT = "cooppose-model"
FORMAT_VERSION = 1


def atomic_torch_save(obj: object, path: str | Path) -> Path:
    """torch.save `obj` to `path` atomically."""
    with atomic_open(path) as f:
        torch.save(obj, f)
    return Path(path)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sidecar_path(path: str | Path) -> Path:
    """Path of the checksum sidecar of a model file: `<path>.sha256`."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def save_model(model: CroCoPair, path: str | Path, info: dict | None = None) -> Path:
    """Write a shipped model file (fp16 weights) and its `.sha256` sidecar; returns the model path."""
    state = {k: v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": model.cfg.kind,
        "size": model.cfg.size,
        "config": model.cfg.to_dict(),
        "state_dict": state,
        "info": dict(info or {}),
    }
    path = atomic_torch_save(payload, path)
    atomic_write_bytes(sidecar_path(path), f"{sha256_file(path)}  {path.name}\n".encode())
    return path


def export_model(checkpoint: str | Path | dict, path: str | Path) -> Path:
    """Turn a training checkpoint (file or loaded dict, as written by cooppose.train.loop) into a shipped model file."""
    ckpt = load_torch_file(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    where = checkpoint if not isinstance(checkpoint, dict) else "<checkpoint dict>"
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_config" not in ckpt:
        raise CheckpointError(f"{where}: not a cooppose training checkpoint (needs 'model' and 'model_config').")
    model = _build(ckpt["model_config"], where)
    _load_state(model, ckpt["model"], where)
    info = {"step": int(ckpt.get("step", 0)), "train_config": ckpt.get("config", {})}
    return save_model(model, path, info=info)


def load_model(path: str | Path, kind: str | None = None, device: str | torch.device = "cpu") -> CroCoPair:
    """Load a shipped model file (checking its sidecar checksum when present) as a float32 model in eval mode.

    Raises CheckpointError naming `path` for a missing, truncated, tampered or wrong-kind file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: model file not found; train one with `cooppose train` or pass the right path.")
    side = sidecar_path(path)
    if side.is_file():
        recorded = side.read_text().split()
        if not recorded or sha256_file(path) != recorded[0]:
            raise CheckpointError(f"{path}: checksum does not match {side.name}; the file is truncated or was modified. Re-download or re-export it.")
    payload = load_torch_file(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a cooppose model file (format {payload.get('format') if isinstance(payload, dict) else type(payload).__name__!r}).")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: model file format version {payload.get('format_version')}, this cooppose reads {FORMAT_VERSION}.")
    if kind is not None and payload.get("kind") != kind:
        raise CheckpointError(f"{path}: holds a {payload.get('kind')!r} model, but a {kind!r} model was asked for.")
    model = _build(payload.get("config"), path)
    _load_state(model, payload.get("state_dict"), path)
    return model.float().to(device).eval()


def load_torch_file(path: str | Path) -> object:
    """torch.load with weights_only=True (tensors and plain containers only); CheckpointError naming `path` otherwise."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: file not found.") from err
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower():  # torch's advice to load unsafely is not repeated
            raise CheckpointError(
                f"{path}: refused: it holds Python objects other than tensors, which cooppose never unpickles "
                "(unpickling them could run code). Use a model file written by cooppose (save_model / export_model)."
            ) from None
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({type(err).__name__}: {err}).") from err
    except Exception as err:  # truncated archives, pickles with disallowed globals, random bytes
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({type(err).__name__}: {err}).") from err


def _build(config: object, where: object) -> CroCoPair:
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: the model config is missing.")
    try:
        return build_from_config(config_from_dict(config))
    except ConfigError as err:
        raise CheckpointError(f"{where}: bad model config: {err}") from err


def _load_state(model: CroCoPair, state: object, where: object) -> None:
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: the state dict is missing.")
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    except (RuntimeError, AttributeError) as err:
        raise CheckpointError(f"{where}: weights do not fit the {model.cfg.kind} model: {str(err)[:300]}") from err
