"""`gemmacli extract` through raw_main with swapped streams.

The first part runs the real CLI against a fake Extractor (the EXTRACTOR_FACTORY seam) to pin down input,
output, resume and exit-code behaviour quickly; test_cli_extract_model.py-style acceptance tests that
drive the real tiny model live at the bottom of this file (`real_model` fixture) and in subprocesses.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gemmacli.cli import extract_cmd

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))
from cli import run_cli  # noqa: E402
from test_batch import FakeExtractor, fake_factory  # noqa: E402


class NoStdin(io.BytesIO):
    """A terminal nobody types into: reading it would hang the real CLI, so here it fails the test."""

    def read(self, *args: Any) -> bytes:
        raise AssertionError("the CLI read stdin although it is a terminal and no input was named")


run = run_cli


# ------------------------------------------------------------------------------- with a fake extractor


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Swap in the fake Extractor; returns the `-m FOLDER` arguments naming a (fake) model folder."""
    monkeypatch.setattr(extract_cmd, "EXTRACTOR_FACTORY", fake_factory)
    folder = tmp_path / "models" / "fake"
    folder.mkdir(parents=True)
    (folder / "gemmacli.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    return ["-m", str(folder)]


SCHEMA = ["--schema", "name, age int"]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def test_stdin_gives_one_compact_object_when_piped(fake: list[str]) -> None:
    result = run(["extract", *SCHEMA, *fake], b"Ada Lovelace\n")
    assert result.status == 0
    assert result.stdout == b'{"name":"Ada Lovelace","age":13}\n'
    assert result.stderr == ""


def test_pretty_on_a_terminal_and_the_flags_force_either_way(fake: list[str]) -> None:
    pretty = run(["extract", *SCHEMA, *fake], b"Ada", stdout_isatty=True)
    assert pretty.stdout.decode() == '{\n  "name": "Ada",\n  "age": 3\n}\n'
    assert run(["extract", *SCHEMA, *fake, "--compact"], b"Ada", stdout_isatty=True).stdout.count(b"\n") == 1
    assert run(["extract", *SCHEMA, *fake, "--pretty"], b"Ada").stdout.count(b"\n") == 4


def test_dash_reads_stdin_with_the_concise_schema_from_the_issue(fake: list[str]) -> None:
    schema = "name, age int, email?: their email, tags [str], mood enum(happy|sad)"
    result = run(["extract", "--schema", schema, *fake, "-"], b"Bob")
    assert result.status == 0 and result.json()["name"] == "Bob"


def test_several_files_give_json_lines_in_input_order(fake: list[str], tmp_path: Path) -> None:
    for name in ["b", "a", "c"]:
        write(tmp_path / "notes" / f"{name}.txt", f"note {name}")
    result = run(["extract", *SCHEMA, *fake, "notes/b.txt", "notes"])
    assert result.status == 0
    assert [(r["source"], r["ok"]) for r in result.records()] == [
        ("notes/b.txt", True),
        ("notes/a.txt", True),
        ("notes/b.txt", True),
        ("notes/c.txt", True),
    ]
    assert result.records()[0]["data"] == {"name": "note b", "age": 6}


def test_unexpanded_globs_and_glob_filter(fake: list[str], tmp_path: Path) -> None:
    write(tmp_path / "in" / "x.txt", "x")
    write(tmp_path / "in" / "y.md", "y")
    write(tmp_path / "in" / "deep" / "z.txt", "z")
    assert [r["source"] for r in run(["extract", *SCHEMA, *fake, "in/*.txt"]).records()] == ["in/x.txt"]
    filtered = run(["extract", *SCHEMA, *fake, "in", "--glob", "*.txt"]).records()
    assert [r["source"] for r in filtered] == ["in/deep/z.txt", "in/x.txt"]  # sorted by path


def test_input_jsonl_with_text_and_id_fields(fake: list[str], tmp_path: Path) -> None:
    write(tmp_path / "tickets.jsonl", '{"id": "T1", "body": "first"}\n{"id": "T2", "body": "second"}\n')
    result = run(
        [
            "extract",
            *SCHEMA,
            *fake,
            "--input-jsonl",
            "tickets.jsonl",
            "--text-field",
            "body",
            "--id-field",
            "id",
        ]
    )
    assert [(r["source"], r["data"]["name"]) for r in result.records()] == [("T1", "first"), ("T2", "second")]


def test_a_failed_record_gives_exit_1_and_the_batch_goes_on(fake: list[str], tmp_path: Path) -> None:
    write(tmp_path / "in" / "1.txt", "fine")
    write(tmp_path / "in" / "2.txt", "FAIL please")
    write(tmp_path / "in" / "3.txt", "also fine")
    result = run(["extract", *SCHEMA, *fake, "in"])
    assert result.status == 1
    assert [r["ok"] for r in result.records()] == [True, False, True]
    assert result.records()[1]["error"]["message"]
    assert "3 record(s): 2 ok, 1 failed" in result.stderr and "in/2.txt" in result.stderr
    fail_fast = run(["extract", *SCHEMA, *fake, "in", "--fail-fast"])
    assert fail_fast.status == 1 and len(fail_fast.records()) == 2


def test_single_input_failure_is_exit_1_with_the_reason_on_stderr(fake: list[str]) -> None:
    result = run(["extract", *SCHEMA, *fake], b"FAIL")
    assert result.status == 1 and result.stdout == b""
    assert "max-tokens" in result.stderr


def test_output_file_for_one_result_is_written_atomically(fake: list[str], tmp_path: Path) -> None:
    write(tmp_path / "old.json", "previous content")
    result = run(["extract", *SCHEMA, *fake, "-o", "old.json"], b"Ada")
    assert result.status == 0 and result.stdout == b""
    assert json.loads((tmp_path / "old.json").read_text()) == {"name": "Ada", "age": 3}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_output_file_inside_an_input_folder_is_not_read_back(fake: list[str], tmp_path: Path) -> None:
    write(tmp_path / "in" / "a.txt", "a")
    write(tmp_path / "in" / "b.txt", "b")
    run(["extract", *SCHEMA, *fake, "in", "-o", "in/out.jsonl"])
    second = run(["extract", *SCHEMA, *fake, "in", "-o", "in/out.jsonl"])
    assert second.status == 0
    lines = (tmp_path / "in" / "out.jsonl").read_text().splitlines()
    assert [json.loads(x)["source"] for x in lines] == ["in/a.txt", "in/b.txt"]


def test_resume_skips_recorded_sources_and_repairs_a_torn_line(fake: list[str], tmp_path: Path) -> None:
    for i in range(5):
        write(tmp_path / "in" / f"{i}.txt", f"doc {i}")
    out = tmp_path / "out.jsonl"
    first = json.dumps({"source": "in/0.txt", "ok": True, "data": {"name": "doc 0", "age": 5}})
    second = json.dumps({"source": "in/1.txt", "ok": True, "data": {"name": "doc 1", "age": 5}})
    out.write_text(first + "\n" + second + '\n{"source": "in/2.txt", "ok": tr')
    result = run(["extract", *SCHEMA, *fake, "in", "-o", str(out), "--resume"])
    assert result.status == 0
    assert "2 of 5 already recorded, 3 to go" in result.stderr
    sources = [json.loads(line)["source"] for line in out.read_text().splitlines()]
    assert sources == [f"in/{i}.txt" for i in range(5)]


def test_resume_refuses_a_file_made_with_another_schema(fake: list[str], tmp_path: Path) -> None:
    write(tmp_path / "in" / "a.txt", "a")
    write(tmp_path / "in" / "b.txt", "b")
    write(
        tmp_path / "out.jsonl",
        json.dumps({"source": "in/a.txt", "ok": True, "meta": {"schema_sha256": "0"}}) + "\n",
    )
    before = (tmp_path / "out.jsonl").read_bytes()
    result = run(["extract", *SCHEMA, *fake, "in", "-o", "out.jsonl", "--resume"])
    assert result.status == 2 and "another configuration: schema" in result.stderr
    assert (tmp_path / "out.jsonl").read_bytes() == before  # refused before anything changed


def test_resume_needs_an_output_file(fake: list[str]) -> None:
    result = run(["extract", *SCHEMA, *fake, "--resume"], b"x")
    assert result.status == 2 and "--resume needs -o" in result.stderr


def test_with_meta_single_and_batch(fake: list[str], tmp_path: Path) -> None:
    single = run(["extract", *SCHEMA, *fake, "--with-meta"], b"Ada").json()
    assert single["ok"] is True and single["data"]["name"] == "Ada"
    assert {"model", "model_sha256", "schema_sha256", "prompt_tokens", "seconds"} <= set(single["meta"])
    write(tmp_path / "in" / "a.txt", "a")
    write(tmp_path / "in" / "b.txt", "b")
    assert all("meta" in r for r in run(["extract", *SCHEMA, *fake, "in", "--with-meta"]).records())


def test_records_flag_keeps_the_json_lines_shape_for_one_input(fake: list[str]) -> None:
    assert run(["extract", *SCHEMA, *fake, "--records"], b"Ada").records()[0]["source"] == "-"


def test_no_input_on_a_terminal_prints_usage_and_exits_2_without_reading(fake: list[str]) -> None:
    result = run(["extract", *SCHEMA, *fake], NoStdin(), stdin_isatty=True)
    assert result.status == 2
    assert "usage: gemmacli extract" in result.stderr and "no input" in result.stderr


def test_empty_input_is_exit_1_unless_allowed(fake: list[str]) -> None:
    empty = run(["extract", *SCHEMA, *fake], b"  \n")
    assert empty.status == 1 and "empty" in empty.stderr and "--allow-empty" in empty.stderr
    assert run(["extract", *SCHEMA, *fake, "--allow-empty"], b"").status == 0


def test_non_utf8_is_exit_5_naming_file_and_offset_unless_replaced(fake: list[str], tmp_path: Path) -> None:
    write(tmp_path / "latin.txt", "naïve".encode("latin-1"))
    result = run(["extract", *SCHEMA, *fake, "latin.txt"])
    assert result.status == 5 and "latin.txt" in result.stderr and "offset 2" in result.stderr
    assert run(["extract", *SCHEMA, *fake, "latin.txt", "--errors", "replace"]).status == 0
    latin = run(["extract", *SCHEMA, *fake, "latin.txt", "--encoding", "latin-1"])
    assert latin.json()["name"] == "naïve"


def test_missing_input_file_is_exit_5(fake: list[str]) -> None:
    result = run(["extract", *SCHEMA, *fake, "nope.txt"])
    assert result.status == 5 and "nope.txt" in result.stderr


def test_schema_problems_are_exit_3(fake: list[str]) -> None:
    bad_type = run(["extract", "--schema", '{"type": "objekt"}', *fake], b"x")
    assert bad_type.status == 3
    bad_dsl = run(["extract", "--schema", "name, age innt", *fake], b"x")
    assert bad_dsl.status == 3 and "column 11" in bad_dsl.stderr


def test_lenient_drops_what_the_decoder_cannot_enforce_with_a_warning(fake: list[str]) -> None:
    schema = json.dumps({"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}})
    strict = run(["extract", "--schema", schema, *fake], b"x")
    assert strict.status == 3 and "uniqueItems" in strict.stderr and "/properties/tags" in strict.stderr
    lenient = run(["extract", "--schema", schema, *fake, "--lenient"], b"x")
    assert lenient.status == 0 and "warning:" in lenient.stderr and "uniqueItems" in lenient.stderr


def test_instructions_come_inline_or_from_a_file(fake: list[str], tmp_path: Path) -> None:
    assert (
        run(["extract", *SCHEMA, *fake, "--instructions", "be brief"], b"x").json()["instructions"]
        == "be brief"
    )
    write(tmp_path / "howto.txt", "dates as ISO 8601")
    from_file = run(["extract", *SCHEMA, *fake, "--instructions", "@howto.txt"], b"x")
    assert from_file.json()["instructions"] == "dates as ISO 8601"
    assert run(["extract", *SCHEMA, *fake, "--instructions", "@missing.txt"], b"x").status == 5


def test_a_missing_model_is_exit_4(fake: list[str], tmp_path: Path) -> None:
    result = run(
        ["extract", *SCHEMA, "-m", "no-such-model"],
        b"x",
        environ={"GEMMACLI_MODELS": str(tmp_path / "empty"), "XDG_CACHE_HOME": str(tmp_path)},
    )
    assert result.status == 4 and "no-such-model" in result.stderr


def test_the_default_model_comes_from_gemmacli_model(fake: list[str]) -> None:
    folder = fake[1]
    result = run(["extract", *SCHEMA, "-v"], b"x", environ={"GEMMACLI_MODEL": folder})
    assert result.status == 0 and f"model: {folder}" in result.stderr


@pytest.mark.parametrize(
    "argv",
    [
        ["extract"],
        ["extract", *SCHEMA, "--jobs", "-1"],
        ["extract", "--bogus"],
        ["extract", *SCHEMA, "--top-p", "0"],
    ],
)
def test_usage_errors_are_exit_2(fake: list[str], argv: list[str]) -> None:
    assert run(argv, b"x").status == 2


def test_verbose_says_which_reading_of_schema_was_taken(fake: list[str], tmp_path: Path) -> None:
    write(tmp_path / "s.json", '{"type": "object"}')
    readings = {
        "s.json": "as the file s.json",
        '{"type": "object"}': "as inline JSON",
        "contact": "as the bundled schema",
        "name, age int": "as the concise syntax",
    }
    for schema, words in readings.items():
        result = run(["extract", "--schema", schema, *fake, "-v"], b"x")
        assert result.status == 0, result.stderr
        assert words in result.stderr


def test_messages_quote_schemas_and_paths_verbatim(fake: list[str], tmp_path: Path) -> None:
    write(tmp_path / "[in]" / "a.txt", "a")
    write(tmp_path / "[in]" / "b.txt", "b")
    result = run(["extract", "--schema", "tags [str], n [int]", *fake, "[in]", "-o", "[out].jsonl", "-v"])
    assert result.status == 0
    assert "'tags [str], n [int]'" in result.stderr and "to [out].jsonl" in result.stderr


def test_a_lone_unknown_word_is_a_missing_bundled_schema_not_a_one_field_schema(fake: list[str]) -> None:
    """A mistyped (or, in a broken install, missing) bundled name must not become `{"invoce": str}`."""
    result = run(["extract", "--schema", "invoce", *fake], b"x")
    assert result.status == 3
    assert "no bundled schema is named 'invoce'" in result.stderr and "'invoce str'" in result.stderr


def test_help_shows_examples_right_after_usage_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["extract", "--help"]).status == 0
    text = capsys.readouterr().out
    assert text.startswith("usage:")
    assert text.index("usage:") < text.index("examples:") < text.index("options:")
    assert "130" in text and "model missing or broken" in text
    assert run(["--help"]).status == 0
    assert "\n\nexamples:\n" in capsys.readouterr().out


def test_quiet_batch_prints_nothing_on_stderr(fake: list[str], tmp_path: Path) -> None:
    write(tmp_path / "in" / "a.txt", "a")
    write(tmp_path / "in" / "b.txt", "b")
    result = run(["extract", *SCHEMA, *fake, "in", "-q"])
    assert result.status == 0 and result.stderr == ""


def test_progress_bar_on_a_terminal_shows_counts_rate_and_failures(fake: list[str], tmp_path: Path) -> None:
    for i in range(3):
        write(tmp_path / "in" / f"{i}.txt", "FAIL" if i == 1 else f"doc {i}")
    result = run(["extract", *SCHEMA, *fake, "in"], stderr_isatty=True, environ={"TERM": "xterm"})
    assert "3/3" in result.stderr and "docs/s" in result.stderr and "1 failed" in result.stderr


def test_plain_progress_lines_when_stderr_is_not_a_terminal(fake: list[str], tmp_path: Path) -> None:
    for i in range(4):
        write(tmp_path / "in" / f"{i}.txt", f"doc {i}")
    result = run(["extract", *SCHEMA, *fake, "in", "--progress-every", "2"])
    assert "progress: 2/4 done" in result.stderr and "\x1b[" not in result.stderr


def test_no_color_keeps_stderr_free_of_escape_codes_on_a_terminal(fake: list[str]) -> None:
    result = run(
        ["extract", *SCHEMA, *fake], b"FAIL", stderr_isatty=True, environ={"NO_COLOR": "1", "TERM": "xterm"}
    )
    assert result.status == 1 and "error:" in result.stderr and "\x1b[" not in result.stderr
    coloured = run(["extract", *SCHEMA, *fake], b"FAIL", stderr_isatty=True, environ={"TERM": "xterm"})
    assert "\x1b[" in coloured.stderr


class ClosedPipe(io.BytesIO):
    def write(self, data: Any) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_stdout_pipe_exits_quietly(fake: list[str], tmp_path: Path) -> None:
    for i in range(3):
        write(tmp_path / "in" / f"{i}.txt", f"doc {i}")
    result = run(["extract", *SCHEMA, *fake, "in"], stdout=ClosedPipe())
    assert result.status == 0 and "Traceback" not in result.stderr and "error" not in result.stderr


class InterruptingExtractor(FakeExtractor):
    def extract(self, text: str) -> Any:
        if "STOP" in text:
            raise KeyboardInterrupt
        return super().extract(text)


def test_ctrl_c_is_exit_130_and_keeps_what_was_written(
    fake: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(extract_cmd, "EXTRACTOR_FACTORY", InterruptingExtractor)
    for i, text in enumerate(["one", "two", "STOP", "four"]):
        write(tmp_path / "in" / f"{i}.txt", text)
    result = run(["extract", *SCHEMA, *fake, "in", "-o", "out.jsonl"])
    assert result.status == 130
    assert "rerun with --resume" in result.stderr
    assert [json.loads(x)["source"] for x in (tmp_path / "out.jsonl").read_text().splitlines()] == [
        "in/0.txt",
        "in/1.txt",
    ]


def test_jobs_2_writes_the_same_records_in_the_same_order(fake: list[str], tmp_path: Path) -> None:
    write(tmp_path / "in" / "0.txt", "SLOW 0.5\nslow one")
    for i in range(1, 6):
        write(tmp_path / "in" / f"{i}.txt", f"doc {i}")
    serial = run(["extract", *SCHEMA, *fake, "in"])
    parallel = run(["extract", *SCHEMA, *fake, "in", "--jobs", "2"])
    assert parallel.status == 0 and parallel.stdout == serial.stdout


# --------------------------------------------------------------------- against the real tiny model
#
# The tiny model has random weights: what it writes inside strings is noise, but every output must still
# validate, and the CLI's behaviour (shapes, order, exit codes, resume) must hold. BOUNDED keeps outputs
# short (enum, bool, bounded integer) so these tests stay fast on two cores.

BOUNDED = {
    "type": "object",
    "properties": {
        "mood": {"enum": ["happy", "sad", "neutral"], "description": "how the writer feels"},
        "urgent": {"type": "boolean"},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["mood", "urgent", "score"],
    "additionalProperties": False,
}
EXAMPLES = TESTS / "examples"


@pytest.fixture(scope="module")
def real_model(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("tiny_model_dir"))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.json").write_text(json.dumps(BOUNDED))
    return tmp_path


def notes(folder: Path, count: int) -> list[str]:
    texts = [p.read_text() for p in sorted(EXAMPLES.glob("*.txt"))]
    names = []
    for i in range(count):
        path = folder / f"note{i:02d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(texts[i % len(texts)])
        names.append(str(path.relative_to(folder.parent)) if folder.parent != Path() else str(path))
    return names


def test_real_cat_mail_into_the_contact_schema_file(real_model: str, workdir: Path) -> None:
    # cat mail.txt | gemmacli extract --schema schemas/contact.json
    schema_path = REPO / "schemas" / "contact.json"
    result = run(
        ["extract", "--schema", str(schema_path), "-m", real_model], (EXAMPLES / "contact.txt").read_bytes()
    )
    assert result.status == 0, result.stderr
    jsonschema.validate(result.json(), json.loads(schema_path.read_text()))


def test_real_bundled_invoice_over_a_glob_with_two_jobs(real_model: str, workdir: Path) -> None:
    # gemmacli extract --schema invoice notes/*.txt -o invoices.jsonl --jobs 2
    write(workdir / "notes" / "a.txt", (EXAMPLES / "invoice.txt").read_text())
    write(workdir / "notes" / "b.txt", "Invoice 7 from Acme: 2 widgets at 3.50 EUR, total 7.00 EUR.")
    result = run(
        [
            "extract",
            "--schema",
            "invoice",
            "notes/*.txt",
            "-o",
            "invoices.jsonl",
            "--jobs",
            "2",
            "-m",
            real_model,
            "--max-tokens",
            "200",
        ]
    )
    records = [json.loads(x) for x in (workdir / "invoices.jsonl").read_text().splitlines()]
    assert [r["source"] for r in records] == ["notes/a.txt", "notes/b.txt"]
    invoice = json.loads((REPO / "schemas" / "invoice.json").read_text())
    for record in records:  # random weights may exhaust the budget; a success must validate
        if record["ok"]:
            jsonschema.validate(record["data"], invoice)
        else:
            assert "max-tokens" in record["error"]["message"]
    assert result.status == (0 if all(r["ok"] for r in records) else 1)


def test_real_concise_schema_from_stdin_dash(real_model: str, workdir: Path) -> None:
    # gemmacli extract --schema 'name, age int, email?: their email, tags [str], mood enum(happy|sad)' -
    from gemmacli.schema.dsl import parse_dsl

    schema = "name, age int, email?: their email, tags [str], mood enum(happy|sad)"
    result = run(
        ["extract", "--schema", schema, "-", "-m", real_model, "--max-tokens", "64"],
        b"Ada, 36, ada@example.com, likes maths and poetry; happy.",
    )
    if result.status == 0:
        jsonschema.validate(result.json(), parse_dsl(schema))
    else:  # reaching the budget is a failure, never a truncated object
        assert result.status == 1 and result.stdout == b"" and "max-tokens" in result.stderr
    assert (
        run(
            ["extract", "--schema", "mood enum(happy|sad), ok bool", "-", "-m", real_model], b"I am thrilled"
        ).status
        == 0
    )


def test_real_input_jsonl_with_text_and_id_fields(real_model: str, workdir: Path) -> None:
    # gemmacli extract --schema s.json --input-jsonl tickets.jsonl --text-field body --id-field id
    lines = [
        {"id": f"T{i}", "body": text} for i, text in enumerate(["printer on fire", "love the app", "meh"])
    ]
    write(workdir / "tickets.jsonl", "".join(json.dumps(x) + "\n" for x in lines))
    result = run(
        [
            "extract",
            "--schema",
            "s.json",
            "--input-jsonl",
            "tickets.jsonl",
            "--text-field",
            "body",
            "--id-field",
            "id",
            "-m",
            real_model,
        ]
    )
    assert result.status == 0, result.stderr
    records = result.records()
    assert [r["source"] for r in records] == ["T0", "T1", "T2"]
    for record in records:
        jsonschema.validate(record["data"], BOUNDED)


def test_real_jobs_2_gives_the_same_bytes_in_the_same_order_as_jobs_1(real_model: str, workdir: Path) -> None:
    notes(workdir / "in", 5)
    one = run(["extract", "--schema", "s.json", "in", "-m", real_model, "--with-meta"])
    two = run(["extract", "--schema", "s.json", "in", "-m", real_model, "--jobs", "2"])
    assert one.status == two.status == 0, two.stderr
    assert [r["source"] for r in two.records()] == [f"in/note{i:02d}.txt" for i in range(5)]
    assert [r["data"] for r in two.records()] == [r["data"] for r in one.records()]  # greedy: deterministic
    meta = one.records()[0]["meta"]
    assert len(meta["schema_sha256"]) == 64 and meta["generated_tokens"] + meta["forced_tokens"] > 0


def test_real_exit_codes(real_model: str, workdir: Path) -> None:
    text = b"The parcel arrived broken and nobody answers the phone."
    assert run(["extract", "--schema", "s.json", "-m", real_model], text).status == 0
    budget = run(["extract", "--schema", "s.json", "-m", real_model, "--max-tokens", "2"], text)
    assert budget.status == 3 and "raise --max-tokens to at least" in budget.stderr and budget.stdout == b""
    assert run(["extract", "--schema", "s.json", "-m", real_model], NoStdin(), stdin_isatty=True).status == 2
    assert run(["extract", "--schema", '{"type": "object", "not": {}}', "-m", real_model], text).status == 3
    broken = workdir / "broken-model"
    broken.mkdir()
    (broken / "gemmacli.json").write_text("{}")
    assert run(["extract", "--schema", "s.json", "-m", str(broken)], text).status == 4
    write(workdir / "latin.txt", "déjà vu".encode("latin-1"))
    bad = run(["extract", "--schema", "s.json", "-m", real_model, "latin.txt"])
    assert bad.status == 5 and "latin.txt" in bad.stderr and "offset 1" in bad.stderr


def test_real_sampling_is_reproducible_with_a_seed(real_model: str, workdir: Path) -> None:
    argv = ["extract", "--schema", "s.json", "-m", real_model, "--temperature", "1.0", "--top-p", "0.9"]
    first = run([*argv, "--seed", "7"], b"The parcel arrived broken.")
    again = run([*argv, "--seed", "7"], b"The parcel arrived broken.")
    assert first.status == again.status == 0, first.stderr
    assert first.stdout == again.stdout
    jsonschema.validate(first.json(), BOUNDED)


def test_real_too_long_input_fails_unless_truncated(real_model: str, workdir: Path) -> None:
    long_text = ("The delivery was late again and the box was damaged. " * 600).encode()
    refused = run(["extract", "--schema", "s.json", "-m", real_model], long_text)
    assert refused.status == 1 and "--truncate" in refused.stderr and refused.stdout == b""
    truncated = run(["extract", "--schema", "s.json", "-m", real_model, "--truncate"], long_text)
    assert truncated.status == 0, truncated.stderr
    jsonschema.validate(truncated.json(), BOUNDED)


# ------------------------------------------------------------------ real processes, real pipes, signals


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "gemmacli", *args]


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env.update(extra)
    return env


def test_real_broken_pipe_into_head_exits_quietly(real_model: str, workdir: Path) -> None:
    notes(workdir / "in", 4)
    command = " ".join(cli("extract", "--schema", "s.json", "in", "-m", real_model))
    shell = f'{command} | head -1; echo "status=${{PIPESTATUS[0]}}" >&2'
    done = subprocess.run(
        ["bash", "-c", shell], capture_output=True, text=True, env=subprocess_env(), timeout=300
    )
    assert len(done.stdout.splitlines()) == 1 and json.loads(done.stdout)["source"] == "in/note00.txt"
    assert "status=0" in done.stderr
    assert "Traceback" not in done.stderr and "Broken pipe" not in done.stderr


def _wait_for_records(path: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= count:
            return
        assert process.poll() is None, "the batch ended before it could be interrupted"
        time.sleep(0.02)
    raise AssertionError(f"no {count} records in {path} after {timeout}s")


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _assert_gone(pids: list[int], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _running(p)]
    assert not alive, f"processes still running after their parent was killed: {alive}"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _recorded(path: Path) -> list[str]:
    return [json.loads(line)["source"] for line in path.read_text().splitlines()]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_real_kill_9_mid_batch_then_resume_loses_and_duplicates_nothing(
    real_model: str, workdir: Path, jobs: str
) -> None:
    expected = [f"in/note{i:02d}.txt" for i in range(12)]
    notes(workdir / "in", 12)
    argv = cli(
        "extract", "--schema", "s.json", "in", "-o", "out.jsonl", "-m", real_model, "--jobs", jobs, "-q"
    )
    process = subprocess.Popen(argv, env=subprocess_env(), stderr=subprocess.PIPE)
    _wait_for_records(workdir / "out.jsonl", 2, process)
    workers = _children(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    _assert_gone(workers)  # orphaned workers notice and exit instead of holding a model in memory
    before = _recorded(workdir / "out.jsonl")
    assert 2 <= len(before) < len(expected) and before == expected[: len(before)]
    resumed = subprocess.run([*argv, "--resume"], env=subprocess_env(), capture_output=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert _recorded(workdir / "out.jsonl") == expected  # every source once, in order


@pytest.mark.parametrize(
    ("how", "jobs", "status"),
    [("ctrl-c", "2", 130), ("sigterm", "2", 143), ("sigterm", "1", 143)],
)
def test_real_interrupt_keeps_the_records_and_resume_finishes(
    real_model: str, workdir: Path, how: str, jobs: str, status: int
) -> None:
    expected = [f"in/note{i:02d}.txt" for i in range(10)]
    notes(workdir / "in", 10)
    argv = cli("extract", "--schema", "s.json", "in", "-o", "out.jsonl", "-m", real_model, "--jobs", jobs)
    process = subprocess.Popen(argv, env=subprocess_env(), stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    _wait_for_records(workdir / "out.jsonl", 1, process)
    if how == "ctrl-c":
        process.send_signal(signal.SIGINT)
    else:  # to the whole process group, as `timeout` and CI runners send it: the workers get it too
        os.killpg(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == status, stderr
    assert "rerun with --resume" in stderr and "Traceback" not in stderr
    resumed = subprocess.run([*argv, "--resume"], env=subprocess_env(), capture_output=True, timeout=300)
    assert resumed.returncode == 0
    assert _recorded(workdir / "out.jsonl") == expected


def _run_on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """stderr on a pseudo-terminal, as a person running it would have; returns (status, stderr text)."""
    import pty

    leader, follower = pty.openpty()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    process.wait(timeout=300)
    return process.returncode, b"".join(chunks).decode(errors="replace")


def test_real_no_color_on_a_terminal_gives_plain_text(real_model: str, workdir: Path) -> None:
    notes(workdir / "in", 3)
    argv = cli("extract", "--schema", "s.json", "in", "-m", real_model)
    status, plain = _run_on_a_terminal(argv, subprocess_env(NO_COLOR="1", TERM="xterm-256color"))
    assert status == 0 and "3 record(s)" in plain
    assert "\x1b[3" not in plain and "\x1b[1m" not in plain  # no colour, no bold
    status, coloured = _run_on_a_terminal(argv, subprocess_env(TERM="xterm-256color"))
    assert status == 0 and "\x1b[" in coloured and "docs/s" in coloured  # the live bar, in colour
