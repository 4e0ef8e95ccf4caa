"""Reading a schema: from a file, inline JSON, a bundled name or the concise syntax, into one JSON Schema.

In brief:
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

A schema file's `$ref`s to other files in its own folder are inlined under `$defs` here, so everything
after loading sees one self-contained document; nothing outside the schema's folder is ever read.
Whether the schema can be enforced is `gemmacli.schema.check`'s question, not this module's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urldefrag, urlparse

from gemmacli.errors import SchemaError
from gemmacli.schema.dsl import looks_like_dsl, parse_dsl
from gemmacli.schema.pointers import escape_token
from gemmacli.schema.preflight import MAX_DEPTH


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


def _is_file(arg: str) -> Path | None:
    """`arg` as a path when it names an existing file (a name the OS refuses is no file)."""
    path = Path(arg).expanduser()
    try:
        return path if path.is_file() else None
    except (OSError, ValueError):
        return None


def load_schema(arg: str) -> LoadedSchema:
    """Read a schema given as a path, inline JSON, a bundled name or the concise DSL (in that order)."""
    path = _is_file(arg)
    if path is not None:
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
    names = ", ".join(bundled) or "none"
    if re.fullmatch(r"[A-Za-z][\w-]*", arg.strip()):
        # one bare word: a mistyped or missing bundled name far more often than a one-field schema
        raise SchemaError(f"no bundled schema is named {arg.strip()!r}",
                          hint=f"bundled schemas: {names}; a one-field schema in the concise syntax: "
                               f"'{arg.strip()} str'")
    pathlike = arg.endswith(".json") or os.sep in arg or "/" in arg
    if pathlike and not looks_like_dsl(arg):
        raise SchemaError(
            f"schema {arg!r} is not a file, inline JSON, a bundled name or the concise syntax",
            hint=f"bundled schemas: {names}",
        )
    schema = parse_dsl(arg)
    return LoadedSchema(schema, "dsl", None, schema_sha256(schema))


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
        return f"#/{root_defs_key}/{escape_token(key)}{fragment if fragment.startswith('/') else ''}"

    first = True
    while pending:
        doc, doc_path = pending.pop()
        prefix = "" if first else f"/{root_defs_key}/{escape_token(key_for(doc_path))}"
        first = False
        rewrite(doc, doc_path, prefix)
    if loaded:
        defs = schema.setdefault(root_defs_key, {})
        for target, doc in loaded.items():
            defs[files[target]] = doc
    return schema
