"""The constrained decoder on the tiny synthesized model: valid JSON every time, and the fast paths
(jump-forward batching, grammar-aware lm_head) give exactly what the plain computation gives."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import numpy as np
import pytest
from test_loops import Leaning, leaning_ids, looping_schema

from gemmacli.engine.decoder import DecodeOptions, decode
from gemmacli.engine.extractor import ExtractionResult, Extractor, budget_for, extract
from gemmacli.engine.grammar import TokenizerBuild, compile_grammar, new_matcher
from gemmacli.engine.prompt import encode_prompt, field_guide
from gemmacli.errors import ExitStatus, ExtractionFailed, SchemaError
from gemmacli.schema import check_schema

TEXT = "Alice Martin, 34, wrote from Paris on Monday. She is happy; tags: invoice, urgent."

#: The benchmark's shape (string, integer, enum, optional string, array of strings), with string bounds so
#: a random-weight model finishes within a small budget.
FIVE = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12, "description": "the person's full name"},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "mood": {"enum": ["happy", "sad", "neutral"]},
        "city": {"type": ["string", "null"], "maxLength": 10},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
    },
    "required": ["name", "age", "mood", "tags"],
}
NESTED = {
    "type": "object",
    "properties": {
        "people": {"type": "array", "maxItems": 2, "items": {"$ref": "#/$defs/person"}},
        "ok": {"type": "boolean"},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["people", "ok", "score"],
    "$defs": {"person": {"type": "object", "properties": {
        "first": {"type": "string", "maxLength": 6}, "role": {"const": "author"}},
        "required": ["first", "role"]}},
}
SMALL = {"type": "integer", "minimum": 0, "maximum": 999}
SCHEMAS = {"five": FIVE, "nested": NESTED, "small": SMALL}


@pytest.fixture(scope="module")
def model(request: pytest.FixtureRequest) -> Any:
    """The tiny synthesized INT4 model (tests/conftest.py builds and caches it)."""
    from gemmacli.engine.runtime import Model

    folder = request.getfixturevalue("tiny_model_dir")
    return Model.load(Path(folder), threads=1)


def run(model: Any, schema: dict, text: str = TEXT, **options: Any) -> ExtractionResult:
    return Extractor(schema, model=model, max_tokens=options.pop("max_tokens", 160), **options).extract(text)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_output_validates_and_counts_add_up(model: Any, name: str) -> None:
    schema = SCHEMAS[name]
    result = run(model, schema)
    jsonschema.validate(result.data, schema)
    assert result.text.strip() == result.text and "\n" not in result.text  # compact by default
    assert result.generated_tokens >= 1 and result.model_calls >= 1
    assert result.prompt_tokens > 20
    assert result.model_calls <= result.generated_tokens + 2  # + head prefill, text prefill


def test_batch_reuses_the_prompt_head_and_stays_byte_identical(model: Any, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no head kept on disk by another test
    extractor = Extractor(FIVE, model=model, max_tokens=160)
    first, second, third = (extractor.extract(TEXT) for _ in range(3))
    assert first.text == second.text == third.text == run(model, FIVE).text
    assert second.model_calls == third.model_calls == first.model_calls - 1  # the head's KV is reused
    other = extractor.extract("Bob, 61, from Rome; sad.")
    jsonschema.validate(other.data, FIVE)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_grammar_aware_lm_head_equals_full_lm_head(model: Any, name: str) -> None:
    schema = SCHEMAS[name]
    small = Extractor(schema, model=model, max_tokens=160)
    small.options.lm_head_threshold = 10**9  # every step through logits_for
    full = Extractor(schema, model=model, max_tokens=160)
    full.options.lm_head_threshold = 0  # every step through the full lm_head
    assert small.extract(TEXT).text == full.extract(TEXT).text


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_jump_forward_batched_equals_token_by_token(model: Any, name: str) -> None:
    schema = SCHEMAS[name]
    batched = Extractor(schema, model=model, max_tokens=160)
    single = Extractor(schema, model=model, max_tokens=160)
    single.options.batch_forced = False
    one, many = batched.extract(TEXT), single.extract(TEXT)
    assert one.text == many.text
    assert one.forced_tokens == many.forced_tokens
    assert one.model_calls <= many.model_calls
    if one.forced_tokens > 1:
        assert one.model_calls < many.model_calls  # forced runs cost one call, not one per token


def test_forced_tokens_are_canonical(model: Any) -> None:
    """llguidance's jump-forward tokens are the tokenizer's own encoding of the forced text."""
    schema = {"type": "object", "properties": {"description": {"type": "string"}},
              "required": ["description"]}
    compiled, _ = check_schema(schema, lenient=False)
    build = TokenizerBuild(Path(model.folder) / "tokenizer.json", model.config.vocab_size,
                           model.config.eos_token_ids)
    tokenizer = build.result()
    matcher = new_matcher(tokenizer, compile_grammar(compiled))
    forced = matcher.compute_ff_tokens()
    text = tokenizer.decode_bytes(forced).decode()
    assert forced and '{"description":"'.startswith(text) and len(text) >= 2
    assert forced == model.tokenizer.encode(text, add_special_tokens=False).ids


def test_greedy_is_deterministic_and_sampling_follows_the_seed(model: Any) -> None:
    assert run(model, FIVE).text == run(model, FIVE).text
    sampled = [run(model, FIVE, temperature=1.0, top_p=0.9, seed=seed) for seed in (1, 1, 2, 3)]
    assert sampled[0].text == sampled[1].text
    for result in sampled:
        jsonschema.validate(result.data, FIVE)


def test_sampling_stays_inside_the_grammar(model: Any) -> None:
    for seed in range(4):
        result = run(model, NESTED, temperature=1.5, seed=seed, max_tokens=200)
        jsonschema.validate(result.data, NESTED)


def test_max_tokens_exhausted_is_a_failure_never_a_truncated_json(model: Any) -> None:
    smallest = Extractor(FIVE, model=model).smallest_tokens
    unbounded = run(model, FIVE)
    assert unbounded.generated_tokens + unbounded.forced_tokens > smallest + 2  # room to fail in
    with pytest.raises(ExtractionFailed) as info:
        run(model, FIVE, max_tokens=smallest + 2)
    assert info.value.exit_status == ExitStatus.FAILED
    assert f"max_tokens {smallest + 2}" in info.value.message and info.value.option == "max_tokens"
    assert info.value.hint == "raise max_tokens"  # the CLI words it as --max-tokens (cli.core.as_flag)


def test_a_budget_below_the_schemas_smallest_output_is_refused_before_any_decoding(model: Any) -> None:
    """{"name":"","age":0,"mood":"sad","tags":[]} is the least FIVE allows: 4 tokens cannot hold it."""
    with pytest.raises(SchemaError) as info:
        Extractor(FIVE, model=model, max_tokens=4)
    assert info.value.exit_status == ExitStatus.SCHEMA
    assert "smallest JSON this schema allows" in info.value.message
    assert "max_tokens is 4" in info.value.message and info.value.option == "max_tokens"
    assert info.value.hint is not None and "raise max_tokens to at least" in info.value.hint


def test_the_default_budget_grows_with_the_schemas_smallest_output(model: Any) -> None:
    """113 required objects need more than the default 1024 tokens: the budget is sized from the schema,
    and what cannot fit in the model's context is refused up front, not after spending the budget."""
    wide = {"type": "object", "required": [f"field_{i}" for i in range(150)],
            "properties": {f"field_{i}": {"type": "integer"} for i in range(150)}}
    real_context = SimpleNamespace(tokenizer=model.tokenizer, config=SimpleNamespace(context_length=32768))
    smallest, budget = budget_for(wide, real_context, None)
    assert smallest > 1000 and budget == 2 * smallest + 64  # {"field_0":0,...}: every key, every value
    assert budget_for(FIVE, real_context, None) == (Extractor(FIVE, model=model).smallest_tokens, 1024)
    huge = {"type": "object", "required": [f"field_{i}" for i in range(1500)],
            "properties": {f"field_{i}": {"type": "integer"} for i in range(1500)}}
    with pytest.raises(SchemaError) as info:
        Extractor(huge, model=model)
    assert "half of this model's 2048-token context" in info.value.message


def test_output_is_validated_against_the_original_schema(model: Any) -> None:
    """What --lenient dropped is still checked: here the grammar can only produce a duplicate."""
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"const": "x"},
                                                        "minItems": 2, "uniqueItems": True}},
              "required": ["tags"]}
    warnings: list[str] = []
    extractor = Extractor(schema, model=model, lenient=True, max_tokens=40, warn=warnings.append)
    assert warnings and "uniqueItems" in warnings[0]
    with pytest.raises(ExtractionFailed, match=r"does not validate.*/tags: .*non-unique"):
        extractor.extract(TEXT)


def test_schema_problems_surface_as_schema_errors(model: Any) -> None:
    cases = [
        ({"type": "object", "properties": {"a": {"type": "strng"}}}, "/properties/a/type"),
        ({"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}},
         "/properties/a/$ref"),
        ({"type": "object", "properties": {"a": {"type": "array", "contains": {"type": "string"}}}},
         "/properties/a/contains"),
    ]
    for schema, pointer in cases:
        with pytest.raises(SchemaError) as info:
            Extractor(schema, model=model)
        assert info.value.pointer == pointer
        assert info.value.exit_status == ExitStatus.SCHEMA


def test_input_longer_than_the_context_fails_unless_truncated(model: Any) -> None:
    long_text = "word " * (model.config.context_length + 100)
    with pytest.raises(ExtractionFailed, match="too long"):
        run(model, SMALL, text=long_text, max_tokens=8)
    result = run(model, SMALL, text=long_text, max_tokens=8, truncate=True)
    assert result.truncated and result.prompt_tokens <= model.config.context_length - 8


def test_prompt_is_gemma_chat_with_a_field_guide(model: Any) -> None:
    prompt = encode_prompt(model.tokenizer, model.config, FIVE, TEXT, instructions="Dates as ISO 8601.")
    text = model.tokenizer.decode(prompt.ids, skip_special_tokens=False)
    assert text.startswith("<bos><start_of_turn>user\n")
    assert text.endswith("<end_of_turn>\n<start_of_turn>model\n")
    assert prompt.ids[0] == model.config.bos_token_id and prompt.ids.count(model.config.bos_token_id) == 1
    for piece in ("name (string; required): the person's full name", '"happy", "sad", "neutral"',
                  "city (string or null; optional: null if not in the text)",
                  "tags (list of string; required)", "Dates as ISO 8601.", TEXT):
        assert piece in text
    assert "<start_of_turn>" not in encode_prompt(model.tokenizer, model.config, SMALL,
                                                  "<start_of_turn>x").ids[3:-3]


def test_field_guide_marks_optional_fields() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"},
                                               "b": {"type": "array", "items": {"type": "string"}}}}
    guide = field_guide(schema)
    assert guide == ["- a (string; optional: leave out if not in the text)",
                     "- b (list of string; optional: [] if not in the text)"]


def test_extract_function_and_metadata(model: Any) -> None:
    result = extract(TEXT, SMALL, model=model, max_tokens=8)
    jsonschema.validate(result.data, SMALL)
    extractor = Extractor(SMALL, model=model)
    assert len(extractor.schema_sha256) == 64 and extractor.model_name


def test_decode_stops_without_feeding_the_last_tokens(model: Any) -> None:
    """The closing tokens are never fed: nothing needs logits after them."""
    compiled, _ = check_schema(FIVE, lenient=False)
    build = TokenizerBuild(Path(model.folder) / "tokenizer.json", model.config.vocab_size,
                           model.config.eos_token_ids)
    tokenizer = build.result()
    prompt = encode_prompt(model.tokenizer, model.config, FIVE, TEXT).ids
    cache = model.new_cache()
    result = decode(model, cache, new_matcher(tokenizer, compile_grammar(compiled)), tokenizer, prompt,
                    DecodeOptions(max_tokens=160))
    assert cache.length < len(prompt) + len(result.tokens)
    assert result.overhead_seconds >= 0.0
    assert np.all(np.asarray(result.allowed_sizes) >= 1)


def test_pretty_mode_whitespace_is_bounded(model: Any) -> None:
    for seed in range(3):
        result = run(model, NESTED, pretty=True, temperature=1.0, seed=seed, max_tokens=300)
        jsonschema.validate(result.data, NESTED)
        assert all(len(indent) <= 17 for indent in re.findall(r"\n *", result.text))  # newline + <= 16


def test_llguidance_tokenizer_is_built_once_per_process(model: Any) -> None:
    first = TokenizerBuild(Path(model.folder) / "tokenizer.json", model.config.vocab_size,
                           model.config.eos_token_ids)
    tokenizer = first.result()
    again = TokenizerBuild(Path(model.folder) / "tokenizer.json", model.config.vocab_size,
                           model.config.eos_token_ids)
    assert again.done() and again.result() is tokenizer and again.build_seconds == 0.0
    assert tokenizer.vocab_size == model.config.vocab_size
    assert sorted(tokenizer.eos_tokens) == sorted(model.config.eos_token_ids)


def test_schema_is_checked_before_the_model_is_looked_up(tmp_path: Path) -> None:
    with pytest.raises(SchemaError):
        Extractor({"type": "object", "properties": {"a": {"type": "nope"}}}, model=tmp_path / "no-model")
    from gemmacli.errors import ModelError

    with pytest.raises(ModelError):
        Extractor(SMALL, model=tmp_path / "no-model")


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_lazy_masks_in_strings_give_the_same_greedy_output(model: Any, name: str) -> None:
    """Inside strings the loop takes the best token the grammar accepts before computing any mask
    (decoder.LAZY_CANDIDATES): the output must be the one the masked logits give."""
    lazy = Extractor(SCHEMAS[name], model=model, max_tokens=160)
    masked = Extractor(SCHEMAS[name], model=model, max_tokens=160)
    masked.options.lazy_mask = False
    assert lazy.extract(TEXT).text == masked.extract(TEXT).text


def test_best_accepted_is_the_masked_argmax_and_refuses_a_tie_at_the_cut() -> None:
    from gemmacli.engine.decoder import _best_accepted

    class Accepts:
        def __init__(self, allowed: set[int]) -> None:
            self.allowed = allowed

        def validate_tokens(self, tokens: list[int]) -> int:
            return int(tokens[0] in self.allowed)

    logits = np.array([0.0, 5.0, 9.0, 7.0, 7.0, 1.0, 3.0], dtype=np.float32)
    assert _best_accepted(Accepts({3, 4, 6}), logits, 3) == 3  # 2 refused; 3 and 4 tie: the lower id
    assert _best_accepted(Accepts({0}), logits, 3) is None  # not among the best three: ask the mask
    tied = np.array([1.0, 2.0, 2.0, 0.0], dtype=np.float32)
    assert _best_accepted(Accepts({2}), tied, 1) is None  # 1 and 2 tie across the cut


# ------------------------------------------------------------------------------------------ golden runs

#: What decode() gave, before its rewrite into step functions, on varied schemas and options: the text, the
#: tokens, every DecodeResult counter, and the model calls in order (forward group sizes, full and small
#: lm_head runs). onnxruntime's float results depend on how tokens are grouped into forward calls, so the
#: grouping is part of the behaviour. Regenerate (GEMMACLI_WRITE_GOLDEN=1) only for a deliberate change of
#: behaviour, or a new onnxruntime whose float results differ.
GOLDEN = Path(__file__).resolve().parent / "decoder_golden.json"
LOOP_TEXT = "Alice Martin (34) emailed from Paris on 2024-05-01 about invoice 1042: total 99.50 EUR, urgent."
PATTERNS = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
        "date": {"type": "string", "format": "date"},
        "kind": {"enum": ["invoice", "receipt", "quote", 7, None]},
        "amounts": {"type": "array", "items": {"type": "number"}, "maxItems": 3},
        "flag": {"type": ["boolean", "null"]},
    },
    "required": ["code", "date", "kind", "amounts"],
}
OPEN_OBJECT = {"type": "object", "required": ["m"], "properties": {
    "m": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 3}}}}
LOOP_TWICE = {"type": "object", "required": ["a", "b"], "properties": {
    "a": {"type": "string", "format": "time"}, "b": {"type": "array", "items": {"type": "integer"}}}}


#: name -> (schema, text, Extractor keyword arguments, DecodeOptions overrides, what the model leans on:
#: "" nothing, "loops" the tokens of test_loops, "eos" the end of output, "control" control characters,
#: which no compact JSON allows, so the lazy choice in strings finds none of its candidates accepted)
GOLDEN_CASES: dict[str, tuple[Any, str, dict[str, Any], dict[str, Any], str]] = {
    "five": (FIVE, TEXT, {}, {}, ""),
    "nested": (NESTED, TEXT, {}, {}, ""),
    "small": (SMALL, TEXT, {}, {}, ""),
    "patterns": (PATTERNS, LOOP_TEXT, {}, {}, ""),
    "five_full_head": (FIVE, TEXT, {}, {"lm_head_threshold": 0}, ""),
    "five_small_head": (FIVE, TEXT, {}, {"lm_head_threshold": 10**9}, ""),
    "five_token_by_token": (FIVE, TEXT, {}, {"batch_forced": False}, ""),
    "five_no_jump_forward": (FIVE, TEXT, {}, {"jump_forward": False}, ""),
    "five_no_lazy_mask": (FIVE, TEXT, {}, {"lazy_mask": False}, ""),
    "five_spans_all": (FIVE, TEXT, {"spans": "all"}, {}, ""),
    "five_sampled": (FIVE, TEXT, {"temperature": 1.0, "top_p": 0.9, "seed": 1}, {}, ""),
    "nested_sampled": (NESTED, TEXT, {"temperature": 1.5, "seed": 0, "max_tokens": 200}, {}, ""),
    "nested_pretty_sampled": (NESTED, TEXT, {"pretty": True, "temperature": 1.0, "seed": 2,
                                             "max_tokens": 300}, {}, ""),
    "patterns_sampled": (PATTERNS, LOOP_TEXT, {"temperature": 0.7, "top_p": 0.5, "seed": 5}, {}, ""),
    "five_budget_spent": (FIVE, TEXT, {}, {"max_tokens": 20}, ""),
    "five_budget_spent_token_by_token": (FIVE, TEXT, {}, {"max_tokens": 20, "batch_forced": False},
                                         ""),
    "loop_time": (looping_schema("time"), LOOP_TEXT, {}, {}, "loops"),
    "loop_uri": (looping_schema("uri"), LOOP_TEXT, {}, {}, "loops"),
    "loop_pattern": (looping_schema("pattern"), LOOP_TEXT, {}, {}, "loops"),
    "loop_alternation": (looping_schema("alternation"), LOOP_TEXT, {}, {}, "loops"),
    "loop_twice": (LOOP_TWICE, LOOP_TEXT, {}, {}, "loops"),
    "loop_five": (FIVE, LOOP_TEXT, {}, {}, "loops"),
    "loop_nested": (NESTED, LOOP_TEXT, {}, {}, "loops"),
    "loop_time_full_head": (looping_schema("time"), LOOP_TEXT, {}, {"lm_head_threshold": 0}, "loops"),
    "loop_pattern_no_jump_forward": (looping_schema("pattern"), LOOP_TEXT, {}, {"jump_forward": False},
                                     "loops"),
    "loop_time_unguarded": (looping_schema("time"), LOOP_TEXT, {"repeat_guard": False}, {}, "loops"),
    "loop_sampled": (FIVE, LOOP_TEXT, {"temperature": 1.0, "seed": 3}, {}, "loops"),
    "loop_open_object": (OPEN_OBJECT, LOOP_TEXT, {}, {}, "loops"),
    "loop_time_budget_spent": (looping_schema("time"), LOOP_TEXT, {}, {"max_tokens": 50}, "loops"),
    "small_eos": (SMALL, TEXT, {}, {}, "eos"),
    "five_eos": (FIVE, TEXT, {}, {}, "eos"),
    "five_control": (FIVE, TEXT, {}, {}, "control"),
    "nested_control_no_lazy_mask": (NESTED, TEXT, {}, {"lazy_mask": False}, "control"),
}


def lean_ids(model: Any, lean: str) -> list[int]:
    """The token ids a golden case's model leans on (GOLDEN_CASES)."""
    if lean == "loops":
        return leaning_ids(model)
    if lean == "eos":
        return [int(e) for e in model.config.eos_token_ids]
    tokenizer = model.tokenizer
    return [i for i in range(model.config.vocab_size)
            if (piece := tokenizer.decode([i])) and all(ord(c) < 32 for c in piece)]


class _Recording:
    """The model, with every call it gets written down: forward group sizes, full and small lm_heads."""

    def __init__(self, model: Any, calls: list[str]) -> None:
        self.model = model
        self.calls = calls

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def forward(self, cache: Any, tokens: Any) -> np.ndarray:
        self.calls.append(f"forward {len(tokens)}")
        return self.model.forward(cache, tokens)

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        self.calls.append("logits")
        return self.model.logits(hidden)

    def logits_for(self, hidden: np.ndarray, ids: np.ndarray) -> np.ndarray:
        self.calls.append(f"logits_for {len(ids)}")
        return self.model.logits_for(hidden, ids)


def golden_run(model: Any, name: str, monkeypatch: pytest.MonkeyPatch, speculate: int = 0) -> dict[str, Any]:
    """One case through Extractor.extract, as a JSON-able record of everything decode() decided. The golden
    runs are plain greedy (`speculate` 0): speculation changes the calls, never the output
    (tests/test_speculate.py compares the two)."""
    import gemmacli.engine.extractor

    schema, text, kwargs, overrides, lean = GOLDEN_CASES[name]
    overrides = {"speculate": speculate, **overrides}
    calls: list[str] = []
    inner = Leaning(model, lean_ids(model, lean)) if lean else model
    extractor = Extractor(schema, model=_Recording(inner, calls), **kwargs)
    for key, value in overrides.items():
        setattr(extractor.options, key, value)
    results: list[Any] = []
    real_decode = gemmacli.engine.extractor.decode

    def recording_decode(*args: Any, **kw: Any) -> Any:
        results.append(real_decode(*args, **kw))
        return results[-1]

    monkeypatch.setattr(gemmacli.engine.extractor, "decode", recording_decode)
    record: dict[str, Any] = {}
    try:
        extractor.extract(text)
    except ExtractionFailed as exc:
        record["failed"] = {"message": exc.message, "hint": exc.hint,
                            "partial_text": getattr(exc, "partial_text", None)}
    if results:
        result = results[0]
        record.update(text=result.text, tokens=result.tokens, generated_tokens=result.generated_tokens,
                      forced_tokens=result.forced_tokens, model_calls=result.model_calls,
                      small_heads=result.small_heads, full_heads=result.full_heads,
                      allowed_sizes=result.allowed_sizes, repeats=result.repeats)
    record["calls"] = calls
    return record


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_decode_matches_the_golden_runs(model: Any, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Byte for byte, count for count, call for call what decode() gave when the golden file was made."""
    record = golden_run(model, name, monkeypatch)
    if os.environ.get("GEMMACLI_WRITE_GOLDEN") == "1":
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        golden[name] = record
        GOLDEN.write_text(json.dumps(dict(sorted(golden.items())), indent=1, ensure_ascii=False) + "\n")
    expected = json.loads(GOLDEN.read_text())[name]
    assert record == expected


class _ScriptTokenizer:
    """Token i is PIECES[i]; token 0 ends the output. No probe is a single token: no lazy choice."""

    PIECES = (b"", b"a", b"b", b"c", b"\xff", b"{", b"}", b"1")
    eos_tokens = (0,)
    vocab_size = len(PIECES)

    def decode_bytes(self, tokens: list[int]) -> bytes:
        return b"".join(self.PIECES[t] for t in tokens)

    def tokenize_str(self, text: str) -> list[int]:
        return []


class _ScriptMatcher:
    """A grammar that allows script[i] as the i-th token and stops after the last; `refuse` makes it
    refuse what it allowed, `error` reports an engine error."""

    def __init__(self, script: list[set[int]], *, accepting: bool = True, refuse: bool = False,
                 error: bool = False, ff: list[int] | None = None) -> None:
        self.script, self.accepting, self.refuse, self.error = script, accepting, refuse, error
        self.ff = ff or []
        self.at = 0

    def is_error(self) -> bool:
        return self.error

    def get_error(self) -> str:
        return "scripted error" if self.error or self.refuse else ""

    def is_stopped(self) -> bool:
        return self.at >= len(self.script)

    def is_accepting(self) -> bool:
        return self.accepting

    def stop_reason(self) -> str:
        return "NoExtension"

    def compute_ff_tokens(self) -> list[int]:
        ff, self.ff = self.ff, []
        return ff

    def consume_tokens(self, tokens: list[int]) -> bool:
        if self.refuse:
            return False
        self.at += len(tokens)
        return True

    def consume_token(self, token: int) -> bool:
        if self.refuse or token not in self.script[self.at]:
            return False
        self.at += 1
        return True

    def validate_tokens(self, tokens: list[int]) -> int:
        return 0

    def unsafe_compute_mask_ptr(self, ptr: int, nbytes: int) -> None:
        import ctypes

        words = np.zeros(nbytes // 4, dtype=np.uint32)
        for token in self.script[self.at]:
            words[token // 32] |= np.uint32(1 << (token % 32))
        ctypes.memmove(ptr, words.ctypes.data, nbytes)


class _ScriptModel:
    """Logits that rank token 3 first, then 2, then 1; every call written down."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def forward(self, cache: Any, tokens: list[int]) -> np.ndarray:
        self.calls.append(f"forward {list(tokens)}")
        return np.zeros(1, dtype=np.float32)

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        self.calls.append("logits")
        return np.array([0.5, 1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0], dtype=np.float32)

    def logits_for(self, hidden: np.ndarray, ids: np.ndarray) -> np.ndarray:
        self.calls.append(f"logits_for {ids.tolist()}")
        return self.logits(hidden)[ids]


SCRIPTS: dict[str, tuple[dict[str, Any], dict[str, Any], list[int], Any]] = {
    # name: (matcher arguments, DecodeOptions, prompt, expected: an error message, or (text, tokens,
    # generated, forced, model calls, small heads, full heads, allowed sizes, the model's calls))
    "mask_forces_then_model_chooses_then_eos": (
        {"script": [{5}, {1, 2, 3}, {6}, {0, 7}]}, {}, [9, 9],
        (b"{c}", [5, 3, 6], 2, 2, 2, 0, 2, [3, 2],
         ["forward [9, 9, 5]", "logits", "forward [3, 6]", "logits"])),
    "jump_forward_then_small_heads": (
        {"script": [{5}, {5}, {0, 1, 2}, {1}], "ff": [5, 5]}, {"lm_head_threshold": 10**9}, [9],
        (b"{{ba", [5, 5, 2, 1], 1, 3, 1, 1, 0, [3], ["forward [9, 5, 5]", "logits_for [0, 1, 2]", "logits"])),
    "full_head": (
        {"script": [{1, 2, 3}, {2, 3}]}, {"lm_head_threshold": 0}, [9],
        (b"cc", [3, 3], 2, 0, 2, 0, 2, [3, 2], ["forward [9]", "logits", "forward [3]", "logits"])),
    "empty_prompt": ({"script": [{1, 2}]}, {}, [], "nothing to decode from: empty prompt"),
    "budget_after_a_mask_forced_token": (
        {"script": [{5}, {6}]}, {"max_tokens": 1}, [9],
        "the model did not finish the JSON within max_tokens 1 tokens; no partial output is given"),
    "budget_before_jump_forward": (
        {"script": [{5}, {5}], "ff": [5, 5]}, {"max_tokens": 1}, [9],
        "the model did not finish the JSON within max_tokens 1 tokens; no partial output is given"),
    "no_next_token": ({"script": [set()]}, {}, [9], "the grammar allows no next token: dead end"),
    "engine_error": ({"script": [{1}], "error": True}, {}, [9],
                     "the grammar engine stopped with an error: scripted error"),
    "refused_forced": ({"script": [{1}], "refuse": True, "ff": [1]}, {}, [9],
                       "the grammar engine refused its own forced tokens: scripted error"),
    "refused_allowed": ({"script": [{1, 2}], "refuse": True}, {}, [9],
                        "the grammar engine refused an allowed token: scripted error"),
    "gave_up": ({"script": [{1}], "accepting": False}, {}, [9],
                "the grammar engine gave up before the JSON was complete (NoExtension); the schema is too "
                "complex for it at this point"),
    "invalid_utf8": ({"script": [{4}, {4, 1}]}, {}, [9],
                     "the model emitted invalid UTF-8: 'utf-8' codec can't decode byte 0xff in position 0: "
                     "invalid start byte"),
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_decode_on_a_scripted_grammar(name: str) -> None:
    """The rare paths a real grammar seldom takes (a mask that allows one token, engine errors, budget
    checks between forced tokens), on a scripted matcher: the same tokens, counts, calls and messages."""
    matcher_args, options, prompt, expected = SCRIPTS[name]
    model = _ScriptModel()
    matcher = _ScriptMatcher(**matcher_args)
    opts = DecodeOptions(**{"max_tokens": 16, **options})
    if isinstance(expected, str):
        with pytest.raises(ExtractionFailed) as info:
            decode(model, None, matcher, _ScriptTokenizer(), prompt, opts)
        assert info.value.message == expected
        return
    result = decode(model, None, matcher, _ScriptTokenizer(), prompt, opts)
    assert (result.text.encode(), result.tokens, result.generated_tokens, result.forced_tokens,
            result.model_calls, result.small_heads, result.full_heads, result.allowed_sizes,
            model.calls) == expected
