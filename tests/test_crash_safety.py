"""Crash safety: files are replaced atomically, and a killed command resumes to the uninterrupted result.

1. Every writer of the project (results CSV, scene JSON and images, model files and their sidecars,
   training checkpoints, the templates cache, synthetic objects, reports and pictures) is made to fail
   half-way through writing its temp file (a simulated full disk): the file it replaces must survive
   byte for byte, and no temp file may be left behind.
2. `cooppose synth scenes`, `cooppose train` and `cooppose eval` run as subprocesses are killed with
   SIGKILL at a seeded random time while they work, restarted, and compared with an uninterrupted run:
   scene files byte-identical, trained parameters identical, eval CSV equal except the time column.
   The default run kills each once; `-m slow` kills each several times at random times.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cooppose.cli import main
from cooppose.data import bop

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------- a full disk
class _DiskFull:
    """A file whose first write stores half of the data, then fails as a full disk would."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, "No space left on device (simulated: half of the data written)")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        self._f.close()
        return False

    def __getattr__(self, name):
        return getattr(self._f, name)


@pytest.fixture
def disk_full(monkeypatch):
    """arm(name_part, skip=0): the (skip+1)-th file opened for writing whose name contains name_part fails mid-write."""
    real = os.fdopen
    state = {"part": None, "skip": 0, "seen": 0, "failed": 0}

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real(fd, mode, *args, **kwargs)
        name = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
        if state["part"] and ("w" in mode or "a" in mode) and state["part"] in name:
            state["seen"] += 1
            if state["seen"] > state["skip"]:
                state["failed"] += 1
                return _DiskFull(f)
        return f

    monkeypatch.setattr(os, "fdopen", fdopen)

    def arm(part: str, skip: int = 0) -> dict:
        state.update(part=part, skip=skip, seen=0, failed=0)
        return state

    return arm


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def _rows(seed: int) -> list[bop.PoseEstimate]:
    rng = np.random.default_rng(seed)
    return [bop.PoseEstimate(1, i, 2, float(rng.random()), np.eye(3), rng.normal(size=3) * 100, 0.5) for i in range(5)]


def _rgb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8)


def _scores_md(path: Path, text: str) -> None:
    from cooppose.fileio import atomic_write_text

    atomic_write_text(path, text)


def _viz_png(path: Path, seed: int) -> None:
    from cooppose.viz import save_png

    save_png(path, _rgb(seed))


def _objects(path: Path, seed: int) -> None:
    from cooppose.data.synth.models import make_object_set

    make_object_set(path.parent, 1, seed)


WRITERS = {  # name: (file written, write(path, version))
    "results CSV": ("coop_lmo-test.csv", lambda p, v: bop.write_results(p, _rows(v))),
    "scene_gt.json": ("scene_gt.json", lambda p, v: bop.save_scene_gt(p, {0: [bop.GtPose(v, np.eye(3), np.zeros(3))]})),
    "rgb image": ("000000.png", lambda p, v: bop.write_rgb(p, _rgb(v))),
    "depth image": ("000001.png", lambda p, v: bop.write_depth(p, np.full((24, 32), 100.0 * (v + 1)), 0.1)),
    "mask": ("000000_000000.png", lambda p, v: bop.write_mask(p, _rgb(v)[..., 0] > 128)),
    "scores.md": ("scores.md", lambda p, v: _scores_md(p, f"| AR | {v} |\n" * 50)),
    "picture": ("overlay.png", lambda p, v: _viz_png(p, v)),
    "synthetic object": ("obj_000001.ply", lambda p, v: _objects(p, v)),
}


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_failed_rewrite_keeps_the_old_file(tmp_path, disk_full, name):
    filename, write = WRITERS[name]
    path = tmp_path / "out" / filename
    path.parent.mkdir()
    write(path, 1)
    old = path.read_bytes()
    state = disk_full(f".{filename}.")
    with pytest.raises(OSError, match="No space left"):
        write(path, 2)
    assert state["failed"] == 1
    assert path.read_bytes() == old
    assert _leftovers(tmp_path) == []


def test_model_file_and_sidecar_survive_a_failed_save(tmp_path, disk_full):
    from cooppose.errors import CheckpointError
    from cooppose.models import build_model
    from cooppose.models.checkpoint import load_model, save_model, sidecar_path

    torch.manual_seed(0)
    path = save_model(build_model("selection", "tiny", enc_depth=1, dec_depth=1), tmp_path / "selection_tiny.pt")
    old, old_side = path.read_bytes(), sidecar_path(path).read_bytes()
    newer = build_model("selection", "tiny", enc_depth=1, dec_depth=1)
    disk_full(".selection_tiny.pt.")  # the model file itself
    with pytest.raises(Exception, match="No space left"):
        save_model(newer, path)
    assert path.read_bytes() == old and sidecar_path(path).read_bytes() == old_side and _leftovers(tmp_path) == []
    load_model(path, kind="selection")
    # a failure between the two files (new model, old sidecar) is refused when loading, never loaded silently
    disk_full(".selection_tiny.pt.sha256.")
    with pytest.raises(OSError, match="No space left"):
        save_model(newer, path)
    assert sidecar_path(path).read_bytes() == old_side and _leftovers(tmp_path) == []
    with pytest.raises(CheckpointError, match="checksum does not match"):
        load_model(path)



def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_checkpoint_survives_a_failed_save_and_resumes_exactly(tmp_path, disk_full, one_thread):
    from test_train import RandomSet, micro_cfg

    from cooppose.train import train

    cfg = micro_cfg("selection", steps=6, ckpt_every=2, val_every=100)
    data = (RandomSet("selection", 8), None)
    full = train(cfg, tmp_path / "full", datasets=data, progress=False)
    run = tmp_path / "run"
    disk_full(".checkpoint.pt.", skip=1)  # the checkpoint of step 4 fails half-way
    with pytest.raises(Exception, match="No space left"):
        train(cfg, run, datasets=data, progress=False)
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 2 and _leftovers(tmp_path) == []
    disk_full("nothing")
    resumed = train(cfg, run, datasets=data, progress=False)
    assert resumed.step == full.step == 6
    assert _same(_weights(resumed.checkpoint), _weights(full.checkpoint))


def test_template_cache_survives_a_failed_write(tmp_path, disk_full):
    import trimesh

    from cooppose.objects import load_mesh
    from cooppose.onboarding import onboard

    trimesh.creation.box(extents=(60.0, 40.0, 30.0)).export(tmp_path / "box.ply")
    model = load_mesh(tmp_path / "box.ply")
    first = onboard(model, size=32, cache_dir=tmp_path / "cache")
    stale = first.cache_path.read_bytes()[:-40]  # a damaged cache file: it must be re-rendered, then rewritten
    first.cache_path.write_bytes(stale)
    disk_full(f".{first.cache_path.stem}.")
    with pytest.warns(UserWarning) as caught:
        again = onboard(model, size=32, cache_dir=tmp_path / "cache")
    messages = " | ".join(str(w.message) for w in caught)
    assert "unreadable or stale" in messages and "cannot write the template cache" in messages
    assert np.array_equal(again.rgb, first.rgb) and again.cache_path is None
    assert first.cache_path.read_bytes() == stale and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- SIGKILL and restart
def _env(tmp: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "COOPPOSE_CACHE": str(tmp / "cache")}


def _kill_while_working(argv: list[str], started: Path, delay_s: float, env: dict, cwd: Path) -> bool:
    """Run `cooppose ARGV`, SIGKILL it `delay_s` after `started` appears; True when it was killed before it ended."""
    proc = subprocess.Popen([sys.executable, "-m", "cooppose.cli", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, cwd=cwd)
    deadline = time.time() + 300
    while not started.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(delay_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


def _timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    assert main(argv) == 0
    return time.perf_counter() - t0


def _tree(root: Path) -> dict:
    """Relative path -> bytes of every file under root (a symlink -> its target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = ("link", p.resolve())
        elif p.is_file() and not any(q.is_symlink() for q in p.relative_to(root).parents if str(q) != "." and (root / q).is_symlink()):
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> Path:
    from cooppose.data.synth.models import make_object_set

    models = tmp_path_factory.mktemp("objects") / "models"
    make_object_set(models, 4, seed=1)
    return models


def _scenes_argv(objects: Path, out: Path, n: int) -> list[str]:
    return ["synth", "scenes", "--objects", str(objects), "--out", str(out), "--n-images", str(n), "--size", "96x72",
            "--seed", "3"]


def _synth_kill_and_resume(objects: Path, tmp: Path, n: int, fractions: list[float]) -> list[bool]:
    ref = tmp / "ref"
    work = _timed(_scenes_argv(objects, ref, n))
    killed = []
    for i, frac in enumerate(fractions):
        out = tmp / f"killed{i}"
        killed.append(_kill_while_working(_scenes_argv(objects, out, n), out / "train_synth" / "synth_params.json",
                                          frac * work, _env(tmp), tmp))
        assert main(_scenes_argv(objects, out, n)) == 0
        assert _tree(out) == _tree(ref), f"kill {i} at {frac:.2f} x {work:.1f} s"
    return killed


def test_killed_synth_scenes_resume_to_identical_bytes(objects, tmp_path):
    fractions = list(np.random.default_rng(11).uniform(0.2, 0.8, 1))
    assert _synth_kill_and_resume(objects, tmp_path, 30, fractions) == [True]


@pytest.mark.slow
def test_killed_synth_scenes_resume_to_identical_bytes_at_random_times(objects, tmp_path):
    fractions = list(np.random.default_rng().uniform(0.0, 1.2, 6))
    killed = _synth_kill_and_resume(objects, tmp_path, 60, fractions)
    assert sum(killed) >= 3, (fractions, killed)


@pytest.fixture(scope="module")
def scenes(objects) -> Path:
    from cooppose.data.synth import SceneConfig, generate_scenes

    root = objects.parent / "scenes"
    generate_scenes(objects, root, 12, seed=5, cfg=SceneConfig(width=96, height=72))
    return root


def _train_config(tmp: Path, scenes: Path, steps: int) -> Path:
    cfg = {"kind": "selection",
           "model": {"size": "tiny", "img_size": 32, "enc_embed_dim": 32, "enc_depth": 1, "enc_num_heads": 2,
                     "dec_embed_dim": 32, "dec_depth": 1, "dec_num_heads": 2},
           "data": {"scenes": str(scenes), "size": 32, "val_fraction": 0.2},
           "batch_size": 2, "steps": steps, "lr": 1e-3, "warmup_steps": 2, "decay_steps": [steps // 2], "num_workers": 0,
           "log_every": 5, "val_every": 10, "val_batches": 1, "ckpt_every": 5}
    path = tmp / "selection.json"
    path.write_text(json.dumps(cfg))
    return path


def _train_kill_and_resume(scenes: Path, tmp: Path, steps: int, fractions: list[float]) -> list[bool]:
    config = _train_config(tmp, scenes, steps)
    ref = tmp / "ref"
    work = _timed(["train", "selection", "--config", str(config), "--out", str(ref)])
    killed = []
    for i, frac in enumerate(fractions):
        out = tmp / f"killed{i}"
        argv = ["train", "selection", "--config", str(config), "--out", str(out)]
        killed.append(_kill_while_working(argv, out / "tb", frac * work, _env(tmp), tmp))
        assert main(argv) == 0
        assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == steps
        assert _same(_weights(out / "checkpoint.pt"), _weights(ref / "checkpoint.pt")), f"kill {i} at {frac:.2f} x {work:.1f} s"
        exported = torch.load(out / "selection_tiny.pt", weights_only=True)["state_dict"]
        assert _same(exported, torch.load(ref / "selection_tiny.pt", weights_only=True)["state_dict"])
    return killed


def test_killed_training_resumes_to_identical_parameters(scenes, tmp_path, one_thread, capsys):
    fractions = list(np.random.default_rng(12).uniform(0.3, 0.8, 1))
    assert _train_kill_and_resume(scenes, tmp_path, 40, fractions) == [True]


@pytest.mark.slow
def test_killed_training_resumes_to_identical_parameters_at_random_times(scenes, tmp_path, one_thread, capsys):
    fractions = list(np.random.default_rng().uniform(0.0, 1.2, 5))
    killed = _train_kill_and_resume(scenes, tmp_path, 80, fractions)
    assert sum(killed) >= 2, (fractions, killed)


@pytest.fixture(scope="module")
def bop_dataset(tmp_path_factory) -> Path:
    from test_runner import make_dataset

    return make_dataset(tmp_path_factory.mktemp("eval") / "tiny")


def _without_time(path: Path) -> list[str]:
    return [line.rsplit(",", 1)[0] for line in path.read_text().splitlines()]


def _eval_kill_and_resume(dataset: Path, tmp: Path, fractions: list[float], monkeypatch) -> list[bool]:
    from cooppose.eval.baselines import SiftPnPBaseline
    from cooppose.objects import load_mesh

    monkeypatch.setenv("COOPPOSE_CACHE", str(tmp / "cache"))  # shared with the subprocess (_env)
    for obj in sorted((dataset / "models").glob("obj_*.ply")):  # templates cached first: all runs time the same work
        SiftPnPBaseline().onboard(load_mesh(obj))

    def argv(out: Path) -> list[str]:
        return ["eval", "--dataset", str(dataset), "--method", "sift", "--out", str(out), "--no-progress"]

    ref = tmp / "ref"
    work = _timed(argv(ref))
    ref_scores = json.loads((ref / "scores.json").read_text())
    killed = []
    for i, frac in enumerate(fractions):
        out = tmp / f"killed{i}"
        killed.append(_kill_while_working(argv(out), out / "run.json", frac * work, _env(tmp), tmp))
        assert main(argv(out)) == 0
        assert _without_time(out / "sift_tiny-test.csv") == _without_time(ref / "sift_tiny-test.csv")
        scores = json.loads((out / "scores.json").read_text())
        assert {k: v for k, v in scores.items() if k != "mean_time_per_image"} == \
            {k: v for k, v in ref_scores.items() if k != "mean_time_per_image"}
    return killed


def test_killed_eval_resumes_to_the_same_results(bop_dataset, tmp_path, monkeypatch, capsys):
    fractions = list(np.random.default_rng(13).uniform(0.3, 0.7, 1))
    assert _eval_kill_and_resume(bop_dataset, tmp_path, fractions, monkeypatch) == [True]


@pytest.mark.slow
def test_killed_eval_resumes_to_the_same_results_at_random_times(bop_dataset, tmp_path, monkeypatch, capsys):
    fractions = list(np.random.default_rng().uniform(0.0, 1.2, 5))
    killed = _eval_kill_and_resume(bop_dataset, tmp_path, fractions, monkeypatch)
    assert sum(killed) >= 2, (fractions, killed)


def test_atomic_files_get_umask_permissions_not_mkstemp_0600(tmp_path):
    """Files cooppose writes are readable by others as usual (0666 minus the umask), not 0600."""
    from cooppose.fileio import atomic_write_bytes

    mask = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(mask)
    import cooppose.fileio as fileio

    assert (path.stat().st_mode & 0o777) == 0o666 & ~fileio._UMASK


def test_stale_temp_files_of_a_killed_writer_are_removed(tmp_path):
    """A SIGKILL between mkstemp and os.replace leaves `.NAME.XXXX.tmp`; remove_stale_temps deletes exactly those."""
    from cooppose.fileio import remove_stale_temps

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / ".000001.png.ab12cd.tmp").write_bytes(b"half")
    (tmp_path / ".scene_gt.json.x.tmp").write_text("{")
    keep = tmp_path / "a" / "000001.png"
    keep.write_bytes(b"done")
    assert remove_stale_temps(tmp_path) == 2
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["000001.png"]
