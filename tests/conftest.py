"""Shared fixtures: tiny synthetic models, built once and cached across test runs and processes.

`tiny_model_dir` is the default export path (INT4, block 32); `tiny_fp32_model_dir` the unquantized one
(compared with transformers token for token). Both carry their HF checkpoint in `source-checkpoint/`.
They live under `.cache/test-models/<key>/` where the key combines FIXTURE_VERSION with a hash of the
recipe's source (synth, export, fuse): a changed recipe rebuilds, an unchanged one costs nothing.
A file lock keeps parallel pytest processes from building the same model twice.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from extras import file_lock, has_ray, requires_torch

FIXTURE_VERSION = "tiny-1"
REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPE_FILES = ("gemmacli/models/synth.py", "gemmacli/models/export.py", "gemmacli/models/fuse.py",
                "tests/hubserver.py")


def _cache_root() -> Path:
    return Path(os.environ.get("GEMMACLI_TEST_CACHE", REPO_ROOT / ".cache" / "test-models"))


def _recipe_key() -> str:
    digest = hashlib.sha256(FIXTURE_VERSION.encode())
    for relative in RECIPE_FILES:
        path = REPO_ROOT / relative
        if path.is_file():
            digest.update(path.read_bytes())
    return f"{FIXTURE_VERSION}-{digest.hexdigest()[:12]}"


def build_cached(label: str, builder: Callable[[Path], object]) -> Path:
    """Run `builder(folder)` once per recipe key; later calls (and other processes) reuse the folder."""
    root = _cache_root() / _recipe_key()
    folder = root / label
    done = root / f"{label}.done"
    with file_lock(root / f"{label}.lock"):
        if not done.is_file():
            if folder.exists():
                shutil.rmtree(folder)
            builder(folder)
            done.touch()
            _prune_stale_recipes(keep=root)
    return folder


def _prune_stale_recipes(keep: Path, max_age_s: float = 86400) -> None:
    """Drop models built by recipes nobody has built for a day (each edit of the recipe leaves one)."""
    for other in keep.parent.iterdir():
        if other != keep and other.is_dir() and time.time() - other.stat().st_mtime > max_age_s:
            shutil.rmtree(other, ignore_errors=True)


def build_cached_model(label: str, **options: object) -> Path:
    """Synthesize a tiny model into the shared cache unless an identical recipe already built it (that
    needs torch; a model already in the cache does not)."""
    from gemmacli.models.synth import synthesize

    root = _cache_root() / _recipe_key()
    if not (root / f"{label}.done").is_file():
        requires_torch(f"building the tiny test model {label!r}")
    return build_cached(label, lambda folder: synthesize(label, "tiny", folder, **options))


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """INT4 tiny Gemma 3 (the default export path). Treat as read-only: copy it before changing files."""
    return build_cached_model("tiny-int4", precision="int4", block_size=32)


@pytest.fixture(scope="session")
def tiny_fp32_model_dir() -> Path:
    """fp32 tiny Gemma 3 (no quantization): matches transformers token for token. Read-only."""
    return build_cached_model("tiny-fp32", precision="fp32")


@pytest.fixture(scope="session")
def tiny_hub_repo_dir(tiny_fp32_model_dir: Path) -> Path:
    """The tiny model in onnx-community's Hub layout (onnx/model_q4.onnx with full logits), for pull tests."""
    from hubserver import build_hub_layout

    checkpoint = tiny_fp32_model_dir / "source-checkpoint"
    return build_cached("tiny-hub-repo", lambda folder: build_hub_layout(checkpoint, folder))


@pytest.fixture(autouse=True)
def _private_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """What a run caches for later (llguidance token tables) goes to this test session's folder, never the
    user's ~/.cache; tests that look at a cache pass their own folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg-cache"))


@pytest.fixture(autouse=True)
def _no_checkout_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """Models a developer keeps in ./onnx_models must not leak into any test's search path."""
    from gemmacli.models import store

    monkeypatch.setattr(store, "checkout_models_dir", lambda: None)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`@pytest.mark.torch` tests skip cleanly without torch and transformers, `@pytest.mark.ray` ones
    without Ray Data (see tests/extras.py)."""
    import importlib.util

    missing = {}
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None:
        missing["torch"] = "needs torch and transformers: pip install -e '.[dev]'"
    if not has_ray():
        missing["ray"] = "needs Ray Data: pip install -e '.[ray]'"
    for item in items:
        for marker, reason in missing.items():
            if item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=reason))
