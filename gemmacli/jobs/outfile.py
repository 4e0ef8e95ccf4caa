"""The JSON Lines `-o FILE` of a batch: a lock so two runs never interleave, a sidecar saying what made it.

The sidecar is `.NAME.gemmacli` beside FILE (hidden, so a folder given as input never reads it back):

    {"format": 1, "pid": 1234, "host": "ci-7", "started": "2025-01-01T12:00:00", "cwd": "/work",
     "fingerprint": {"schema": "…", "model": "…", "max-tokens": null, …}, "stdin_sha256": null}

Why a sidecar and not a header line: FILE stays pure records, for `jq`, for `wc -l`, and for the readers
that already rely on that. The sidecar is also the lock: the run holds an exclusive `flock` on it from start
to finish, so a second run on the same FILE exits 2 naming the first one's pid (the kernel drops the lock
when a process dies, even by kill -9, so a stale lock cannot exist). With `--resume` its fingerprint is what
a new run must match (schema, model, decoding options): a file is never a mix of two configurations; its
`cwd` lets sources given as relative paths be matched from another working folder, and `stdin_sha256` tells
whether `-` holds the same text as before.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

from gemmacli.errors import UsageError

SIDECAR_FORMAT = 1


def sidecar_path(output: Path) -> Path:
    """`.NAME.gemmacli` in the folder of FILE (of its target, when FILE is a symlink)."""
    from gemmacli.files import resolve_target

    target = resolve_target(Path(output))
    return target.parent / f".{target.name}.gemmacli"


class OutputLock:
    """Exclusive hold on FILE for one run; `previous` is the sidecar a former run left (None if none)."""

    def __init__(self, output: Path) -> None:
        self.output = Path(output)
        self.path: Path | None = sidecar_path(self.output)
        self.previous: dict[str, Any] | None = None
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # a folder we may not create files in: lock FILE itself, keep no sidecar
            self.path = None
            self.fd = os.open(self.output, os.O_RDONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = describe_holder(_read(self.fd)) if self.path is not None else "another gemmacli run"
            os.close(self.fd)
            raise UsageError(
                f"{self.output} is being written by {holder}; two runs would interleave their records",
                hint="wait for that run to finish, or write to another file",
            ) from None
        if self.path is not None:
            self.previous = _read(self.fd)

    def record(self, fingerprint: dict[str, Any], *, stdin_sha256: str | None) -> None:
        """Write this run's sidecar (in place: the lock is on this very file)."""
        if self.path is None:
            return
        info = {
            "format": SIDECAR_FORMAT,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "cwd": os.getcwd(),
            "fingerprint": fingerprint,
            "stdin_sha256": stdin_sha256,
        }
        data = (json.dumps(info, ensure_ascii=True, sort_keys=True) + "\n").encode("ascii")
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        with contextlib.suppress(OSError):
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def _read(fd: int) -> dict[str, Any] | None:
    """The sidecar's JSON, or None when it is new, empty or unreadable (then only the records speak)."""
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, min(size, 1 << 20), 0)
        value = json.loads(data) if data.strip() else None
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def describe_holder(info: dict[str, Any] | None) -> str:
    """'gemmacli pid 1234 on ci-7 (started 2025-01-01T12:00:00)', or a plain phrase when unknown."""
    if not info or "pid" not in info:
        return "another gemmacli run"
    where = f" on {info['host']}" if info.get("host") else ""
    when = f" (started {info['started']})" if info.get("started") else ""
    return f"gemmacli pid {info['pid']}{where}{when}"


def differences(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What changed between two fingerprints, one phrase each: 'schema (1a2b… there, 3c4d… now)'."""
    found = []
    for key in sorted(set(before) | set(now)):
        old, new = before.get(key), now.get(key)
        if old != new:
            label = key if key in ("schema", "model") else f"--{key}"
            found.append(f"{label} ({_show(old)} there, {_show(new)} now)")
    return found


def _show(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"
    return json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else value
