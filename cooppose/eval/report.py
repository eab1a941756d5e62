"""Markdown tables of BOP scores: one row per run (AR in %, as BOP tables) and per-object breakdowns."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cooppose.data.bop import load_json
from cooppose.errors import DatasetError

RUN_COLUMNS = ("method", "dataset", "split", "mode", "detections", "hypotheses", "images")
SCORE_COLUMNS = (("targets", "n_targets"), ("AR_VSD", "AR_VSD"), ("AR_MSSD", "AR_MSSD"), ("AR_MSPD", "AR_MSPD"), ("AR", "AR"))


def _percent(v: Any) -> str:
    return "-" if v is None else f"{100.0 * float(v):.1f}"


def _cell(v: Any) -> str:
    return "-" if v is None else str(v).replace("|", "/")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (header row, separator, one line per row); None cells are written '-'."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def scores_table(entries: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> str:
    """One row per (run info, scores): the run's settings (RUN_COLUMNS), targets, AR_* in %, seconds per image."""
    header = list(RUN_COLUMNS) + [name for name, _ in SCORE_COLUMNS] + ["s/img"]
    rows = []
    for info, scores in entries:
        t = scores.get("mean_time_per_image")
        row = [info.get(k) for k in RUN_COLUMNS]
        row.append(scores.get("n_targets"))
        row += [_percent(scores.get(key)) for name, key in SCORE_COLUMNS[1:]]
        row.append("-" if t is None or t < 0 else f"{t:.2f}")
        rows.append(row)
    return markdown_table(header, rows)


def per_object_table(scores: Mapping[str, Any]) -> str:
    """One row per object: its number of targets and AR_VSD / AR_MSSD / AR_MSPD in %."""
    per = scores.get("per_object") or {}
    rows = [[obj, e.get("n_targets"), _percent(e.get("AR_VSD")), _percent(e.get("AR_MSSD")), _percent(e.get("AR_MSPD"))]
            for obj, e in sorted(per.items(), key=lambda kv: int(kv[0]))]
    return markdown_table(["obj_id", "targets", "AR_VSD", "AR_MSSD", "AR_MSPD"], rows)


def run_report(info: Mapping[str, Any], scores: Mapping[str, Any]) -> str:
    """scores.md of one run: the summary row, then the per-object table."""
    return "## Scores (AR in %)\n\n" + scores_table([(info, scores)]) + "\n## Per object\n\n" + per_object_table(scores)


def compare_runs(out_dirs: Sequence[str | os.PathLike]) -> str:
    """One table over several finished runs, read from their info.json and scores.json."""
    entries = []
    for d in out_dirs:
        d = Path(d)
        if not (d / "scores.json").is_file() or not (d / "info.json").is_file():
            raise DatasetError(f"{d} has no scores.json / info.json; finish the run (`cooppose eval ... --out {d}`) first.")
        entries.append((load_json(d / "info.json"), load_json(d / "scores.json")))
    return scores_table(entries)
