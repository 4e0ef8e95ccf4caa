"""Asking llguidance itself whether it can compile a schema, and where a refusal comes from.

llguidance refuses what it cannot enforce (good), but its messages do not say *where* ("Unimplemented
keys: [\"not\"]"). Compiling a schema without a tokenizer takes about a millisecond, so `locate_error`
compiles subschema after subschema to find the deepest one refused with the same message: that pointer is
what `gemmacli.schema.check` names. `format_supported` and `pattern_error` ask about one format or one
regular expression alone (cached).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any, cast

from gemmacli.schema.keywords import DEFINITIONS
from gemmacli.schema.pointers import RefIndex, resolve_pointer, subschemas

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

# The compact JSON the decoder emits: no free whitespace, so a model can never spin in whitespace.
COMPACT_OPTIONS: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}

_ROOT_KEY = "__gemmacli_root__"


def compile_error(schema: Any, options: dict | None = None) -> str | None:
    """llguidance's refusal of `schema` (without a tokenizer: ~1 ms), or None when it compiles."""
    from llguidance import LLMatcher

    overrides = cast("JsonCompileOptions", {**COMPACT_OPTIONS, **(options or {})})
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, overrides=overrides)
    except ValueError as exc:
        return str(exc)
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        return messages[0] if messages else "the grammar engine refused the schema"
    return None


@lru_cache(maxsize=256)
def format_supported(name: str) -> bool:
    """Whether llguidance enforces string format `name` (asked once per name)."""
    return compile_error({"type": "string", "format": name}) is None


@lru_cache(maxsize=4096)
def pattern_error(pattern: str) -> str | None:
    """llguidance's refusal of `pattern` as a string pattern, or None when it can enforce it."""
    return compile_error({"type": "string", "pattern": pattern})


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


def first_line(message: str) -> str:
    """The first line of an llguidance message (its headline; later lines are detail)."""
    return message.strip().splitlines()[0] if message.strip() else message


def locate_error(root: dict, message: str, options: dict | None = None, budget: int = 400) -> str | None:
    """The deepest subschema that llguidance refuses with the same message: where the problem is."""
    index = RefIndex(root)
    wanted = first_line(message)
    seen: set[str] = {""}
    calls = 0

    def fails(pointer: str) -> bool:
        nonlocal calls
        calls += 1
        err = compile_error(_wrap_at(root, pointer), options)
        return err is not None and first_line(err) == wanted

    pointer = ""
    while calls < budget:
        try:
            node = resolve_pointer(root, pointer)
        except KeyError:
            return pointer
        if not isinstance(node, dict):
            return pointer
        candidates = [p for p, _, key in subschemas(node, pointer) if key not in DEFINITIONS]
        target = index.local_target(node, pointer)
        if target is not None:
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


#: Pretty mode: a newline and up to 16 spaces of indentation where JSON allows whitespace, never more,
#: so a model still cannot spin in whitespace.
PRETTY_OPTIONS: dict[str, Any] = {"whitespace_pattern": r"(\n {0,16})?", "item_separator": ",",
                                  "key_separator": ": ?"}


def json_options(pretty: bool = False) -> dict[str, Any]:
    """llguidance JSON options: compact (default) or bounded pretty whitespace."""
    return dict(PRETTY_OPTIONS if pretty else COMPACT_OPTIONS)
