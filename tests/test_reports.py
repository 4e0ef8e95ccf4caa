"""Report writers: JSON Lines records, JUnit XML that parses with one testcase per file, SARIF 2.1.0.

No PyPI package ships the SARIF 2.1.0 JSON Schema (sarif-om, sarif-tools, jschema-to-python,
sarif-pydantic, pysarif and check-jsonschema were inspected), so the SARIF test asserts what GitHub code
scanning requires: version, runs[].tool.driver.name and rules, results[].ruleId, level, message.text and
locations[].physicalLocation.artifactLocation.uri, plus that ruleIndex points at the rule.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gemmacli.jobs.policy import ERROR, EXTRACTION_ERROR_RULE, FileOutcome, judge, load_policy
from gemmacli.jobs.reports import format_for_path, jsonl_report, junit_report, render, sarif_report

POLICY_TEXT = json.dumps({
    "title": "No secrets",
    "properties": {
        "contains_secret": {"const": False, "description": "Documents must not contain credentials."},
        "risk": {"enum": ["none", "low"]},
    },
})


@pytest.fixture()
def policy():
    return load_policy(POLICY_TEXT)


@pytest.fixture()
def outcomes(policy, tmp_path: Path) -> list[FileOutcome]:
    """A pass, a violation with two failed keywords, and an extraction error, in a nested folder."""
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    good, bad, broken = (tmp_path / "docs" / "good.md", tmp_path / "docs" / "sub" / "bad.md",
                         tmp_path / "docs" / "broken.md")
    for path in (good, bad, broken):
        path.write_text("x", encoding="utf-8")
    return [
        judge(policy, "docs/good.md", good, {"contains_secret": False, "risk": "none"}),
        # A model value with a control character: the XML writer must still produce parseable XML.
        judge(policy, "docs/sub/bad.md", bad, {"contains_secret": True, "risk": "high\x00\x1b"}),
        FileOutcome(source="docs/broken.md", path=broken, status=ERROR, error="max tokens reached",
                    error_kind="extraction"),
    ]


def test_jsonl_has_one_record_per_file_in_order(outcomes):
    records = [json.loads(line) for line in jsonl_report(outcomes).decode().splitlines()]
    assert [r["source"] for r in records] == ["docs/good.md", "docs/sub/bad.md", "docs/broken.md"]
    assert [r["status"] for r in records] == ["pass", "violation", "error"]
    violation = records[1]["violations"][0]
    assert violation == {
        "path": "/contains_secret", "rule": "const", "rule_id": "/properties/contains_secret/const",
        "message": "must be false", "value": True,
        "description": "Documents must not contain credentials.",
    }
    assert records[2]["error"] == {"type": "extraction", "message": "max tokens reached"}
    assert all(record["cached"] is False for record in records)


def test_junit_parses_with_one_testcase_per_file(outcomes, policy):
    root = ET.fromstring(junit_report(outcomes, policy))
    cases = root.findall("./testsuite/testcase")
    assert [case.get("name") for case in cases] == ["docs/good.md", "docs/sub/bad.md", "docs/broken.md"]
    good, bad, broken = cases
    assert good.find("failure") is None and good.find("error") is None
    (failure,) = bad.findall("failure")  # one per testcase, listing every violation
    assert failure.get("type") == "const,enum"
    assert failure.get("message").startswith("2 policy violations: /contains_secret: must be false")
    assert "Documents must not contain credentials." in failure.get("message")
    assert failure.text.splitlines()[1].startswith('/risk: must be one of "none", "low"')
    assert broken.find("error").get("message") == "max tokens reached"
    suite = root.find("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    assert "No secrets" in suite.get("name")


def test_junit_marks_errors_skipped_when_allowed(outcomes, policy):
    root = ET.fromstring(junit_report(outcomes, policy, allow_errors=True))
    broken = root.findall("./testsuite/testcase")[2]
    assert broken.find("error") is None
    assert broken.find("skipped").get("message") == "max tokens reached"
    assert root.find("testsuite").get("errors") == "0"


def test_sarif_has_what_code_scanning_requires(outcomes, policy, tmp_path: Path):
    log = json.loads(sarif_report(outcomes, policy, base_dir=tmp_path))
    assert log["version"] == "2.1.0"
    assert "sarif-schema-2.1.0" in log["$schema"]
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "gemmacli"
    rule_ids = [rule["id"] for rule in driver["rules"]]
    # One rule per failed policy keyword, plus one for files that could not be extracted.
    assert rule_ids == ["/properties/contains_secret/const", "/properties/risk/enum", EXTRACTION_ERROR_RULE]
    assert driver["rules"][0]["shortDescription"]["text"] == "Documents must not contain credentials."
    results = run["results"]
    assert [r["ruleId"] for r in results] == rule_ids
    for result in results:
        assert result["level"] == "error"
        assert result["message"]["text"]
        assert driver["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
        (location,) = result["locations"]
        assert location["physicalLocation"]["artifactLocation"]["uri"]
    uris = [r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results]
    # Relative to the repository root with '/' separators, each pointing at its own file.
    assert uris == ["docs/sub/bad.md", "docs/sub/bad.md", "docs/broken.md"]
    assert (tmp_path / uris[0]).is_file()


def test_sarif_outside_base_dir_gets_absolute_file_uri(outcomes, policy, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    log = json.loads(sarif_report(outcomes, policy, base_dir=elsewhere))
    uri = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
    assert uri.startswith("file:///") and uri.endswith("/docs/sub/bad.md")


def test_sarif_allowed_errors_are_warnings(outcomes, policy):
    log = json.loads(sarif_report(outcomes, policy, allow_errors=True))
    levels = {r["ruleId"]: r["level"] for r in log["runs"][0]["results"]}
    assert levels[EXTRACTION_ERROR_RULE] == "warning"


def test_render_dispatches_and_format_guess():
    assert format_for_path("report.xml") == "junit"
    assert format_for_path("out/gemmacli.sarif") == "sarif"
    assert format_for_path("results.jsonl") == "jsonl"
    assert format_for_path("results.txt") is None
    with pytest.raises(ValueError):
        render("csv", [], load_policy(POLICY_TEXT))
