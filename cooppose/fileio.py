"""Atomic file writing, the one way cooppose writes files: a temp file in the same folder, fsync, os.replace.

A reader (or a run restarted after a kill) sees either the old file or the complete new one, never a
half-written file; a failed write leaves no temp file behind. New files get the usual permissions
(0666 minus the umask), not the 0600 of `tempfile.mkstemp`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file next to `path` for writing ("wb" or "w"); on success fsync it and os.replace it onto `path`."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; return the path."""
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically; return the path."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def remove_stale_temps(folder: str | os.PathLike) -> int:
    """Delete the temp files (`.NAME.XXXX.tmp`) a killed writer left under `folder`; return how many.

    Only for folders with a single writer, called before it starts writing (a temp file is never read).
    """
    stale = [p for p in Path(folder).rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)
