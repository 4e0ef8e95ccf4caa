"""Which optional stacks a test needs: a core install skips what needs the `dev` extra, never errors."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest


def requires_torch(what: str) -> None:
    """Skip (not error) where torch or transformers is missing: `pip install -e .` runs the tests that do
    not need them; `pip install -e '.[dev]'` runs them all."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        pytest.skip(f"{what} needs torch and transformers: pip install -e '.[dev]'")


def has_ray() -> bool:
    """Ray Data importable (the `ray` extra, part of `dev`)?"""
    return importlib.util.find_spec("ray") is not None and importlib.util.find_spec("pyarrow") is not None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path`: parallel pytest processes never build one cached model twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
