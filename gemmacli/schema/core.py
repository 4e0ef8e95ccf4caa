"""Schema forms -> one JSON Schema, checked before any model work.

CONTRACT:
@dataclass
class LoadedSchema:
    schema: dict
    source: str            # "file" | "inline" | "bundled" | "dsl"
    path: Path | None      # the file, for "file" and "bundled"
    sha256: str            # of the canonical JSON (sorted keys, compact)

def load_schema(arg: str) -> LoadedSchema
    Reading order: an existing file path -> inline JSON (starts with '{') -> a bundled name
    (schemas/NAME.json) -> the concise DSL (gemmacli.schema.dsl.parse_dsl). Raises SchemaError (exit 3).
def bundled_schemas() -> dict[str, Path]
def check_schema(schema: dict, *, lenient: bool) -> tuple[dict, list[str]]
    Metaschema check (exit 3 naming the JSON pointer), remote $ref refusal, keywords llguidance cannot
    enforce (exit 3 naming each, or dropped with a warning under lenient). Returns (schema to compile,
    warnings).

Why we check before llguidance: llguidance refuses what it cannot enforce (good), but its messages do not
say *where* ("Unimplemented keys: [\"not\"]"), so we walk the reachable schema ourselves to name each
keyword with its JSON pointer, and localise any other llguidance refusal by compiling subschemas.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urldefrag, urljoin, urlparse

from gemmacli.errors import SchemaError

# --- what llguidance (1.9) refuses, found by compiling each keyword alone (tests/test_schema.py keeps
# this list honest against the installed llguidance).
UNSUPPORTED_KEYWORDS: tuple[str, ...] = (
    "not",
    "if",
    "then",
    "else",
    "dependentSchemas",
    "dependentRequired",
    "dependencies",
    "propertyNames",
    "contains",
    "minContains",
    "maxContains",
    "uniqueItems",
    "unevaluatedItems",
    "unevaluatedProperties",
    "$dynamicRef",
    "$dynamicAnchor",
    "$recursiveRef",
    "$recursiveAnchor",
)

# Formats named by the JSON Schema drafts: one llguidance cannot enforce is a refusal (or a --lenient drop).
# Any other format name (OpenAPI's int32, password, ...) is an annotation no validator enforces: dropped
# with a warning.
STANDARD_FORMATS = frozenset(
    {
        "date-time", "date", "time", "duration", "email", "idn-email", "hostname", "idn-hostname",
        "ipv4", "ipv6", "uri", "uri-reference", "iri", "iri-reference", "uuid", "uri-template",
        "json-pointer", "relative-json-pointer", "regex",
    }
)  # fmt: skip

# Keywords whose value is one subschema / a map of subschemas / a list of subschemas.
_SUB_ONE = ("additionalProperties", "additionalItems", "items", "not", "if", "then", "else", "contains",
            "propertyNames", "unevaluatedItems", "unevaluatedProperties", "contentSchema")  # fmt: skip
_SUB_MAP = ("properties", "patternProperties", "dependentSchemas", "$defs", "definitions")
_SUB_LIST = ("allOf", "anyOf", "oneOf", "prefixItems", "items")

# The compact JSON the decoder emits: no free whitespace, so a model can never spin in whitespace.
COMPACT_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}

_ROOT_KEY = "__gemmacli_root__"


@dataclass
class LoadedSchema:
    """One schema with where it came from; sha256 identifies it in --with-meta records."""

    schema: dict
    source: str
    path: Path | None
    sha256: str


def canonical_json(value: Any) -> str:
    """Sorted keys, compact, UTF-8 kept: the one form every schema/policy/cache hash is taken of."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def schema_sha256(schema: Any) -> str:
    """sha256 of the canonical JSON, so formatting never changes the id."""
    return hashlib.sha256(canonical_json(schema).encode("utf-8")).hexdigest()


def schemas_dir() -> Path:
    """The repository's top-level `schemas/` folder (bundled schemas), found relative to the package."""
    package = Path(__file__).resolve().parent.parent  # gemmacli/
    for candidate in (package.parent / "schemas", package / "schemas"):  # a checkout, then a wheel
        if candidate.is_dir():
            return candidate
    return package.parent / "schemas"


def bundled_schemas() -> dict[str, Path]:
    """NAME -> path of each bundled `schemas/NAME.json`."""
    folder = schemas_dir()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.json")) if p.is_file()}


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise SchemaError(f"{what} is not valid JSON: {exc.msg} ({where})") from exc
    except RecursionError:
        raise SchemaError(f"{what} nests too deeply to read; gemmacli reads at most {MAX_DEPTH} levels") \
            from None


def _read_file(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"cannot read schema file {path}: {exc}") from exc
    data = _parse_json(text, f"schema file {path}")
    if not isinstance(data, dict):
        raise SchemaError(f"schema file {path} must hold a JSON object, not {type(data).__name__}")
    return _bundle_file_refs(data, path)


def load_schema(arg: str) -> LoadedSchema:
    """Read a schema given as a path, inline JSON, a bundled name or the concise DSL (in that order)."""
    path = Path(arg).expanduser()
    try:
        is_file = path.is_file()
    except (OSError, ValueError):
        is_file = False
    if is_file:
        schema = _read_file(path)
        return LoadedSchema(schema, "file", path, schema_sha256(schema))
    if arg.lstrip().startswith("{"):
        schema = _parse_json(arg, "inline schema")
        if not isinstance(schema, dict):
            raise SchemaError("inline schema must be a JSON object")
        return LoadedSchema(schema, "inline", None, schema_sha256(schema))
    bundled = bundled_schemas()
    if arg in bundled:
        schema = _read_file(bundled[arg])
        return LoadedSchema(schema, "bundled", bundled[arg], schema_sha256(schema))
    try:
        from gemmacli.schema import dsl
    except ImportError:  # pragma: no cover - dsl ships with the package
        dsl = None  # type: ignore[assignment]
    parse = getattr(dsl, "parse_dsl", None)
    looks = getattr(dsl, "looks_like_dsl", None)
    pathlike = arg.endswith(".json") or os.sep in arg or "/" in arg
    names = ", ".join(bundled) or "none"
    if re.fullmatch(r"[A-Za-z][\w-]*", arg.strip()):
        # one bare word: a mistyped or missing bundled name far more often than a one-field schema
        raise SchemaError(f"no bundled schema is named {arg.strip()!r}",
                          hint=f"bundled schemas: {names}; a one-field schema in the concise syntax: "
                               f"'{arg.strip()} str'")
    if parse is None or (pathlike and looks is not None and not looks(arg)):
        raise SchemaError(
            f"schema {arg!r} is not a file, inline JSON, a bundled name or the concise syntax",
            hint=f"bundled schemas: {names}",
        )
    schema = parse(arg)
    return LoadedSchema(schema, "dsl", None, schema_sha256(schema))


# --------------------------------------------------------------------------------------------- pointers


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def join_pointer(pointer: str, *tokens: str | int) -> str:
    return pointer + "".join("/" + _escape(str(t)) for t in tokens)


def resolve_pointer(doc: Any, pointer: str) -> Any:
    """Follow a JSON pointer; KeyError when it leads nowhere."""
    node = doc
    if pointer in ("", "/"):
        return doc
    for raw in pointer.lstrip("/").split("/"):
        token = _unescape(unquote(raw))
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise KeyError(pointer)
    return node


def _children(node: dict, pointer: str) -> Iterator[tuple[str, Any, str]]:
    """(child pointer, child schema, keyword) for every direct subschema of `node`."""
    for key in _SUB_ONE:
        if key in node and isinstance(node[key], (dict, bool)):
            yield join_pointer(pointer, key), node[key], key
    for key in _SUB_MAP:
        value = node.get(key)
        if isinstance(value, dict):
            for name, sub in value.items():
                if isinstance(sub, (dict, bool)):
                    yield join_pointer(pointer, key, name), sub, key
    for key in _SUB_LIST:
        value = node.get(key)
        if isinstance(value, list):
            for i, sub in enumerate(value):
                if isinstance(sub, (dict, bool)):
                    yield join_pointer(pointer, key, i), sub, key
    deps = node.get("dependencies")
    if isinstance(deps, dict):
        for name, sub in deps.items():
            if isinstance(sub, dict):
                yield join_pointer(pointer, "dependencies", name), sub, "dependencies"


class _Index:
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
        for child_ptr, child, _ in _children(node, pointer):
            self._walk(child, child_ptr, base)

    def base_of(self, pointer: str) -> str:
        """The base URI in force at `pointer` ($id of the nearest enclosing resource)."""
        base = ""
        node: Any = self.root
        tokens = [t for t in pointer.split("/")[1:]] if pointer else []
        ident = node.get("$id") if isinstance(node, dict) else None
        if isinstance(ident, str) and not ident.startswith("#"):
            base = urljoin(base, ident)
        for raw in tokens:
            token = _unescape(raw)
            if isinstance(node, dict):
                node = node.get(token)
            elif isinstance(node, list) and token.isdigit():
                node = node[int(token)]
            else:
                break
            if isinstance(node, dict):
                ident = node.get("$id")
                if isinstance(ident, str) and not ident.startswith("#"):
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


#: Public name for the other modules that follow local refs the way the checker does (gemmacli.schema.sizing).
RefIndex = _Index


def _reachable(root: dict, index: _Index) -> Iterator[tuple[str, dict]]:
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
        ref = node.get("$ref")
        if isinstance(ref, str):
            target = index.resolve(ref, pointer)
            if target is not None and "#" not in target:
                stack.append(target)
        for child_ptr, _, key in reversed(list(_children(node, pointer))):
            # definitions count only where referenced; what sits under a keyword we refuse or drop
            # anyway (not, if, contains, ...) is never compiled.
            if key not in ("$defs", "definitions") and key not in UNSUPPORTED_KEYWORDS:
                stack.append(child_ptr)


# ----------------------------------------------------------------------------------------- metaschema


def _check_metaschema(schema: dict, warnings: list[str]) -> None:
    import jsonschema
    from jsonschema.validators import validator_for

    declared = schema.get("$schema")
    default = jsonschema.Draft202012Validator
    cls = validator_for(schema, default=default)
    if isinstance(declared, str) and cls is default and declared.rstrip("#") not in (
        "https://json-schema.org/draft/2020-12/schema",
    ):
        warnings.append(f"unknown $schema {declared!r}: checked as JSON Schema Draft 2020-12")
    validator = cls(cls.META_SCHEMA)
    errors = list(validator.iter_errors(schema))
    if not errors:
        return
    best = jsonschema.exceptions.best_match(errors)
    assert best is not None
    pointer = join_pointer("", *best.absolute_path)
    more = f" ({len(errors) - 1} more problems)" if len(errors) > 1 else ""
    message = best.message if len(best.message) < 300 else best.message[:300] + "..."
    draft = cls.__name__.removesuffix("Validator")
    raise SchemaError(f"invalid schema ({draft}): {message}{more}", pointer=pointer)


# ------------------------------------------------------------------------------------ llguidance probes


def _compile_error(schema: Any, options: dict | None = None) -> str | None:
    """llguidance's refusal of `schema` (without a tokenizer: ~1 ms), or None when it compiles."""
    from llguidance import LLMatcher

    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, overrides={**COMPACT_OPTIONS, **(options or {})})
    except ValueError as exc:
        return str(exc)
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        return messages[0] if messages else "the grammar engine refused the schema"
    return None


@lru_cache(maxsize=256)
def format_supported(name: str) -> bool:
    """Whether llguidance enforces string format `name` (asked once per name)."""
    return _compile_error({"type": "string", "format": name}) is None


@lru_cache(maxsize=4096)
def _pattern_error(pattern: str) -> str | None:
    return _compile_error({"type": "string", "pattern": pattern})


def _wrap_at(root: dict, pointer: str) -> dict:
    """A schema meaning `root` at `pointer`, with root's definitions still reachable."""
    if pointer == "":
        return root
    wrapper: dict[str, Any] = {k: root[k] for k in ("$schema", "definitions") if k in root}
    defs = dict(root.get("$defs", {})) if isinstance(root.get("$defs"), dict) else {}
    defs[_ROOT_KEY] = root
    wrapper["$defs"] = defs
    wrapper["$ref"] = "#/$defs/" + _ROOT_KEY + pointer
    return wrapper


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else message


def locate_error(root: dict, message: str, options: dict | None = None, budget: int = 400) -> str | None:
    """The deepest subschema that llguidance refuses with the same message: where the problem is."""
    index = _Index(root)
    wanted = _first_line(message)
    seen: set[str] = {""}
    calls = 0

    def fails(pointer: str) -> bool:
        nonlocal calls
        calls += 1
        err = _compile_error(_wrap_at(root, pointer), options)
        return err is not None and _first_line(err) == wanted

    pointer = ""
    while calls < budget:
        try:
            node = resolve_pointer(root, pointer)
        except KeyError:
            return pointer
        if not isinstance(node, dict):
            return pointer
        candidates = [p for p, _, key in _children(node, pointer) if key not in ("$defs", "definitions")]
        ref = node.get("$ref")
        if isinstance(ref, str):
            target = index.resolve(ref, pointer)
            if target is not None and "#" not in target:
                candidates.append(target)
        for candidate in candidates:
            if candidate in seen:
                continue
            seen.add(candidate)
            if fails(candidate):
                pointer = candidate
                break
        else:
            return pointer
    return pointer


# ------------------------------------------------------------------------------------------- the check


def _refuse_remote_refs(root: dict, index: _Index) -> None:
    for pointer, node in _reachable(root, index):
        for key in ("$ref", "$dynamicRef", "$recursiveRef"):
            ref = node.get(key)
            if isinstance(ref, str) and index.resolve(ref, pointer) is None:
                raise SchemaError(
                    f"remote {key} {ref!r} is not allowed: extraction never reads the network or files "
                    "outside the schema's folder",
                    pointer=join_pointer(pointer, key),
                    hint="inline the referenced schema under $defs and point at it with '#/$defs/NAME'",
                )


def _drop(root: dict, pointer: str, key: str) -> None:
    try:
        node = resolve_pointer(root, pointer)
    except KeyError:  # inside something already dropped
        return
    if isinstance(node, dict):
        node.pop(key, None)


def _describe(items: list[tuple[str, str]]) -> str:
    return ", ".join(f"'{k}' at {p or '/'}" for k, p in items)


def check_schema(
    schema: dict, *, lenient: bool, options: dict | None = None
) -> tuple[dict, list[str]]:
    """Check `schema` and return (the schema llguidance will compile, warnings); SchemaError if refused.

    `options` are extra llguidance JSON options (e.g. a pretty whitespace pattern) to check against.
    """
    if not isinstance(schema, dict):
        raise SchemaError(f"a schema must be a JSON object, not {type(schema).__name__}", pointer="")
    check_depth(schema)
    check_patterns(schema)
    try:
        return _check_schema(schema, lenient=lenient, options=options)
    except RecursionError:  # a safety net behind check_depth: never a traceback
        raise SchemaError(f"the schema is nested too deeply to check (at most {MAX_DEPTH} levels)",
                          pointer="") from None


def _check_schema(schema: dict, *, lenient: bool, options: dict | None) -> tuple[dict, list[str]]:
    warnings: list[str] = []
    _check_metaschema(schema, warnings)
    work = copy.deepcopy(schema)
    work.pop("x-guidance", None)  # our whitespace options win; a schema cannot re-enable free whitespace
    index = _Index(work)
    _refuse_remote_refs(work, index)

    unsupported: list[tuple[str, str]] = []
    annotations: list[tuple[str, str]] = []
    for pointer, node in _reachable(work, index):
        for key in UNSUPPORTED_KEYWORDS:
            if key in node:
                unsupported.append((key, pointer))
        fmt = node.get("format")
        if isinstance(fmt, str) and not format_supported(fmt):
            (unsupported if fmt in STANDARD_FORMATS else annotations).append(("format", pointer))
        pattern = node.get("pattern")
        if isinstance(pattern, str) and _pattern_error(pattern) is not None:
            unsupported.append(("pattern", pointer))
    for key, pointer in annotations:
        fmt = resolve_pointer(work, pointer).get("format")
        warnings.append(f"format {fmt!r} at {pointer or '/'} is not a JSON Schema format: ignored")
        _drop(work, pointer, key)
    if unsupported and not lenient:
        first_key, first_ptr = unsupported[0]
        raise SchemaError(
            f"the grammar engine cannot enforce {_describe(unsupported)}",
            pointer=join_pointer(first_ptr, first_key),
            hint="--lenient drops them with a warning (the output is still validated against them)",
        )
    for key, pointer in unsupported:
        warnings.append(
            f"dropped '{key}' at {pointer or '/'}: not enforced while decoding, still validated afterwards"
        )
        _drop(work, pointer, key)

    # What llguidance still refuses (overlapping oneOf, min/maxProperties shapes, unsatisfiable parts, ...).
    for _ in range(32):
        err = _compile_error(work, options)
        if err is None:
            _refuse_endless(work)
            return work, warnings
        pointer = locate_error(work, err, options)
        node = resolve_pointer(work, pointer) if pointer is not None else None
        fixed = lenient and isinstance(node, dict) and _lenient_fix(node, err, pointer or "", warnings)
        if lenient and not fixed and ("oneOf" in err or "min/maxProperties" in err):
            fixed = _loosen_subtree(work, pointer or "", err, warnings)
        if not fixed:
            if "oneOf" in err and pointer:
                pointer = _nearest_holding(work, pointer, "oneOf")
            raise SchemaError(_explain(err), pointer=pointer, hint=_hint(err))
    raise SchemaError("the grammar engine refused the schema (too many problems to drop)", pointer="")


def _refuse_endless(work: dict) -> None:
    """A schema no finite JSON satisfies (a required property holding its own schema again) is refused:
    decoding it could only run until the budget is spent."""
    from gemmacli.schema.sizing import endless_ref

    pointer = endless_ref(work)
    if pointer is not None:
        raise SchemaError(
            "no finite JSON value satisfies this schema: this $ref is required again inside itself, "
            "without end",
            pointer=pointer,
            hint="make the recursive property optional, or give it a way out (anyOf with null or [])",
        )


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
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) \
            else ()
        for key, child in children:
            if isinstance(child, (dict, list)):
                below = join_pointer(pointer, key) if pointer is not None and depth <= MAX_DEPTH else None
                stack.append((child, depth + 1, below))
    if deepest > MAX_DEPTH:
        shown = where if len(where) <= 60 else where[:60] + "…"
        raise SchemaError(f"{what} nests {deepest} levels of objects and arrays deep (at {shown}); gemmacli "
                          f"reads at most {MAX_DEPTH}")


def check_patterns(document: Any) -> None:
    """Every `pattern` and `patternProperties` key must be a regular expression: one that does not parse
    (`((`) is an invalid schema (exit 3, its pointer), never "cannot enforce", with or without --lenient.
    The output is validated with Python's `re` (through jsonschema), so that is the reading that counts."""
    import re

    stack: list[tuple[Any, str]] = [(document, "")]
    while stack:
        node, pointer = stack.pop()
        if isinstance(node, list):
            stack.extend((child, join_pointer(pointer, i)) for i, child in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        found = [("pattern", node["pattern"])] if isinstance(node.get("pattern"), str) else []
        if isinstance(node.get("patternProperties"), dict):
            found += [(f"patternProperties/{_escape(k)}", k) for k in node["patternProperties"]]
        for key, regex in found:
            try:
                re.compile(regex)
            except (re.error, RecursionError, OverflowError) as exc:
                raise SchemaError(f"invalid regular expression {regex!r}: {exc}",
                                  pointer=f"{pointer}/{key}") from None
        for key, child in node.items():
            if key not in ("const", "enum", "default", "examples"):  # values, not subschemas
                stack.append((child, join_pointer(pointer, key)))


def _nearest_holding(root: dict, pointer: str, key: str) -> str:
    """`pointer` or its nearest ancestor whose schema holds `key` (else `pointer` unchanged)."""
    tokens = pointer.split("/")
    for end in range(len(tokens), 0, -1):
        candidate = "/".join(tokens[:end])
        try:
            node = resolve_pointer(root, candidate)
        except KeyError:
            continue
        if isinstance(node, dict) and key in node:
            return candidate
    return pointer


def _loosen_subtree(root: dict, pointer: str, err: str, warnings: list[str]) -> bool:
    """--lenient for a refusal localised to a node that does not hold the keyword itself (a $ref target,
    an additionalProperties): loosen the keyword under `pointer`, or failing that everywhere reachable."""
    keys = ("oneOf",) if "oneOf" in err else ("minProperties", "maxProperties")
    found = [(p, n) for p, n in _reachable(root, _Index(root)) if any(k in n for k in keys)]
    inside = [(p, n) for p, n in found if p == pointer or p.startswith(pointer + "/")] or found
    for where, node in inside:
        if "oneOf" in keys:
            node["anyOf"] = node.pop("oneOf")
            warnings.append(f"'oneOf' at {where or '/'} decoded as 'anyOf' (branches may overlap); "
                            "still validated")
            continue
        for key in keys:
            if node.pop(key, None) is not None:
                warnings.append(f"dropped '{key}' at {where or '/'}: not enforced while decoding, "
                                "still validated")
    return bool(inside)


def _lenient_fix(node: dict, err: str, pointer: str, warnings: list[str]) -> bool:
    """Loosen `node` the way --lenient promises; False when the refusal is not something we may drop."""
    where = pointer or "/"
    if "oneOf" in err and "oneOf" in node:
        node["anyOf"] = node.pop("oneOf")
        warnings.append(f"'oneOf' at {where} decoded as 'anyOf' (branches may overlap); still validated")
        return True
    if "min/maxProperties" in err and ("minProperties" in node or "maxProperties" in node):
        for key in ("minProperties", "maxProperties"):
            if node.pop(key, None) is not None:
                warnings.append(f"dropped '{key}' at {where}: not enforced while decoding, still validated")
        return True
    if "Unknown format" in err and "format" in node:
        node.pop("format")
        warnings.append(f"dropped 'format' at {where}: not enforced while decoding, still validated")
        return True
    if "regex" in err and "pattern" in node:
        node.pop("pattern")
        warnings.append(f"dropped 'pattern' at {where}: not enforced while decoding, still validated")
        return True
    return False


def _explain(err: str) -> str:
    line = _first_line(err)
    if "oneOf constraints are not supported" in line:
        return "the grammar engine cannot enforce 'oneOf' whose branches may overlap"
    if "min/maxProperties" in line:
        return "the grammar engine cannot enforce min/maxProperties unless every listed property is required"
    if line.startswith("Unsatisfiable schema"):
        return f"no JSON value satisfies this schema ({line.split(':', 1)[-1].strip()})"
    if "does not exist" in line or "not present in a registry" in line:
        return f"$ref does not resolve inside the schema: {line}"
    if "regex parse error" in err:
        why = [ln for ln in err.splitlines() if ln.startswith("error:")]
        return f"pattern not supported by the grammar engine: {why[0][6:].strip() if why else line}"
    return f"the grammar engine refused the schema: {' '.join(err.split())[:400]}"


def _hint(err: str) -> str | None:
    if any(s in err for s in ("oneOf", "min/maxProperties", "Unknown format", "regex parse error")):
        return "--lenient loosens it with a warning (the output is still validated against the schema)"
    return None


# ------------------------------------------------------------------------------------- file bundling


def _bundle_file_refs(schema: dict, path: Path) -> dict:
    """Inline $refs to other files in the schema's own folder under $defs (never read files outside)."""
    folder = path.resolve().parent
    if any(isinstance(schema.get(k), str) and urlparse(schema[k]).scheme for k in ("$id", "id")):
        return schema  # an absolute $id makes relative refs URLs: the remote check will refuse them
    files: dict[Path, str] = {}
    pending: list[tuple[dict, Path]] = [(schema, path.resolve())]
    loaded: dict[Path, dict] = {}
    root_defs_key = "$defs" if "definitions" not in schema or "$defs" in schema else "definitions"

    def key_for(target: Path) -> str:
        if target not in files:
            files[target] = "file:" + target.relative_to(folder).as_posix()
        return files[target]

    def rewrite(node: Any, doc_path: Path, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in list(node.items()):
                if k == "$ref" and isinstance(v, str):
                    node[k] = relink(v, doc_path, prefix)
                else:
                    rewrite(v, doc_path, prefix)
        elif isinstance(node, list):
            for item in node:
                rewrite(item, doc_path, prefix)

    def relink(ref: str, doc_path: Path, prefix: str) -> str:
        uri, fragment = urldefrag(ref)
        if not uri:
            return "#" + prefix + fragment if fragment.startswith("/") or not fragment else ref
        if urlparse(uri).scheme:
            return ref
        target = (doc_path.parent / unquote(uri)).resolve()
        if not target.is_relative_to(folder) or not target.is_file():
            return ref  # left as is: the remote check refuses it with its pointer
        if target == path.resolve():
            return "#" + fragment
        key = key_for(target)
        if target not in loaded:
            doc = _parse_json(target.read_text(encoding="utf-8"), f"schema file {target}")
            if isinstance(doc, dict):
                doc.pop("$schema", None)
                doc.pop("$id", None)
                loaded[target] = doc
                pending.append((doc, target))
        return f"#/{root_defs_key}/{_escape(key)}{fragment if fragment.startswith('/') else ''}"

    first = True
    while pending:
        doc, doc_path = pending.pop()
        prefix = "" if first else f"/{root_defs_key}/{_escape(key_for(doc_path))}"
        first = False
        rewrite(doc, doc_path, prefix)
    if loaded:
        defs = schema.setdefault(root_defs_key, {})
        for target, doc in loaded.items():
            defs[files[target]] = doc
    return schema


def walk_schema(schema: dict, visit: Callable[[str, dict], None]) -> None:
    """Call `visit(pointer, node)` on every subschema reachable from the root (refs followed once)."""
    index = _Index(schema)
    for pointer, node in _reachable(schema, index):
        visit(pointer, node)
