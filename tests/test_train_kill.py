"""A training process killed with SIGKILL resumes from its last checkpoint to the same parameters (slow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_train import RandomSet, micro_cfg

from cooppose.train import train

SCRIPT = """
import json, sys, time
sys.path.insert(0, {tests!r})
import torch
torch.set_num_threads(1)
from test_train import RandomSet
from cooppose.train import train

class Slow(RandomSet):
    def __getitem__(self, i):
        time.sleep(0.05)
        return super().__getitem__(i)

train(json.loads({cfg!r}), {out!r}, datasets=(Slow("coarse"), None), progress=False)
"""


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    cfg = micro_cfg("coarse", steps=40, ckpt_every=5, log_every=5)
    out = tmp_path / "killed"
    code = SCRIPT.format(tests=str(Path(__file__).parent), cfg=json.dumps(cfg), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code])
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and torch.load(ckpt, weights_only=True)["step"] >= 10:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = torch.load(ckpt, weights_only=True)["step"]
    assert 10 <= killed_at < 40
    torch.set_num_threads(1)
    resumed = train(cfg, out, datasets=(RandomSet("coarse"), None), progress=False)
    full = train(cfg, tmp_path / "full", datasets=(RandomSet("coarse"), None), progress=False)
    a = torch.load(resumed.checkpoint, weights_only=True)["model"]
    b = torch.load(full.checkpoint, weights_only=True)["model"]
    assert resumed.step == full.step == 40
    assert all(torch.equal(a[k], b[k]) for k in a)
