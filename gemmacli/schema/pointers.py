"""JSON pointers into a schema, and the walk over the subschemas a grammar would compile.

`join_pointer` / `resolve_pointer` name and follow places in a document (RFC 6901); `RefIndex` records where
each `$id` and `$anchor` lives so local `$ref`s resolve without a network or a registry; `reachable` and
`walk_schema` visit every subschema reachable from the root, following local refs once.

This is the bottom of the schema package: it reads only the keyword tables (`gemmacli.schema.keywords`),
so loading, checking and sizing can all walk a schema the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote, urldefrag, urljoin

from gemmacli.schema.keywords import (
    DEFINITIONS,
    LIST_OF_SUBSCHEMAS,
    MAP_OF_SUBSCHEMAS,
    ONE_SUBSCHEMA,
    UNSUPPORTED_KEYWORDS,
)


def escape_token(token: str) -> str:
    """One reference token as it is written inside a pointer (`~` -> `~0`, `/` -> `~1`)."""
    return token.replace("~", "~0").replace("/", "~1")


def unescape_token(token: str) -> str:
    """The reference token a pointer segment stands for (the inverse of `escape_token`)."""
    return token.replace("~1", "/").replace("~0", "~")


def join_pointer(pointer: str, *tokens: str | int) -> str:
    """`pointer` extended by `tokens`, each escaped."""
    return pointer + "".join("/" + escape_token(str(t)) for t in tokens)


def resolve_pointer(doc: Any, pointer: str) -> Any:
    """Follow a JSON pointer; KeyError when it leads nowhere."""
    node = doc
    if pointer in ("", "/"):
        return doc
    for raw in pointer.lstrip("/").split("/"):
        token = unescape_token(unquote(raw))
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise KeyError(pointer)
    return node


def subschemas(node: dict, pointer: str) -> Iterator[tuple[str, Any, str]]:
    """(child pointer, child schema, keyword) for every direct subschema of `node`."""
    for key in ONE_SUBSCHEMA:
        if key in node and isinstance(node[key], (dict, bool)):
            yield join_pointer(pointer, key), node[key], key
    for key in MAP_OF_SUBSCHEMAS:
        yield from _mapped(node.get(key), pointer, key, (dict, bool))
    for key in LIST_OF_SUBSCHEMAS:
        value = node.get(key)
        if isinstance(value, list):
            for i, sub in enumerate(value):
                if isinstance(sub, (dict, bool)):
                    yield join_pointer(pointer, key, i), sub, key
    yield from _mapped(node.get("dependencies"), pointer, "dependencies", (dict,))


def _mapped(value: Any, pointer: str, key: str, kinds: tuple[type, ...]) -> Iterator[tuple[str, Any, str]]:
    """The subschemas in a keyword's map of them (`properties`, `$defs`, ...), those of `kinds` only."""
    if isinstance(value, dict):
        for name, sub in value.items():
            if isinstance(sub, kinds):
                yield join_pointer(pointer, key, name), sub, key


def _own_id(node: Any) -> str | None:
    """The `$id` of `node` that moves the base URI (not a plain-name fragment), if it has one."""
    ident = node.get("$id") if isinstance(node, dict) else None
    if isinstance(ident, str) and not ident.startswith("#"):
        return ident
    return None


class RefIndex:
    """Where each $id and $anchor lives, so local refs resolve without a network or a registry."""

    def __init__(self, root: dict) -> None:
        self.root = root
        self.ids: dict[str, str] = {}  # absolute URI (no fragment) -> pointer
        self.anchors: dict[str, str] = {}  # absolute URI with #anchor -> pointer
        self._walk(root, "", "")

    def _walk(self, node: Any, pointer: str, base: str) -> None:
        if not isinstance(node, dict):
            return
        ident = node.get("$id", node.get("id") if isinstance(node.get("id"), str) else None)
        if isinstance(ident, str) and not ident.startswith("#"):
            base = urljoin(base, ident)
            self.ids.setdefault(urldefrag(base)[0], pointer)
        elif isinstance(ident, str) and ident.startswith("#"):  # draft-4 style plain-name fragment
            self.anchors.setdefault(urldefrag(base)[0] + ident, pointer)
        anchor = node.get("$anchor")
        if isinstance(anchor, str):
            self.anchors.setdefault(urldefrag(base)[0] + "#" + anchor, pointer)
        for child_ptr, child, _ in subschemas(node, pointer):
            self._walk(child, child_ptr, base)

    def base_of(self, pointer: str) -> str:
        """The base URI in force at `pointer` ($id of the nearest enclosing resource)."""
        base = ""
        node: Any = self.root
        tokens = pointer.split("/")[1:] if pointer else []
        ident = _own_id(node)
        if ident is not None:
            base = urljoin(base, ident)
        for raw in tokens:
            token = unescape_token(raw)
            if isinstance(node, dict):
                node = node.get(token)
            elif isinstance(node, list) and token.isdigit():
                node = node[int(token)]
            else:
                break
            ident = _own_id(node)
            if ident is not None:
                base = urljoin(base, ident)
        return base

    def resolve(self, ref: str, pointer: str) -> str | None:
        """Pointer (in this document) that `ref` found at `pointer` names; None when it is remote."""
        base = self.base_of(pointer)
        target = urljoin(base, ref) if base else ref
        uri, fragment = urldefrag(target)
        if uri and uri not in self.ids and urldefrag(base)[0] != uri:
            return None
        doc_ptr = self.ids.get(uri, "") if uri else ""
        if fragment == "" or fragment.startswith("/"):
            return doc_ptr + unquote(fragment)
        anchor = self.anchors.get(uri + "#" + fragment)
        if anchor is None:
            return doc_ptr + "#" + fragment  # unknown anchor: let llguidance say so
        return anchor

    def local_target(self, node: dict, pointer: str) -> str | None:
        """The pointer `node`'s `$ref` names in this document; None without one, or when it is remote or
        names an anchor this index does not know."""
        ref = node.get("$ref")
        if not isinstance(ref, str):
            return None
        target = self.resolve(ref, pointer)
        if target is None or "#" in target:
            return None
        return target


def reachable(root: dict, index: RefIndex) -> Iterator[tuple[str, dict]]:
    """Every subschema the grammar will compile: from the root, following local $refs (cycles once)."""
    seen: set[str] = set()
    stack: list[str] = [""]
    while stack:
        pointer = stack.pop()
        if pointer in seen:
            continue
        seen.add(pointer)
        try:
            node = resolve_pointer(root, pointer)
        except KeyError:
            continue
        if not isinstance(node, dict):
            continue
        yield pointer, node
        target = index.local_target(node, pointer)
        if target is not None:
            stack.append(target)
        for child_ptr, _, key in reversed(list(subschemas(node, pointer))):
            # definitions count only where referenced; what sits under a keyword we refuse or drop
            # anyway (not, if, contains, ...) is never compiled.
            if key not in DEFINITIONS and key not in UNSUPPORTED_KEYWORDS:
                stack.append(child_ptr)


def walk_schema(schema: dict, visit: Callable[[str, dict], None]) -> None:
    """Call `visit(pointer, node)` on every subschema reachable from the root (refs followed once)."""
    index = RefIndex(schema)
    for pointer, node in reachable(schema, index):
        visit(pointer, node)
