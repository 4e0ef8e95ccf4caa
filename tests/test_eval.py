"""`gemmacli eval`: the scorer on hand-made labels with known scores, and the command on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli import run_cli  # tests/cli.py

from gemmacli.errors import UsageError
from gemmacli.jobs.evaluate import Scorer, normalise, read_labelled

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": ["string", "null"]},
        "mood": {"type": "string", "enum": ["happy", "sad"]},
        "tags": {"type": "array", "items": {"type": "string"}},
        "address": {"type": "object", "properties": {"city": {"type": ["string", "null"]},
                                                     "zip": {"type": ["string", "null"]}}},
    },
}


def test_normalisation_ignores_case_whitespace_and_trailing_punctuation() -> None:
    assert normalise("  Ada   LOVELACE. ") == normalise("ada lovelace")
    assert normalise(36) == normalise(36.0) and normalise(True) != normalise(1.0)
    assert normalise("(c)") == "(c)" and normalise("50%") == "50%"


def test_scalars_nulls_and_hallucinations() -> None:
    scorer = Scorer(SCHEMA)
    scorer.add({"name": "ada", "mood": "happy"}, {"name": "Ada.", "mood": "happy"})
    scorer.add({"name": "Bob", "mood": "sad"}, {"name": None, "mood": "happy"})   # invented, confused
    scorer.add({"name": None, "mood": "sad"}, {"name": "Cy", "mood": "sad"})      # missed
    scorer.add({"name": None, "mood": "sad"}, {"name": None, "mood": "sad"})      # null == null
    name, mood = scorer.fields["name"], scorer.fields["mood"]
    assert (name.correct, name.total, name.hallucinated, name.missed) == (2, 4, 1, 1)
    assert (mood.correct, mood.total) == (3, 4)
    assert mood.confusions.most_common(1) == [(('"happy"', '"sad"'), 1)]
    assert scorer.overall == pytest.approx((0.5 + 0.75) / 2)


def test_lists_are_scored_as_micro_sets() -> None:
    scorer = Scorer(SCHEMA)
    scorer.add({"tags": ["a", "B", "x"]}, {"tags": ["A", "b", "c"]})   # tp 2, fp 1, fn 1
    scorer.add({"tags": ["y"]}, {"tags": []})                          # fp 1, hallucinated
    tags = scorer.fields["tags[]"]
    assert (tags.true_positives, tags.false_positives, tags.false_negatives) == (2, 2, 1)
    assert tags.precision == pytest.approx(0.5) and tags.recall == pytest.approx(2 / 3)
    assert tags.f1 == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)) and tags.hallucinated == 1


def test_nested_objects_field_by_field_and_failures_count_as_wrong() -> None:
    scorer = Scorer(SCHEMA)
    scorer.add({"address": {"city": "Paris", "zip": None}}, {"address": {"city": "paris", "zip": "75001"}})
    scorer.add(None, {"address": {"city": None, "zip": None}}, failed=True)
    city, zipcode = scorer.fields["address.city"], scorer.fields["address.zip"]
    assert (city.correct, city.total) == (1, 2)
    assert (zipcode.correct, zipcode.total, zipcode.missed) == (0, 2, 1)
    assert scorer.failures == 1 and scorer.report()["failures"] == 1


def test_labelled_records_need_text_and_label_and_unique_ids(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": 1, "text": "a", "label": {}}\n{"id": 1, "text": "b", "label": {}}\n')
    with pytest.raises(UsageError, match="appears twice"):
        read_labelled(path)
    assert [r.id for r in read_labelled(path, limit=1)] == ["1"]
    path.write_text('{"id": 1, "body": "a"}\n')
    with pytest.raises(UsageError, match="needs a string 'text'"):
        read_labelled(path)


def test_eval_command_reports_scores_and_gates(tiny_model_dir: Path, tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"mood": {"type": "string", "enum": ["happy", "sad"]}},
              "required": ["mood"], "additionalProperties": False}
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "text": f"text {i}", "label": {"mood": m}}) + "\n"
                            for i, m in enumerate(["happy", "sad", "happy"])))
    argv = ["eval", "--schema", json.dumps(schema), "--data", str(data), "-m", str(tiny_model_dir)]
    environ = {"HOME": str(tmp_path), "NO_COLOR": "1"}
    result = run_cli([*argv, "-o", str(tmp_path / "r.json")], environ=environ)
    assert result.status == 0, result.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["records"] == 3 and report["failures"] == 0 and set(report["fields"]) == {"mood"}
    assert report["fields"]["mood"]["total"] == 3 and "overall" in result.stderr
    assert report["seconds_per_record"] is not None and report["records_per_second"] > 0
    gated = run_cli([*argv, "--min-score", str(min(1.0, report["overall"] + 0.01)), "-f", "json"],
                    environ=environ)
    assert gated.status == (0 if report["overall"] >= 1.0 else 1) and json.loads(gated.stdout)["records"] == 3
    assert run_cli([*argv, "--min-score", "2"], environ=environ).status == 2
