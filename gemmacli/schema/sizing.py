"""The smallest JSON a schema allows, and the shortest strings its patterns and formats allow.

Two users: the Extractor sizes its token budget from the smallest output (a schema with 113 required
objects cannot be answered in 1024 tokens, and should not spend them finding out), and the repetition
guard (gemmacli.engine.loops) leads a looping model out through the shortest text a pattern allows. Both are
estimates from below: what cannot be read (a lookaround, an unresolvable $ref, a recursion) counts as the
shortest JSON value, `0`, and of `allOf` parts only the largest counts, so a schema is refused only for a
size its required fields really have.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gemmacli.schema.pointers import RefIndex, resolve_pointer, walk_schema

#: The shortest value of each format llguidance enforces (a time needs its offset, a URI its scheme).
FORMAT_EXAMPLES = {
    "date": "2000-01-01", "time": "00:00:00Z", "date-time": "2000-01-01T00:00:00Z", "duration": "P0D",
    "email": "a@a.aa", "idn-email": "a@a.aa", "hostname": "a", "idn-hostname": "a", "ipv4": "0.0.0.0",
    "ipv6": "::", "uri": "a:", "uri-reference": "a", "iri": "a:", "iri-reference": "a",
    "uuid": "00000000-0000-0000-0000-000000000000", "uri-template": "a", "json-pointer": "",
    "relative-json-pointer": "0", "regex": "a",
}
_MAX_DEPTH = 48


def smallest_json(schema: dict) -> str:
    """Compact JSON text of a smallest instance (by the estimate above)."""
    sizer = _Sizer(schema)
    return json.dumps(sizer.value(schema, "", ()), ensure_ascii=False, separators=(",", ":"))


class _Sizer:
    def __init__(self, root: dict) -> None:
        self.root = root
        self.index = RefIndex(root)

    def value(self, node: Any, pointer: str, refs: tuple[str, ...]) -> Any:
        if not isinstance(node, dict) or len(refs) > _MAX_DEPTH:
            return 0
        ref = node.get("$ref")
        if isinstance(ref, str):
            target = self.index.resolve(ref, pointer)
            if target is None or "#" in target or target in refs:
                return 0  # remote (refused earlier), an anchor we cannot follow, or recursion
            try:
                resolved = resolve_pointer(self.root, target)
            except KeyError:
                return 0
            return self.value(resolved, target, (*refs, target))
        if "const" in node:
            return node["const"]
        if isinstance(node.get("enum"), list) and node["enum"]:
            return min(node["enum"], key=_size)
        candidates = []
        for key in ("anyOf", "oneOf"):
            options = node.get(key)
            if isinstance(options, list) and options:
                values = (self.value(o, f"{pointer}/{key}/{i}", refs) for i, o in enumerate(options))
                candidates.append(min(values, key=_size))
        if isinstance(node.get("allOf"), list) and node["allOf"]:
            candidates.append(max((self.value(o, f"{pointer}/allOf/{i}", refs)
                                   for i, o in enumerate(node["allOf"])), key=_size))
        candidates.append(self._typed(node, pointer, refs))
        return max(candidates, key=_size)  # every applicator must hold at once: the largest bound

    def _typed(self, node: dict, pointer: str, refs: tuple[str, ...]) -> Any:
        types = node.get("type")
        if isinstance(types, str):
            types = [types]
        if not isinstance(types, list) or not types:
            if "properties" in node or "required" in node:
                types = ["object"]
            elif "items" in node or "prefixItems" in node or "minItems" in node:
                types = ["array"]
            else:
                return 0
        return min((self._of_type(t, node, pointer, refs) for t in types if isinstance(t, str)), key=_size,
                   default=0)

    def _of_type(self, kind: str, node: dict, pointer: str, refs: tuple[str, ...]) -> Any:
        if kind == "object":
            properties = node.get("properties")
            if not isinstance(properties, dict):
                properties = {}
            required = [k for k in node.get("required", []) if isinstance(k, str)]
            return {key: self.value(properties.get(key, True), f"{pointer}/properties/{key}", refs)
                    for key in dict.fromkeys(required)}
        if kind == "array":
            count = node.get("minItems", 0) if isinstance(node.get("minItems"), int) else 0
            prefix = node.get("prefixItems")
            if not isinstance(prefix, list):
                prefix = node.get("items")
                if not isinstance(prefix, list):
                    prefix = []
            rest = node.get("items") if isinstance(node.get("items"), dict) else True
            return [self.value(prefix[i], f"{pointer}/prefixItems/{i}", refs) if i < len(prefix)
                    else self.value(rest, f"{pointer}/items", refs) for i in range(min(count, 4096))]
        if kind == "string":
            return shortest_string(node)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return 0  # number, integer


def endless_ref(schema: dict) -> str | None:
    """The pointer of a `$ref` every instance must follow forever (a required property that holds its own
    schema again, with no branch out), or None when some finite instance exists.

    Such a schema passes every metaschema check, and llguidance compiles it, but decoding it can only run
    until the budget is spent; it is refused up front instead (gemmacli.schema.check_schema, exit 3).
    """
    return _Finiteness(schema).endless()


class _Finiteness:
    """A least fixpoint by search: a node is finite when one of its derivations never revisits a $ref
    already being expanded on the same path. Mirrors _Sizer's reading (unresolvable parts count as finite)."""

    def __init__(self, root: dict) -> None:
        self.root = root
        self.index = RefIndex(root)
        self.cycle: str | None = None
        self.calls = 0

    def endless(self) -> str | None:
        return None if self.finite(self.root, "", ()) else (self.cycle or "")

    def finite(self, node: Any, pointer: str, refs: tuple[str, ...]) -> bool:
        self.calls += 1
        if not isinstance(node, dict) or len(refs) > _MAX_DEPTH or self.calls > 200_000:
            return True
        ref = node.get("$ref")
        if isinstance(ref, str):
            return self._ref(ref, pointer, refs)
        if "const" in node or (isinstance(node.get("enum"), list) and node["enum"]):
            return True
        for key in ("anyOf", "oneOf"):
            options = node.get(key)
            if isinstance(options, list) and options and not any(
                    self.finite(o, f"{pointer}/{key}/{i}", refs) for i, o in enumerate(options)):
                return False
        parts = node.get("allOf")
        if isinstance(parts, list) and not all(
                self.finite(o, f"{pointer}/allOf/{i}", refs) for i, o in enumerate(parts)):
            return False
        return self._typed(node, pointer, refs)

    def _ref(self, ref: str, pointer: str, refs: tuple[str, ...]) -> bool:
        target = self.index.resolve(ref, pointer)
        if target is None or "#" in target:
            return True
        if target in refs:
            self.cycle = self.cycle or f"{pointer}/$ref"
            return False
        try:
            resolved = resolve_pointer(self.root, target)
        except KeyError:
            return True
        return self.finite(resolved, target, (*refs, target))

    def _typed(self, node: dict, pointer: str, refs: tuple[str, ...]) -> bool:
        types = node.get("type")
        if isinstance(types, str):
            types = [types]
        if not isinstance(types, list) or not types:
            types = ["object"] if "properties" in node or "required" in node else (
                ["array"] if "items" in node or "prefixItems" in node else [])
        if not types:
            return True
        return any(self._of_type(kind, node, pointer, refs) for kind in types if isinstance(kind, str))

    def _of_type(self, kind: str, node: dict, pointer: str, refs: tuple[str, ...]) -> bool:
        if kind == "object":
            found = node.get("properties")
            properties: dict[str, Any] = found if isinstance(found, dict) else {}
            required = [k for k in node.get("required", []) if isinstance(k, str)]
            return all(self.finite(properties.get(key, True), f"{pointer}/properties/{key}", refs)
                       for key in required)
        if kind == "array":
            count = node.get("minItems", 0) if isinstance(node.get("minItems"), int) else 0
            items = node.get("prefixItems")
            prefix: list[Any] = items if isinstance(items, list) else []
            rest = node.get("items") if isinstance(node.get("items"), dict) else True
            needed = [(p, f"{pointer}/prefixItems/{i}") for i, p in enumerate(prefix[:count])]
            if count > len(prefix):
                needed.append((rest, f"{pointer}/items"))
            return all(self.finite(sub, where, refs) for sub, where in needed)
        return True


def shortest_string(node: dict) -> str:
    """The shortest string a string schema allows: its pattern's, its format's, or minLength letters."""
    pattern, fmt = node.get("pattern"), node.get("format")
    text = ""
    if isinstance(pattern, str):
        text = shortest_match(pattern) or ""
    elif isinstance(fmt, str):
        text = FORMAT_EXAMPLES.get(fmt, "")
    minimum = node.get("minLength")
    if isinstance(minimum, int) and len(text) < minimum:
        text += "a" * (minimum - len(text))
    return text


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def string_hints(schema: dict) -> list[str]:
    """The shortest string each `pattern` and `format` of the schema allows, shortest first."""
    found: set[str] = set()

    def visit(_pointer: str, node: dict) -> None:
        pattern, fmt = node.get("pattern"), node.get("format")
        if isinstance(pattern, str):
            example = shortest_match(pattern)
            if example is not None:
                found.add(example)
        if isinstance(fmt, str) and fmt in FORMAT_EXAMPLES:
            found.add(FORMAT_EXAMPLES[fmt])

    walk_schema(schema, visit)
    return sorted(found, key=lambda text: (len(text), text))


# ------------------------------------------------------------------------------------ shortest regex match


def shortest_match(pattern: str) -> str | None:
    """A shortest string the regex matches (anchors ignored), or None for what this walk cannot read."""
    try:
        return _shortest(_sre_parse(pattern))
    except (re.error, RecursionError, ValueError, _Unreadable):
        return None


class _Unreadable(Exception):
    pass


def _sre_parse(pattern: str) -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)  # "possible nested set": a future regex change
        try:
            from re import _parser as parser  # type: ignore[attr-defined]  # Python >= 3.11
        except ImportError:  # pragma: no cover - Python 3.10
            import sre_parse as parser
        return parser.parse(pattern)


def _shortest(items: Any) -> str:
    out = []
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(arg))
        elif name == "NOT_LITERAL":
            out.append("a" if chr(arg) != "a" else "b")
        elif name == "ANY":
            out.append("a")
        elif name == "IN":
            out.append(_class_member(arg))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, _high, body = arg
            out.append(_shortest(body) * int(low))
        elif name == "SUBPATTERN":
            out.append(_shortest(arg[-1]))
        elif name == "ATOMIC_GROUP":
            out.append(_shortest(arg))
        elif name == "BRANCH":
            out.append(min((_shortest(branch) for branch in arg[1]), key=len))
        elif name == "AT":
            continue
        else:  # backreferences, lookarounds, conditionals: llguidance refuses most of them anyway
            raise _Unreadable(name)
    return "".join(out)


def _class_member(items: Any) -> str:
    if any(str(op) == "NEGATE" for op, _ in items):
        return _outside_class(items)
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            return chr(arg)
        if name == "RANGE":
            return chr(arg[0])
        if name == "CATEGORY":
            return {"CATEGORY_DIGIT": "0", "CATEGORY_SPACE": " ", "CATEGORY_NOT_WORD": "-"}.get(str(arg), "a")
    raise _Unreadable("empty class")


_CATEGORIES = {
    "CATEGORY_DIGIT": str.isdigit, "CATEGORY_NOT_DIGIT": lambda c: not c.isdigit(),
    "CATEGORY_SPACE": str.isspace, "CATEGORY_NOT_SPACE": lambda c: not c.isspace(),
    "CATEGORY_WORD": lambda c: c.isalnum() or c == "_",
    "CATEGORY_NOT_WORD": lambda c: not (c.isalnum() or c == "_"),
}


def _outside_class(items: Any) -> str:
    """A character a negated class `[^…]` matches."""
    def inside(char: str) -> bool:
        for op, arg in items:
            name = str(op)
            if name == "LITERAL" and chr(arg) == char:
                return True
            if name == "RANGE" and arg[0] <= ord(char) <= arg[1]:
                return True
            if name == "CATEGORY" and _CATEGORIES.get(str(arg), lambda c: True)(char):
                return True
        return False

    for char in "a0-_ A.!":
        if not inside(char):
            return char
    raise _Unreadable("negated class")
