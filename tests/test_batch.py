"""Batch layer: in-order records from worker processes, resume after a torn write, fail-fast, fatal errors.

The fake extractor here is module-level so spawned `--jobs` workers can unpickle the factory by name;
test_cli_extract.py imports it too.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gemmacli.errors import ExitStatus, ExtractionFailed, InputOutputError, ModelError
from gemmacli.jobs import batch
from gemmacli.jobs.inputs import Source
from gemmacli.jobs.progress import LineProgress, NoProgress, RichProgress, make_progress
from gemmacli.jobs.records import JsonlFileSink, scan_records, skip_recorded


@dataclass
class FakeResult:
    data: Any
    text: str = ""
    prompt_tokens: int = 7
    generated_tokens: int = 5
    forced_tokens: int = 3
    model_calls: int = 4
    seconds: float = 0.001


class FakeExtractor:
    """Echoes the first line as `name` and the length as `age`; 'FAIL' fails, 'SLOW <s>' sleeps."""

    model_name = "fake-model"
    model_sha256 = "a" * 64
    schema_sha256 = "b" * 64

    def __init__(self, options: batch.ExtractOptions) -> None:
        self.options = options

    def extract(self, text: str) -> FakeResult:
        if "FAIL" in text:
            raise ExtractionFailed("generation reached --max-tokens before the JSON was complete")
        if text.startswith("SLOW "):
            time.sleep(float(text.split()[1]))
        first = text.strip().splitlines()[0] if text.strip() else ""
        data: dict[str, Any] = {"name": first[:40], "age": len(text)}
        if self.options.config.instructions:
            data["instructions"] = self.options.config.instructions
        return FakeResult(data)


def fake_factory(options: batch.ExtractOptions) -> FakeExtractor:
    return FakeExtractor(options)


def broken_model_factory(options: batch.ExtractOptions) -> FakeExtractor:
    raise ModelError("model 'nope' not found", hint="gemmacli model list")


class ListSink:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass


def text_source(name: str, text: str) -> Source:
    return Source(name=name, kind="jsonl", path=None, text=text)


OPTIONS = batch.ExtractOptions(schema={"type": "object"}, model="fake")


@pytest.mark.parametrize("jobs", [1, 2])
def test_records_come_out_in_input_order_even_when_later_ones_finish_first(jobs: int) -> None:
    # the first source is the slowest, so with two workers the others finish before it
    sources = [text_source("s0", "SLOW 0.6\nfirst")] + [text_source(f"s{i}", f"doc {i}") for i in range(1, 6)]
    sink = ListSink()
    summary = batch.run_batch(sources, OPTIONS, sink, jobs=jobs, factory=fake_factory)
    assert [r["source"] for r in sink.records] == [f"s{i}" for i in range(6)]
    assert summary.ok == 6 and summary.status == ExitStatus.OK


def test_a_failing_record_does_not_stop_the_batch() -> None:
    sources = [text_source("a", "alpha"), text_source("b", "FAIL"), text_source("c", "gamma")]
    sink = ListSink()
    summary = batch.run_batch(sources, OPTIONS, sink, factory=fake_factory)
    assert [r["ok"] for r in sink.records] == [True, False, True]
    assert sink.records[1]["error"]["type"] == "extraction"
    assert "max-tokens" in sink.records[1]["error"]["message"]
    assert summary.status == ExitStatus.FAILED
    assert summary.failed == [("b", sink.records[1]["error"]["message"])]


@pytest.mark.parametrize("jobs", [1, 2])
def test_fail_fast_stops_after_the_first_failure_in_input_order(jobs: int) -> None:
    sources = [
        text_source("a", "alpha"),
        text_source("b", "FAIL"),
        *[text_source(f"x{i}", "x") for i in range(6)],
    ]
    sink = ListSink()
    summary = batch.run_batch(sources, OPTIONS, sink, jobs=jobs, factory=fake_factory, fail_fast=True)
    assert [r["source"] for r in sink.records] == ["a", "b"]
    assert summary.stopped_early and summary.status == ExitStatus.FAILED


def test_unreadable_input_is_a_record_with_exit_status_5(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok so far \xff\xfe")
    sink = ListSink()
    summary = batch.run_batch([Source(str(bad), "file", bad)], OPTIONS, sink, factory=fake_factory)
    assert sink.records[0]["error"]["type"] == "input"
    assert "offset 10" in sink.records[0]["error"]["message"]
    assert summary.status == ExitStatus.IO


def test_empty_input_fails_unless_allowed() -> None:
    sink = ListSink()
    batch.run_batch([text_source("e", "  \n")], OPTIONS, sink, factory=fake_factory)
    assert sink.records[0]["ok"] is False and "empty" in sink.records[0]["error"]["message"]
    sink = ListSink()
    allowed = batch.ExtractOptions(schema={}, model="fake", allow_empty=True)
    batch.run_batch([text_source("e", "  \n")], allowed, sink, factory=fake_factory)
    assert sink.records[0]["ok"] is True


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_model_that_cannot_load_stops_the_batch_with_exit_4(jobs: int) -> None:
    sources = [text_source("a", "alpha"), text_source("b", "beta")]
    with pytest.raises(ModelError, match="not found"):
        batch.run_batch(sources, OPTIONS, ListSink(), jobs=jobs, factory=broken_model_factory)


def test_with_meta_adds_model_schema_tokens_and_time() -> None:
    sink = ListSink()
    options = batch.ExtractOptions(schema={}, model="fake", with_meta=True)
    batch.run_batch([text_source("a", "alpha")], options, sink, factory=fake_factory)
    meta = sink.records[0]["meta"]
    assert meta["model"] == "fake-model" and meta["model_sha256"] == "a" * 64
    assert meta["schema_sha256"] == "b" * 64
    assert {"prompt_tokens", "generated_tokens", "forced_tokens", "seconds"} <= set(meta)


def test_resume_drops_a_torn_last_line_and_counts_what_is_recorded(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    lines = [json.dumps({"source": "a", "ok": True, "data": {}}), json.dumps({"source": "b", "ok": False})]
    out.write_text("\n".join(lines) + '\n{"source": "c", "ok": tr')
    sink = JsonlFileSink(out, resume=True)
    assert sink.recorded == Counter({"a": 1, "b": 1})
    sink.write({"source": "c", "ok": True, "data": {"x": 1}})
    sink.close()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["source"] for r in records] == ["a", "b", "c"]


def test_resume_refuses_a_file_that_is_not_gemmacli_records(tmp_path: Path) -> None:
    out = tmp_path / "notes.jsonl"
    out.write_text('{"hello": "world"}\n')
    with pytest.raises(InputOutputError, match="line 1: not a gemmacli record"):
        JsonlFileSink(out, resume=True)


def test_resume_never_cuts_whole_records_after_a_damaged_line(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    content = '{"source": "a", "ok": true}\n{"sourc\n{"source": "b", "ok": true}\n'
    out.write_text(content)
    with pytest.raises(InputOutputError, match="line 2"):
        JsonlFileSink(out, resume=True)
    assert out.read_text() == content  # untouched


def test_resume_keeps_blank_lines_and_reads_schema_hashes_from_meta(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"source": "a", "ok": true, "meta": {"schema_sha256": "abc"}}\n\n')
    found = scan_records(out)
    assert found.sources == Counter({"a": 1}) and found.schema_hashes == {"abc"}
    assert found.good_end == len(out.read_bytes())


def test_without_resume_the_file_is_started_afresh(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"source": "old", "ok": true, "data": {}}\n')
    sink = JsonlFileSink(out, resume=False)
    sink.write({"source": "new", "ok": True, "data": {}})
    sink.close()
    assert [json.loads(x)["source"] for x in out.read_text().splitlines()] == ["new"]


def test_skip_recorded_matches_names_by_occurrence() -> None:
    sources = [text_source(n, n) for n in ["a", "b", "a", "c", "a"]]
    todo = skip_recorded(sources, Counter({"a": 2, "b": 1}))
    assert [s.name for s in todo] == ["c", "a"]


def test_line_progress_prints_every_n_records_and_nothing_when_quiet() -> None:
    import io

    from gemmacli.env import Environment

    stderr = io.StringIO()
    env = Environment(
        stdin=io.BytesIO(),
        stdout=io.BytesIO(),
        stderr=stderr,
        stdin_isatty=False,
        stdout_isatty=False,
        stderr_isatty=False,
        environ={},
    )
    progress = make_progress(env, every=2)
    assert isinstance(progress, LineProgress)
    batch.run_batch(
        [text_source(f"s{i}", "x") for i in range(5)],
        OPTIONS,
        ListSink(),
        factory=fake_factory,
        progress=progress,
    )
    lines = [line for line in stderr.getvalue().splitlines() if line.startswith("progress:")]
    assert [line.split()[1] for line in lines] == ["loading", "2/5", "4/5"]
    assert "docs/s" in lines[1] and "ETA" in lines[1] and "failed" in lines[1]
    env.verbosity = -1
    assert isinstance(make_progress(env, every=2), NoProgress)


def test_the_bar_is_used_on_a_terminal_but_not_for_term_dumb() -> None:
    import io

    from gemmacli.env import Environment

    env = Environment(
        stdin=io.BytesIO(),
        stdout=io.BytesIO(),
        stderr=io.StringIO(),
        stderr_isatty=True,
        environ={"TERM": "xterm-256color"},
    )
    assert isinstance(make_progress(env, every=100), RichProgress)
    # records printed to the same terminal would tear a live bar: plain lines instead
    assert isinstance(make_progress(env, every=100, records_on_terminal=True), LineProgress)
    env = Environment(
        stdin=io.BytesIO(),
        stdout=io.BytesIO(),
        stderr=io.StringIO(),
        stderr_isatty=True,
        environ={"TERM": "dumb"},
    )
    assert isinstance(make_progress(env, every=100), LineProgress)
