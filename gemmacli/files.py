"""Files written whole or not at all: `-o` results and reports, cache entries.

A regular file is replaced atomically (temporary file beside it, fsync, rename), so a reader sees the old
file or the new one. Anything else named by `-o` is written *through*, never replaced: renaming over a
device node, a FIFO or `/dev/null` would turn it into a regular file (as root, that breaks the machine's
`/dev/full`), and the write's own error (ENOSPC on `/dev/full`) must reach the user. A symlink is kept: its
target is what gets replaced.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def write_atomically(path: Path, data: bytes, *, make_parents: bool = False) -> None:
    """Write `data` to `path`: atomically for a regular (or new) file, straight through for anything else.

    A new file gets mode 0644 (mkstemp creates 0600, and a report or result is for others to read too); an
    existing file keeps its mode. Raises OSError whose `filename` is `path`, so every caller's message can
    name the file (a full disk says which file it could not write).
    """
    path = Path(path)
    target = resolve_target(path)
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise _named(exc, path) from exc
    if mode is not None and not stat.S_ISREG(mode):
        write_through(target, data, shown=path)
        return
    _replace(target, data, make_parents=make_parents, mode=None if mode is None else stat.S_IMODE(mode),
             shown=path)


def resolve_target(path: Path) -> Path:
    """The file a write to `path` should land in: a symlink's final target (a dangling one's too)."""
    if not path.is_symlink():
        return path
    return Path(os.path.realpath(path))


def is_regular_or_new(path: Path) -> bool:
    """True for a regular file (through any symlinks) or a path that does not exist yet."""
    try:
        return stat.S_ISREG(resolve_target(Path(path)).stat().st_mode)
    except FileNotFoundError:
        return True


def write_through(path: Path, data: bytes, *, shown: Path | None = None) -> None:
    """Write into an existing non-regular file (device, FIFO): open, write all, close; never rename."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        raise _named(exc, shown or path) from exc
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as exc:
        raise _named(exc, shown or path) from exc
    finally:
        os.close(fd)


def _replace(path: Path, data: bytes, *, make_parents: bool, mode: int | None, shown: Path) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    try:
        if make_parents:
            folder.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise _named(exc, shown) from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644 if mode is None else mode)
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError):
            raise _named(exc, shown) from exc
        raise


def _named(exc: OSError, path: Path) -> OSError:
    """The same error, naming `path` (os.write and close errors carry no file name of their own)."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def json_bytes(value: Any, *, indent: int | None = None, compact: bool = True) -> bytes:
    """Compact (or indented) JSON as UTF-8, with any lone surrogate written as a JSON escape.

    A file name that is not valid UTF-8 reaches Python surrogate-escaped (PEP 383, `\udcff`); plain
    `.encode("utf-8")` raises on it and stopped whole batches. As a JSON `\\udcff` escape it is valid JSON
    that reads back (json.loads) as the very same name, so `--resume` and the check cache match it.
    """
    separators = (",", ":") if compact and indent is None else None
    text = json.dumps(value, ensure_ascii=False, indent=indent, separators=separators)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text).encode("utf-8")


_SURROGATE = re.compile("[\ud800-\udfff]")


def read_json_lines(path: Path, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON Lines file (`what` names it in messages).

    Lines end at a newline only: a JSON string may hold a raw U+2028, which str.splitlines() would cut.
    An unreadable or non-UTF-8 file is an InputOutputError (5); a line that is not a JSON object, a
    UsageError (2) naming FILE:LINE.
    """
    from gemmacli.errors import InputOutputError, UsageError

    try:
        handle = path.open(encoding="utf-8", newline="\n")
    except OSError as exc:
        raise InputOutputError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    with handle:
        try:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UsageError(f"{path}:{number}: not a JSON object: {exc.msg}") from exc
                if not isinstance(record, dict):
                    raise UsageError(f"{path}:{number}: not a JSON object")
                yield number, record
        except UnicodeDecodeError as exc:
            raise InputOutputError(f"{what} {path} is not UTF-8: {exc}") from exc
