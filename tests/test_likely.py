"""Closed choices decided by likelihood (gemmacli.engine.likely): which fields are closed choices, where the
output is when a value starts, and the decoder's pick equal to a brute-force scoring of every value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gemmacli.engine.config import ExtractionConfig
from gemmacli.engine.decoder import DecodeOptions, decode
from gemmacli.engine.extractor import Extractor
from gemmacli.engine.grammar import TokenizerBuild, compile_grammar, new_matcher
from gemmacli.engine.likely import LikelyChoice, log_softmax
from gemmacli.engine.loops import JsonLexer
from gemmacli.engine.prompt import encode_prompt
from gemmacli.errors import UsageError
from gemmacli.schema import check_schema
from gemmacli.schema.choices import choice_values

MOODS = ["happy", "happier", "sad", "neutral", "mixed feelings"]
SCHEMA = {"type": "object", "required": ["mood", "urgent"], "properties": {
    "mood": {"enum": MOODS}, "urgent": {"type": "boolean"}}}
TEXTS = ["Alice Martin, 34, wrote from Paris on Monday. She is happy; tags: invoice, urgent.",
         "The parcel never came and nobody answers the phone.", "Thanks, all fine here.",
         "Meh. It works, sometimes, I guess?"]


@pytest.fixture(scope="module")
def model(request: pytest.FixtureRequest) -> Any:
    from gemmacli.engine.runtime import Model

    return Model.load(Path(request.getfixturevalue("tiny_model_dir")), threads=1)


def test_choice_values_lists_closed_fields_only() -> None:
    schema = {"type": "object", "$defs": {"level": {"enum": ["low", "high", None]}}, "properties": {
        "intent": {"type": "string", "enum": ["a", "b"]},
        "flag": {"type": "boolean"},
        "level": {"$ref": "#/$defs/level"},
        "tags": {"type": "array", "items": {"enum": ["x", "y"]}},
        "kind": {"anyOf": [{"const": "k"}, {"type": "null"}]},
        "count": {"enum": [1, 2]},  # numbers do not end by themselves
        "name": {"type": "string"},
        "inner": {"type": "object", "properties": {"name": {"enum": ["n"]}, "flag": {"type": "boolean"}}},
    }}
    assert choice_values(schema) == {
        "intent": ('"a"', '"b"'), "flag": ("true", "false"), "level": ('"low"', '"high"', "null"),
        "tags": ('"x"', '"y"'), "kind": ('"k"', "null")}  # "name": free text in one place, never narrowed


def test_lexer_names_the_property_whose_value_starts() -> None:
    lexer = JsonLexer()
    seen = []
    for chunk in ['{"a":', '"x', '","tags":[', '"p', '"', ',', 'tr', ']', ',"b":{"c":', 'nu', 'll}}']:
        lexer.feed(chunk.encode())
        seen.append(lexer.choice_point())
    assert seen == [("a", b""), ("a", b'"x'), ("tags", b""), ("tags", b'"p'), None, ("tags", b""),
                    ("tags", b"tr"), None, ("c", b""), ("c", b"nu"), None]


def test_choose_is_checked() -> None:
    with pytest.raises(UsageError):
        ExtractionConfig(choose="best")
    assert "choose" not in ExtractionConfig().fingerprint()  # greedy: the fingerprint from before
    assert ExtractionConfig(choose="likely").fingerprint()["choose"] == "likely"


def _brute_force(model: Any, prompt: list[int], before: list[int], rest: list[int]) -> float:
    """The total log-probability of `rest` after the prompt and `before`, one token a run, full lm_head."""
    cache = model.new_cache()
    hidden = model.forward(cache, prompt + before)
    total = 0.0
    for token in rest:
        total += float(log_softmax(np.asarray(model.logits(hidden), dtype=np.float64))[token])
        hidden = model.forward(cache, [token])
    return total


@pytest.mark.parametrize("text", TEXTS)
def test_likely_choice_is_the_most_probable_value(model: Any, text: str) -> None:
    compiled, _ = check_schema(SCHEMA, lenient=False)
    tokenizer = TokenizerBuild(Path(model.folder) / "tokenizer.json", model.config.vocab_size,
                               model.config.eos_token_ids).result()
    prompt = list(encode_prompt(model.tokenizer, model.config, SCHEMA, text).ids)
    result = decode(model, model.new_cache(), new_matcher(tokenizer, compile_grammar(compiled)), tokenizer,
                    prompt, DecodeOptions(max_tokens=60),
                    choices=LikelyChoice(choice_values(compiled), tokenizer))
    data = json.loads(result.text)
    assert data["mood"] in MOODS and isinstance(data["urgent"], bool)
    # The output's tokens before the mood's value: the decoder wrote `{"mood":` and perhaps the quote.
    head, before = b'{"mood":"', 0
    while head.startswith(tokenizer.decode_bytes(result.tokens[:before + 1])):
        before += 1
    written = tokenizer.decode_bytes(result.tokens[:before]).decode()[len('{"mood":'):]
    scores = {mood: _brute_force(model, prompt, result.tokens[:before],
                                 tokenizer.tokenize_str(('"' + mood + '"')[len(written):])) for mood in MOODS}
    assert scores[data["mood"]] >= max(scores.values()) - 1e-3, scores


def test_likely_choice_changes_what_greedy_picks_somewhere(model: Any) -> None:
    """On the tiny model's random weights, whole-value scoring and first-token greedy disagree on at least
    one of the texts: the option does something."""
    greedy = Extractor(SCHEMA, model=model, max_tokens=60)
    likely = Extractor(SCHEMA, model=model, max_tokens=60, choose="likely")
    picks = [(greedy.extract(t).data["mood"], likely.extract(t).data["mood"]) for t in TEXTS]
    assert any(g != lk for g, lk in picks), picks


def test_the_choose_flag_reaches_the_decoder(tiny_model_dir: Path, model: Any) -> None:
    """`--choose likely` on the command line writes what the library's likely choice writes."""
    from cli import run_cli

    text = TEXTS[-1]
    argv = ["extract", "--schema", "mood enum(happy|happier|sad|neutral|mixed feelings), urgent bool",
            "-m", str(tiny_model_dir), "--max-tokens", "60"]
    likely = Extractor(run_cli(["schema", "show", argv[2]]).json(), model=model, max_tokens=60,
                       choose="likely").extract(text)
    result = run_cli([*argv, "--choose", "likely"], text.encode())
    assert result.status == 0, result.stderr
    assert result.json() == likely.data
    assert run_cli([*argv, "--choose", "best"], text.encode()).status == 2
