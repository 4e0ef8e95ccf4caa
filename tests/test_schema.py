"""Schema loading and checking: every refusal names why and where (a JSON pointer); --lenient loosens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llguidance import LLMatcher

from gemmacli.errors import ExitStatus, SchemaError
from gemmacli.schema import (
    LoadedSchema,
    bundled_schemas,
    check_schema,
    load_schema,
    schema_sha256,
)
from gemmacli.schema.keywords import UNSUPPORTED_KEYWORDS

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name"],
}


def refusal(schema: dict, **kwargs: object) -> SchemaError:
    with pytest.raises(SchemaError) as info:
        check_schema(schema, lenient=False, **kwargs)  # type: ignore[arg-type]
    assert info.value.exit_status == ExitStatus.SCHEMA
    return info.value


# ------------------------------------------------------------------------------------------ load_schema


def test_load_from_file_inline_and_sha_is_canonical(tmp_path: Path) -> None:
    path = tmp_path / "person.json"
    path.write_text(json.dumps(PERSON, indent=4))
    from_file = load_schema(str(path))
    inline = load_schema(json.dumps(PERSON))
    assert from_file.source == "file" and from_file.path == path
    assert inline.source == "inline" and inline.path is None
    assert from_file.schema == inline.schema == PERSON
    assert from_file.sha256 == inline.sha256 == schema_sha256(json.loads(json.dumps(PERSON)))


def test_file_wins_over_other_readings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("name").write_text(json.dumps(PERSON))
    assert load_schema("name").source == "file"


def test_bundled_names_resolve() -> None:
    bundled = bundled_schemas()
    for name, path in bundled.items():
        loaded = load_schema(name) if not Path(name).exists() else None
        if loaded is not None:
            assert loaded.source == "bundled" and loaded.path == path
            check_schema(loaded.schema, lenient=False)  # every bundled schema is enforceable


def test_inline_json_error_names_line_and_column() -> None:
    with pytest.raises(SchemaError, match=r"inline schema is not valid JSON.*line 1, column"):
        load_schema('{"type": "object",}')


def test_dsl_is_the_last_reading() -> None:
    from gemmacli.schema import dsl

    if not hasattr(dsl, "parse_dsl"):
        pytest.skip("the concise syntax (gemmacli.schema.dsl) is not built yet")
    loaded = load_schema("name, age int")
    assert isinstance(loaded, LoadedSchema) and loaded.source == "dsl"
    assert set(loaded.schema["properties"]) == {"name", "age"}


def test_missing_schema_file_is_a_schema_error() -> None:
    with pytest.raises(SchemaError):
        load_schema("no/such/schema.json")


def test_file_refs_inside_the_folder_are_inlined(tmp_path: Path) -> None:
    (tmp_path / "common.json").write_text(json.dumps({"definitions": {"email": {"type": "string",
                                                                                "format": "email"}}}))
    (tmp_path / "main.json").write_text(json.dumps(
        {"type": "object", "properties": {"email": {"$ref": "common.json#/definitions/email"}}}))
    loaded = load_schema(str(tmp_path / "main.json"))
    compiled, _ = check_schema(loaded.schema, lenient=False)
    assert compiled["properties"]["email"]["$ref"].startswith("#/")
    import jsonschema

    jsonschema.validate({"email": "a@b.co"}, loaded.schema)


def test_file_refs_outside_the_folder_are_refused(tmp_path: Path) -> None:
    (tmp_path / "other.json").write_text(json.dumps({"type": "string"}))
    inner = tmp_path / "inner"
    inner.mkdir()
    (inner / "main.json").write_text(json.dumps({"type": "object",
                                                 "properties": {"a": {"$ref": "../other.json"}}}))
    loaded = load_schema(str(inner / "main.json"))
    error = refusal(loaded.schema)
    assert error.pointer == "/properties/a/$ref"
    assert "remote" in error.message


# ----------------------------------------------------------------------------------------- check_schema


def test_metaschema_error_names_the_pointer() -> None:
    error = refusal({"type": "object", "properties": {"age": {"type": "integr"}}})
    assert error.pointer == "/properties/age/type"
    assert "invalid schema" in error.message


def test_metaschema_honours_dollar_schema() -> None:
    draft4 = {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object",
              "properties": {"n": {"type": "integer", "minimum": 0, "exclusiveMinimum": True}}}
    check_schema(draft4, lenient=False)  # boolean exclusiveMinimum is valid draft-04
    draft2020 = {k: v for k, v in draft4.items() if k != "$schema"}
    assert refusal(draft2020).pointer == "/properties/n/exclusiveMinimum"


@pytest.mark.parametrize("ref", ["http://example.com/s.json", "https://example.com/s.json#/a",
                                 "file:///etc/passwd", "other.json"])
def test_remote_refs_are_refused(ref: str) -> None:
    error = refusal({"type": "object", "properties": {"a": {"$ref": ref}}})
    assert error.pointer == "/properties/a/$ref"
    assert "network" in error.message


def test_local_refs_and_recursion_compile() -> None:
    tree = {"$defs": {"node": {"type": "object", "properties": {
        "name": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
        "$ref": "#/$defs/node"}
    compiled, warnings = check_schema(tree, lenient=False)
    assert warnings == [] and compiled["$defs"]
    with_id = {"$id": "https://example.com/root.json", "$defs": {"a": {"type": "string"}},
               "type": "object", "properties": {"x": {"$ref": "https://example.com/root.json#/$defs/a"},
                                                 "y": {"$ref": "#/$defs/a"}}}
    check_schema(with_id, lenient=False)


def test_unsupported_keywords_are_each_named_with_their_pointer() -> None:
    schema = {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "code": {"not": {"type": "string"}}}}
    error = refusal(schema)
    assert "'uniqueItems' at /properties/tags" in error.message
    assert "'not' at /properties/code" in error.message
    assert error.pointer == "/properties/tags/uniqueItems"
    assert error.hint and "--lenient" in error.hint


def test_lenient_drops_with_warnings_and_keeps_the_rest() -> None:
    schema = {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string"}, "uniqueItems": True, "maxItems": 3}}}
    compiled, warnings = check_schema(schema, lenient=True)
    assert "uniqueItems" not in compiled["properties"]["tags"]
    assert compiled["properties"]["tags"]["maxItems"] == 3
    assert len(warnings) == 1 and "uniqueItems" in warnings[0] and "/properties/tags" in warnings[0]
    assert "uniqueItems" in schema["properties"]["tags"], "the caller's schema is never modified"


def test_unreferenced_definitions_do_not_block() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}},
              "$defs": {"unused": {"not": {"type": "string"}}}}
    check_schema(schema, lenient=False)


def test_overlapping_oneof_is_refused_then_coerced_under_lenient() -> None:
    schema = {"type": "object", "properties": {
        "v": {"oneOf": [{"type": "string"}, {"type": "string", "minLength": 2}]}}}
    error = refusal(schema)
    assert error.pointer == "/properties/v" and "oneOf" in error.message
    compiled, warnings = check_schema(schema, lenient=True)
    assert "anyOf" in compiled["properties"]["v"] and any("oneOf" in w for w in warnings)
    disjoint = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    check_schema(disjoint, lenient=False)


def test_overlapping_oneof_found_through_refs_and_additional_properties() -> None:
    recursive = {"$ref": "#/definitions/el", "definitions": {"el": {"type": "object", "properties": {
        "c": {"oneOf": [{"$ref": "#/definitions/el"}, {"type": "object"}]}}}}}
    assert refusal(recursive).pointer == "/definitions/el/properties/c"
    _, warnings = check_schema(recursive, lenient=True)
    assert warnings == ["'oneOf' at /definitions/el/properties/c decoded as 'anyOf' (branches may overlap); "
                        "still validated"]
    mapping = {"type": "object", "additionalProperties": {"oneOf": [{"type": "string"},
                                                                     {"type": "string", "maxLength": 3}]}}
    assert refusal(mapping).pointer == "/additionalProperties"
    compiled, _ = check_schema(mapping, lenient=True)
    assert "anyOf" in compiled["additionalProperties"]


def test_unsupported_pattern_and_formats() -> None:
    schema = {"type": "object", "properties": {
        "a": {"type": "string", "pattern": "^(?=x)y"},
        "b": {"type": "string", "format": "iri"},
        "c": {"type": "string", "format": "int32"},
        "d": {"type": "string", "format": "email"}}}
    error = refusal(schema)
    assert "'pattern' at /properties/a" in error.message and "'format' at /properties/b" in error.message
    assert "/properties/d" not in error.message
    compiled, warnings = check_schema(schema, lenient=True)
    props = compiled["properties"]
    assert "pattern" not in props["a"] and "format" not in props["b"] and "format" not in props["c"]
    assert props["d"]["format"] == "email"
    assert any("int32" in w for w in warnings)


def test_unsatisfiable_is_refused_even_when_lenient_with_pointer() -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "#/$defs/b"}},
              "$defs": {"b": {"allOf": [{"type": "string"}, {"type": "integer"}]}}}
    for lenient in (False, True):
        with pytest.raises(SchemaError) as info:
            check_schema(schema, lenient=lenient)
        assert info.value.pointer == "/$defs/b"
        assert "no JSON value" in info.value.message


def test_unresolvable_local_ref_is_refused() -> None:
    error = refusal({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})
    assert "$ref" in error.message


def test_min_properties_shape_is_located() -> None:
    schema = {"type": "object", "properties": {"m": {
        "type": "object", "properties": {"a": {"type": "string"}}, "minProperties": 1}}}
    assert refusal(schema).pointer == "/properties/m"
    compiled, _ = check_schema(schema, lenient=True)
    assert "minProperties" not in compiled["properties"]["m"]


def test_non_object_schema_is_refused() -> None:
    with pytest.raises(SchemaError):
        check_schema(["not", "a", "schema"], lenient=False)  # type: ignore[arg-type]


@pytest.mark.parametrize("keyword", UNSUPPORTED_KEYWORDS)
def test_unsupported_list_matches_the_installed_llguidance(keyword: str) -> None:
    """Guards the list against llguidance upgrades: each keyword alone is still refused by it."""
    values = {"dependentRequired": {"a": ["b"]}, "dependencies": {"a": ["b"]}, "dependentSchemas": {"a": {}},
              "minContains": 1, "maxContains": 1, "uniqueItems": True, "$dynamicRef": "#a",
              "$dynamicAnchor": "a", "$recursiveRef": "#", "$recursiveAnchor": True}
    value = values.get(keyword, {})
    grammar = LLMatcher.grammar_from_json_schema({keyword: value})
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    assert is_error and keyword in messages[0]
