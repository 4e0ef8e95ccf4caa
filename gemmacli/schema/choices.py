"""Closed-choice fields: the properties whose every allowed value the schema lists (an enum, a const, a
boolean, a null), by property name, as the JSON texts the output would hold.

Why by name: the decoder knows where it is in the output from the keys it has written, not from schema
pointers. A name that means a closed choice in one place and free text in another is left out, so a
value the schema leaves open is never narrowed to a list. The decoder (gemmacli.engine.likely) still
asks the grammar which of the listed texts it accepts at that point, so a name shared by two enums is safe.

Numbers are left out: `1` does not end where `12` would go on, so a listed number is not a whole value.
"""

from __future__ import annotations

import json
from typing import Any

from gemmacli.schema.pointers import resolve_pointer

#: JSON values a listed choice may hold: ones whose text ends by itself.
_SELF_ENDING = (str, bool, type(None))


def choice_values(schema: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Property name -> the JSON texts of its allowed values, for every property (anywhere in the schema,
    through local $refs) that is a closed choice, or an array of them."""
    found: dict[str, tuple[str, ...] | None] = {}
    _visit(schema, schema, found, set())
    return {name: values for name, values in found.items() if values}


def _visit(node: Any, root: dict[str, Any], found: dict[str, tuple[str, ...] | None], seen: set[str]) -> None:
    """Record the choices of every property under `node` (None for a name that is free text somewhere)."""
    node = _resolved(node, root, seen)
    if not isinstance(node, dict):
        return
    for name, sub in (node.get("properties") or {}).items():
        values = _closed(sub, root) or _closed(_items(sub, root), root)
        if name in found and found[name] != values:
            found[name] = None  # two meanings: never narrowed
        else:
            found[name] = values
        _visit(sub, root, found, seen)
    for key in ("items", "additionalProperties", "not"):
        _visit(node.get(key), root, found, seen)
    for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
        for sub in node.get(key) or ():
            _visit(sub, root, found, seen)


def _resolved(node: Any, root: dict[str, Any], seen: set[str]) -> Any:
    """`node`, or what its local $ref points to (once per walk: a recursive schema ends)."""
    ref = node.get("$ref") if isinstance(node, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#"):
        return node
    if ref in seen:
        return None
    seen.add(ref)
    try:
        return resolve_pointer(root, ref[1:])
    except KeyError:
        return None


def _items(node: Any, root: dict[str, Any]) -> Any:
    """An array schema's item schema, else None."""
    node = _resolved(node, root, set())
    return node.get("items") if isinstance(node, dict) and isinstance(node.get("items"), dict) else None


def _closed(node: Any, root: dict[str, Any]) -> tuple[str, ...] | None:
    """The JSON texts of every value `node` allows when it lists them all, else None."""
    node = _resolved(node, root, set())
    if not isinstance(node, dict):
        return None
    values: list[Any] | None = None
    if "const" in node:
        values = [node["const"]]
    elif isinstance(node.get("enum"), list):
        values = list(node["enum"])
    elif any(isinstance(node.get(k), list) and node[k] for k in ("anyOf", "oneOf")):
        branches = [_closed(b, root) for b in node.get("anyOf") or node.get("oneOf") or ()]
        if any(b is None for b in branches):
            return None
        return tuple(dict.fromkeys(text for b in branches if b for text in b))
    else:
        values = _typed(node.get("type"))
    if values is None or not values or not all(isinstance(v, _SELF_ENDING) for v in values):
        return None
    return tuple(dict.fromkeys(json.dumps(v, ensure_ascii=False) for v in values))


def _typed(kind: Any) -> list[Any] | None:
    """The values a bare `type` lists: boolean and null only."""
    kinds = [kind] if isinstance(kind, str) else kind if isinstance(kind, list) else None
    if not kinds or not set(kinds) <= {"boolean", "null"}:
        return None
    return ([True, False] if "boolean" in kinds else []) + ([None] if "null" in kinds else [])
