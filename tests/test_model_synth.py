"""The synthetic Gemma 3: tokenizer structure, checkpoint shape, and the `model synth` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli import run_cli  # tests/cli.py
from tokenizers import Tokenizer

from gemmacli.errors import ExitStatus
from gemmacli.models.synth import (
    CHECKPOINT_DIR,
    GEMMA3_270M_CONFIG,
    GEMMA3_270M_VOCAB,
    TINY_CONFIG,
    train_tokenizer,
)

pytestmark = pytest.mark.torch  # every test here runs torch or transformers

SPECIALS = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<start_of_turn>": 105, "<end_of_turn>": 106}


def test_tiny_tokenizer_has_gemma_structure(tiny_model_dir: Path) -> None:
    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    vocab = tokenizer.get_vocab()
    for piece, token_id in SPECIALS.items():
        assert vocab[piece] == token_id
    assert all(vocab[f"<unused{i}>"] in range(4, 105) for i in range(99))
    text = 'Hello world, {"total": 42.5}\n<start_of_turn>user\nünïcode 日本<end_of_turn>'
    encoding = tokenizer.encode(text)
    assert encoding.ids[0] == 2, "the tokenizer prepends <bos> as Gemma's does"
    assert 105 in encoding.ids and 106 in encoding.ids
    assert any(token.startswith("<0x") for token in encoding.tokens), "byte fallback for unseen characters"
    assert "▁world" in encoding.tokens
    assert tokenizer.decode(encoding.ids, skip_special_tokens=False) == "<bos>" + text
    config = json.loads((tiny_model_dir / "gemmacli.json").read_text())
    assert tokenizer.get_vocab_size() == config["vocab_size"]


def test_270m_tokenizer_is_padded_to_the_real_vocabulary(tmp_path: Path) -> None:
    tokenizer = Tokenizer.from_file(str(train_tokenizer(tmp_path, vocab_size=GEMMA3_270M_VOCAB)))
    assert tokenizer.get_vocab_size() == GEMMA3_270M_VOCAB
    vocab = tokenizer.get_vocab()
    assert sorted(vocab.values()) == list(range(GEMMA3_270M_VOCAB))
    for piece, token_id in SPECIALS.items():
        assert vocab[piece] == token_id
    assert tokenizer.decode([GEMMA3_270M_VOCAB - 1]).strip(), "padding pieces are real strings"


def test_configs_keep_the_gemma3_270m_shape() -> None:
    real = GEMMA3_270M_CONFIG
    shape = (real["vocab_size"], real["hidden_size"], real["intermediate_size"], real["num_hidden_layers"])
    assert shape == (262144, 640, 2048, 18)
    assert (real["num_attention_heads"], real["num_key_value_heads"], real["head_dim"]) == (4, 1, 256)
    assert real["sliding_window"] == 512 and real["query_pre_attn_scalar"] == 256
    assert real["layer_types"].count("full_attention") == 3 and real["layer_types"][5] == "full_attention"
    assert TINY_CONFIG["layer_types"] == ["sliding_attention"] * 5 + ["full_attention"]
    assert TINY_CONFIG["sliding_window"] < 32


def test_synth_keeps_its_checkpoint_and_records_it(tiny_model_dir: Path) -> None:
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    assert manifest["source"]["kind"] == "synthetic"
    assert manifest["source"]["checkpoint"] == CHECKPOINT_DIR
    config = json.loads((tiny_model_dir / CHECKPOINT_DIR / "config.json").read_text())
    assert config["model_type"] == "gemma3_text" and config.get("tie_word_embeddings", True) is True
    assert f"{CHECKPOINT_DIR}/model.safetensors" in manifest["files"]


def test_synth_command_builds_a_loadable_model(tmp_path: Path) -> None:
    pytest.importorskip("optimum")
    result = run_cli(["model", "synth", "mini", "--size", "tiny", "--precision", "fp32"],
                     environ={"GEMMACLI_MODELS": str(tmp_path), "HOME": str(tmp_path), "NO_COLOR": "1"})
    status, stdout, stderr = ExitStatus(result.status), result.stdout, result.stderr
    assert status == ExitStatus.OK, stderr
    assert stdout.decode().strip() == str(tmp_path / "mini")
    for stage in ("synth", "export", "split", "fuse", "write"):
        assert f"  {stage}" in stderr
    from gemmacli.engine.runtime import Model

    model = Model.load("mini", environ={"GEMMACLI_MODELS": str(tmp_path)})
    assert len(model.generate_greedy([2, 100, 200], 3, stop_ids=[])) == 3
