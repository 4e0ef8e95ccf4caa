"""The concise schema syntax: what each form becomes, and errors that name the field and column."""

from __future__ import annotations

import jsonschema
import pytest

from gemmacli.errors import SchemaError
from gemmacli.schema.dsl import looks_like_dsl, parse_dsl

ISSUE_EXAMPLE = "name, age int, email?: their email, tags [str], mood enum(happy|sad)"


def test_the_issue_example_becomes_a_closed_object_with_every_key_required() -> None:
    schema = parse_dsl(ISSUE_EXAMPLE)
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert list(schema["properties"]) == ["name", "age", "email", "tags", "mood"]
    assert schema["required"] == ["name", "age", "email", "tags", "mood"]
    props = schema["properties"]
    assert props["name"] == {"type": "string"}
    assert props["age"] == {"type": "integer"}
    assert props["email"] == {"description": "their email", "type": ["string", "null"]}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    assert props["mood"] == {"type": "string", "enum": ["happy", "sad"]}
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("price float", {"type": "number"}),
        ("price number", {"type": "number"}),
        ("ok bool", {"type": "boolean"}),
        ("ok boolean", {"type": "boolean"}),
        ("n integer", {"type": "integer"}),
        ("when date", {"type": "string", "format": "date"}),
        ("grid [[int]]", {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}),
        ("levels [enum(a|b)]", {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}}),
        ("mood? enum(up|down)", {"enum": ["up", "down", None]}),
        ("age int?", {"type": ["integer", "null"]}),
        ("tags? [str]", {"type": ["array", "null"], "items": {"type": "string"}}),
    ],
)
def test_each_type_form(text: str, expected: dict) -> None:
    schema = parse_dsl(text)
    assert next(iter(schema["properties"].values())) == expected


def test_descriptions_may_be_quoted_to_hold_commas_and_fields_may_be_on_lines() -> None:
    schema = parse_dsl('summary: "one line, no more"\nscore int: 1 to 5')
    assert schema["properties"]["summary"]["description"] == "one line, no more"
    assert schema["properties"]["score"] == {"description": "1 to 5", "type": "integer"}


def test_optional_fields_accept_null_and_required_ones_do_not() -> None:
    validator = jsonschema.Draft202012Validator(parse_dsl("name, email?"))
    assert validator.is_valid({"name": "Ada", "email": None})
    assert not validator.is_valid({"name": None, "email": None})
    assert not validator.is_valid({"name": "Ada"})


@pytest.mark.parametrize(
    ("text", "field", "column", "words"),
    [
        ("name, age innt", "age", 11, "unknown type 'innt'"),
        ("name, 9lives", "?", 7, "starts with a name"),
        ("x enum(a|)", "x", 7, "empty enum value"),
        ("x [str", "x", 7, "expected ']'"),
        ("a, a int", "a", 4, "defined twice"),
        ("a int bogus", "a", 7, "unexpected"),
    ],
)
def test_errors_name_the_field_and_the_column(text: str, field: str, column: int, words: str) -> None:
    with pytest.raises(SchemaError) as caught:
        parse_dsl(text)
    message = caught.value.message
    assert f"field '{field}'" in message and f"column {column}" in message and words in message
    assert caught.value.exit_status == 3


def test_errors_on_later_lines_name_the_line() -> None:
    with pytest.raises(SchemaError, match="line 2, column 3"):
        parse_dsl("name\nx bogus")


def test_empty_schema_is_refused() -> None:
    with pytest.raises(SchemaError, match="empty"):
        parse_dsl(" , ")


def test_looks_like_dsl_rejects_lone_words_paths_and_json() -> None:
    assert looks_like_dsl(ISSUE_EXAMPLE)
    assert looks_like_dsl("name int")
    assert looks_like_dsl("name?")
    for text in [
        "invoce",
        "schemas/contact.json",
        "contact.json",
        '{"type": "object"}',
        "",
        "name, age innt",
    ]:
        assert not looks_like_dsl(text), text


def test_every_form_is_accepted_by_the_decoders_schema_check() -> None:
    from gemmacli.schema import check_schema

    for text in [ISSUE_EXAMPLE, "when date, n? float, grid [[int]], levels [enum(a|b)]", "mood? enum(a|b)"]:
        _compiled, warnings = check_schema(parse_dsl(text), lenient=False)
        assert warnings == []
