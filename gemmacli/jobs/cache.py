"""The `check` result cache: one small JSON file per outcome, keyed by a sha256 the caller computes.

The key covers file content, schema, policy, model manifest, gemmacli version and extraction options
(see gemmacli.jobs.policy.CheckRunner), so an entry can never be stale: a change to any of them is a new key.
Entries are written atomically (temp file + rename) so a killed CI job or two parallel jobs sharing a
cache never leave a half-written entry; an unreadable or corrupt entry is a miss, never an error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gemmacli.files import json_bytes, write_atomically
from gemmacli.models.store import cache_home


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """${XDG_CACHE_HOME:-~/.cache}/gemmacli/check, read from the given environment (tests swap it)."""
    return cache_home(environ) / "check"


class ResultCache:
    """Outcome records by key under `folder`; `warn` hears about a cache that cannot be written."""

    def __init__(self, folder: Path, *, warn: Callable[[str], None] | None = None) -> None:
        self.folder = Path(folder)
        self._warn = warn
        self._write_failed = False

    def _entry(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            record = json.loads(self._entry(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def put(self, key: str, record: dict[str, Any]) -> None:
        """Store a record; a read-only or full cache only warns once, the check itself goes on."""
        data = json_bytes(record, compact=False)  # key order kept: reports match; odd file names escaped
        try:
            write_atomically(self._entry(key), data, make_parents=True)
        except OSError as exc:
            if not self._write_failed and self._warn is not None:
                self._warn(f"cannot write the check cache at {self.folder}: {exc.strerror or exc}")
            self._write_failed = True
