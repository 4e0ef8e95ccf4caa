"""Layer 1, the schema: a JSON Schema read (file, inline, bundled name, concise syntax), checked for what
the grammar engine can enforce, walked by JSON pointer, and sized (its smallest valid output).

Nothing here knows about models or tokens. `gemmacli.engine` compiles what this layer has checked.

Modules, each importing only those above it:
    keywords   the keyword tables: which keywords hold subschemas, which llguidance refuses, standard formats
    pointers   JSON pointers, the $id/$anchor index (RefIndex) and the walk over reachable subschemas
    preflight  what any schema or policy document must pass first: nesting depth, parseable regexes
    dsl        the concise syntax ("name, age int") parsed into a JSON Schema
    load       reading a schema (file, inline, bundled name, concise syntax), bundling file $refs, its sha256
    probes     asking llguidance whether a schema compiles, and locating where it refuses one
    sizing     the smallest JSON a schema allows, and whether any finite JSON does
    choices    the closed-choice properties (enum, const, boolean) and the JSON texts of their values
    check      check_schema: what the grammar engine can enforce, refused by pointer or loosened (--lenient)
"""

from gemmacli.schema.check import check_schema, instance_validator
from gemmacli.schema.load import (
    LoadedSchema,
    bundled_schemas,
    canonical_json,
    load_schema,
    schema_sha256,
    schemas_dir,
)
from gemmacli.schema.pointers import RefIndex, join_pointer, resolve_pointer, walk_schema
from gemmacli.schema.preflight import check_depth, check_patterns
from gemmacli.schema.prepared import PreparedSchema, prepare_schema
from gemmacli.schema.probes import COMPACT_OPTIONS, PRETTY_OPTIONS, json_options

__all__ = [
    "COMPACT_OPTIONS",
    "PRETTY_OPTIONS",
    "LoadedSchema",
    "PreparedSchema",
    "RefIndex",
    "bundled_schemas",
    "canonical_json",
    "check_depth",
    "check_patterns",
    "check_schema",
    "instance_validator",
    "join_pointer",
    "json_options",
    "load_schema",
    "prepare_schema",
    "resolve_pointer",
    "schema_sha256",
    "schemas_dir",
    "walk_schema",
]
