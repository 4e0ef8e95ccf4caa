"""`gemmacli check`: policies, evaluation, the result cache, and the CLI end to end.

Three layers of tests:
- the policy/evaluation/cache layers on their own, with a fake extractor;
- the CLI (`raw_main` with swapped streams) with a rule-based fake `Extractor`, so the bundled PII
  schema + no-pii policy judge the two example documents by their content;
- acceptance on the tiny synthesized model (skipped until the real Extractor and the `tiny_model_dir`
  fixture exist). A random model emits garbage values, so there the outcome is decided by a
  schema/policy pair, not by the model: the test schema pins `kind` with `const: "doc"`, so every
  valid extraction has kind == "doc"; the passing policy requires exactly that (any valid extraction
  satisfies it) and the violating policy requires `const: "secret"` (no valid extraction can).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cli import run_cli  # tests/cli.py

import gemmacli.engine.extractor
from gemmacli.errors import ExitStatus, ExtractionFailed, SchemaError
from gemmacli.files import write_atomically
from gemmacli.jobs.cache import ResultCache, default_cache_dir
from gemmacli.jobs.inputs import collect_sources
from gemmacli.jobs.policy import (
    ERROR,
    PASS,
    REPEAT_GUARD_RULE,
    VIOLATION,
    CheckRunner,
    CheckSummary,
    check_policy,
    evaluate,
    load_policy,
)
from gemmacli.schema import check_schema, load_schema

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "tests" / "examples" / "check"
PII_SCHEMA = REPO / "schemas" / "pii.json"
NO_PII_POLICY = REPO / "schemas" / "policies" / "no-pii.json"


# ------------------------------------------------------------------------------------------- helpers


@dataclass
class FakeResult:
    data: Any
    repeats: list[str] = field(default_factory=list)


class RuleBasedExtractor:
    """Stands in for api.Extractor: fills the PII schema from regexes, counts the texts it saw."""

    instances: list[RuleBasedExtractor] = []  # noqa: RUF012 - a test registry, reset per test

    def __init__(self, schema: Any = None, **options: Any) -> None:
        self.options = options
        self.texts: list[str] = []
        RuleBasedExtractor.instances.append(self)

    def extract(self, text: str) -> FakeResult:
        self.texts.append(text)
        if "UNEXTRACTABLE" in text:
            raise ExtractionFailed("max tokens (1024) reached before the JSON was complete")
        pii = [kind for kind, pattern in (("email", r"\S+@\S+\.\w+"), ("phone", r"\+\d[\d ]{8,}"))
               if re.search(pattern, text)]
        secrets = [kind for kind, pattern in (("api_key", r"\bsk_\w+"), ("connection_string", r"://\w+:[^@\s]+@"))
                   if re.search(pattern, text)]
        repeats = ["/pii_types/0: the model repeated itself; the value was ended there"] \
            if "LOOPING" in text else []
        return FakeResult({
            "contains_pii": bool(pii), "pii_types": pii,
            "contains_secret": bool(secrets), "secret_types": secrets,
            "customer_named": "Corporation" in text,
            "risk": "high" if secrets else ("medium" if pii else "none"),
        }, repeats)


def fake_model_dir(tmp_path: Path) -> Path:
    """A folder the model store accepts (manifest only): enough for the cache fingerprint."""
    folder = tmp_path / "fake-model"
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "name": "fake", "files": {}}))
    return folder


def run_check(argv: list[str], cache_home: Path, stdin: bytes = b"") -> tuple[ExitStatus, bytes, str]:
    result = run_cli(argv, stdin, environ={"XDG_CACHE_HOME": str(cache_home), "NO_COLOR": "1"})
    return ExitStatus(result.status), result.stdout, result.stderr


@pytest.fixture()
def fake_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Runs `gemmacli check` with the rule-based extractor and a fake model folder."""
    RuleBasedExtractor.instances = []
    monkeypatch.setattr(gemmacli.engine.extractor, "Extractor", RuleBasedExtractor, raising=False)
    model = fake_model_dir(tmp_path)
    cache_home = tmp_path / "xdg-cache"

    def run(*args: str, stdin: bytes = b"") -> tuple[ExitStatus, bytes, str]:
        argv = ["check", "--schema", str(PII_SCHEMA), "--policy", str(NO_PII_POLICY),
                "--model", str(model), *args]
        return run_check(argv, cache_home, stdin=stdin)

    return run


def copy_examples(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    passing, violating = folder / "passing.md", folder / "violating.md"
    passing.write_bytes((EXAMPLES / "passing.md").read_bytes())
    violating.write_bytes((EXAMPLES / "violating.md").read_bytes())
    return passing, violating


# -------------------------------------------------------------------------------------------- policy


def test_bundled_policy_loads_by_name_path_and_inline():
    by_name = load_policy("no-pii")
    by_path = load_policy(str(NO_PII_POLICY))
    inline = load_policy(NO_PII_POLICY.read_text())
    assert by_name.sha256 == by_path.sha256 == inline.sha256
    assert by_name.title == "No personal data or secrets"
    assert all("description" in rule for rule in by_name.schema["properties"].values())


def test_bundled_pii_schema_is_enforceable_and_matches_the_policy():
    """The schema compiles without --lenient, and every policy field exists in it with values it allows."""
    loaded = load_schema(str(PII_SCHEMA))
    _, warnings = check_schema(loaded.schema, lenient=False)
    assert warnings == []
    policy = load_policy("no-pii").schema
    properties = loaded.schema["properties"]
    for name, rule in policy["properties"].items():
        assert name in properties and properties[name].get("description")
        if "const" in rule:
            assert properties[name]["type"] == type(rule["const"]).__name__.replace("bool", "boolean")
        if "enum" in rule:
            assert set(rule["enum"]) <= set(properties[name]["enum"])
    assert set(policy["required"]) <= set(loaded.schema["required"])


@pytest.mark.parametrize(
    ("policy", "pointer"),
    [
        ({"properties": {"risk": {"type": "strng"}}}, "/properties/risk/type"),
        ({"properties": {"n": {"maximum": "ten"}}}, "/properties/n/maximum"),
        ({"required": "contains_pii"}, "/required"),
        ({"properties": {"x": {"$ref": "https://example.com/s.json"}}}, "/properties/x/$ref"),
        ({"$schema": 7}, "/$schema"),
        ([1, 2], ""),
    ],
)
def test_invalid_policy_names_the_bad_part(policy: Any, pointer: str):
    with pytest.raises(SchemaError) as caught:
        if isinstance(policy, dict):
            load_policy(json.dumps(policy))
        else:
            check_policy(policy)
    assert caught.value.pointer == pointer
    assert caught.value.exit_status == ExitStatus.SCHEMA


def test_policy_not_json_or_missing():
    with pytest.raises(SchemaError, match="not valid JSON"):
        load_policy('{"properties": ')
    with pytest.raises(SchemaError, match="policy not found"):
        load_policy("no-such-policy")


def test_violations_carry_path_rule_value_and_description():
    policy = load_policy("no-pii")
    data = {"contains_pii": True, "contains_secret": False, "customer_named": False, "risk": "medium"}
    violations = evaluate(policy, data)
    assert [(v.path, v.rule, v.value) for v in violations] == [
        ("/contains_pii", "const", True),
        ("/risk", "enum", "medium"),
    ]
    assert violations[0].rule_id == "/properties/contains_pii/const"
    assert violations[0].description.startswith("Documents must not contain personal data")
    assert evaluate(policy, {**data, "contains_pii": False, "risk": "low"}) == []


# ------------------------------------------------------------------------------------- runner + cache


class CountingExtractor:
    def __init__(self) -> None:
        self.texts: list[str] = []

    def extract(self, text: str) -> FakeResult:
        self.texts.append(text)
        if text.startswith("broken"):
            raise ExtractionFailed("output failed validation")
        return FakeResult({"ok": text.startswith("ok")})


def make_runner(cache: ResultCache | None, extractors: list[CountingExtractor]) -> CheckRunner:
    def factory() -> CountingExtractor:
        extractors.append(CountingExtractor())
        return extractors[-1]

    policy = load_policy('{"properties": {"ok": {"const": true, "description": "must be ok"}}}')
    return CheckRunner(policy=policy, extractor_factory=factory, fingerprint={"schema": "s"}, cache=cache)


def test_runner_outcomes_and_exit_statuses(tmp_path: Path):
    for name, text in (("a.txt", "ok"), ("b.txt", "nope"), ("c.txt", "broken")):
        (tmp_path / name).write_text(text)
    (tmp_path / "d.txt").write_bytes(b"\xff\xfe bad bytes")
    extractors: list[CountingExtractor] = []
    outcomes = make_runner(None, extractors).run(collect_sources([str(tmp_path)]))
    assert [o.status for o in outcomes] == [PASS, VIOLATION, ERROR, ERROR]
    assert [o.error_kind for o in outcomes[2:]] == ["extraction", "input"]
    assert "offset 0" in outcomes[3].error
    assert len(extractors) == 1  # loaded once for the whole run
    assert CheckSummary(outcomes).exit_status() == ExitStatus.FAILED
    assert CheckSummary(outcomes[:1]).exit_status() == ExitStatus.OK
    assert CheckSummary([outcomes[0], outcomes[2]]).exit_status() == ExitStatus.FAILED
    assert CheckSummary([outcomes[0], outcomes[2]], allow_errors=True).exit_status() == ExitStatus.OK
    assert CheckSummary([outcomes[0], outcomes[3]]).exit_status() == ExitStatus.IO
    assert CheckSummary(outcomes, allow_errors=True).exit_status() == ExitStatus.FAILED


def test_cache_hits_unchanged_reruns_changed_and_skips_model_when_all_hit(tmp_path: Path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("ok 1")
    (docs / "b.txt").write_text("ok 2")
    cache = ResultCache(tmp_path / "cache")
    extractors: list[CountingExtractor] = []

    first = make_runner(cache, extractors).run(collect_sources([str(docs)]))
    assert [o.cached for o in first] == [False, False]

    second_runner = make_runner(cache, extractors)
    second = second_runner.run(collect_sources([str(docs)]))
    assert [o.cached for o in second] == [True, True]
    assert [o.to_dict() for o in second] == [o.to_dict() for o in first]
    assert not second_runner.extractor_loaded  # nothing changed: the model is never loaded

    (docs / "b.txt").write_text("not ok any more")
    third = make_runner(cache, extractors).run(collect_sources([str(docs)]))
    assert [o.cached for o in third] == [True, False]
    assert [o.status for o in third] == [PASS, VIOLATION]
    assert extractors[-1].texts == ["not ok any more"]


def test_cache_key_changes_with_the_fingerprint(tmp_path: Path):
    extractors: list[CountingExtractor] = []
    runner = make_runner(None, extractors)
    other = make_runner(None, extractors)
    other.fingerprint = {"schema": "changed"}
    assert runner.cache_key("text") == make_runner(None, extractors).cache_key("text")
    assert runner.cache_key("text") != other.cache_key("text")
    assert runner.cache_key("text") != runner.cache_key("text ")


def test_corrupt_cache_entry_is_a_miss(tmp_path: Path):
    cache = ResultCache(tmp_path / "cache")
    cache.put("ab" + "0" * 62, {"source": "x", "status": "pass"})
    entry = tmp_path / "cache" / "ab" / ("ab" + "0" * 62 + ".json")
    assert entry.is_file()
    entry.write_text("{not json")
    assert cache.get("ab" + "0" * 62) is None
    assert cache.get("cd" + "0" * 62) is None


def test_unwritable_cache_warns_once_and_goes_on(tmp_path: Path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    warnings: list[str] = []
    cache = ResultCache(blocker / "check", warn=warnings.append)
    cache.put("aa" + "0" * 62, {"source": "x"})
    cache.put("bb" + "0" * 62, {"source": "y"})
    assert len(warnings) == 1 and "cannot write the check cache" in warnings[0]


def test_cache_dir_follows_xdg(tmp_path: Path):
    assert default_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "gemmacli" / "check"
    assert default_cache_dir({"HOME": str(tmp_path)}) == tmp_path / ".cache" / "gemmacli" / "check"


def test_atomic_write_leaves_no_temp_files(tmp_path: Path):
    target = tmp_path / "out" / "report.xml"
    write_atomically(target, b"one", make_parents=True)
    write_atomically(target, b"two", make_parents=True)
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["report.xml"]


# ------------------------------------------------------------------------------ CLI, fake extractor


def test_cli_passing_and_violating_examples(fake_cli):
    status, stdout, stderr = fake_cli(str(EXAMPLES / "passing.md"))
    assert status == ExitStatus.OK, stderr
    assert stdout == b""
    assert "pass" in stderr and "1 passed, 0 violated, 0 errors" in stderr

    status, _, stderr = fake_cli(str(EXAMPLES / "violating.md"))
    assert status == ExitStatus.FAILED
    assert "violation" in stderr
    assert "const at /contains_secret" in stderr and "(extracted: true)" in stderr
    assert "Rotate a leaked secret" in stderr  # the rule's description from the policy


def test_cli_folder_glob_and_summary_totals(fake_cli, tmp_path: Path):
    copy_examples(tmp_path / "docs" / "nested")
    (tmp_path / "docs" / "notes.txt").write_text("a plain note")
    status, _, stderr = fake_cli(str(tmp_path / "docs"), "--glob", "*.md")
    assert status == ExitStatus.FAILED
    assert "2 files: 1 passed, 1 violated, 0 errors; cache: 0 hits, 2 misses" in stderr
    status, _, stderr = fake_cli(str(tmp_path / "docs" / "**" / "pass*.md"))
    assert status == ExitStatus.OK
    assert "1 file: 1 passed" in stderr and "cache: 1 hits, 0 misses" in stderr


def test_cli_reports_on_stdout_and_to_file(fake_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    copy_examples(tmp_path / "docs")
    status, stdout, _ = fake_cli("docs", "--format", "junit")
    assert status == ExitStatus.FAILED
    cases = ET.fromstring(stdout).findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == ["docs/passing.md", "docs/violating.md"]
    assert cases[0].find("failure") is None and cases[1].find("failure") is not None

    status, stdout, _ = fake_cli("docs", "-o", "out/gemmacli.sarif")
    assert status == ExitStatus.FAILED and stdout == b""
    report = tmp_path / "out" / "gemmacli.sarif"
    assert report.stat().st_mode & 0o777 == 0o644  # a report is for others (CI uploaders) to read too
    log = json.loads(report.read_text())
    results = log["runs"][0]["results"]
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results}
    assert uris == {"docs/violating.md"}

    status, stdout, _ = fake_cli("docs", "--format", "jsonl")
    records = [json.loads(line) for line in stdout.decode().splitlines()]
    assert [(r["source"], r["status"], r["cached"]) for r in records] == [
        ("docs/passing.md", "pass", True), ("docs/violating.md", "violation", True)]

    status, _, stderr = fake_cli("docs", "-o", "report.txt")
    assert status == ExitStatus.USAGE and "--format" in stderr


def test_cli_reports_a_value_the_repetition_guard_cut_short_in_every_form(
    fake_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A file judged on a value cut short still passes or fails on the policy, but never silently."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "loop.md").write_text("Nothing personal here. LOOPING\n")
    cut = "/pii_types/0: the model repeated itself; the value was ended there"
    for run in ("first", "cached"):
        status, stdout, stderr = fake_cli("docs", "--format", "jsonl")
        assert status == ExitStatus.OK
        (record,) = [json.loads(line) for line in stdout.decode().splitlines()]
        assert record["status"] == "pass" and record["warnings"] == [cut]
        assert record["cached"] is (run == "cached")
        assert f"warning: docs/loop.md: {cut}" in stderr
    status, stdout, _ = fake_cli("docs", "--format", "junit")
    (case,) = ET.fromstring(stdout).findall("./testsuite/testcase")
    assert case.find("failure") is None and case.find("system-err").text == f"warning: {cut}"
    status, stdout, _ = fake_cli("docs", "--format", "sarif")
    run = json.loads(stdout)["runs"][0]
    (result,) = run["results"]
    assert (result["ruleId"], result["level"], result["message"]["text"]) == (REPEAT_GUARD_RULE, "note", cut)
    assert run["tool"]["driver"]["rules"][result["ruleIndex"]]["id"] == REPEAT_GUARD_RULE


def test_cli_second_run_hits_cache_and_reruns_changed_file(fake_cli, tmp_path: Path):
    _, violating = copy_examples(tmp_path / "docs")
    status, _, stderr = fake_cli(str(tmp_path / "docs"))
    assert "cache: 0 hits, 2 misses" in stderr
    assert len(RuleBasedExtractor.instances) == 1

    status, _, stderr = fake_cli(str(tmp_path / "docs"))
    assert status == ExitStatus.FAILED
    assert "cache: 2 hits, 0 misses" in stderr and "(cached)" in stderr
    assert len(RuleBasedExtractor.instances) == 1  # all hits: the model was not even loaded

    violating.write_text("Nothing sensitive here any more.\n")
    status, _, stderr = fake_cli(str(tmp_path / "docs"))
    assert status == ExitStatus.OK
    assert "cache: 1 hits, 1 misses" in stderr
    assert RuleBasedExtractor.instances[-1].texts == ["Nothing sensitive here any more.\n"]

    status, _, stderr = fake_cli(str(tmp_path / "docs"), "--no-cache")
    assert "cache: off" in stderr and len(RuleBasedExtractor.instances[-1].texts) == 2


def test_cli_extraction_errors_fail_unless_allowed(fake_cli, tmp_path: Path):
    passing, _ = copy_examples(tmp_path / "docs")
    broken = tmp_path / "docs" / "broken.md"
    broken.write_text("UNEXTRACTABLE")
    args = (str(passing), str(broken))
    status, _, stderr = fake_cli(*args)
    assert status == ExitStatus.FAILED
    assert "error" in stderr and "max tokens (1024) reached" in stderr
    status, stdout, stderr = fake_cli(*args, "--allow-errors", "--format", "junit")
    assert status == ExitStatus.OK
    assert "1 errors (allowed)" in stderr
    assert ET.fromstring(stdout).findall("./testsuite/testcase")[1].find("skipped") is not None


def test_cli_exit_codes_for_bad_policy_schema_input_and_model(fake_cli, tmp_path: Path):
    bad_policy = tmp_path / "bad.json"
    bad_policy.write_text(json.dumps({"properties": {"risk": {"enum": "low"}}}))
    doc = str(EXAMPLES / "passing.md")
    status, _, stderr = fake_cli(doc, "--policy", str(bad_policy))
    assert status == ExitStatus.SCHEMA
    assert "/properties/risk/enum" in stderr

    status, _, stderr = fake_cli(doc, "--schema", '{"type": "object", "properties": {"a": {"type": 5}}}')
    assert status == ExitStatus.SCHEMA

    status, _, stderr = fake_cli(str(tmp_path / "missing.md"))
    assert status == ExitStatus.IO and "missing.md" in stderr

    status, _, stderr = fake_cli(doc, "--model", str(tmp_path / "no-model-here"))
    assert status == ExitStatus.MODEL


def test_cli_quiet_shows_only_failing_files(fake_cli):
    status, _, stderr = fake_cli(str(EXAMPLES), "-q")
    assert status == ExitStatus.FAILED
    assert "passing.md" not in stderr and "violating.md" in stderr and "1 violated" in stderr
    status, _, stderr = fake_cli(str(EXAMPLES), "-qq")
    assert status == ExitStatus.FAILED and stderr == ""


def test_cli_reads_stdin(fake_cli):
    status, _, stderr = fake_cli("-", stdin=(EXAMPLES / "violating.md").read_bytes())
    assert status == ExitStatus.FAILED and "violation" in stderr
    status, _, _ = fake_cli(stdin=b"a harmless sentence")  # no inputs and stdin not a terminal
    assert status == ExitStatus.OK


# ------------------------------------------------------------------------- acceptance, tiny real model

TEST_SCHEMA = {
    "type": "object",
    "properties": {"kind": {"const": "doc"}, "flagged": {"type": "boolean"}},
    "required": ["kind", "flagged"],
    "additionalProperties": False,
}
PASSING_POLICY = {"title": "kind is doc",
                  "properties": {"kind": {"const": "doc", "description": "always true"}}}
VIOLATING_POLICY = {"title": "kind is secret",
                    "properties": {"kind": {"const": "secret", "description": "never true"}}}


@pytest.fixture()
def real_model(request: pytest.FixtureRequest) -> Path:
    if not hasattr(gemmacli.engine.extractor, "Extractor"):
        pytest.skip("gemmacli.engine.extractor.Extractor is not implemented yet")
    try:
        return Path(request.getfixturevalue("tiny_model_dir"))
    except pytest.FixtureLookupError:
        pytest.skip("the tiny_model_dir fixture is not available yet")


@pytest.fixture()
def real_cli(real_model: Path, tmp_path: Path):
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(TEST_SCHEMA))
    policies = {}
    for name, policy in (("passing", PASSING_POLICY), ("violating", VIOLATING_POLICY)):
        policies[name] = tmp_path / f"{name}-policy.json"
        policies[name].write_text(json.dumps(policy))
    cache_home = tmp_path / "xdg-cache"

    def run(policy: str, *args: str) -> tuple[ExitStatus, bytes, str]:
        argv = ["check", "--schema", str(schema_file), "--policy", str(policies[policy]),
                "--model", str(real_model), "--max-tokens", "64", *args]
        return run_check(argv, cache_home)

    return run


def test_real_model_pass_violation_reports_and_cache(real_cli, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    _, violating = copy_examples(tmp_path / "docs")

    status, _, stderr = real_cli("passing", "docs/passing.md")
    assert status == ExitStatus.OK, stderr
    status, _, stderr = real_cli("violating", "docs/violating.md")
    assert status == ExitStatus.FAILED, stderr
    assert "const at /kind" in stderr and '(extracted: "doc")' in stderr and "never true" in stderr

    status, stdout, stderr = real_cli("violating", "docs", "--format", "junit")
    assert status == ExitStatus.FAILED
    cases = ET.fromstring(stdout).findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == ["docs/passing.md", "docs/violating.md"]
    assert all(c.find("failure") is not None for c in cases)
    assert "cache: 1 hits, 1 misses" in stderr  # violating.md was checked under this policy above

    status, _, stderr = real_cli("violating", "docs", "-o", "report.sarif")
    log = json.loads((tmp_path / "report.sarif").read_text())
    results = log["runs"][0]["results"]
    assert log["version"] == "2.1.0" and log["runs"][0]["tool"]["driver"]["name"] == "gemmacli"
    assert [r["ruleId"] for r in results] == ["/properties/kind/const"] * 2
    assert [r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results] == [
        "docs/passing.md", "docs/violating.md"]
    assert "cache: 2 hits, 0 misses" in stderr

    violating.write_text("This document changed.\n")
    status, _, stderr = real_cli("violating", "docs")
    assert "cache: 1 hits, 1 misses" in stderr


def test_real_model_invalid_policy_exits_3(real_cli, tmp_path: Path):
    (tmp_path / "violating-policy.json").write_text(json.dumps({"properties": {"kind": {"minLength": -1}}}))
    status, _, stderr = real_cli("violating", str(EXAMPLES / "passing.md"))
    assert status == ExitStatus.SCHEMA
    assert "/properties/kind/minLength" in stderr


def test_real_model_through_a_subprocess_keeps_stdout_for_the_report(real_model: Path, tmp_path: Path):
    """The installed entry point, real pipes: stdout holds only the SARIF log, the summary is on stderr."""
    schema_file, policy_file = tmp_path / "schema.json", tmp_path / "policy.json"
    schema_file.write_text(json.dumps(TEST_SCHEMA))
    policy_file.write_text(json.dumps(VIOLATING_POLICY))
    copy_examples(tmp_path / "docs")
    environ = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"), "NO_COLOR": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "gemmacli", "check", "--schema", str(schema_file),
         "--policy", str(policy_file), "--model", str(real_model), "--max-tokens", "64",
         "--format", "sarif", "docs/violating.md"],
        cwd=tmp_path, env=environ, capture_output=True, timeout=300, check=False,
    )
    assert completed.returncode == ExitStatus.FAILED, completed.stderr.decode()
    log = json.loads(completed.stdout)
    (result,) = log["runs"][0]["results"]
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "docs/violating.md"
    assert b"1 violated" in completed.stderr
