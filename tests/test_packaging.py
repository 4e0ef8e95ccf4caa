"""A non-editable install (`pip install .`, a wheel) carries the bundled schemas, policies and examples:
before, `schema list` was empty there and `--schema contact` silently became a one-field schema."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_schemas_policies_and_examples(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", minversion="68", reason="the dev extra brings setuptools 68+")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("gemmacli-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    bundled = {p.name for p in (REPO / "schemas").glob("*.json")}
    assert bundled and {f"gemmacli/schemas/{n}" for n in bundled} <= names
    assert "gemmacli/schemas/policies/no-pii.json" in names
    assert "gemmacli/schemas/examples/contact.jsonl" in names
    assert "gemmacli/models/importer.py" in names and "gemmacli/py.typed" in names
