"""The concise schema syntax: `name, age int, email?: their email, tags [str], mood enum(a|b)`.

In brief: parse_dsl(text: str) -> dict (a JSON Schema object); raises SchemaError (exit 3) naming the
field and column that could not be read. looks_like_dsl(text) -> bool.

Grammar (fields are separated by commas or newlines outside brackets, parentheses and quotes):

    field  := NAME ["?"] [type] ["?"] [":" description]
    type   := str | int | float | bool | date | datetime | email      (and their long spellings)
            | "[" type "]"                                            an array of that type
            | "enum(" value ("|" value)* ")"                          one of these strings
    description := free text up to the next separator, or "quoted, with commas"

A field without a type is a string. Every field is required in the output object so the model always
emits every key (a predictable shape for the shell); `?` makes it nullable instead, which is how "this
may be missing from the text" is expressed without inviting the model to invent a value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from gemmacli.errors import SchemaError

#: Spellings of each scalar type -> the JSON Schema it becomes.
SCALAR_TYPES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "string": {"type": "string"},
    "text": {"type": "string"},
    "int": {"type": "integer"},
    "integer": {"type": "integer"},
    "float": {"type": "number"},
    "number": {"type": "number"},
    "num": {"type": "number"},
    "bool": {"type": "boolean"},
    "boolean": {"type": "boolean"},
    "date": {"type": "string", "format": "date"},
    "datetime": {"type": "string", "format": "date-time"},
    "email": {"type": "string", "format": "email"},
}

SYNTAX_HELP = """\
concise schema syntax (gemmacli schema dsl 'FIELDS'):
  name                 a string field
  age int              integer        (also: integer)
  price float          number         (also: number, num)
  ok bool              true/false     (also: boolean)
  when date            YYYY-MM-DD     (also: datetime, email)
  tags [str]           an array of strings (any type in brackets, nested too)
  mood enum(a|b|c)     one of these strings
  email?               optional: null when the text does not say
  name: their name     text after ':' is the description the model reads
  note: "a, b"         quote a description that contains commas
fields are separated by commas or newlines; every field appears in the output object.
"""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")
_CLOSERS = {"(": ")", "[": "]"}


@dataclass
class _Segment:
    """One field's text and where it starts in the whole input (for error columns)."""

    text: str
    offset: int


class _Cursor:
    """Position within one field's text; errors name the field and the column in the original input."""

    def __init__(self, whole: str, segment: _Segment) -> None:
        self.whole = whole
        self.text = segment.text
        self.base = segment.offset
        self.pos = 0
        self.field = "?"

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t\r":
            self.pos += 1

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def error(self, message: str, at: int | None = None) -> SchemaError:
        where = self.base + (self.pos if at is None else at)
        line = self.whole.count("\n", 0, where) + 1
        column = where - (self.whole.rfind("\n", 0, where) + 1) + 1
        place = f"line {line}, column {column}" if "\n" in self.whole.strip() else f"column {column}"
        return SchemaError(
            f"cannot read field '{self.field}' at {place}: {message}",
            hint="see `gemmacli schema dsl` for the syntax",
        )


def _split_fields(text: str) -> list[_Segment]:
    """Split on commas/newlines that are outside brackets, parentheses and double quotes."""
    segments: list[_Segment] = []
    depth: list[str] = []
    in_quote = False
    start = 0
    for index, char in enumerate(text):
        if in_quote:
            if char == "\\":
                continue
            if char == '"' and (index == 0 or text[index - 1] != "\\"):
                in_quote = False
        elif char == '"':
            in_quote = True
        elif char in _CLOSERS:
            depth.append(_CLOSERS[char])
        elif depth and char == depth[-1]:
            depth.pop()
        elif char in ",\n" and not depth:
            segments.append(_Segment(text[start:index], start))
            start = index + 1
    segments.append(_Segment(text[start:], start))
    result = []
    for segment in segments:
        stripped = segment.text.lstrip()
        lead = len(segment.text) - len(stripped)
        if stripped.strip():
            result.append(_Segment(stripped.rstrip(), segment.offset + lead))
    return result


def _parse_type(cursor: _Cursor) -> dict[str, Any]:
    """Read a type at the cursor: a scalar word, [type] or enum(a|b)."""
    if cursor.peek() == "[":
        cursor.pos += 1
        cursor.skip_spaces()
        if cursor.peek() == "]":
            raise cursor.error("empty brackets: write the item type, e.g. [str]")
        items = _parse_type(cursor)
        cursor.skip_spaces()
        if cursor.peek() != "]":
            raise cursor.error("expected ']' to close the array type")
        cursor.pos += 1
        return {"type": "array", "items": items}
    match = _WORD.match(cursor.text, cursor.pos)
    if not match:
        raise cursor.error(f"expected a type, found {cursor.text[cursor.pos : cursor.pos + 10]!r}")
    word = match.group(0)
    if word.lower() == "enum":
        cursor.pos = match.end()
        return _parse_enum(cursor)
    if word.lower() not in SCALAR_TYPES:
        known = ", ".join(sorted({"str", "int", "float", "bool", "date", "datetime", "email"}))
        raise cursor.error(f"unknown type '{word}' (known: {known}, [type], enum(a|b))")
    cursor.pos = match.end()
    return dict(SCALAR_TYPES[word.lower()])


def _parse_enum(cursor: _Cursor) -> dict[str, Any]:
    cursor.skip_spaces()
    if cursor.peek() != "(":
        raise cursor.error("expected '(' after enum, e.g. enum(low|high)")
    close = cursor.text.find(")", cursor.pos)
    if close < 0:
        raise cursor.error("expected ')' to close enum(")
    body = cursor.text[cursor.pos + 1 : close]
    values: list[str] = []
    for raw in body.split("|"):
        value = raw.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        if not value:
            raise cursor.error("empty enum value (write enum(a|b|c))")
        if value in values:
            raise cursor.error(f"enum value '{value}' appears twice")
        values.append(value)
    cursor.pos = close + 1
    return {"type": "string", "enum": values}


def _parse_description(cursor: _Cursor) -> str:
    rest = cursor.text[cursor.pos :].strip()
    if rest.startswith('"'):
        end = 1
        while end < len(rest) and not (rest[end] == '"' and rest[end - 1] != "\\"):
            end += 1
        if end >= len(rest):
            raise cursor.error("unterminated quoted description")
        if rest[end + 1 :].strip():
            raise cursor.error("text after the quoted description")
        return rest[1:end].replace('\\"', '"')
    return rest


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """Let a field be null: how 'optional' is expressed while keeping every key in the output."""
    schema = dict(schema)
    if "enum" in schema:
        schema["enum"] = [*schema["enum"], None]
        schema.pop("type", None)
        return schema
    schema["type"] = [schema["type"], "null"]
    return schema


def _parse_field(whole: str, segment: _Segment) -> tuple[str, dict[str, Any]]:
    cursor = _Cursor(whole, segment)
    match = _NAME.match(cursor.text)
    if not match:
        raise cursor.error(
            f"a field starts with a name (letters, digits, _ or -), found {cursor.text[:10]!r}"
        )
    name = match.group(0)
    cursor.field = name
    cursor.pos = match.end()
    optional = False
    if cursor.peek() == "?":
        optional = True
        cursor.pos += 1
    cursor.skip_spaces()
    schema: dict[str, Any] = {"type": "string"}
    if not cursor.at_end() and cursor.peek() != ":":
        schema = _parse_type(cursor)
        cursor.skip_spaces()
        if cursor.peek() == "?":
            optional = True
            cursor.pos += 1
            cursor.skip_spaces()
    description = None
    if cursor.peek() == ":":
        cursor.pos += 1
        description = _parse_description(cursor)
    elif not cursor.at_end():
        raise cursor.error(
            f"unexpected {cursor.text[cursor.pos : cursor.pos + 10]!r} (a description follows ':')"
        )
    if optional:
        schema = _nullable(schema)
    if description:
        schema = {"description": description, **schema}
    return name, schema


def parse_dsl(text: str) -> dict[str, Any]:
    """Turn the concise syntax into a JSON Schema object whose keys keep the order they were written in."""
    segments = _split_fields(text)
    if not segments:
        raise SchemaError("empty schema: name at least one field, e.g. 'name, age int'")
    properties: dict[str, Any] = {}
    for segment in segments:
        name, schema = _parse_field(text, segment)
        if name in properties:
            cursor = _Cursor(text, segment)
            cursor.field = name
            raise cursor.error("this field is defined twice", at=0)
        properties[name] = schema
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def looks_like_dsl(text: str) -> bool:
    """True when `text` parses as the concise syntax and is not merely a lone word or a path.

    A lone word (`invoce`) is far more likely a mistyped bundled name or file than a one-field schema,
    so it is not taken as DSL here and the caller can say "no such schema"; `gemmacli schema dsl name`
    still parses it on purpose.
    """
    stripped = text.strip()
    if not stripped or stripped[0] in "{[" or "/" in stripped or "\\" in stripped:
        return False
    if stripped.lower().endswith(".json"):
        return False
    if _NAME.fullmatch(stripped):
        return False
    try:
        parse_dsl(stripped)
    except SchemaError:
        return False
    return True
