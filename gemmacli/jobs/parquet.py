"""Parquet beside JSON Lines: `-o FILE.parquet` for the records, `--input-jsonl FILE.parquet` for the texts.

Why: the Ray integration's users keep their corpora and results in Parquet (Ray Data, Spark, DuckDB read it
natively). pyarrow comes with `gemmacli[ray]` (Ray Data needs it) and is imported only here, only when a
Parquet file is named; without it the command exits 2 with the pip command.

The records keep their JSON Lines meaning column by column: `source` and `ok` as themselves, and `data`,
`error`, `warnings` and `meta` as JSON text, written exactly as in the JSON Lines record (a schema's output
has no fixed Arrow type: every schema would need its own, and a failed record has no data at all). The
file is written to a temporary name and renamed when the batch ends, so a reader never sees half a table;
it cannot be resumed (JSON Lines can).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gemmacli.errors import InputOutputError, UsageError
from gemmacli.files import json_bytes

ROW_GROUP = 1000  # records buffered per Parquet row group (bounded memory for long batches)
JSON_COLUMNS = ("data", "error", "warnings", "meta")


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() == ".parquet"


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:
        raise UsageError("Parquet files need pyarrow, which is not installed",
                         hint="pip install 'gemmacli[ray]'   # or: pip install pyarrow") from exc
    return pyarrow


def _text(value: str) -> str:
    """Arrow strings are UTF-8: a surrogate-escaped file name is kept as its JSON escape."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value)[1:-1]
    return value


class ParquetSink:
    """Records to a Parquet table, one row group per ROW_GROUP records, published by rename on close."""

    def __init__(self, path: Path) -> None:
        self.pa = _pyarrow()
        self.path = Path(path)
        self.schema = self.pa.schema([("source", self.pa.string()), ("ok", self.pa.bool_()),
                                      *((name, self.pa.string()) for name in JSON_COLUMNS)])
        self.rows: list[dict[str, Any]] = []
        try:
            fd, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                        dir=self.path.parent if str(self.path.parent) else ".")
            os.close(fd)
            self.temp = Path(temp)
            self.writer: Any = self.pa.parquet.ParquetWriter(str(self.temp), self.schema)
        except OSError as exc:
            raise InputOutputError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def write(self, record: dict[str, Any]) -> None:
        row = {"source": _text(str(record["source"])), "ok": bool(record["ok"])}
        for name in JSON_COLUMNS:
            row[name] = json_bytes(record[name]).decode("utf-8") if name in record else None
        self.rows.append(row)
        if len(self.rows) >= ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.writer.write_table(self.pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows = []

    def close(self) -> None:
        if self.writer is None:
            return
        try:
            self._flush()
            self.writer.close()
            self.writer = None
            os.replace(self.temp, self.path)
        except OSError as exc:
            raise InputOutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        finally:
            with contextlib.suppress(OSError):
                self.temp.unlink()


def parquet_records(path: Path, name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number from 1, row as a dict) of a Parquet file, a row group at a time."""
    pa = _pyarrow()
    try:
        table = pa.parquet.ParquetFile(str(path))
        number = 0
        for group in range(table.num_row_groups):
            for row in table.read_row_group(group).to_pylist():
                number += 1
                yield number, row
    except (OSError, pa.ArrowException) as exc:
        raise InputOutputError(f"cannot read {name} as Parquet: {exc}") from exc
