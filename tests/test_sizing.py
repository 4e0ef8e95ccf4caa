"""The smallest JSON a schema allows (gemmacli.schema.sizing): what the budget is sized from."""

from __future__ import annotations

import json
import re

import pytest

from gemmacli.schema.sizing import shortest_match, smallest_json, string_hints


@pytest.mark.parametrize("pattern", [
    "^pbj:([a-z0-9-]+):([a-z0-9\\.-]+):([a-z0-9-]+)?:([a-z0-9-]+):([0-9]+-[0-9]+-[0-9]+)$",
    "^allow|deny$", "^[A-Z]{2}\\d{3}$", "[^\\d\\s]",
    "^[^@^\\s]+@[^@^\\.^\\s]+(\\.[^@^\\.^\\s]+)+$",
    "^[^@]+@[^@]+\\.[a-z]{2,}$", "(ab)*c", "^\\w+:\\S*$", "x{0}y?z",
])
def test_shortest_match_matches_and_is_short(pattern: str) -> None:
    example = shortest_match(pattern)
    assert example is not None and re.search(pattern, example)
    assert len(example) <= len(pattern)


def test_what_the_walk_cannot_read_is_none_not_a_guess() -> None:
    assert shortest_match("(a)\\1") is None  # backreference
    assert shortest_match("(?=a)a") is None  # lookahead
    assert shortest_match("[") is None  # not a regex


def test_smallest_json_holds_only_what_is_required() -> None:
    schema = {
        "type": "object",
        "required": ["id", "kind", "tags", "when", "node", "either"],
        "properties": {
            "id": {"type": "string", "pattern": "^[A-Z]{2}\\d{3}$"},
            "kind": {"enum": ["invoice", "memo"]},
            "tags": {"type": "array", "minItems": 2, "items": {"type": "integer"}},
            "when": {"type": "string", "format": "date"},
            "node": {"$ref": "#/$defs/node"},
            "either": {"anyOf": [{"type": "string", "minLength": 5}, {"type": "null"}]},
            "note": {"type": "string", "minLength": 100},
        },
        "$defs": {"node": {"type": "object", "required": ["child"],
                           "properties": {"child": {"$ref": "#/$defs/node"}}}},
    }
    smallest = json.loads(smallest_json(schema))
    assert smallest == {"id": "AA000", "kind": "memo", "tags": [0, 0], "when": "2000-01-01",
                        "node": {"child": 0}, "either": None}  # recursion stops at the shortest value


def test_hints_are_the_patterns_and_formats_shortest_strings() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string", "pattern": "^v\\d+$"},
                                               "b": {"type": "string", "format": "time"}}}
    assert string_hints(schema) == ["v0", "00:00:00Z"]
