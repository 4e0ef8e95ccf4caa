"""llguidance's tokenizer from a cached token table (gemmacli.engine.tokens): the same tokenizer, the same
output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gemmacli.engine import tokens
from gemmacli.engine.decoder import DecodeOptions, decode
from gemmacli.engine.grammar import compile_grammar, new_matcher
from gemmacli.engine.prompt import encode_prompt
from gemmacli.schema import check_schema

TEXT = "Alice Martin, 34, wrote from Paris on Monday. She is happy; tags: invoice, urgent."
SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                      "mood": {"enum": ["happy", "sad", "Zürich ☃"]},
                                      "tags": {"type": "array", "items": {"type": "string", "maxLength": 8},
                                               "maxItems": 3}},
     "required": ["name", "age", "mood", "tags"]},
    {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 4},
    {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
]


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    from gemmacli.engine.runtime import Model

    return Model.load(tiny_model_dir)


def text_of(model: Any) -> str:
    return (Path(model.folder) / "tokenizer.json").read_text(encoding="utf-8")


def build(model: Any, cache: Path, **options: Any) -> tuple[Any, str]:
    return tokens.build(text_of(model), "sha-of-the-test-tokenizer", model.config.vocab_size,
                        model.config.eos_token_ids, encoder=options.pop("encoder", model.tokenizer),
                        cache_dir=cache, **options)


def test_the_table_reads_every_token_as_llguidance_does(model: Any, tmp_path: Path) -> None:
    theirs, how = build(model, tmp_path, encoder=None)
    assert how == "llguidance"
    derived = tokens.derive_table(model.tokenizer, model.config.vocab_size)
    assert derived is not None
    config = model.config
    ours = tokens.from_table(*derived, model.tokenizer, config.vocab_size, config.eos_token_ids, 2)
    assert tokens.agree(ours, theirs)  # every token's bytes and special flag, and the probes
    for text in ("ab\u00e9", "\u2603 snow", "  x"):
        assert ours.tokenize_str(text) == theirs.tokenize_str(text)
    for raw in (b"\xc3", b"ab\xe2\x98", "\U0001f600".encode()[:3]):  # cut UTF-8: llguidance splits it alike
        assert ours.tokenize_bytes(raw) == theirs.tokenize_bytes(raw)


def test_first_run_checks_and_stores_then_later_runs_read_the_table(model: Any, tmp_path: Path) -> None:
    first, how = build(model, tmp_path)
    assert how == "checked"
    stored = list(tmp_path.glob("*.npz"))
    assert len(stored) == 1 and "llguidance" in stored[0].name
    again, how = build(model, tmp_path)
    assert how == "table"
    assert again.vocab_size == first.vocab_size == model.config.vocab_size


def test_a_damaged_table_is_checked_again_and_rewritten(model: Any, tmp_path: Path) -> None:
    build(model, tmp_path)
    (stored,) = tmp_path.glob("*.npz")
    stored.write_bytes(stored.read_bytes()[:100])
    _, how = build(model, tmp_path)
    assert how == "checked"
    assert build(model, tmp_path)[1] == "table"


def test_a_table_that_fails_its_check_is_not_checked_again(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens, "agree", lambda ours, theirs: False)
    _, how = build(model, tmp_path)
    assert how == "llguidance" and not list(tmp_path.glob("*.npz")) and list(tmp_path.glob("*.differs"))

    def derive_again(*_args: Any) -> None:
        raise AssertionError("derived again after a failed check")

    monkeypatch.setattr(tokens, "derive_table", derive_again)
    assert build(model, tmp_path)[1] == "llguidance"


def test_a_cache_that_cannot_be_written_costs_no_check(model: Any, tmp_path: Path) -> None:
    """The check would be paid again on every run: llguidance's own reading, straight away."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    tokenizer, how = build(model, blocker / "tokens")
    assert how == "llguidance" and tokenizer.vocab_size == model.config.vocab_size


def test_only_gemma_structured_tokenizers_take_the_table(model: Any, tmp_path: Path) -> None:
    text = text_of(model)
    assert tokens.is_gemma_structure(text)
    other = json.loads(text)
    other["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
    assert not tokens.is_gemma_structure(json.dumps(other))
    moved = {k: v for k, v in json.loads(text).items() if k != "decoder"}
    moved["model"]["vocab"]["decoder"] = 5  # "decoder" first seen as a token: not read as the decoder
    assert not tokens.is_gemma_structure(json.dumps(moved))
    _, how = tokens.build(json.dumps(other), "another-sha", model.config.vocab_size,
                          model.config.eos_token_ids, encoder=model.tokenizer, cache_dir=tmp_path)
    assert how == "llguidance" and not list(tmp_path.glob("*.npz"))


@pytest.mark.parametrize("schema", SCHEMAS, ids=["object", "numbers", "pattern"])
def test_decoding_through_the_table_gives_the_same_output(model: Any, tmp_path: Path, schema: dict) -> None:
    compiled, _ = check_schema(schema, lenient=False)
    grammar = compile_grammar(compiled)
    theirs, _ = build(model, tmp_path, encoder=None)
    build(model, tmp_path)
    ours, how = build(model, tmp_path)
    assert how == "table"
    outputs = []
    for tokenizer in (theirs, ours):
        prompt = encode_prompt(model.tokenizer, model.config, schema, TEXT).ids
        result = decode(model, model.new_cache(), new_matcher(tokenizer, grammar), tokenizer, prompt,
                        DecodeOptions(max_tokens=120))
        outputs.append((result.tokens, result.forced_tokens, result.model_calls))
    assert outputs[0] == outputs[1]


def test_a_full_262144_entry_gemma_vocabulary_checks_out(tmp_path: Path) -> None:
    """The real size, its padding pieces included: what `model pull` installs is this shape."""
    pytest.importorskip("sentencepiece", reason="the export extra builds this vocabulary")
    from tokenizers import Tokenizer

    from gemmacli.models.synth import GEMMA3_270M_VOCAB, train_tokenizer

    path = train_tokenizer(tmp_path / "tok", vocab_size=GEMMA3_270M_VOCAB)
    text = path.read_text(encoding="utf-8")
    encoder = Tokenizer.from_file(str(path))
    tokenizer, how = tokens.build(text, "full-size", GEMMA3_270M_VOCAB, [1, 106], encoder=encoder,
                                  cache_dir=tmp_path / "cache")
    assert how == "checked" and tokenizer.vocab_size == GEMMA3_270M_VOCAB  # agreed token by token
    assert tokens.build(text, "full-size", GEMMA3_270M_VOCAB, [1, 106], encoder=encoder,
                        cache_dir=tmp_path / "cache")[1] == "table"


def test_gemma_3s_published_tokenizer_checks_out(tmp_path: Path) -> None:
    """The real tokenizer.json (262,145 entries; <unusedN>, <mask> and HTML tags added but not flagged
    special, which llguidance reads as special all the same) builds from the checked table, not from
    llguidance's slower reading; a GGUF import writes the same structure."""
    import hashlib

    from tokenizers import Tokenizer

    reference = Path(__file__).resolve().parents[2] / "shared" / "reference"
    path = reference / "gemma-3-tokenizer" / "tokenizer.json"
    text = path.read_text(encoding="utf-8")
    encoder = Tokenizer.from_file(str(path))
    size = encoder.get_vocab_size(with_added_tokens=True)
    _, how = tokens.build(text, hashlib.sha256(text.encode()).hexdigest(), size, [1, 106], encoder=encoder,
                          cache_dir=tmp_path)
    assert how == "checked"
