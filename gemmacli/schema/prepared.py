"""PreparedSchema: a schema checked once, with what the check found, handed down whole.

The CLI checks the schema before any model work (a bad one is exit 3 at once) and hands the result to the
batch, whose workers and Extractors use it as it is: the check ran once per command, not once in the CLI
and again in every worker (whose warnings then had to be muted). Picklable: it travels to worker processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemmacli.schema.check import check_schema
from gemmacli.schema.load import LoadedSchema, schema_sha256
from gemmacli.schema.probes import json_options


@dataclass(frozen=True)
class PreparedSchema:
    """The schema as given, its sha256 and where it came from; `enforced`, the schema the grammar compiles
    (keywords --lenient dropped are gone from it; the output is still validated against `schema`); the
    check's warnings; and the two options the check depended on."""

    schema: dict[str, Any]
    sha256: str
    source: str  # "file" | "inline" | "bundled" | "dsl" | "dict"
    enforced: dict[str, Any]
    warnings: tuple[str, ...]
    lenient: bool
    pretty: bool
    path: Path | None = None  # the file, for "file" and "bundled" (a bundled schema's examples sit beside it)

    def fits(self, *, lenient: bool, pretty: bool) -> bool:
        """Whether it was prepared for these options (else the Extractor checks the schema again)."""
        return self.lenient == lenient and self.pretty == pretty


def prepare_schema(schema: dict[str, Any] | LoadedSchema, *, lenient: bool = False,
                   pretty: bool = False) -> PreparedSchema:
    """Check `schema` for what the grammar engine can enforce (SchemaError, exit 3, naming the pointer)."""
    if isinstance(schema, LoadedSchema):
        document, sha256, source, path = schema.schema, schema.sha256, schema.source, schema.path
    else:
        document, sha256, source, path = schema, schema_sha256(schema), "dict", None
    enforced, warnings = check_schema(document, lenient=lenient, options=json_options(pretty))
    return PreparedSchema(document, sha256, source, enforced, tuple(warnings), lenient, pretty, path)
