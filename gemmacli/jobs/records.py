"""Records on disk: the JSON Lines line, the sinks that write records, and reading a FILE back for --resume.

Why here: `run_batch` (gemmacli.jobs.batch) only hands each finished record to a `RecordSink`; how a
record becomes bytes, how FILE is written so that it can be resumed, and how a resumed FILE is read back
and matched against the sources are one topic, kept together so the guarantees below hold in one place.

Resume (`-o FILE --resume`)
---------------------------
The JSON Lines file is itself the checkpoint; there is no side file to get out of step with it:

1. Each record is one line, written with ONE `write()` on a file opened with O_APPEND. A process killed
   with SIGKILL cannot leave half a write in the page cache, so after a kill -9 the file holds only
   whole records. A power cut, a full disk or a crashed NFS client can still leave a torn last line.
2. `--resume` reads the file, keeps every line that ends in a newline and parses as a record, truncates
   the file just after the last good line (dropping a torn tail, which is then redone), and skips the
   sources already recorded. Sources are matched by name and by occurrence, so an input that names the
   same source twice is resumed correctly too.
3. Because records are written in input order (gemmacli.jobs.batch), what is on disk is always a prefix
   of the work; work that had finished out of order but was not yet written is simply redone. Nothing is
   lost, nothing repeats.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gemmacli.env import Environment
from gemmacli.errors import ExitStatus, InputOutputError, UsageError
from gemmacli.files import is_regular_or_new, json_bytes, write_atomically
from gemmacli.jobs.inputs import Source


class RecordSink(Protocol):
    """Where run_batch puts each finished record, in input order (stdout, a JSON Lines file, a list)."""

    def write(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def record_line(record: dict[str, Any]) -> bytes:
    """One JSON Lines record: compact, UTF-8, newline-terminated.

    A file name that is not valid UTF-8 reaches us surrogate-escaped (PEP 383); it is written as a JSON
    `\\udcXX` escape, which reads back (json.loads) as the very same name, so --resume matches it.
    """
    return json_bytes(record) + b"\n"


class StdoutSink:
    """Records to stdout, flushed one by one so `| head`, `| jq` and friends see them as they finish."""

    def __init__(self, env: Environment) -> None:
        self.env = env

    def write(self, record: dict[str, Any]) -> None:
        self.env.write_data(record_line(record))

    def close(self) -> None:
        return None


class JsonlFileSink:
    """Appends records to FILE, one write() per line (see the module docstring for why that resumes).

    FILE is opened without O_TRUNC and only then emptied (or, with `resume`, cut after its last whole
    record), so a caller holding gemmacli.jobs.outfile.OutputLock has checked FILE before anything in it
    changes. A FIFO or a device (`/dev/null`) is written through and never truncated or resumed.
    `retry_failed` drops the failed records first, so their sources are extracted again.
    """

    def __init__(self, path: Path, *, resume: bool, retry_failed: bool = False) -> None:
        self.path = Path(path)
        self.found = RecordedFile(Counter(), 0, set())
        self.regular = is_regular_or_new(self.path)
        if resume and not self.regular:
            raise UsageError(f"--resume needs a regular file, and {path} is not one (a device or a FIFO)")
        if resume and self.path.exists():
            self.found = scan_records(self.path)
            if retry_failed and self.found.failed():
                self._drop_failed()
        try:
            self.fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if self.regular:
                os.ftruncate(self.fd, self.found.good_end)
        except OSError as exc:
            raise InputOutputError(f"cannot write {path}: {exc.strerror or exc}") from exc

    @property
    def recorded(self) -> Counter[str]:
        return self.found.sources

    @property
    def schema_hashes(self) -> set[str]:
        return self.found.schema_hashes

    def _drop_failed(self) -> None:
        """Rewrite FILE (atomically) with its whole records minus the failed ones."""
        kept = bytearray()
        with open(self.path, "rb") as handle:
            data = handle.read(self.found.good_end)
        for line in data.splitlines(keepends=True):
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:
                record = None
            if not (isinstance(record, dict) and record.get("ok") is False):
                kept += line
        try:
            write_atomically(self.path, bytes(kept))
        except OSError as exc:
            raise InputOutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self.found = scan_records(self.path)

    def write(self, record: dict[str, Any]) -> None:
        assert self.fd is not None
        data = memoryview(record_line(record))
        try:
            while data:  # a regular file takes it in one write; loop only for the pathological case
                written = os.write(self.fd, data)
                data = data[written:]
        except OSError as exc:  # ENOSPC, EIO, a FIFO nobody reads any more: say which file
            raise InputOutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None


@dataclass
class RecordedFile:
    """What --resume learns from an existing JSON Lines file."""

    sources: Counter[str]  # source name -> how many records it has
    good_end: int  # byte offset just after the last whole record
    schema_hashes: set[str]  # meta.schema_sha256 values seen (records written with --with-meta)
    entries: list[tuple[str, ExitStatus]] = field(default_factory=list)  # (source, status) in file order

    def failed(self) -> list[tuple[str, ExitStatus]]:
        return [(name, status) for name, status in self.entries if status != ExitStatus.OK]

    def status(self) -> ExitStatus:
        """The exit status the records in the file stand for: 5 for an unreadable input, 1 for a failure."""
        return max((status for _name, status in self.entries), default=ExitStatus.OK)


def scan_records(path: Path) -> RecordedFile:
    """Read the whole records of a JSON Lines file; only a torn tail may be dropped, never a record.

    A line that is not a whole record is accepted only at the end of the file (a write cut short).
    Anywhere else it means the file was edited or is not ours, and resuming could destroy records, so
    that is refused (exit 5).
    """
    found = RecordedFile(Counter(), 0, set())
    offset = 0
    bad_line: int | None = None
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            offset += len(line)
            if line.endswith(b"\n") and not line.strip():
                if bad_line is None:
                    found.good_end = offset
                continue
            record = _whole_record(line)
            if record is None:
                bad_line = bad_line or number
                continue
            if bad_line is not None or not isinstance(record, dict) or "source" not in record:
                where = bad_line if bad_line is not None else number
                raise InputOutputError(
                    f"{path}, line {where}: not a gemmacli record (nor a torn last line); refusing to resume",
                    hint="write to a new file, or drop --resume to overwrite it",
                )
            _note_record(found, record)
            found.good_end = offset
    return found


def _whole_record(line: bytes) -> Any:
    """The JSON value of a newline-terminated line; None for a torn line or one that does not parse."""
    if not line.endswith(b"\n"):
        return None
    try:
        return json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _note_record(found: RecordedFile, record: dict[str, Any]) -> None:
    name = str(record["source"])
    found.sources[name] += 1
    status = ExitStatus.OK
    if record.get("ok") is False:
        error = record.get("error")
        kind = error.get("type") if isinstance(error, dict) else None
        status = ExitStatus.IO if kind == "input" else ExitStatus.FAILED
    found.entries.append((name, status))
    meta = record.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("schema_sha256"), str):
        found.schema_hashes.add(meta["schema_sha256"])


def skip_recorded(
    sources: Sequence[Source],
    recorded: Counter[str] | Sequence[str],
    *,
    base: Path | None = None,
    skip_stdin: bool = True,
) -> list[Source]:
    """Drop each source already recorded, matching names by occurrence (a name given twice is resumed right).

    A file is matched by its resolved path, with the recorded names read relative to `base` (the working
    folder of the run that wrote them), so a resume from another folder finds them. Text read from stdin is
    skipped only when `skip_stdin` says stdin holds the same text as before.
    """
    names = list(recorded.elements()) if isinstance(recorded, Counter) else list(recorded)
    folder = str(base) if base is not None else os.getcwd()
    by_name: dict[str, deque[int]] = {}
    by_path: dict[str, deque[int]] = {}
    for index, name in enumerate(names):
        by_name.setdefault(name, deque()).append(index)
        by_path.setdefault(os.path.realpath(os.path.join(folder, name)), deque()).append(index)
    used: set[int] = set()
    todo = []
    for source in sources:
        if source.from_stdin and not skip_stdin:
            todo.append(source)
            continue
        if source.kind == "file" and source.path is not None:
            queue = by_path.get(os.path.realpath(source.path))
        else:
            queue = by_name.get(source.name)
        if not _take(queue, used):
            todo.append(source)
    return todo


def _take(queue: deque[int] | None, used: set[int]) -> bool:
    """Consume the first recorded entry of `queue` not yet matched to a source."""
    while queue:
        index = queue.popleft()
        if index not in used:
            used.add(index)
            return True
    return False
