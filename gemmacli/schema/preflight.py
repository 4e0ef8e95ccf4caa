"""What any JSON document (a schema or a policy) must pass before recursive code reads it.

`check_depth` measures nesting without recursion (jsonschema and llguidance recurse, and a document
100 000 levels deep must be an exit-3 refusal, never a RecursionError); `check_patterns` parses every
regular expression, so one that does not parse is an invalid schema rather than "cannot enforce".
Both are used by `gemmacli.schema.check` and by policy loading (gemmacli.jobs.policy).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from gemmacli.errors import SchemaError
from gemmacli.schema.keywords import VALUE_KEYWORDS
from gemmacli.schema.pointers import escape_token, join_pointer

#: How deeply a schema (or policy) document may nest objects and arrays. jsonschema's own checks recurse
#: several frames per level, so ~100 levels of subschemas (200 of JSON) exhaust Python's stack; no real
#: extraction schema comes near this.
MAX_DEPTH = 128


def check_depth(document: Any, what: str = "the schema") -> None:
    """SchemaError (exit 3) naming the depth when `document` nests deeper than MAX_DEPTH. Measured without
    recursion, so a 100 000-level document is measured as safely as a flat one."""
    deepest, where = 0, ""
    stack: list[tuple[Any, int, str | None]] = [(document, 1, "")]
    while stack:
        node, depth, pointer = stack.pop()
        if depth > deepest:
            deepest = depth
            where = pointer if pointer is not None else where
        for key, child in _members(node):
            if isinstance(child, (dict, list)):
                below = join_pointer(pointer, key) if pointer is not None and depth <= MAX_DEPTH else None
                stack.append((child, depth + 1, below))
    if deepest > MAX_DEPTH:
        shown = where if len(where) <= 60 else where[:60] + "…"
        raise SchemaError(f"{what} nests {deepest} levels of objects and arrays deep (at {shown}); gemmacli "
                          f"reads at most {MAX_DEPTH}")


def _members(node: Any) -> Iterable[tuple[Any, Any]]:
    """(key or index, value) of each member of an object or array; nothing for any other value."""
    if isinstance(node, dict):
        return node.items()
    if isinstance(node, list):
        return enumerate(node)
    return ()


def check_patterns(document: Any) -> None:
    """Every `pattern` and `patternProperties` key must be a regular expression: one that does not parse
    (`((`) is an invalid schema (exit 3, its pointer), never "cannot enforce", with or without --lenient.
    The output is validated with Python's `re` (through jsonschema), so that is the reading that counts."""
    stack: list[tuple[Any, str]] = [(document, "")]
    while stack:
        node, pointer = stack.pop()
        if isinstance(node, list):
            stack.extend((child, join_pointer(pointer, i)) for i, child in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        for key, regex in _regexes(node):
            try:
                re.compile(regex)
            except (re.error, RecursionError, OverflowError) as exc:
                raise SchemaError(f"invalid regular expression {regex!r}: {exc}",
                                  pointer=f"{pointer}/{key}") from None
        for key, child in node.items():
            if key not in VALUE_KEYWORDS:  # values, not subschemas
                stack.append((child, join_pointer(pointer, key)))


def _regexes(node: dict) -> list[tuple[str, str]]:
    """(pointer suffix, regular expression) of the `pattern` and `patternProperties` keys in `node`."""
    found = [("pattern", node["pattern"])] if isinstance(node.get("pattern"), str) else []
    if isinstance(node.get("patternProperties"), dict):
        found += [(f"patternProperties/{escape_token(k)}", k) for k in node["patternProperties"]]
    return found
