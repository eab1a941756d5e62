"""`cooppose train KIND --config FILE --out DIR`: runs the loop, resumes, refuses a mismatched config."""

from __future__ import annotations

import json

import pytest

import cooppose.train.loop as loop
from cooppose.cli import main
from cooppose.models.checkpoint import load_model
from test_train import RandomSet, micro_cfg

pytestmark = pytest.mark.usefixtures("one_thread")



def test_cli_trains_resumes_and_exports(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(loop, "_build_datasets", lambda kind, cfg: (RandomSet(kind), RandomSet(kind, 4)))
    cfg = micro_cfg("selection", steps=4)
    path = tmp_path / "sel.json"
    path.write_text(json.dumps(cfg))
    out = tmp_path / "run"
    assert main(["train", "selection", "--config", str(path), "--out", str(out), "--max-steps", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["step"] == 2
    assert main(["train", "selection", "--config", str(path), "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["step"] == 4 and report["model"].endswith("selection_tiny.pt")
    assert load_model(report["model"], kind="selection").cfg.img_size == 32


def test_cli_refuses_a_config_of_another_kind(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"kind": "coarse"}))
    assert main(["train", "refiner", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "configures a 'coarse' network" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("{kind: coarse")
    assert main(["train", "coarse", "--config", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["coarse", "refiner", "selection"])
def test_shipped_configs_are_valid(name):
    from pathlib import Path

    from cooppose.data.datasets import resolve_config
    from cooppose.train import load_train_config

    root = Path(__file__).resolve().parents[1] / "configs"
    tiny, paper = load_train_config(root / f"{name}_tiny.json"), load_train_config(root / f"{name}_paper.json")
    assert tiny["kind"] == paper["kind"] == name
    assert paper["lr"] == 2e-5 and paper["weight_decay"] == 0.05
    assert (paper["grad_clip"] == 0.01) == (name == "refiner") == (tiny["grad_clip"] == 0.01)
    for cfg in (tiny, paper):
        assert resolve_config(name, cfg["data"])["size"] == (160 if cfg is tiny else 224)
