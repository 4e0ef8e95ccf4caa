"""Span fields: string values that can only be runs of whole words of the input (gemmacli.engine.spans)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gemmacli.engine.extractor import Extractor
from gemmacli.engine.grammar import TokenizerBuild, lark_grammar, new_matcher
from gemmacli.engine.spans import has_spans, is_span_field, span_grammar

TEXT = 'Ada Lovelace wrote to "Charles" Babbage\nat 12 St. James\'s Square.'
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "x-gemmacli": {"span": True}},
        "place": {"type": ["string", "null"], "maxLength": 30, "x-gemmacli": {"span": True}},
        "age": {"type": "integer"},
        "aliases": {"type": "array", "items": {"type": "string", "x-gemmacli": {"span": True}}},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from tokenizers import Tokenizer

    encoder = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    return TokenizerBuild(tiny_model_dir / "tokenizer.json", encoder.get_vocab_size(), [1],
                          encoder=encoder).result()


def accepts(tokenizer: Any, schema: dict, text: str, output: str) -> bool:
    lark = span_grammar(schema, text, "annotated")
    assert lark is not None
    matcher = new_matcher(tokenizer, lark_grammar(lark))
    ok = matcher.consume_tokens(tokenizer.tokenize_str(output))
    return bool(ok and matcher.is_accepting())


@pytest.mark.parametrize("output", [
    '{"name":"Ada Lovelace","age":36}',
    '{"name":"Charles","place":null,"age":1}',
    '{"name":"\\"Charles\\" Babbage","age":1}',
    '{"name":"Ada","place":"12 St. James\'s Square","age":1,"aliases":["Ada","Lovelace"]}',
    '{"name":"Ada","age":1,"aliases":[]}',
    '{"name":"Babbage\\nat 12","age":1}',
])
def test_spans_of_the_text_and_optional_members_are_accepted(tokenizer: Any, output: str) -> None:
    assert json.loads(output)
    assert accepts(tokenizer, PERSON, TEXT, output)


@pytest.mark.parametrize("output", [
    '{"name":"Grace Hopper","age":36}',       # not in the text
    '{"name":"Ada Love","age":36}',           # not a whole word
    '{"name":"Ada","age":1,"aliases":["Bob"]}',
    '{"name":"Ada","place":"Ada Lovelace wrote to \\"Charles\\" Babbage","age":1}',  # past maxLength 30
    '{"age":1,"name":"Ada"}',                 # schema order
    '{"name":"Ada ","age":1}',                # a span ends and starts with no white space
    '{"name":" Lovelace","age":1}',
    '{"name":"Ada","place":"at ","age":1}',
])
def test_anything_else_is_refused(tokenizer: Any, output: str) -> None:
    assert not accepts(tokenizer, PERSON, TEXT, output)


def test_which_fields_are_spans() -> None:
    plain = {"type": "string"}
    assert not is_span_field(plain, "annotated") and is_span_field(plain, "all")
    assert not is_span_field({"type": "string", "enum": ["a"]}, "all")
    assert not is_span_field({"type": "string", "format": "date"}, "all")
    assert not is_span_field({"type": "string", "x-gemmacli": {"span": True}}, "none")
    assert has_spans(PERSON, "annotated") and not has_spans(PERSON, "none")
    # under anyOf the plain JSON-schema grammar stays: no span grammar is written
    assert not has_spans({"anyOf": [PERSON, {"type": "null"}]}, "annotated")
    assert span_grammar({"type": "object", "properties": {"n": {"type": "integer"}},
                         "additionalProperties": False}, TEXT, "all") is None


def test_extracted_spans_always_come_from_the_text(tiny_model_dir: Path) -> None:
    """A random-weight model writes garbage, but with spans every string is a run of the text's words."""
    schema = {"type": "object", "properties": {"who": {"type": "string", "maxLength": 40},
                                               "where": {"type": ["string", "null"], "maxLength": 40}},
              "required": ["who", "where"], "additionalProperties": False}
    extractor = Extractor(schema, model=tiny_model_dir, spans="all")
    for text in (TEXT, "Meet Grace at the Navy Yard on Monday.", "Nothing here but words words."):
        data = extractor.extract(text).data
        escaped = json.dumps(text)[1:-1]
        for value in data.values():
            assert value is None or json.dumps(value)[1:-1] in escaped
    unconstrained = Extractor(schema, model=tiny_model_dir, spans="none").extract("Meet Grace.").data
    assert set(unconstrained) == {"who", "where"}


def test_a_span_never_ends_inside_a_json_escape(tokenizer: Any) -> None:
    """Receipts with quotes and line breaks: a span ending after the backslash of `\\"` or `\\n` would
    make the closing quote an escaped one, and the JSON run on (seen on SROIE as invalid output)."""
    schema = {"type": "object", "properties": {"a": {"type": "string", "x-gemmacli": {"span": True}}},
              "required": ["a"], "additionalProperties": False}
    text = 'TOTAL "RM" 9.00\nTHANK YOU'
    assert accepts(tokenizer, schema, text, '{"a":"TOTAL \\"RM\\" 9.00\\nTHANK"}')
    assert not accepts(tokenizer, schema, text, '{"a":"TOTAL \\"}')
    assert not accepts(tokenizer, schema, text, '{"a":"9.00\\"}')


def test_arrays_keep_their_item_bounds(tokenizer: Any) -> None:
    item = {"type": "string", "x-gemmacli": {"span": True}}
    schema = {"type": "object", "properties": {"xs": {"type": "array", "maxItems": 2, "items": item}},
              "required": ["xs"], "additionalProperties": False}
    assert accepts(tokenizer, schema, "a b c", '{"xs":["a","b"]}')
    assert not accepts(tokenizer, schema, "a b c", '{"xs":["a","b","c"]}')
    assert not accepts(tokenizer, schema, "a b c", '{"xs":["d"]}')
