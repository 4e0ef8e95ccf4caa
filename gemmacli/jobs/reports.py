"""Machine-readable `check` reports: JSON Lines, JUnit XML (test dashboards), SARIF 2.1.0 (code scanning).

Each writer turns the per-file outcomes of gemmacli.jobs.policy into bytes; the CLI puts them on stdout or
writes them atomically with -o. Extracted values come from a model and may hold anything, so the XML
writer strips characters XML 1.0 cannot carry instead of producing a file no parser accepts.
"""

from __future__ import annotations

import json
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gemmacli import __version__
from gemmacli.files import json_bytes
from gemmacli.jobs.policy import (
    ERROR,
    EXTRACTION_ERROR_RULE,
    PASS,
    REPEAT_GUARD_RULE,
    VIOLATION,
    FileOutcome,
    Policy,
    Violation,
)

FORMATS = ("jsonl", "junit", "sarif")
SARIF_SCHEMA_URI = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
TOOL_NAME = "gemmacli"


# XML 1.0 allows tab, LF, CR and everything from U+0020 except surrogates and U+FFFE/U+FFFF.
_XML_ILLEGAL = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def format_for_path(path: str) -> str | None:
    """Guess --format from an -o file name: report.xml -> junit, x.sarif -> sarif, x.jsonl -> jsonl."""
    lower = path.lower()
    if lower.endswith(".xml"):
        return "junit"
    if lower.endswith((".sarif", ".sarif.json")):
        return "sarif"
    if lower.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    return None


def render(fmt: str, outcomes: Sequence[FileOutcome], policy: Policy, *, allow_errors: bool = False,
           base_dir: Path | None = None) -> bytes:
    if fmt == "jsonl":
        return jsonl_report(outcomes)
    if fmt == "junit":
        return junit_report(outcomes, policy, allow_errors=allow_errors)
    if fmt == "sarif":
        return sarif_report(outcomes, policy, allow_errors=allow_errors, base_dir=base_dir)
    raise ValueError(f"unknown report format {fmt!r}")


def compact_value(value: Any, limit: int = 80) -> str:
    """An extracted value as short JSON for one-line messages."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def violation_text(violation: Violation) -> str:
    """'<path>: <message> (got <value>) — <rule description>', the line every format shows."""
    where = violation.path or "/"
    text = f"{where}: {violation.message} (extracted: {compact_value(violation.value)})"
    if violation.description:
        text += f" — {violation.description}"
    return text


# ---------------------------------------------------------------------------------------------- jsonl


def jsonl_report(outcomes: Sequence[FileOutcome]) -> bytes:
    """One record per file in input order, as the cache stores it plus whether it came from there."""
    return b"".join(json_bytes({**outcome.to_dict(), "cached": outcome.cached}, compact=False) + b"\n"
                    for outcome in outcomes)


# ---------------------------------------------------------------------------------------------- junit


def _xml_safe(text: str) -> str:
    return _XML_ILLEGAL.sub("\ufffd", text)


def junit_report(outcomes: Sequence[FileOutcome], policy: Policy, *, allow_errors: bool = False) -> bytes:
    """One <testcase> per file: a <failure> listing its violations, <error> for a file that could not be
    extracted (<skipped> under --allow-errors, so dashboards match the exit status)."""
    failures = sum(o.status == VIOLATION for o in outcomes)
    errors = sum(o.status == ERROR for o in outcomes)
    suites = ET.Element("testsuites", name="gemmacli check", tests=str(len(outcomes)),
                        failures=str(failures), errors=str(0 if allow_errors else errors))
    suite = ET.SubElement(
        suites, "testsuite",
        name=_xml_safe(f"gemmacli check: {policy.title}"),
        tests=str(len(outcomes)),
        failures=str(failures),
        errors=str(0 if allow_errors else errors),
        skipped=str(errors if allow_errors else 0),
    )
    properties = ET.SubElement(suite, "properties")
    ET.SubElement(properties, "property", name="policy", value=_xml_safe(policy.name))
    ET.SubElement(properties, "property", name="policy_sha256", value=policy.sha256)
    for outcome in outcomes:
        _junit_testcase(suite, outcome, allow_errors=allow_errors)
    ET.indent(suites)
    return ET.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n"


def _junit_testcase(suite: ET.Element, outcome: FileOutcome, *, allow_errors: bool) -> None:
    """One file's <testcase>: its verdict, then the extracted data and any warnings."""
    case = ET.SubElement(suite, "testcase", classname="gemmacli.jobs.policy",
                         name=_xml_safe(outcome.source))
    if outcome.path is not None:
        case.set("file", _xml_safe(str(outcome.path)))
    if outcome.status == VIOLATION:
        _junit_failure(case, outcome)
    elif outcome.status == ERROR:
        tag = "skipped" if allow_errors else "error"
        element = ET.SubElement(case, tag, message=_xml_safe(outcome.error or "extraction failed"))
        if tag == "error":
            element.set("type", outcome.error_kind or "extraction")
    if outcome.status != ERROR and outcome.data is not None:
        system_out = ET.SubElement(case, "system-out")
        system_out.text = _xml_safe(json.dumps(outcome.data, ensure_ascii=False))
    if outcome.warnings:
        system_err = ET.SubElement(case, "system-err")
        system_err.text = _xml_safe("\n".join(f"warning: {w}" for w in outcome.warnings))


def _junit_failure(case: ET.Element, outcome: FileOutcome) -> None:
    """One <failure> per testcase: the JUnit schema (and several dashboards) allow no more."""
    lines = [violation_text(violation) for violation in outcome.violations]
    rules = sorted({violation.rule for violation in outcome.violations})
    message = lines[0] if len(lines) == 1 else f"{len(lines)} policy violations: {'; '.join(lines)}"
    failure = ET.SubElement(case, "failure", type=",".join(rules), message=_xml_safe(message))
    failure.text = _xml_safe("\n".join(lines))


# ---------------------------------------------------------------------------------------------- sarif


def artifact_uri(outcome: FileOutcome, base_dir: Path | None = None) -> str:
    """A path relative to `base_dir` (the repository root in CI) with '/' separators, which is what
    code scanning matches against the checkout; a file outside it gets an absolute file:// URI."""
    if outcome.path is None:
        return outcome.source
    base = (base_dir or Path.cwd()).resolve()
    resolved = Path(os.path.abspath(outcome.path))
    try:
        return resolved.relative_to(base).as_posix()
    except ValueError:
        return resolved.as_uri()


def _sarif_rules(outcomes: Sequence[FileOutcome], policy: Policy) -> list[dict[str, Any]]:
    """One rule per policy keyword that failed somewhere, plus the extraction-error rule if needed."""
    rules: dict[str, dict[str, Any]] = {}
    for outcome in outcomes:
        for violation in outcome.violations:
            if violation.rule_id in rules:
                continue
            text = violation.description or f"policy keyword '{violation.rule}' at {violation.rule_id}"
            rules[violation.rule_id] = {
                "id": violation.rule_id,
                "name": violation.rule,
                "shortDescription": {"text": text},
                "fullDescription": {"text": f"{policy.title}: {text}"},
                "defaultConfiguration": {"level": "error"},
                "properties": {"keyword": violation.rule, "policy": policy.name},
            }
        if outcome.status == ERROR and EXTRACTION_ERROR_RULE not in rules:
            rules[EXTRACTION_ERROR_RULE] = {
                "id": EXTRACTION_ERROR_RULE,
                "name": "ExtractionError",
                "shortDescription": {"text": "the document could not be extracted, so it was not checked"},
                "defaultConfiguration": {"level": "error"},
            }
        if outcome.warnings and REPEAT_GUARD_RULE not in rules:
            rules[REPEAT_GUARD_RULE] = {
                "id": REPEAT_GUARD_RULE,
                "name": "ExtractionCutShort",
                "shortDescription": {"text": "the model repeated itself; gemmacli ended that value, and the "
                                             "policy judged the value as cut short"},
                "defaultConfiguration": {"level": "note"},
            }
    return list(rules.values())


def sarif_report(outcomes: Sequence[FileOutcome], policy: Policy, *, allow_errors: bool = False,
                 base_dir: Path | None = None) -> bytes:
    """SARIF 2.1.0 with file-level results (line 1: the policy judges the whole document)."""
    rules = _sarif_rules(outcomes, policy)
    rule_index = {rule["id"]: index for index, rule in enumerate(rules)}
    results: list[dict[str, Any]] = []
    artifacts: list[dict[str, Any]] = []
    for outcome in outcomes:
        uri = artifact_uri(outcome, base_dir)
        artifacts.append({"location": {"uri": uri}})
        location = {"physicalLocation": {"artifactLocation": {"uri": uri, "index": len(artifacts) - 1},
                                         "region": {"startLine": 1}}}
        if outcome.status == VIOLATION:
            for violation in outcome.violations:
                results.append({
                    "ruleId": violation.rule_id,
                    "ruleIndex": rule_index[violation.rule_id],
                    "level": "error",
                    "message": {"text": f"{policy.title}: {violation_text(violation)}"},
                    "locations": [location],
                    "properties": {"path": violation.path, "value": violation.value},
                })
        for warning in outcome.warnings:
            results.append({
                "ruleId": REPEAT_GUARD_RULE,
                "ruleIndex": rule_index[REPEAT_GUARD_RULE],
                "level": "note",
                "message": {"text": warning},
                "locations": [location],
            })
        if outcome.status == ERROR:
            results.append({
                "ruleId": EXTRACTION_ERROR_RULE,
                "ruleIndex": rule_index[EXTRACTION_ERROR_RULE],
                "level": "warning" if allow_errors else "error",
                "message": {"text": f"not checked: {outcome.error or 'extraction failed'}"},
                "locations": [location],
            })
    run = {
        "tool": {"driver": {"name": TOOL_NAME, "version": __version__, "semanticVersion": __version__,
                            "rules": rules}},
        "artifacts": artifacts,
        "results": results,
        "properties": {"policy": policy.name, "policyTitle": policy.title,
                       "passed": sum(o.status == PASS for o in outcomes)},
    }
    log = {"$schema": SARIF_SCHEMA_URI, "version": "2.1.0", "runs": [run]}
    return json_bytes(log, indent=2) + b"\n"
