"""Which optional stacks a test needs: a core install skips what needs the `dev` extra, never errors."""

from __future__ import annotations

import importlib.util

import pytest


def requires_torch(what: str) -> None:
    """Skip (not error) where torch or transformers is missing: `pip install -e .` runs the tests that do
    not need them; `pip install -e '.[dev]'` runs them all."""
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        pytest.skip(f"{what} needs torch and transformers: pip install -e '.[dev]'")
