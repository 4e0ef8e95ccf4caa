"""The library surface: what `gemmacli` exports, lazily, and that it works without the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import gemmacli


def test_every_public_name_resolves() -> None:
    for name in gemmacli.__all__:
        assert getattr(gemmacli, name) is not None
    with pytest.raises(AttributeError):
        gemmacli.not_a_thing  # noqa: B018


def test_importing_the_package_loads_no_model_code() -> None:
    code = ("import sys, gemmacli; "
            "print(any(m.startswith(('onnxruntime', 'llguidance', 'numpy')) for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_extract_from_python_with_a_config(tiny_model_dir: Path) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
              "additionalProperties": False}
    config = gemmacli.ExtractionConfig(max_tokens=64)
    result = gemmacli.Extractor(schema, model=tiny_model_dir, config=config).extract("n is 3")
    assert set(result.data) == {"n"}
    assert gemmacli.extract("n is 3", schema, model=tiny_model_dir, max_tokens=64).data == result.data
    with pytest.raises(gemmacli.UsageError) as caught:
        gemmacli.ExtractionConfig(max_tokens=0)
    assert caught.value.option == "max_tokens" and "--" not in caught.value.message
    with pytest.raises(TypeError):
        gemmacli.Extractor(schema, model=tiny_model_dir, max_tokenz=3)


def test_the_cli_checks_a_schema_once_per_command(tiny_model_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI prepares the schema (gemmacli.schema.PreparedSchema) and hands it down: no Extractor
    checks it again, however many documents (before: once in the CLI, again in every Extractor)."""
    from cli import run_cli

    import gemmacli.schema.prepared as prepared

    calls = []
    original = prepared.check_schema
    monkeypatch.setattr(prepared, "check_schema", lambda *a, **k: calls.append(1) or original(*a, **k))
    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / name).write_text(f"{name} says n is 3")
    result = run_cli(["extract", "--schema", "n int", "-m", str(tiny_model_dir), str(tmp_path / "a.txt"),
                      str(tmp_path / "b.txt"), str(tmp_path / "c.txt")], environ={"HOME": str(tmp_path)})
    assert result.status == 0, result.stderr
    assert len(result.records()) == 3 and len(calls) == 1
