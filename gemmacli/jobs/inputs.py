"""Where texts come from: stdin, files, globs, folders, JSON Lines. Shared by `extract` and `check`.

In brief:
@dataclass(frozen=True)
class Source:
    name: str              # what a record calls "source": the path as given, "-" for stdin, or a JSONL id
    kind: str              # "stdin" | "file" | "jsonl"
    path: Path | None
    def read_text(self, *, encoding="utf-8", errors="strict") -> str
        Bad bytes -> InputOutputError (exit 5) naming the file and byte offset.

def collect_sources(args: list[str], *, glob: str | None = None, stdin: Readable | None = None,
                    jsonl: bool = False, text_field="text", id_field=None) -> list[Source]
    Files, shell-unexpanded globs and folders (recursively, filtered by `glob`), "-" for stdin;
    sorted deterministically within a folder. Missing path -> InputOutputError (exit 5).

Sources are small and picklable (they travel to `--jobs` worker processes): a file source carries only
its path and is read where it is extracted; stdin and JSON Lines sources carry their bytes/text, read
once up front because a stream cannot be read twice.
"""

from __future__ import annotations

import codecs
import fnmatch
import glob as globlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gemmacli.errors import InputOutputError

_GLOB_CHARS = set("*?[")


class Readable(Protocol):
    """What is read from stdin: a binary stream, or gemmacli.cli.commands.HashingReader around one."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class Source:
    """One text to extract from; `name` is what its record calls "source" (and what --resume matches)."""

    name: str
    kind: str  # "stdin" | "file" | "jsonl"
    path: Path | None
    data: bytes | None = field(default=None, repr=False, compare=False)  # stdin bytes
    text: str | None = field(default=None, repr=False, compare=False)  # a JSON Lines record's text
    from_stdin: bool = field(default=False, compare=False)  # read from `-` (--resume compares its text)

    def read_text(self, *, encoding: str = "utf-8", errors: str = "strict") -> str:
        """Decode this source; undecodable bytes name the file and byte offset (exit 5)."""
        if self.text is not None:
            return self.text
        if self.data is not None:
            raw = self.data
        elif self.path is not None:
            try:
                raw = self.path.read_bytes()
            except OSError as exc:
                raise InputOutputError(f"cannot read {self.name}: {exc.strerror or exc}") from exc
        else:  # pragma: no cover - a Source is always built with one of the three
            raise InputOutputError(f"{self.name}: nothing to read")
        return decode(raw, self.name, encoding=encoding, errors=errors)


def require_text(text: str, name: str, *, allow_empty: bool) -> str:
    """The one rule `extract` and `check` share: an input with nothing but whitespace fails (exit 1) unless
    --allow-empty, because a model asked about nothing can only invent an answer."""
    if not text.strip() and not allow_empty:
        from gemmacli.errors import ExtractionFailed

        where = "stdin" if name == "-" else name
        raise ExtractionFailed(f"{where}: input is empty", hint="pass --allow-empty to extract anyway")
    return text


def decode(raw: bytes, name: str, *, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Decode bytes, dropping a UTF-8 byte-order mark; strict errors become exit 5 with the byte offset."""
    try:
        codec = codecs.lookup(encoding)
    except LookupError as exc:
        raise InputOutputError(f"unknown encoding '{encoding}'", hint="e.g. --encoding latin-1") from exc
    if codec.name == "utf-8" and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        return raw.decode(codec.name, errors=errors)
    except UnicodeDecodeError as exc:
        where = "stdin" if name == "-" else name
        raise InputOutputError(
            f"{where} is not valid {encoding}: byte 0x{raw[exc.start]:02x} at offset {exc.start}",
            hint="pass --encoding latin-1 (or the file's real encoding), or --errors replace",
        ) from exc


def collect_sources(
    args: list[str],
    *,
    glob: str | None = None,
    stdin: Readable | None = None,
    jsonl: bool = False,
    text_field: str = "text",
    id_field: str | None = None,
) -> list[Source]:
    """Expand arguments into sources in a deterministic order (argument order, then sorted paths)."""
    sources: list[Source] = []
    for arg in args:
        if arg == "-":
            if stdin is None:
                raise InputOutputError("'-' names stdin, but there is no stdin to read")
            data = stdin.read()
            if jsonl:
                sources.extend(_jsonl_sources(data, "-", text_field, id_field))
            else:
                sources.append(Source(name="-", kind="stdin", path=None, data=data, from_stdin=True))
            continue
        for path, name in _expand(arg, glob):
            if jsonl and path.suffix.lower() == ".parquet":
                sources.extend(_parquet_sources(path, name, text_field, id_field))
            elif jsonl:
                try:
                    data = path.read_bytes()
                except OSError as exc:
                    raise InputOutputError(f"cannot read {name}: {exc.strerror or exc}") from exc
                sources.extend(_jsonl_sources(data, name, text_field, id_field))
            else:
                sources.append(Source(name=name, kind="file", path=path))
    return sources


def _expand(arg: str, pattern: str | None) -> Iterable[tuple[Path, str]]:
    """A file, a folder (recursive, hidden entries skipped, `pattern` filters) or an unexpanded glob."""
    path = Path(arg)
    if path.is_file():
        return [(path, arg)]
    if path.is_dir():
        return [(p, str(p)) for p in _walk(path, pattern)]
    if path.exists():
        raise InputOutputError(f"{arg} is neither a file nor a folder")
    if _GLOB_CHARS & set(arg):
        matches = sorted(globlib.glob(arg, recursive=True))
        files: list[tuple[Path, str]] = []
        for match in matches:
            candidate = Path(match)
            if candidate.is_dir():
                files.extend((p, str(p)) for p in _walk(candidate, pattern))
            elif candidate.is_file() and (pattern is None or _matches(candidate.name, match, pattern)):
                files.append((candidate, match))
        if not files:
            raise InputOutputError(f"no files match {arg}")
        return files
    raise InputOutputError(f"no such file or folder: {arg}")


def _walk(folder: Path, pattern: str | None) -> list[Path]:
    """Files under `folder`, sorted by relative path so order does not depend on the file system."""
    found = []
    for candidate in folder.rglob("*"):
        relative = candidate.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if candidate.is_file() and (
            pattern is None or _matches(candidate.name, relative.as_posix(), pattern)
        ):
            found.append(candidate)
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _matches(name: str, relative: str, pattern: str) -> bool:
    """`--glob '*.txt'` matches file names; a pattern with '/' matches the path below the folder."""
    if "/" in pattern:
        return fnmatch.fnmatchcase(relative, pattern) or fnmatch.fnmatchcase(relative, pattern.lstrip("*/"))
    return fnmatch.fnmatchcase(name, pattern)


def _jsonl_sources(data: bytes, name: str, text_field: str, id_field: str | None) -> list[Source]:
    """One source per non-blank line; named by `id_field` when given, else FILE:LINE."""
    text = decode(data, name)
    sources = []
    label = "stdin" if name == "-" else name
    # "\n" only, not splitlines(): a raw U+2028 may sit inside a JSON string
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{label}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputOutputError(f"{where}: not a JSON object ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(record, dict):
            raise InputOutputError(f"{where}: expected a JSON object, found {type(record).__name__}")
        sources.append(_record_source(record, where, f"{label}:{number}", text_field, id_field, name == "-"))
    return sources


def _parquet_sources(path: Path, name: str, text_field: str, id_field: str | None) -> list[Source]:
    """One source per row of a Parquet file (gemmacli.jobs.parquet), named like JSON Lines: FILE:ROW."""
    from gemmacli.jobs.parquet import parquet_records

    return [_record_source(row, f"{name}, row {number}", f"{name}:{number}", text_field, id_field, False)
            for number, row in parquet_records(path, name)]


def _record_source(
    record: dict, where: str, default_name: str, text_field: str, id_field: str | None, from_stdin: bool
) -> Source:
    """A JSON Lines record or Parquet row as a Source: its text field, named by `id_field` when given."""
    if text_field not in record:
        raise InputOutputError(f"{where}: no field '{text_field}'",
                               hint="name the text field with --text-field")
    value = record[text_field]
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False) if value is not None else ""
    source_name = default_name
    if id_field is not None:
        if id_field not in record:
            raise InputOutputError(f"{where}: no field '{id_field}'", hint="check --id-field")
        identity = record[id_field]
        source_name = identity if isinstance(identity, str) else json.dumps(identity)
    return Source(name=source_name, kind="jsonl", path=None, text=value, from_stdin=from_stdin)
