"""The repetition guard (gemmacli.engine.loops): a model stuck in a loop ends in valid JSON, and says so.

The model here is the tiny one leaning hard on the tokens `a`, `5` and `.` (`Leaning`), so it loops every run
whatever its random weights: digits in a time, letters in a URI, in a patterned string, in an alternation.
Without the guard each one spends the whole budget (exit 1)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jsonschema
import numpy as np
import pytest

from gemmacli.engine.extractor import Extractor
from gemmacli.engine.loops import SPAN, WINDOW, RepeatGuard
from gemmacli.errors import ExtractionFailed

TEXT = "Alice Martin (34) emailed from Paris on 2024-05-01 about invoice 1042: total 99.50 EUR, urgent."
LOOPING = {
    "time": {"start_time": {"type": "string", "format": "time"}},
    "uri": {"url": {"type": "string", "format": "uri"}},
    "pattern": {"_schema": {"type": "string", "pattern":
                            "^pbj:([a-z0-9-]+):([a-z0-9\\.-]+):([a-z0-9-]+)?:([a-z0-9-]+):([0-9]+-[0-9]+-[0-9]+)$"}},
    "alternation": {"effect": {"type": "string", "pattern": "^allow|deny$"}},
}


def looping_schema(name: str) -> dict:
    properties = LOOPING[name]
    return {"type": "object", "properties": properties, "required": list(properties)}


class Leaning:
    """A model whose logits favour some tokens by far: the loop a small model falls into, on demand."""

    def __init__(self, model: Any, ids: list[int]) -> None:
        self.model = model
        self.ids = np.asarray(ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        out = np.array(self.model.logits(hidden), dtype=np.float32)
        out[self.ids] += 1e4
        return out

    def logits_for(self, hidden: np.ndarray, ids: np.ndarray) -> np.ndarray:
        out = np.array(self.model.logits_for(hidden, ids), dtype=np.float32)
        out[np.isin(ids, self.ids)] += 1e4
        return out


def leaning_ids(model: Any) -> list[int]:
    return [model.tokenizer.token_to_id(piece) for piece in ("a", "5", ".")]


@pytest.fixture(scope="module")
def model(request: pytest.FixtureRequest) -> Any:
    from gemmacli.engine.runtime import Model

    real = Model.load(Path(request.getfixturevalue("tiny_model_dir")), threads=1)
    return Leaning(real, leaning_ids(real))


class Bytes:
    """A stand-in tokenizer: token i is the text of chr(i)."""

    def decode_bytes(self, tokens: list[int]) -> bytes:
        return "".join(chr(t) for t in tokens).encode()


def feed(text: str) -> RepeatGuard:
    guard = RepeatGuard(Bytes())
    for char in text:
        guard.push(ord(char))
    return guard


def test_a_run_of_one_pattern_is_a_loop_only_past_the_span() -> None:
    assert feed('"' + "5" * (SPAN - 1)).loop() is None
    loop = feed('"' + "5" * SPAN).loop()
    assert loop is not None and loop.times == SPAN and loop.avoid == {ord("5")} and loop.in_string
    assert feed("ab" * (SPAN // 2 + 1)).loop() is not None


def test_data_that_repeats_a_little_is_not_a_loop() -> None:
    assert feed("[" + "0," * 23 + "0").loop() is None  # a 24-zero array (48 tokens, still under the span)
    assert feed('"4111111111111111"').loop() is None  # a card number
    assert feed('{"text":"the quick brown fox jumps over the lazy dog, then over the fence"}').loop() is None


def test_a_loop_with_variations_is_caught_by_its_few_distinct_tokens() -> None:
    rng = random.Random(7)  # like `ouvelistriouvelistrimentmiment…`: no exact period, few tokens
    text = "".join(rng.choice("abcdef") for _ in range(WINDOW))
    assert feed('"' + text[:WINDOW - 2]).loop() is None  # not a full window yet
    loop = feed('"' + text).loop()
    assert loop is not None and loop.times == 0 and loop.in_string


def test_outside_a_string_the_guard_knows_it_is_outside() -> None:
    loop = feed('{"a":"x\\"y","b":[' + "0," * 40).loop()
    assert loop is not None and not loop.in_string


@pytest.mark.parametrize("name", sorted(LOOPING))
def test_a_looping_model_ends_in_valid_json_and_the_result_says_where(model: Any, name: str) -> None:
    schema = looping_schema(name)
    result = Extractor(schema, model=model).extract(TEXT)
    jsonschema.validate(result.data, schema)
    assert result.repeats and all(note.startswith("the model ") for note in result.repeats)
    again = Extractor(schema, model=model).extract(TEXT)
    assert again.text == result.text and again.repeats == result.repeats  # still deterministic


@pytest.mark.parametrize("name", ["time", "pattern"])
def test_without_the_guard_the_same_loop_spends_the_budget(model: Any, name: str) -> None:
    with pytest.raises(ExtractionFailed) as info:
        Extractor(looping_schema(name), model=model, repeat_guard=False).extract(TEXT)
    assert "max_tokens" in info.value.message and info.value.option == "max_tokens"


def test_the_guard_leaves_output_that_never_loops_alone(model: Any) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer"}}, "required": ["name", "age"]}
    guarded = Extractor(schema, model=model.model).extract(TEXT)
    unguarded = Extractor(schema, model=model.model, repeat_guard=False).extract(TEXT)
    assert guarded.text == unguarded.text and guarded.repeats == []


def test_the_cli_prints_what_the_guard_did_and_still_exits_0(tmp_path: Path, request: pytest.FixtureRequest,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from gemmacli.engine import runtime

    sys.path.insert(0, str(Path(__file__).parent))
    from cli import run_cli

    real_logits, real_logits_for = runtime.Model.logits, runtime.Model.logits_for

    def leaning(self: Any) -> Leaning:
        leaning = Leaning(self, leaning_ids(self))
        leaning.model = SimpleNamespace(logits=lambda h: real_logits(self, h),
                                        logits_for=lambda h, ids: real_logits_for(self, h, ids))
        return leaning

    monkeypatch.setattr(runtime.Model, "logits", lambda self, h: leaning(self).logits(h))
    monkeypatch.setattr(runtime.Model, "logits_for", lambda self, h, ids: leaning(self).logits_for(h, ids))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.json").write_text(json.dumps(looping_schema("time")))
    folder = str(request.getfixturevalue("tiny_model_dir"))
    result = run_cli(["extract", "--schema", "s.json", "-m", folder], TEXT.encode())
    assert result.status == 0, result.stderr
    jsonschema.validate(result.json(), looping_schema("time"))
    assert "warning:" in result.stderr and "the model repeated '5'" in result.stderr
    off = run_cli(["extract", "--schema", "s.json", "-m", folder, "--no-repeat-guard"], TEXT.encode())
    assert off.status == 1 and off.stdout == b"" and "--max-tokens" in off.stderr
    batch = run_cli(["extract", "--schema", "s.json", "-m", folder, "--records"], TEXT.encode())
    record = batch.records()[0]
    assert record["ok"] and record["warnings"][0].startswith("the model repeated '5'")


def test_a_loop_dealt_with_does_not_cut_the_next_value(model: Any) -> None:
    schema = {"type": "object", "required": ["a", "b"], "properties": {
        "a": {"type": "string", "format": "time"}, "b": {"type": "array", "items": {"type": "integer"}}}}
    result = Extractor(schema, model=model).extract(TEXT)
    jsonschema.validate(result.data, schema)
    assert len(result.repeats) == 2 and all("48 times" in note for note in result.repeats)
    assert len(str(result.data["b"][0])) >= SPAN  # b's own loop was seen afresh, not cut by a's


def test_a_loop_of_whole_members_closes_its_object() -> None:
    """`"k":"v","k":"v",…` (an open object adding keys): ending a string changes nothing; close the object."""
    guard = feed('{"a":[{"b":"x"' + ',"k":"v"' * 12)
    loop = guard.loop()
    assert loop is not None and loop.structural and guard.close_below == 3  # the inner object
    assert guard.loop() is not None and guard.loop().closing  # type: ignore[union-attr]  # until it is closed
    guard.push(ord("}"))
    assert guard.loop() is None and guard.depth == 2


class _PieceTokenizer:
    """Token i is the i-th piece; enough of llguidance's tokenizer for the guard."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces
        self.vocab_size = len(pieces)

    def decode_bytes(self, ids: list[int]) -> bytes:
        return b"".join(self.pieces[i] for i in ids)

    def tokenize_str(self, text: str) -> list[int]:
        return [self.pieces.index(text.encode())] if text.encode() in self.pieces else []


def test_an_array_that_gets_an_item_twice_is_closed() -> None:
    """`["Lebanon","Lebanon",…` (seen on the real model): a list of names holds each once, so the second
    copy is a loop: the guard reports it once and closes the array (not the object around it)."""
    from gemmacli.engine.loops import RepeatGuard

    pieces = [b'{"a":[', b'"', b"x", b"y", b",", b"]", b"}", b'"b":', b"x,y"]
    tokenizer = _PieceTokenizer(pieces)
    guard = RepeatGuard(tokenizer)
    ids = {p: i for i, p in enumerate(pieces)}
    for piece in [b'{"a":[', b'"', b"x", b'"', b",", b'"', b"y", b'"', b",", b'"', b"x,y", b'"', b","]:
        guard.push(ids[piece], free=True)
        assert guard.loop() is None  # distinct items, even one that contains a comma
    for piece in [b'"', b"y", b'"']:
        guard.push(ids[piece], free=True)
    loop = guard.loop()
    assert loop is not None and loop.structural and not loop.closing
    assert "'y'" in loop.describe(tokenizer)
    closing = guard.loop()
    assert closing is not None and closing.closing  # reported once; then closing until the array ends
    guard.push(ids[b"]"])
    assert guard.loop() is None
