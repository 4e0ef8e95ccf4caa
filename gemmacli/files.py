"""Files written whole or not at all: `-o` results and reports, cache entries."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, *, make_parents: bool = False) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: readers see the old file or the new one.

    The file gets mode 0644 (mkstemp creates 0600, and a report or result is for others to read too).
    Raises OSError; callers decide whether that is an exit 5 or a warning.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if make_parents:
        folder.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
