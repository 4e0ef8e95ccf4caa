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
    (schemas/NAME.json) -> the concise DSL (gemmacli.dsl.parse_dsl). Raises SchemaError (exit 3).
def bundled_schemas() -> dict[str, Path]
def check_schema(schema: dict, *, lenient: bool) -> tuple[dict, list[str]]
    Metaschema check (exit 3 naming the JSON pointer), remote $ref refusal, keywords llguidance cannot
    enforce (exit 3 naming each, or dropped with a warning under lenient). Returns (schema to compile,
    warnings).
"""

from __future__ import annotations
