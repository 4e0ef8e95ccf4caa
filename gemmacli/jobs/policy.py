"""`gemmacli check`: judge extracted JSON with a policy, which is itself a JSON Schema.

A policy is a JSON Schema over the extracted object, so there is no new language to learn and
jsonschema reports every violation with its path. This module owns the policy (loading, metaschema
check), the evaluation of one extracted value, the per-file outcome model, and the loop that runs a
set of sources through the cache and the extractor. The CLI layer (gemmacli.cli.check_cmd) only wires
arguments, streams and exit codes around it; the report writers live in gemmacli.jobs.reports.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import jsonschema
import jsonschema.exceptions
import jsonschema.validators

from gemmacli.errors import (
    ExitStatus,
    ExtractionFailed,
    GemmacliError,
    InputOutputError,
    SchemaError,
)
from gemmacli.jobs.batch import ExtractorLike
from gemmacli.jobs.inputs import require_text
from gemmacli.schema import canonical_json, check_depth, check_patterns, join_pointer, schema_sha256

PASS = "pass"
VIOLATION = "violation"
ERROR = "error"

# The rule id an extraction error is reported under (SARIF needs a rule for every result).
EXTRACTION_ERROR_RULE = "extraction-error"
# The rule a value cut short by the repetition guard is reported under (a note: the file was still judged).
REPEAT_GUARD_RULE = "extraction-cut-short"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def json_pointer(parts: Iterable[Any]) -> str:
    """RFC 6901 pointer ('' is the whole document), so paths in reports are unambiguous."""
    return join_pointer("", *parts)


# --------------------------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class Policy:
    """A checked policy, ready to evaluate values; `sha256` keys the result cache."""

    schema: dict[str, Any]
    name: str  # what reports call it: the file as given, "inline", or the bundled name
    path: Path | None
    sha256: str

    @property
    def title(self) -> str:
        title = self.schema.get("title")
        return title if isinstance(title, str) and title else self.name

    @property
    def description(self) -> str | None:
        description = self.schema.get("description")
        return description if isinstance(description, str) and description else None


def bundled_policies() -> dict[str, Path]:
    """Policies shipped in schemas/policies/ (next to the bundled schemas), by file stem."""
    from gemmacli.schema import schemas_dir

    folder = schemas_dir() / "policies"
    if not folder.is_dir():
        return {}
    return {path.stem: path for path in sorted(folder.glob("*.json")) if path.is_file()}


def load_policy(arg: str) -> Policy:
    """Read a policy from a file, inline JSON, or a bundled name; check it before any model work.

    Reading order mirrors gemmacli.schema.load_schema: an existing file, then inline JSON (text starting
    with '{'), then a bundled name. Unreadable file -> InputOutputError (5); not JSON, not a schema, or
    a remote $ref -> SchemaError (3) naming the JSON pointer of the bad part.
    """
    path: Path | None = Path(arg)
    if path is not None and path.is_file():
        name, text = arg, _read_policy_file(path)
    elif arg.lstrip().startswith("{"):
        name, text, path = "inline", arg, None
    elif arg in bundled_policies():
        path = bundled_policies()[arg]
        name, text = arg, _read_policy_file(path)
    else:  # like an unknown schema: a usage of the policy argument that names nothing (3, not 5)
        known = ", ".join(bundled_policies()) or "none"
        raise SchemaError(
            f"policy not found: {arg}",
            hint=f"give a policy file, inline JSON, or a bundled name ({known})",
        )
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(
            f"policy {name} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise SchemaError(f"policy {name} nests too deeply to read") from None
    check_policy(schema, name=name)
    return Policy(schema=schema, name=name, path=path, sha256=schema_sha256(schema))


def _read_policy_file(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InputOutputError(f"policy {path} is not UTF-8 (byte offset {exc.start})") from None
    except OSError as exc:
        raise InputOutputError(f"cannot read policy {path}: {exc.strerror or exc}") from None


def check_policy(schema: Any, *, name: str = "policy") -> None:
    """Metaschema check (the draft named by $schema, else 2020-12) and refusal of non-local $ref.

    A policy is evaluated on this machine during CI, so it must never make jsonschema reach for the
    network or another file: only '#...' references are allowed.
    """
    if not isinstance(schema, dict):
        raise SchemaError(f"{name} must be a JSON object (a JSON Schema), got {type(schema).__name__}",
                          pointer="")
    check_depth(schema, what=name)
    check_patterns(schema)
    if not isinstance(schema.get("$schema", ""), str):
        raise SchemaError(f"{name}: $schema must be a URI string", pointer="/$schema")
    validator_class = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    meta_validator_class = jsonschema.validators.validator_for(validator_class.META_SCHEMA,
                                                               default=validator_class)
    meta_validator = meta_validator_class(validator_class.META_SCHEMA,
                                          format_checker=validator_class.FORMAT_CHECKER)
    meta_errors = list(meta_validator.iter_errors(schema))
    if meta_errors:
        error = jsonschema.exceptions.best_match(meta_errors)
        raise SchemaError(f"{name} is not a valid JSON Schema: {error.message}",
                          pointer=json_pointer(error.absolute_path))
    for pointer, ref in _refs(schema, []):
        if not ref.startswith("#"):
            raise SchemaError(f"{name} uses a non-local $ref {ref!r}; only '#...' references are allowed",
                              pointer=pointer)


def _refs(node: Any, parts: list[Any]) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("$ref", "$dynamicRef") and isinstance(value, str):
                yield json_pointer([*parts, key]), value
            elif key not in ("const", "enum", "default", "examples"):  # values, not subschemas
                yield from _refs(value, [*parts, key])
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _refs(value, [*parts, index])


# ----------------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Violation:
    """One failed policy keyword: where in the extracted JSON, which rule, and what was found there."""

    path: str  # JSON pointer into the extracted value ("" = the whole object)
    rule: str  # the failing keyword: const, enum, required, maximum, ...
    rule_id: str  # JSON pointer of that keyword inside the policy: one SARIF rule per keyword
    message: str
    value: Any  # the extracted value at `path`
    description: str | None = None  # the rule's description (or title) from the policy, if any

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "rule": self.rule,
            "rule_id": self.rule_id,
            "message": self.message,
            "value": self.value,
            "description": self.description,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Violation:
        return cls(
            path=data["path"],
            rule=data["rule"],
            rule_id=data["rule_id"],
            message=data["message"],
            value=data.get("value"),
            description=data.get("description"),
        )


def evaluate(policy: Policy, value: Any) -> list[Violation]:
    """Every top-level jsonschema error of `value` against the policy, in document order."""
    validator_class = jsonschema.validators.validator_for(
        policy.schema, default=jsonschema.Draft202012Validator
    )
    validator = validator_class(policy.schema, format_checker=validator_class.FORMAT_CHECKER)
    errors = sorted(validator.iter_errors(value), key=lambda e: (list(map(str, e.absolute_path)),
                                                                 list(map(str, e.absolute_schema_path))))
    return [
        Violation(
            path=json_pointer(error.absolute_path),
            rule=str(error.validator),
            rule_id=json_pointer(error.absolute_schema_path),
            message=_message(error),
            value=error.instance,
            description=_rule_description(error),
        )
        for error in errors
    ]


def _message(error: jsonschema.exceptions.ValidationError) -> str:
    """jsonschema's message, but in JSON terms for the common keywords (true, not Python's True)."""
    if error.validator == "const":
        return f"must be {json.dumps(error.validator_value, ensure_ascii=False)}"
    if error.validator == "enum" and isinstance(error.validator_value, list):
        allowed = ", ".join(json.dumps(value, ensure_ascii=False) for value in error.validator_value)
        return f"must be one of {allowed}"
    return error.message


def _rule_description(error: jsonschema.exceptions.ValidationError) -> str | None:
    """The description (else title) of the subschema holding the failed keyword: the rule's own words."""
    subschema = error.schema
    if isinstance(subschema, dict):
        for key in ("description", "title"):
            text = subschema.get(key)
            if isinstance(text, str) and text:
                return text
    return None


# ------------------------------------------------------------------------------------------- outcomes


@dataclass
class FileOutcome:
    """What `check` concluded for one source; serialisable so the cache can replay it."""

    source: str  # the name as given (path, "-", JSONL id)
    path: Path | None  # the file, for report locations
    status: str  # PASS | VIOLATION | ERROR
    violations: list[Violation] = field(default_factory=list)
    data: Any = None  # the extracted value (None on error)
    error: str | None = None
    error_kind: str | None = None  # "extraction" | "input"
    cached: bool = False
    #: Values the repetition guard ended (gemmacli.engine.loops): the policy judged a value cut short there.
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON Lines record and the cache entry (without `cached`, which is per run)."""
        record: dict[str, Any] = {"source": self.source, "status": self.status}
        if self.status == ERROR:
            record["error"] = {"type": self.error_kind, "message": self.error}  # as extract's records
        else:
            record["violations"] = [violation.to_dict() for violation in self.violations]
            record["data"] = self.data
            if self.warnings:
                record["warnings"] = list(self.warnings)
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any], *, path: Path | None, cached: bool) -> FileOutcome:
        if record.get("status") not in (PASS, VIOLATION, ERROR):
            raise ValueError(f"unknown outcome status {record.get('status')!r}")
        error = record.get("error") or {}
        return cls(
            source=record["source"],
            path=path,
            status=record["status"],
            violations=[Violation.from_dict(v) for v in record.get("violations", [])],
            data=record.get("data"),
            error=error.get("message"),
            error_kind=error.get("type", error.get("kind")),  # "kind" in caches written before
            cached=cached,
            warnings=[str(w) for w in record.get("warnings", [])],
        )


def judge(policy: Policy, source: str, path: Path | None, data: Any,
          warnings: Sequence[str] = ()) -> FileOutcome:
    violations = evaluate(policy, data)
    return FileOutcome(source=source, path=path, status=VIOLATION if violations else PASS,
                       violations=violations, data=data, warnings=list(warnings))


@dataclass
class CheckSummary:
    """Totals for the stderr summary and the exit status."""

    outcomes: list[FileOutcome]
    allow_errors: bool = False

    @property
    def passed(self) -> int:
        return sum(o.status == PASS for o in self.outcomes)

    @property
    def violated(self) -> int:
        return sum(o.status == VIOLATION for o in self.outcomes)

    @property
    def errors(self) -> int:
        return sum(o.status == ERROR for o in self.outcomes)

    @property
    def cache_hits(self) -> int:
        return sum(o.cached for o in self.outcomes)

    @property
    def cache_misses(self) -> int:
        return len(self.outcomes) - self.cache_hits

    def exit_status(self) -> ExitStatus:
        """1 for any violation; errors fail too (5 if a file could not be read, else 1) unless allowed."""
        if self.violated:
            return ExitStatus.FAILED
        if self.errors and not self.allow_errors:
            if any(o.status == ERROR and o.error_kind == "input" for o in self.outcomes):
                return ExitStatus.IO
            return ExitStatus.FAILED
        return ExitStatus.OK


# ---------------------------------------------------------------------------------------------- runner


class SourceLike(Protocol):
    """What the runner needs of gemmacli.jobs.inputs.Source."""

    name: str
    path: Path | None

    def read_text(self, *, encoding: str = ..., errors: str = ...) -> str: ...


class CacheLike(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, record: dict[str, Any]) -> None: ...


#: `check --jobs`: (name, text) pairs in; out, in order, each (value, repetition notes) or its failure.
ExtractMany = Callable[[list[tuple[str, str]]], Iterator["tuple[Any, list[str]] | ExtractionFailed"]]


@dataclass
class CheckRunner:
    """Runs sources through cache -> extractor -> policy; loads the extractor only on the first miss.

    `fingerprint` holds everything besides the text that decides an outcome (schema, policy, model
    manifest, gemmacli version, extraction options); the cache key is sha256 of it plus the text, so an
    unchanged file under unchanged settings never touches the model, and a CI run where nothing changed
    does not even load it.
    """

    policy: Policy
    extractor_factory: Callable[[], ExtractorLike]
    fingerprint: dict[str, Any]
    cache: CacheLike | None = None
    encoding: str = "utf-8"
    decode_errors: str = "strict"
    on_outcome: Callable[[FileOutcome], None] | None = None
    allow_empty: bool = False
    #: Extracts many texts at once (`check --jobs`): given (name, text) pairs, yields for each, in order,
    #: the extracted value and its repetition-guard notes, or the ExtractionFailed it ended in.
    extract_many: ExtractMany | None = None
    _extractor: ExtractorLike | None = field(default=None, init=False, repr=False)

    @property
    def extractor_loaded(self) -> bool:
        return self._extractor is not None

    def cache_key(self, text: str) -> str:
        material = canonical_json({"fingerprint": self.fingerprint, "text_sha256": sha256_text(text)})
        return sha256_text(material)

    def run(self, sources: Sequence[SourceLike]) -> list[FileOutcome]:
        """Every source's outcome, in input order (each reported to `on_outcome` as soon as it is known)."""
        outcomes = []
        for outcome in self._outcomes(sources):
            outcomes.append(outcome)
            if self.on_outcome is not None:
                self.on_outcome(outcome)
        return outcomes

    def _outcomes(self, sources: Sequence[SourceLike]) -> Iterator[FileOutcome]:
        if self.extract_many is None:
            for source in sources:
                yield self.check_one(source)
            return
        known = [self._known(source) for source in sources]  # read + cache first; then the misses at once
        misses = [(s, found) for s, found in zip(sources, known, strict=True) if isinstance(found, str)]
        results = self.extract_many([(source.name, text) for source, text in misses]) if misses else iter(())
        for source, found in zip(sources, known, strict=True):
            if not isinstance(found, str):
                yield found
                continue
            outcome = self._judged(source, next(results))
            self._remember(found, outcome)
            yield outcome

    def check_one(self, source: SourceLike) -> FileOutcome:
        """One source's outcome; reading and extraction failures become ERROR outcomes, not exceptions.

        ModelError and SchemaError still propagate: they are about the whole run, not this file.
        """
        found = self._known(source)
        if not isinstance(found, str):
            return found
        outcome = self._extract_and_judge(source, found)
        self._remember(found, outcome)
        return outcome

    def _known(self, source: SourceLike) -> FileOutcome | str:
        """The outcome when reading decides it (unreadable, empty) or the cache has it; else the text."""
        try:
            text = source.read_text(encoding=self.encoding, errors=self.decode_errors)
            require_text(text, source.name, allow_empty=self.allow_empty)
        except (InputOutputError, OSError) as exc:
            message = exc.message if isinstance(exc, GemmacliError) else str(exc)
            return FileOutcome(source=source.name, path=source.path, status=ERROR, error=message,
                               error_kind="input")
        except ExtractionFailed as exc:  # empty: the rule `extract` applies too (gemmacli.jobs.inputs)
            return FileOutcome(source=source.name, path=source.path, status=ERROR, error=exc.message,
                               error_kind="extraction")
        if self.cache is not None:
            record = self.cache.get(self.cache_key(text))
            if record is not None and record.get("source") is not None:
                record = {**record, "source": source.name}
                try:
                    return FileOutcome.from_dict(record, path=source.path, cached=True)
                except (AttributeError, KeyError, TypeError, ValueError):
                    pass  # an entry from an incompatible build: recompute
        return text

    def _remember(self, text: str, outcome: FileOutcome) -> None:
        if self.cache is not None:
            self.cache.put(self.cache_key(text), outcome.to_dict())

    def _extract_and_judge(self, source: SourceLike, text: str) -> FileOutcome:
        if self._extractor is None:
            self._extractor = self.extractor_factory()
        try:
            result = self._extractor.extract(text)
        except ExtractionFailed as exc:
            return self._judged(source, exc)
        return self._judged(source, (result.data, list(getattr(result, "repeats", ()) or ())))

    def _judged(self, source: SourceLike, result: tuple[Any, list[str]] | ExtractionFailed) -> FileOutcome:
        if isinstance(result, ExtractionFailed):
            return FileOutcome(source=source.name, path=source.path, status=ERROR, error=result.message,
                               error_kind="extraction")
        data, repeats = result
        return judge(self.policy, source.name, source.path, data, repeats)
