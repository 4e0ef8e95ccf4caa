"""What the grammar engine can enforce: a loaded schema checked before any model work.

In brief:
def check_schema(schema: dict, *, lenient: bool, options: dict | None = None) -> tuple[dict, list[str]]
    Depth and regex checks (gemmacli.schema.preflight), metaschema check (exit 3 naming the JSON
    pointer), remote $ref refusal, keywords llguidance cannot enforce (exit 3 naming each, or dropped
    with a warning under lenient), then whatever else llguidance refuses, located by compiling
    subschemas (gemmacli.schema.probes). Returns (schema to compile, warnings).

Why we check before llguidance: llguidance refuses what it cannot enforce (good), but its messages do not
say *where* ("Unimplemented keys: [\"not\"]"), so we walk the reachable schema ourselves to name each
keyword with its JSON pointer, and localise any other llguidance refusal by compiling subschemas.
--lenient loosens only what the output is still validated against afterwards (a dropped keyword, a
`oneOf` decoded as `anyOf`), and says so in a warning for each.
"""

from __future__ import annotations

import copy
from typing import Any

from gemmacli.errors import SchemaError
from gemmacli.schema.keywords import REF_KEYWORDS, STANDARD_FORMATS, UNSUPPORTED_KEYWORDS
from gemmacli.schema.pointers import RefIndex, join_pointer, reachable, resolve_pointer
from gemmacli.schema.preflight import MAX_DEPTH, check_depth, check_patterns
from gemmacli.schema.probes import compile_error, first_line, format_supported, locate_error, pattern_error
from gemmacli.schema.sizing import endless_ref

#: How many llguidance refusals --lenient loosens one after another before giving up on the schema.
_MAX_FIXES = 32

#: (keyword, pointer of the subschema holding it)
_Found = list[tuple[str, str]]


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
    index = RefIndex(work)
    _refuse_remote_refs(work, index)

    unsupported, annotations = _unenforceable(work, index)
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
    return _until_it_compiles(work, lenient=lenient, options=options, warnings=warnings)


def instance_validator(schema: dict) -> Any:
    """A jsonschema validator for values of `schema`, in the schema's own draft (2020-12 when it names
    none), with no network access for refs: outputs, labels and worked examples are checked alike."""
    import jsonschema
    from jsonschema.validators import validator_for

    return validator_for(schema, default=jsonschema.Draft202012Validator)(schema)


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


# ------------------------------------------------------------------------- what the engine cannot enforce


def _refuse_remote_refs(root: dict, index: RefIndex) -> None:
    for pointer, node in reachable(root, index):
        for key in REF_KEYWORDS:
            ref = node.get(key)
            if isinstance(ref, str) and index.resolve(ref, pointer) is None:
                raise SchemaError(
                    f"remote {key} {ref!r} is not allowed: extraction never reads the network or files "
                    "outside the schema's folder",
                    pointer=join_pointer(pointer, key),
                    hint="inline the referenced schema under $defs and point at it with '#/$defs/NAME'",
                )


def _unenforceable(work: dict, index: RefIndex) -> tuple[_Found, _Found]:
    """(keywords llguidance cannot enforce, non-standard formats to ignore) in every reachable subschema,
    each with the pointer of the subschema holding it."""
    unsupported: _Found = []
    annotations: _Found = []
    for pointer, node in reachable(work, index):
        for key in UNSUPPORTED_KEYWORDS:
            if key in node:
                unsupported.append((key, pointer))
        fmt = node.get("format")
        if isinstance(fmt, str) and not format_supported(fmt):
            (unsupported if fmt in STANDARD_FORMATS else annotations).append(("format", pointer))
        pattern = node.get("pattern")
        if isinstance(pattern, str) and pattern_error(pattern) is not None:
            unsupported.append(("pattern", pointer))
    return unsupported, annotations


def _drop(root: dict, pointer: str, key: str) -> None:
    try:
        node = resolve_pointer(root, pointer)
    except KeyError:  # inside something already dropped
        return
    if isinstance(node, dict):
        node.pop(key, None)


def _describe(items: _Found) -> str:
    return ", ".join(f"'{k}' at {p or '/'}" for k, p in items)


# ------------------------------------------------------------------------ what llguidance still refuses


def _until_it_compiles(
    work: dict, *, lenient: bool, options: dict | None, warnings: list[str]
) -> tuple[dict, list[str]]:
    """What llguidance still refuses (overlapping oneOf, min/maxProperties shapes, unsatisfiable parts,
    ...): refused naming where, or under --lenient loosened until it compiles."""
    for _ in range(_MAX_FIXES):
        err = compile_error(work, options)
        if err is None:
            _refuse_endless(work)
            return work, warnings
        _loosen_or_refuse(work, err, lenient=lenient, options=options, warnings=warnings)
    raise SchemaError("the grammar engine refused the schema (too many problems to drop)", pointer="")


def _loosen_or_refuse(work: dict, err: str, *, lenient: bool, options: dict | None,
                      warnings: list[str]) -> None:
    """Loosen `work` where llguidance refused it with `err` (under --lenient); else SchemaError there."""
    pointer = locate_error(work, err, options)
    node = resolve_pointer(work, pointer) if pointer is not None else None
    fixed = lenient and isinstance(node, dict) and _lenient_fix(node, err, pointer or "", warnings)
    if lenient and not fixed and ("oneOf" in err or "min/maxProperties" in err):
        fixed = _loosen_subtree(work, pointer or "", err, warnings)
    if fixed:
        return
    if "oneOf" in err and pointer:
        pointer = _nearest_holding(work, pointer, "oneOf")
    raise SchemaError(_explain(err), pointer=pointer, hint=_hint(err))


def _refuse_endless(work: dict) -> None:
    """A schema no finite JSON satisfies (a required property holding its own schema again) is refused:
    decoding it could only run until the budget is spent."""
    pointer = endless_ref(work)
    if pointer is not None:
        raise SchemaError(
            "no finite JSON value satisfies this schema: this $ref is required again inside itself, "
            "without end",
            pointer=pointer,
            hint="make the recursive property optional, or give it a way out (anyOf with null or [])",
        )


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


# ------------------------------------------------------------------------------------- --lenient fixes


def _oneof_as_anyof(node: dict, where: str, warnings: list[str]) -> None:
    node["anyOf"] = node.pop("oneOf")
    warnings.append(f"'oneOf' at {where} decoded as 'anyOf' (branches may overlap); still validated")


def _drop_keys(node: dict, keys: tuple[str, ...], where: str, warnings: list[str]) -> None:
    for key in keys:
        if node.pop(key, None) is not None:
            warnings.append(f"dropped '{key}' at {where}: not enforced while decoding, still validated")


def _loosen_subtree(root: dict, pointer: str, err: str, warnings: list[str]) -> bool:
    """--lenient for a refusal localised to a node that does not hold the keyword itself (a $ref target,
    an additionalProperties): loosen the keyword under `pointer`, or failing that everywhere reachable."""
    keys = ("oneOf",) if "oneOf" in err else ("minProperties", "maxProperties")
    found = [(p, n) for p, n in reachable(root, RefIndex(root)) if any(k in n for k in keys)]
    inside = [(p, n) for p, n in found if p == pointer or p.startswith(pointer + "/")] or found
    for where, node in inside:
        if "oneOf" in keys:
            _oneof_as_anyof(node, where or "/", warnings)
        else:
            _drop_keys(node, keys, where or "/", warnings)
    return bool(inside)


def _lenient_fix(node: dict, err: str, pointer: str, warnings: list[str]) -> bool:
    """Loosen `node` the way --lenient promises; False when the refusal is not something we may drop."""
    where = pointer or "/"
    if "oneOf" in err and "oneOf" in node:
        _oneof_as_anyof(node, where, warnings)
        return True
    if "min/maxProperties" in err and ("minProperties" in node or "maxProperties" in node):
        _drop_keys(node, ("minProperties", "maxProperties"), where, warnings)
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


# ------------------------------------------------------------------------------------------ messages


def _explain(err: str) -> str:
    line = first_line(err)
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
