"""Where texts come from: files, folders, globs, stdin, JSON Lines; decoding errors name file and offset."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from gemmacli.errors import InputOutputError
from gemmacli.jobs.inputs import Source, collect_sources


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for relative in [
        "notes/b.txt",
        "notes/a.txt",
        "notes/sub/c.txt",
        "notes/sub/d.md",
        "notes/.hidden/x.txt",
        "notes/.secret.txt",
        "other.txt",
    ]:
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"text of {relative}\n")
    return tmp_path


def names(sources: list[Source]) -> list[str]:
    return [s.name for s in sources]


def test_folders_are_walked_recursively_in_sorted_order_skipping_hidden(tree: Path) -> None:
    assert names(collect_sources(["notes"])) == [
        "notes/a.txt",
        "notes/b.txt",
        "notes/sub/c.txt",
        "notes/sub/d.md",
    ]


def test_glob_filters_folder_contents(tree: Path) -> None:
    assert names(collect_sources(["notes"], glob="*.txt")) == [
        "notes/a.txt",
        "notes/b.txt",
        "notes/sub/c.txt",
    ]
    assert names(collect_sources(["notes"], glob="sub/*")) == ["notes/sub/c.txt", "notes/sub/d.md"]


def test_unexpanded_globs_are_expanded_sorted_and_argument_order_is_kept(tree: Path) -> None:
    assert names(collect_sources(["other.txt", "notes/*.txt"])) == ["other.txt", "notes/a.txt", "notes/b.txt"]
    assert names(collect_sources(["notes/**/*.md"])) == ["notes/sub/d.md"]


def test_missing_paths_and_empty_globs_are_exit_5(tree: Path) -> None:
    with pytest.raises(InputOutputError, match="no such file") as caught:
        collect_sources(["nope.txt"])
    assert caught.value.exit_status == 5
    with pytest.raises(InputOutputError, match="no files match"):
        collect_sources(["*.pdf"])


def test_stdin_is_read_once_as_a_source_named_dash() -> None:
    sources = collect_sources(["-"], stdin=io.BytesIO("héllo".encode()))
    assert names(sources) == ["-"] and sources[0].kind == "stdin"
    assert sources[0].read_text() == "héllo"


def test_bad_bytes_name_the_file_and_the_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin.txt"
    path.write_bytes("café".encode("latin-1"))
    source = collect_sources([str(path)])[0]
    with pytest.raises(InputOutputError) as caught:
        source.read_text()
    assert str(path) in caught.value.message and "offset 3" in caught.value.message
    assert "--encoding" in (caught.value.hint or "")
    assert source.read_text(encoding="latin-1") == "café"
    assert source.read_text(errors="replace") == "caf\ufffd"


def test_a_utf8_byte_order_mark_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfhello")
    assert collect_sources([str(path)])[0].read_text() == "hello"


def test_jsonl_records_use_text_and_id_fields(tmp_path: Path) -> None:
    path = tmp_path / "tickets.jsonl"
    path.write_text('{"id": "T-1", "body": "printer on fire"}\n\n{"id": 2, "body": "cannot log in"}\n')
    sources = collect_sources([str(path)], jsonl=True, text_field="body", id_field="id")
    assert names(sources) == ["T-1", "2"]
    assert [s.read_text() for s in sources] == ["printer on fire", "cannot log in"]
    default = collect_sources([str(path)], jsonl=True, text_field="body")
    assert names(default) == [f"{path}:1", f"{path}:3"]


def test_jsonl_from_stdin(tmp_path: Path) -> None:
    sources = collect_sources(["-"], stdin=io.BytesIO(b'{"text": "a"}\n{"text": "b"}\n'), jsonl=True)
    assert names(sources) == ["stdin:1", "stdin:2"]


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("not json\n", "line 1"),
        ('{"body": "x"}\n', "no field 'text'"),
        ("[1, 2]\n", "expected a JSON object"),
    ],
)
def test_bad_jsonl_lines_are_exit_5_naming_the_line(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(content)
    with pytest.raises(InputOutputError, match=words):
        collect_sources([str(path)], jsonl=True)


def test_sources_pickle_for_worker_processes(tree: Path) -> None:
    import pickle

    source = collect_sources(["other.txt"])[0]
    assert pickle.loads(pickle.dumps(source)).read_text() == "text of other.txt\n"


def test_jsonl_records_may_hold_unicode_line_separators(tmp_path: Path) -> None:
    """A raw U+2028 inside a JSON string is legal JSON: the record stays one record."""
    from gemmacli.jobs.inputs import collect_sources

    path = tmp_path / "in.jsonl"
    path.write_text('{"id": "a", "text": "one\u2028two"}\n{"id": "b", "text": "three"}\n', encoding="utf-8")
    sources = collect_sources([str(path)], jsonl=True, id_field="id")
    assert [s.name for s in sources] == ["a", "b"] and sources[0].read_text() == "one\u2028two"
