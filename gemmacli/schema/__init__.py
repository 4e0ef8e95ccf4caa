"""Layer 1, the schema: a JSON Schema read (file, inline, bundled name, concise syntax), checked for what
the grammar engine can enforce, walked by JSON pointer, and sized (its smallest valid output).

Nothing here knows about models or tokens. `gemmacli.engine` compiles what this layer has checked.
"""

from gemmacli.schema.core import (
    COMPACT_OPTIONS,
    LoadedSchema,
    RefIndex,
    bundled_schemas,
    canonical_json,
    check_depth,
    check_patterns,
    check_schema,
    join_pointer,
    load_schema,
    resolve_pointer,
    schema_sha256,
    schemas_dir,
    walk_schema,
)

__all__ = [
    "COMPACT_OPTIONS",
    "LoadedSchema",
    "RefIndex",
    "bundled_schemas",
    "canonical_json",
    "check_depth",
    "check_patterns",
    "check_schema",
    "join_pointer",
    "load_schema",
    "resolve_pointer",
    "schema_sha256",
    "schemas_dir",
    "walk_schema",
]
