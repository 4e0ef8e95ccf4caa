"""Values copied from the text: string fields whose value must be a verbatim span of the input.

A 270M model asked for a phone number writes a plausible one (`"010 7946 0000"`) as readily as the one in
the text. For fields that name things in the text (names, numbers, addresses, amounts) the grammar can
allow only what the text contains: llguidance's `%regex {"substring_chunks": [...]}` matches any run of
the text's pieces (whole words, spaces, punctuation, whole JSON escapes: `span_chunks`). The model then
chooses *which* span (or null), never invents one.

Which fields:
  annotated (default)  string fields marked `"x-gemmacli": {"span": true}` in the schema
  all                  every plain string field (no enum, const, pattern or format)
  none                 no span constraints

The grammar is per document (it holds the text), in llguidance's Lark syntax: objects and arrays on the
way to a span field are written out member by member (compact JSON, schema order, optional members
skippable), every other value stays a `%json { subschema }`. A schema whose span fields sit where that
is not possible (under $ref, anyOf, open objects) keeps its plain JSON-schema grammar.
"""

from __future__ import annotations

import json
import re
from typing import Any

ANNOTATION = "x-gemmacli"
MODES = ("annotated", "all", "none")
_NOT_PLAIN = ("enum", "const", "pattern", "format", "anyOf", "oneOf", "allOf", "$ref", "not")


def is_span_field(node: Any, mode: str) -> bool:
    """A string (or string-or-null) field whose value is to be copied from the text."""
    if mode == "none" or not isinstance(node, dict) or any(k in node for k in _NOT_PLAIN):
        return False
    kinds = node.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if not isinstance(kinds, list) or "string" not in kinds or not set(kinds) <= {"string", "null"}:
        return False
    marked = isinstance(node.get(ANNOTATION), dict) and node[ANNOTATION].get("span") is True
    return marked or mode == "all"


def has_spans(schema: dict, mode: str) -> bool:
    """Whether `span_grammar` writes any span for this schema (so the plain grammar can be kept if not)."""
    return _Writer(schema, "", mode).reaches_span(schema)


def span_grammar(schema: dict, text: str, mode: str = "annotated") -> str | None:
    """The Lark grammar for `schema` with span fields bound to `text`; None when it has no span field."""
    writer = _Writer(schema, text, mode)
    if not writer.reaches_span(schema):
        return None
    start = writer.value(schema)
    span = f'SPAN: %regex {{"substring_chunks": {json.dumps(span_chunks(text), ensure_ascii=False)}}}'
    return "\n".join([f"start: {start}", *writer.rules, *writer.terminals.values(), span, ""])


def _json_escaped(text: str) -> str:
    """The text as it appears inside a JSON string (the output is JSON: the span is matched there)."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


#: A span starts and ends at these boundaries: whole words, runs of white space, single punctuation marks,
#: and whole JSON escapes (`\n`, `\"`, `\u00e9`): a span that ended inside `\"` would turn the closing
#: quote into an escaped one and run on past the value (seen on receipts with quotes and newlines).
_CHUNK = re.compile(r'\\u[0-9a-fA-F]{4}|\\.|\w+|\s+|[^\w\s\\]')


#: A span's own shape: empty, or starting and ending with something other than white space.
TRIMMED = r"/(\S(.*\S)?)?/"


def span_chunks(text: str) -> list[str]:
    """The JSON-escaped text cut into the pieces a span is made of (llguidance's substring_chunks)."""
    escaped = _json_escaped(text)
    chunks = _CHUNK.findall(escaped)
    assert "".join(chunks) == escaped  # every character belongs to one chunk
    return chunks


def _literal(text: str) -> str:
    """A Lark string literal for `text`."""
    return json.dumps(text, ensure_ascii=False)


class _Writer:
    """Writes Lark rules for the parts of a schema that lead to span fields."""

    def __init__(self, root: dict, text: str, mode: str) -> None:
        self.root = root
        self.text = text
        self.mode = mode
        self.rules: list[str] = []
        self.terminals: dict[str, str] = {}
        self.defs = {k: root[k] for k in ("$defs", "definitions") if isinstance(root.get(k), dict)}

    def reaches_span(self, node: Any) -> bool:
        if is_span_field(node, self.mode):
            return True
        if self._object(node):
            return any(self.reaches_span(sub) for sub in node["properties"].values())
        if self._array(node):
            return self.reaches_span(node["items"])
        return False

    def _object(self, node: Any) -> bool:
        """An object this writer can spell out: closed, plain properties, nothing else to intersect."""
        return (isinstance(node, dict) and node.get("type", "object") == "object"
                and isinstance(node.get("properties"), dict) and node.get("additionalProperties") is False
                and not any(k in node for k in (*_NOT_PLAIN, "patternProperties", "minProperties",
                                                "maxProperties", "dependentRequired"))
                and all(r in node["properties"] for r in node.get("required", [])))

    def _array(self, node: Any) -> bool:
        return (isinstance(node, dict) and node.get("type") == "array" and isinstance(node.get("items"), dict)
                and int(node.get("minItems", 0)) <= 1 and int(node.get("maxItems", 1)) >= 1
                and not node.get("uniqueItems") and not any(k in node for k in (*_NOT_PLAIN, "prefixItems",
                                                                                "contains")))

    def value(self, node: Any) -> str:
        """A Lark expression for one JSON value of `node`."""
        if is_span_field(node, self.mode):
            span = f'"\\"" {self._span_terminal(node)} "\\""'
            kinds = node.get("type")
            return f'({span} | "null")' if isinstance(kinds, list) and "null" in kinds else span
        if self._object(node) and self.reaches_span(node):
            return self._write_object(node)
        if self._array(node) and self.reaches_span(node):
            return self._write_array(node)
        fragment = {**node, **self.defs} if isinstance(node, dict) else node
        return f"%json {json.dumps(fragment, ensure_ascii=False)}"

    def _span_terminal(self, node: dict) -> str:
        """SPAN trimmed (no white space at either end: `"room "` or `"in "` is a span cut short, and the
        model took such ends where its next word was not in the text), and within the field's length bounds
        (counted on the JSON-escaped text, which is never shorter than the value: a bound met there is met
        by the value)."""
        low, high = int(node.get("minLength", 0)), node.get("maxLength")
        name = f"SPAN_{low}_{'' if high is None else int(high)}"
        if name not in self.terminals:
            bounds = "" if low == 0 and high is None else \
                f" & /.{{{low},{'' if high is None else int(high)}}}/"
            self.terminals[name] = f"{name}: SPAN & {TRIMMED}{bounds}"
        return name

    def _rule(self, body: str) -> str:
        name = f"r{len(self.rules)}"
        self.rules.append(f"{name}: {body}")
        return name

    def _write_object(self, node: dict) -> str:
        """Members in schema order, compact; optional ones may be left out (commas only between members).

        tail(i, comma): the members from the i-th on, `comma` saying whether one was already written.
        """
        members = list(node["properties"].items())
        values = [self.value(sub) for _, sub in members]
        required = set(node.get("required", []))
        tails: dict[tuple[int, bool], str] = {}
        for i in range(len(members), -1, -1):
            for comma in (False, True):
                if i == len(members):
                    tails[(i, comma)] = ""
                    continue
                key = members[i][0]
                member = f"{_literal((',' if comma else '') + json.dumps(key) + ':')} {values[i]}"
                written = " ".join(filter(None, [member, tails[(i + 1, True)]]))
                skipped = tails[(i + 1, comma)]
                if key in required:
                    tails[(i, comma)] = self._rule(written)
                else:
                    tails[(i, comma)] = self._rule(f"{written} | {skipped}" if skipped else f"({written})?")
        return f'"{{" {tails[(0, False)]} "}}"'

    def _write_array(self, node: dict) -> str:
        item = self._rule(self.value(node["items"]))
        most = node.get("maxItems")
        more = "*" if most is None else f"{{0,{int(most) - 1}}}"
        items = f'{item} ("," {item}){more}'
        body = items if int(node.get("minItems", 0)) == 1 else f"({items})?"
        return f'"[" {body} "]"'
