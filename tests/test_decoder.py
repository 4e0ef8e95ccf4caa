"""The constrained decoder on the tiny synthesized model: valid JSON every time, and the fast paths
(jump-forward batching, grammar-aware lm_head) give exactly what the plain computation gives."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import numpy as np
import pytest

from gemmacli.api import ExtractionResult, Extractor, budget_for, extract
from gemmacli.decoder import DecodeOptions, decode
from gemmacli.errors import ExitStatus, ExtractionFailed, SchemaError
from gemmacli.grammar import TokenizerBuild, compile_grammar, new_matcher
from gemmacli.prompt import encode_prompt, field_guide
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
    from gemmacli.runtime import Model

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


def test_batch_reuses_the_prompt_head_and_stays_byte_identical(model: Any) -> None:
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
    assert f"--max-tokens {smallest + 2}" in info.value.message
    assert info.value.hint == "raise --max-tokens"


def test_a_budget_below_the_schemas_smallest_output_is_refused_before_any_decoding(model: Any) -> None:
    """{"name":"","age":0,"mood":"sad","tags":[]} is the least FIVE allows: 4 tokens cannot hold it."""
    with pytest.raises(SchemaError) as info:
        Extractor(FIVE, model=model, max_tokens=4)
    assert info.value.exit_status == ExitStatus.SCHEMA
    assert "smallest JSON this schema allows" in info.value.message
    assert "--max-tokens is 4" in info.value.message
    assert info.value.hint is not None and "raise --max-tokens to at least" in info.value.hint


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
    from gemmacli.decoder import _best_accepted

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
