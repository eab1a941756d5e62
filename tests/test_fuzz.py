"""Fuzzing: BOP/JSON readers and the results CSV raise only DatasetError, training configs only ConfigError;
the CLI only exits cleanly.

Valid documents of every BOP file kind are mutated by hypothesis (values replaced by any JSON value,
keys and list items deleted, text truncated or garbled); whatever the reader gets, the only exception
it may raise is DatasetError. The CLI gets generated argument lists: argparse may exit (SystemExit),
a command may fail with exit code 2 (a CoopposeError or OSError printed without traceback), and
nothing else may escape. Default runs are derandomized with modest example counts; `-m slow` runs
long randomised versions.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cooppose.cli import main
from cooppose.data import bop
from cooppose.errors import DatasetError
from cooppose.eval.runner import load_detections
from cooppose.objects.symmetry import symmetry_transformations

FAST = settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
LONG = settings(max_examples=5000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

R9 = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def _models_info(path: Path) -> list:
    """What reading a models folder does: models_info.json, then the symmetries of every entry."""
    return [symmetry_transformations(e, 0.5) for e in bop.load_models_info(path).values()]


# (reader, a valid document it accepts)
READERS = {
    "camera": (bop.load_camera, {"cx": 320.0, "cy": 240.0, "fx": 600.0, "fy": 600.0, "height": 480, "width": 640,
                                 "depth_scale": 0.1}),
    "models_info": (_models_info, {"1": {"diameter": 120.5, "min_x": -1.0, "size_x": 2.0,
                                         "symmetries_discrete": [[-1, 0, 0, 0, 0, -1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]],
                                         "symmetries_continuous": [{"axis": [0, 0, 1], "offset": [0, 0, 0]}]},
                                   "2": {"diameter": 80}}),
    "targets": (bop.load_targets, [{"im_id": 3, "inst_count": 1, "obj_id": 5, "scene_id": 2},
                                   {"im_id": 4, "inst_count": 2, "obj_id": 1, "scene_id": 2}]),
    "scene_camera": (bop.load_scene_camera, {"0": {"cam_K": [600, 0, 320, 0, 600, 240, 0, 0, 1], "depth_scale": 0.1,
                                                   "cam_R_w2c": R9, "cam_t_w2c": [0, 0, 10]}}),
    "scene_gt": (bop.load_scene_gt, {"0": [{"cam_R_m2c": R9, "cam_t_m2c": [1.0, 2.0, 800.0], "obj_id": 5}]}),
    "scene_gt_info": (bop.load_scene_gt_info, {"0": [{"bbox_obj": [1, 2, 30, 40], "bbox_visib": [1, 2, 30, 20],
                                                      "px_count_all": 900, "px_count_valid": 900,
                                                      "px_count_visib": 450, "visib_fract": 0.5}]}),
    "detections": (load_detections, [{"scene_id": 2, "image_id": 3, "category_id": 5, "bbox": [10, 20, 30, 40],
                                      "score": 0.9, "time": 0.1}]),
}

SPECIAL = [0, -1, 1, 2**63, -0.0, 0.5, 1e308, float("inf"), float("-inf"), float("nan"), "", "1", "x", [], {}, None, True]
json_values = st.recursive(
    st.sampled_from(SPECIAL) | st.booleans() | st.integers(-(10**20), 10**20) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
)


def _mutate(doc, draw, depth: int = 0):
    """A copy of a JSON document with one node replaced, deleted or duplicated (hypothesis draws choose where)."""
    action = draw(st.sampled_from(["replace", "descend", "descend", "delete", "add"])) if depth < 6 else "replace"
    if action == "replace" or not isinstance(doc, (dict, list)) or not doc:
        return draw(json_values)
    doc = copy.copy(doc)
    keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
    key = draw(st.sampled_from(keys))
    if action == "descend":
        doc[key] = _mutate(doc[key], draw, depth + 1)
    elif action == "delete":
        del doc[key]
    elif isinstance(doc, dict):
        doc[draw(st.text(max_size=4))] = draw(json_values)
    else:
        doc.append(draw(json_values))
    return doc


def _json_text(value) -> str | None:
    """JSON text of a value (NaN and infinities as JSON's non-standard literals, as json.loads reads them)."""
    try:
        return json.dumps(value)
    except (ValueError, TypeError):
        return None


def _only_dataset_error(reader, path: Path) -> None:
    try:
        reader(path)
    except DatasetError:
        pass


def _fuzz_json(tmp_path: Path, data) -> None:
    name = data.draw(st.sampled_from(sorted(READERS)), label="reader")
    reader, valid = READERS[name]
    kind = data.draw(st.sampled_from(["mutated", "mutated", "mutated", "truncated", "garbage"]), label="kind")
    path = tmp_path / f"{name}.json"
    if kind == "mutated":
        text = _json_text(_mutate(valid, data.draw))
        if text is None:
            return
        path.write_text(text, encoding="utf-8")
    elif kind == "truncated":
        text = json.dumps(valid)
        path.write_text(text[: data.draw(st.integers(0, len(text) - 1), label="cut")], encoding="utf-8")
    else:
        path.write_bytes(data.draw(st.binary(max_size=64), label="bytes"))
    _only_dataset_error(reader, path)


def test_valid_documents_are_read(tmp_path):
    for name, (reader, valid) in READERS.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(valid))
        assert reader(path), name


@FAST
@given(st.data())
def test_json_readers_raise_only_dataset_error(tmp_path, data):
    _fuzz_json(tmp_path, data)


@pytest.mark.slow
@LONG
@given(st.data())
def test_json_readers_raise_only_dataset_error_long(tmp_path, data):
    _fuzz_json(tmp_path, data)


# ---------------------------------------------------------------------------------------------- results CSV
CSV_ROW = ["2", "3", "5", "0.9", "1 0 0 0 1 0 0 0 1", "10 -20 800", "0.25"]
csv_fields = st.sampled_from(["", "nan", "inf", "-1", "1e400", "1 2", "0x10", "1,2", "é", " ", "3.5"]) | st.text(max_size=8)


@st.composite
def csv_texts(draw) -> bytes:
    """A results CSV whose rows are valid rows with fields replaced, dropped or added, or raw bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=80))
    lines = ["scene_id,im_id,obj_id,score,R,t,time"] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 4))):
        row = list(CSV_ROW)
        for _ in range(draw(st.integers(0, 3))):
            op = draw(st.sampled_from(["set", "drop", "add"]))
            i = draw(st.integers(0, len(row) - 1)) if row else 0
            if op == "set" and row:
                row[i] = draw(csv_fields)
            elif op == "drop" and row:
                del row[i]
            else:
                row.insert(i, draw(csv_fields))
        lines.append(",".join(row))
    return "\n".join(lines).encode("utf-8", "surrogatepass")


def _fuzz_csv(tmp_path: Path, text: bytes) -> None:
    path = tmp_path / "coop_lmo-test.csv"
    path.write_bytes(text)
    _only_dataset_error(bop.read_results, path)


@FAST
@given(csv_texts())
def test_results_csv_reader_raises_only_dataset_error(tmp_path, text):
    _fuzz_csv(tmp_path, text)


@pytest.mark.slow
@LONG
@given(csv_texts())
def test_results_csv_reader_raises_only_dataset_error_long(tmp_path, text):
    _fuzz_csv(tmp_path, text)


# ---------------------------------------------------------------------------------------------- CLI
def _commands() -> dict[tuple[str, ...], list]:
    """Each leaf command of the real parser (e.g. ("synth", "scenes")) with its argparse actions, so new commands are fuzzed too."""
    import argparse

    from cooppose.cli import build_parser

    out, todo = {}, [((), build_parser())]
    while todo:
        prefix, parser = todo.pop()
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            out[prefix] = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
        for sub in subs:
            todo += [(prefix + (name,), p) for name, p in sub.choices.items()]
    return dict(sorted(out.items()))


COMMANDS = _commands()
# Paths are relative to a fresh empty working folder per example: nothing valid to work on exists there,
# so no generated command line can start an expensive job (a few tiny objects at most).
PATHS = ["missing", "missing/deeper.ply", "junk.txt", "junk.txt/below", "emptydir", "bad.json", "junk.ply", "junk.pt",
         "junk_lmo-test.csv", "junk.png", "junk.npy", "objects.npy", ".", ""]
VALUES = ["-1", "0", "1", "2", "x", "1.5", "1e3", "+2", "\u0663", "0/0", "1/2", "3/2", "a/b", "64x48", "0x0", "16x9999999",
          "rgb", "rgbd", "coop", "sift", "fpfh", "coarse", "select", "mm", "m", "a_b", "-", "--"]
values = st.sampled_from(PATHS) | st.sampled_from(VALUES) | st.text(alphabet=string.ascii_letters + string.digits + "-_./=", max_size=6)


@st.composite
def argvs(draw) -> list[str]:
    """A command line of a real command: its required and some optional arguments with odd values, sometimes junk."""
    command = draw(st.sampled_from(sorted(COMMANDS)))
    argv = list(command)
    for action in COMMANDS[command]:
        if "--pybullet" in action.option_strings:  # a valid request for ~1000 meshes: real work, not a bad input
            continue
        if "--checkpoints" in action.option_strings:  # never the shipped networks: `demo` alone would run them
            argv += ["--checkpoints", draw(st.sampled_from(PATHS))]
            continue
        wanted = action.required or not action.option_strings
        if draw(st.integers(0, 9)) < (9 if wanted else 3):
            takes_value = action.nargs != 0
            value = draw(st.sampled_from(list(action.choices)) | values if action.choices else values)
            if action.option_strings:
                argv += [action.option_strings[-1]] + ([value] if takes_value else [])
            else:
                argv.append(value)
    if draw(st.integers(0, 9)) == 0:
        argv.insert(draw(st.integers(0, len(argv))), draw(values))
    return argv


def _workdir(root: Path) -> None:
    (root / "junk.txt").write_text("not what any command wants\n")
    (root / "emptydir").mkdir()
    (root / "bad.json").write_text('{"1": [')
    (root / "junk.ply").write_bytes(b"ply\nformat ascii 1.0\ngarbage\n")
    (root / "junk.pt").write_bytes(b"PK\x03\x04 truncated")
    (root / "junk_lmo-test.csv").write_text("scene_id,im_id\n1,2\n")
    (root / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(root / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)


def _run_cli(argv: list[str], root: Path) -> tuple[int, str]:
    """Exit code and stderr of cooppose.cli.main(argv) run in `root`; only SystemExit or a return code may come out."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), contextlib.chdir(root):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse: usage errors (2) and --help (0)
            code = e.code if isinstance(e.code, int) else 2
            assert code in (0, 2), (argv, code)
            return code, err.getvalue()
    assert code in (0, 2), (argv, code)
    if code == 2:
        assert "error:" in err.getvalue() and "Traceback" not in err.getvalue(), (argv, err.getvalue())
    return code, err.getvalue()


def _fuzz_cli(tmp_path: Path, argv: list[str]) -> None:
    import tempfile
    from unittest import mock

    with tempfile.TemporaryDirectory(dir=tmp_path) as d, mock.patch.dict(os.environ, {"COOPPOSE_CACHE": d}):
        _workdir(Path(d))
        _run_cli(argv, Path(d))


def test_cli_commands_are_all_found():
    assert {("onboard",), ("eval",), ("score",), ("synth", "objects"), ("synth", "scenes"), ("synth", "show")} <= set(COMMANDS)


CLI_FAST = settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
CLI_LONG = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@CLI_FAST
@given(argvs())
def test_cli_exits_cleanly_on_any_arguments(tmp_path, argv):
    _fuzz_cli(tmp_path, argv)


@pytest.mark.slow
@CLI_LONG
@given(argvs())
def test_cli_exits_cleanly_on_any_arguments_long(tmp_path, argv):
    _fuzz_cli(tmp_path, argv)


# ---------------------------------------------------------------------------------------------- training configs
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _fuzz_train_config(tmp_path: Path, data) -> None:
    from cooppose.errors import ConfigError
    from cooppose.train import load_train_config

    name = data.draw(st.sampled_from(sorted(p.name for p in CONFIGS.glob("*.json"))), label="config")
    text = _json_text(_mutate(json.loads((CONFIGS / name).read_text()), data.draw))
    if text is None:
        return
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    try:
        load_train_config(path)
    except ConfigError:
        pass


@FAST
@given(st.data())
def test_training_config_reader_raises_only_config_error(tmp_path, data):
    _fuzz_train_config(tmp_path, data)


@pytest.mark.slow
@LONG
@given(st.data())
def test_training_config_reader_raises_only_config_error_long(tmp_path, data):
    _fuzz_train_config(tmp_path, data)
