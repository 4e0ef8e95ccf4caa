"""The JSON Schema keyword tables every other schema module reads: which keywords hold subschemas (so a
walk can find them), which keywords llguidance cannot enforce, and which format names the drafts define.

Plain data, importing nothing: `pointers` walks by these tables and `check` refuses (or, under --lenient,
drops) by them, so the two always agree on what a schema holds.
"""

from __future__ import annotations

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

#: Keywords whose value is one subschema.
ONE_SUBSCHEMA: tuple[str, ...] = (
    "additionalProperties", "additionalItems", "items", "not", "if", "then", "else", "contains",
    "propertyNames", "unevaluatedItems", "unevaluatedProperties", "contentSchema",
)  # fmt: skip
#: Keywords whose value maps names to subschemas.
MAP_OF_SUBSCHEMAS: tuple[str, ...] = ("properties", "patternProperties", "dependentSchemas", "$defs",
                                      "definitions")
#: Keywords whose value is a list of subschemas (`items` is one or the other, by draft).
LIST_OF_SUBSCHEMAS: tuple[str, ...] = ("allOf", "anyOf", "oneOf", "prefixItems", "items")
#: Keywords that only hold definitions: what sits under them is compiled only where a $ref names it.
DEFINITIONS: tuple[str, ...] = ("$defs", "definitions")
#: Keywords whose value is data (instances), never a subschema.
VALUE_KEYWORDS: tuple[str, ...] = ("const", "enum", "default", "examples")
#: Keywords that refer to another schema by URI.
REF_KEYWORDS: tuple[str, ...] = ("$ref", "$dynamicRef", "$recursiveRef")
