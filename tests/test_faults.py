"""Faults a new user hit (issue #13), as a table that grows with the project, plus one test per defect.

Each row of FAULTS: the command line, what is on stdin or on disk before, the exit status, a fragment
the message on stderr must hold, and "nothing lost": every byte of the `-o` file that was there before is
still there after (refusals leave it untouched; resumes only append). The CLI runs in-process with the
fake extractor of test_batch (and its fake model folder), so the whole table takes about a second.

Device nodes are never the machine's own: a test that needs /dev/null or /dev/full makes a private node
of the same kind in its tmp folder (mknod, root only; skipped otherwise), so even the old code, which
renamed over whatever `-o` named, could only ever clobber that private copy.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gemmacli.cli import check_cmd, extract_cmd
from gemmacli.jobs import batch, capacity
from gemmacli.jobs.progress import RateClock, RichProgress, make_progress

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))
from cli import run_cli  # noqa: E402
from test_batch import fake_factory  # noqa: E402

SCHEMA = ["--schema", "name, age int"]
PII = str(REPO / "schemas" / "pii.json")
NO_PII = str(REPO / "schemas" / "policies" / "no-pii.json")
CHECK_EXAMPLES = TESTS / "examples" / "check"


class ApiFake:
    """test_batch's fake in gemmacli.engine.extractor.Extractor's shape, for code that builds that class
    itself."""

    def __init__(self, schema: Any = None, **options: Any) -> None:
        self.inner = fake_factory(batch.ExtractOptions(schema={}, model="fake"))

    def extract(self, text: str) -> Any:
        return self.inner.extract(text)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The fake extractor for `extract` and `check`, a fake model folder; tmp_path is the working folder."""
    import gemmacli.engine.extractor

    monkeypatch.setattr(gemmacli.engine.extractor, "Extractor", ApiFake)
    monkeypatch.setattr(extract_cmd, "EXTRACTOR_FACTORY", fake_factory)
    monkeypatch.setattr(check_cmd, "EXTRACTOR_FACTORY", fake_factory, raising=False)
    folder = tmp_path / "models" / "fake"
    folder.mkdir(parents=True)
    (folder / "gemmacli.json").write_text("{}")  # a config with the default 32768-token context
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "name": "fake", "files": {}}))
    monkeypatch.chdir(tmp_path)
    return str(folder)


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def record(source: str, ok: bool = True) -> str:
    if ok:
        return json.dumps({"source": source, "ok": True, "data": {"name": source, "age": 1}}) + "\n"
    return json.dumps({"source": source, "ok": False, "error": {"type": "extraction", "message": "x"}}) + "\n"


def three_inputs(tmp: Path) -> None:
    for i in range(3):
        write(tmp / "in" / f"{i}.txt", f"doc {i}")


def private_node(tmp: Path, name: str, minor: int) -> Path:
    """A private character device like /dev/null (minor 3) or /dev/full (minor 7); skip if not allowed."""
    path = tmp / name
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
        with open(path, "wb"):
            pass
    except OSError as exc:
        pytest.skip(f"cannot make a device node here: {exc}")
    return path


# ---------------------------------------------------------------------------------------------- the table


@dataclass
class Fault:
    """One bad input or situation: what runs, what it must exit with and say, and which file must keep
    every byte it had (`keep`, relative to the working folder)."""

    name: str
    argv: list[str]
    status: int
    stderr: str
    stdin: bytes = b""
    prepare: Callable[[Path], None] | None = None
    keep: str | None = None
    output: Callable[[Path], None] | None = None  # further checks on the files afterwards
    holds: list[Any] = field(default_factory=list)  # things kept alive during the run (a lock)


def _deep_schema(levels: int) -> str:
    """`levels` objects nested in one another (built as text: json.dumps itself recurses)."""
    return '{"type": "object", "required": ["a"], "properties": {"a": ' * levels + '{"type": "string"}' \
        + "}}" * levels


SELF_REF = json.dumps({"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}},
                                       "required": ["next"]}}, "$ref": "#/$defs/n"})
BAD_REGEX = json.dumps({"type": "object", "properties": {"a": {"type": "string", "pattern": "(("}}})


def _with_records(*lines: str) -> Callable[[Path], None]:
    def prepare(tmp: Path) -> None:
        three_inputs(tmp)
        write(tmp / "out.jsonl", "".join(lines))

    return prepare


def _first_run_with(*extra: str) -> Callable[[Path], None]:
    """Records and a sidecar from a real first run (with `extra` options) over in/0.txt only."""
    def prepare(tmp: Path) -> None:
        three_inputs(tmp)
        first = run_cli(["extract", *SCHEMA, "-m", str(tmp / "models" / "fake"), "in/0.txt", "--records",
                         "-o", "out.jsonl", *extra])
        assert first.status == 0, first.stderr

    return prepare


def _locked(holds: list[Any]) -> Callable[[Path], None]:
    def prepare(tmp: Path) -> None:
        from gemmacli.jobs.outfile import OutputLock

        three_inputs(tmp)
        write(tmp / "out.jsonl", record("in/0.txt"))
        lock = OutputLock(tmp / "out.jsonl")
        lock.record({"schema": "x"}, stdin_sha256=None)
        holds.append(lock)

    return prepare


def _records_only_ok(tmp: Path) -> None:
    lines = [json.loads(x) for x in (tmp / "out.jsonl").read_text().splitlines()]
    assert all(r["ok"] for r in lines)
    assert sorted(r["source"] for r in lines) == [f"in/{i}.txt" for i in range(3)]


_LOCK_HOLDS: list[Any] = []

FAULTS = [
    Fault("temperature nan", ["extract", *SCHEMA, "--temperature", "nan"], 2, "--temperature", b"text"),
    Fault("top-p nan", ["extract", *SCHEMA, "--top-p", "nan"], 2, "--top-p", b"text"),
    Fault("max-tokens beyond the context", ["extract", *SCHEMA, "--max-tokens", "999999999999"], 2,
          "context of 32768 tokens", b"text"),
    Fault("invalid regex", ["extract", "--schema", BAD_REGEX], 3, "invalid regular expression", b"t"),
    Fault("invalid regex, lenient", ["extract", "--schema", BAD_REGEX, "--lenient"], 3,
          "/properties/a/pattern", b"t"),
    Fault("schema 100 deep", ["extract", "--schema", _deep_schema(100)], 3, "levels of objects and arrays",
          b"t"),
    Fault("schema 500 deep", ["schema", "check", _deep_schema(500)], 3, "gemmacli reads at most 128"),
    Fault("endless required $ref", ["schema", "check", SELF_REF], 3, "no finite JSON value"),
    Fault("unknown policy", ["check", "--schema", PII, "--policy", "no-such-policy", "in"], 3,
          "policy not found", prepare=three_inputs),
    Fault("empty file in check", ["check", "--schema", PII, "--policy", NO_PII, "--no-cache", "in"], 1,
          "input is empty", prepare=lambda tmp: write(tmp / "in" / "empty.md", "  \n")),
    Fault("retry-failed without resume", ["extract", *SCHEMA, "in", "--retry-failed"], 2, "--retry-failed",
          prepare=three_inputs),
    Fault("resume with another schema",
          ["extract", "--schema", "title str", "in", "-o", "out.jsonl", "--resume"],
          2, "another configuration: schema", prepare=_first_run_with(), keep="out.jsonl"),
    Fault("resume with other options", [*["extract", "--schema"], "name, age int", "in", "-o", "out.jsonl",
                                        "--resume", "--max-tokens", "60"],
          2, "--max-tokens (not set there, 60 now)", prepare=_first_run_with(), keep="out.jsonl"),
    Fault("resume keeps failures in the exit status",
          ["extract", *SCHEMA, "in", "-o", "out.jsonl", "--resume"], 1, "--retry-failed",
          prepare=_with_records(record("in/0.txt", ok=False)), keep="out.jsonl"),
    Fault("resume --retry-failed redoes them", ["extract", *SCHEMA, "in", "-o", "out.jsonl", "--resume",
                                               "--retry-failed"],
          0, "resuming out.jsonl: 1 of 3",
          prepare=_with_records(record("in/0.txt"), record("in/1.txt", False)),
          output=_records_only_ok),
    Fault("a second run on a locked -o", ["extract", *SCHEMA, "in", "-o", "out.jsonl"], 2, "gemmacli pid",
          prepare=_locked(_LOCK_HOLDS), keep="out.jsonl"),
    Fault("resume into a device", ["extract", *SCHEMA, "in", "-o", "null", "--resume"], 2,
          "needs a regular file", prepare=lambda tmp: (three_inputs(tmp), private_node(tmp, "null", 3))),
]


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_fault_table(fault: Fault, fake: str, tmp_path: Path) -> None:
    if fault.prepare is not None:
        fault.prepare(tmp_path)
    before = (tmp_path / fault.keep).read_bytes() if fault.keep else b""
    argv = [*fault.argv, "-m", fake] if fault.argv[0] in ("extract", "check") else fault.argv
    try:
        result = run_cli(argv, fault.stdin, environ={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    finally:
        while _LOCK_HOLDS:
            _LOCK_HOLDS.pop().close()
    assert result.status == fault.status, result.stderr
    assert fault.stderr in result.stderr
    assert "Traceback" not in result.stderr
    if fault.keep:
        assert (tmp_path / fault.keep).read_bytes().startswith(before), "records were lost"
    if fault.output is not None:
        fault.output(tmp_path)


# ------------------------------------------------------------------------- 1. -o writes into, never over


def _read_fifo_in_background(fifo: Path) -> tuple[threading.Thread, list[bytes]]:
    """A reader on `fifo` that gives up after 10 s (the old code renamed over it: nobody ever wrote)."""
    got: list[bytes] = []
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)

    def read() -> None:
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    time.sleep(0.02)
                    continue
                if chunk:
                    got.append(chunk)
                elif got:
                    return
                else:
                    time.sleep(0.02)
        finally:
            os.close(fd)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, got


def test_o_writes_through_a_fifo_and_leaves_it_a_fifo(fake: str, tmp_path: Path) -> None:
    fifo = tmp_path / "results"
    os.mkfifo(fifo)
    thread, got = _read_fifo_in_background(fifo)
    result = run_cli(["extract", *SCHEMA, "-m", fake, "-o", str(fifo)], b"Ada")
    thread.join(12)
    assert result.status == 0, result.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert json.loads(b"".join(got)) == {"name": "Ada", "age": 3}


def test_o_through_a_symlink_replaces_the_target_and_keeps_the_link(fake: str, tmp_path: Path) -> None:
    target = write(tmp_path / "real" / "result.json", "old")
    link = tmp_path / "latest.json"
    link.symlink_to(target)
    result = run_cli(["extract", *SCHEMA, "-m", fake, "-o", str(link)], b"Ada")
    assert result.status == 0 and link.is_symlink()
    assert json.loads(target.read_text()) == {"name": "Ada", "age": 3}
    batch_run = run_cli(["extract", *SCHEMA, "-m", fake, "-", "--records", "-o", str(link)], b"Bob")
    assert batch_run.status == 0 and link.is_symlink() and json.loads(target.read_text())["source"] == "-"


def test_o_into_a_null_device_writes_through(fake: str, tmp_path: Path) -> None:
    null = private_node(tmp_path, "null", 3)
    for argv in (["-"], ["-", "--records"]):
        result = run_cli(["extract", *SCHEMA, "-m", fake, *argv, "-o", str(null)], b"Ada")
        assert result.status == 0, result.stderr
        assert stat.S_ISCHR(os.lstat(null).st_mode)


def test_o_into_a_full_device_is_exit_5_naming_the_file(fake: str, tmp_path: Path) -> None:
    full = private_node(tmp_path, "full", 7)
    single = run_cli(["extract", *SCHEMA, "-m", fake, "-o", str(full)], b"Ada")
    assert single.status == 5 and f"cannot write {full}: No space left on device" in single.stderr
    records = run_cli(["extract", *SCHEMA, "-m", fake, "-", "--records", "-o", str(full)], b"Ada")
    assert records.status == 5 and f"cannot write {full}: No space left on device" in records.stderr
    write(tmp_path / "docs" / "a.md", "harmless")
    check = run_cli(["check", "--schema", PII, "--policy", NO_PII, "-m", fake, "--no-cache", "docs",
                     "--format", "jsonl", "-o", str(full)])
    assert check.status == 5 and str(full) in check.stderr
    assert stat.S_ISCHR(os.lstat(full).st_mode)


def test_check_report_and_cache_entries_keep_symlinks(fake: str, tmp_path: Path) -> None:
    from gemmacli.jobs.cache import ResultCache

    report = write(tmp_path / "reports" / "r.jsonl", "old")
    link = tmp_path / "r.jsonl"
    link.symlink_to(report)
    write(tmp_path / "docs" / "a.md", "harmless")
    result = run_cli(["check", "--schema", PII, "--policy", NO_PII, "-m", fake, "--no-cache", "docs", "-o",
                      str(link)])
    assert link.is_symlink() and json.loads(report.read_text())["source"] == "docs/a.md", result.stderr
    cache = ResultCache(tmp_path / "cache")
    entry = cache._entry("ab" * 32)
    elsewhere = write(tmp_path / "elsewhere.json", "{}")
    entry.parent.mkdir(parents=True)
    entry.symlink_to(elsewhere)
    cache.put("ab" * 32, {"source": "x", "status": "pass"})
    assert entry.is_symlink() and json.loads(elsewhere.read_text())["source"] == "x"


# ------------------------------------------------------------------------- 2. names that are not UTF-8


def test_a_file_name_that_is_not_utf8_is_extracted_and_resumed(fake: str, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    odd = os.fsdecode(b"caf\xe9.txt")
    (folder / odd).write_text("coffee")
    write(folder / "z.txt", "zed")
    result = run_cli(["extract", *SCHEMA, "-m", fake, "in"])
    assert result.status == 0, result.stderr
    assert [r["source"] for r in result.records()] == [f"in/{odd}", "in/z.txt"]
    first = run_cli(["extract", *SCHEMA, "-m", fake, "in", "-o", "out.jsonl"])
    assert first.status == 0
    again = run_cli(["extract", *SCHEMA, "-m", fake, "in", "-o", "out.jsonl", "--resume"])
    assert again.status == 0 and "2 of 2 already recorded" in again.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 2


def test_check_caches_and_reports_a_file_name_that_is_not_utf8(fake: str, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / os.fsdecode(b"r\xe9sum\xe9.md")).write_text("harmless")
    environ = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    for _ in range(2):  # a miss written to the cache, then a hit read back
        result = run_cli(["check", "--schema", PII, "--policy", NO_PII, "-m", fake, "docs", "--format",
                          "sarif"], environ=environ)
        assert result.status == 1 and "Traceback" not in result.stderr  # the fake's data violate no-pii
        json.loads(result.stdout)
    assert "1 hits" in result.stderr


# ------------------------------------------------------------------------------------------ 3. --jobs


def test_plan_jobs_caps_by_cpus_memory_and_sources() -> None:
    gib = 2**30
    assert capacity.plan_jobs(1000, 200, 0, cpus=2, available=64 * gib)[0] == 2
    jobs, why = capacity.plan_jobs(1000, 200, 2 * gib, cpus=64, available=16 * gib)
    assert jobs == int(16 * gib * 0.8) // (3 * gib + capacity.WORKER_OVERHEAD) and "lowered" in str(why)
    assert capacity.plan_jobs(0, 200, 0, cpus=4, available=64 * gib) == (4, None)  # auto: no message
    assert capacity.plan_jobs(8, 3, 0, cpus=16, available=64 * gib) == (3, None)  # fewer sources: quietly
    assert capacity.plan_jobs(4, 200, 100 * gib, cpus=4, available=gib)[0] == 1  # always at least one


def test_jobs_1000_is_lowered_with_a_message(fake: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capacity, "cpu_count", lambda: 1)
    three_inputs(tmp_path)
    result = run_cli(["extract", *SCHEMA, "-m", fake, "in", "--jobs", "1000"])
    assert result.status == 0 and "--jobs 1000 lowered to 1" in result.stderr
    assert len(result.records()) == 3


# ------------------------------------------------------------------------------------------ 4. --resume


def test_resume_from_another_folder_matches_sources_by_resolved_path(
        fake: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    three_inputs(tmp_path)
    assert run_cli(["extract", *SCHEMA, "-m", fake, "in", "-o", "out.jsonl"]).status == 0
    monkeypatch.chdir(tmp_path / "in")
    again = run_cli(["extract", *SCHEMA, "-m", fake, ".", "-o", "../out.jsonl", "--resume"])
    assert again.status == 0 and "3 of 3 already recorded, 0 to go" in again.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 3


def test_resume_of_stdin_extracts_new_text_and_skips_the_same(fake: str, tmp_path: Path) -> None:
    argv = ["extract", *SCHEMA, "-m", fake, "-", "-o", "out.jsonl", "--records"]
    assert run_cli(argv, b"first text").status == 0
    same = run_cli([*argv, "--resume"], b"first text")
    assert "1 of 1 already recorded" in same.stderr
    new = run_cli([*argv, "--resume"], b"second text")
    assert new.status == 0 and "not the text the recorded run read" in new.stderr
    names = [json.loads(x)["data"]["name"] for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert names == ["first text", "second text"]


def test_the_lock_is_released_and_the_sidecar_stays(fake: str, tmp_path: Path) -> None:
    from gemmacli.jobs.outfile import sidecar_path

    three_inputs(tmp_path)
    assert run_cli(["extract", *SCHEMA, "-m", fake, "in", "-o", "out.jsonl"]).status == 0
    sidecar = sidecar_path(tmp_path / "out.jsonl")
    info = json.loads(sidecar.read_text())
    assert info["fingerprint"]["schema"] and info["cwd"] == str(tmp_path)
    with open(sidecar, "rb") as handle:  # nobody holds it now
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    # a folder input never reads the hidden sidecar back
    assert sidecar.name.startswith(".")


def test_two_concurrent_runs_on_one_output_never_interleave(fake: str, tmp_path: Path) -> None:
    """The second of two real processes on the same -o exits 2 naming the first; the file is the first's."""
    from gemmacli.jobs.outfile import sidecar_path

    for i in range(4):
        write(tmp_path / "in" / f"{i}.txt", f"SLOW 0.5 doc {i}")
    code = (f"import sys; sys.path.insert(0, {str(TESTS)!r}); from gemmacli.cli import extract_cmd; "
            "import test_batch; extract_cmd.EXTRACTOR_FACTORY = test_batch.fake_factory; "
            "from gemmacli.cli.core import main; main(sys.argv[1:])")
    argv = [sys.executable, "-c", code, "extract", *SCHEMA, "-m", fake, "in", "-o", "out.jsonl"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    first = subprocess.Popen(argv, cwd=tmp_path, env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    sidecar = sidecar_path(tmp_path / "out.jsonl")
    while time.monotonic() < deadline and not (sidecar.exists() and sidecar.read_text().strip()):
        time.sleep(0.05)
    second = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    first.communicate(timeout=60)
    assert first.returncode == 0
    assert second.returncode == 2 and f"gemmacli pid {first.pid}" in second.stderr
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 4


# ------------------------------------------------------------------------- 5. a closed stdout is no pass


class BrokenPipe:
    """stdout of `| head -c1` once head has exited."""

    def write(self, data: bytes) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        return None

    def getvalue(self) -> bytes:
        return b""


@pytest.mark.parametrize("fmt", ["jsonl", "junit", "sarif"])
def test_a_failed_gate_stays_failed_when_stdout_closes(fake: str, tmp_path: Path, fmt: str) -> None:
    for i in range(10):
        write(tmp_path / "docs" / f"{i}.md", (CHECK_EXAMPLES / "violating.md").read_text())
    result = run_cli(["check", "--schema", PII, "--policy", NO_PII, "-m", fake, "--no-cache", "docs",
                      "--format", fmt], stdout=BrokenPipe())
    assert result.status == 1 and "10 violated" in result.stderr and "not delivered" in result.stderr


def test_a_passing_gate_whose_report_is_lost_is_exit_5(fake: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from gemmacli.jobs import policy as check

    monkeypatch.setattr(check, "evaluate", lambda policy, value: [])
    write(tmp_path / "docs" / "a.md", "harmless")
    result = run_cli(["check", "--schema", PII, "--policy", NO_PII, "-m", fake, "--no-cache", "docs",
                      "--format", "jsonl"], stdout=BrokenPipe())
    assert result.status == 5 and "1 passed" in result.stderr


# --------------------------------------------------------------------------------- 8. huge inputs


class CountingTokenizer:
    """Wraps a tokenizer, remembering the longest text it was asked to encode."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.longest = 0

    def encode(self, text: str, **kwargs: Any) -> Any:
        self.longest = max(self.longest, len(text))
        return self.inner.encode(text, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_huge_input_is_judged_and_truncated_from_a_prefix(tiny_model_dir: Path) -> None:
    from tokenizers import Tokenizer

    from gemmacli.engine.prompt import encode_prompt
    from gemmacli.errors import ExtractionFailed
    from gemmacli.models.store import ModelConfig

    config = ModelConfig.from_folder(tiny_model_dir)
    tokenizer = CountingTokenizer(Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json")))
    text = "Ada Lovelace wrote the first program. " * 200_000  # 7.6 MB
    schema = {"type": "object", "properties": {"name": {"type": "string"}}}
    with pytest.raises(ExtractionFailed, match="too long"):
        encode_prompt(tokenizer, config, schema, text, max_tokens=256)
    prompt = encode_prompt(tokenizer, config, schema, text, max_tokens=256, truncate=True)
    assert prompt.truncated and len(prompt.ids) <= config.context_length - 256
    assert tokenizer.longest <= 8 * config.context_length  # never the whole text


def test_a_50_mb_input_fails_or_truncates_in_under_2_seconds(tiny_model_dir: Path, tmp_path: Path) -> None:
    huge = tmp_path / "huge.txt"
    huge.write_text("Ada Lovelace wrote the first program for the engine. " * 1_000_000)  # 53 MB
    argv = [sys.executable, "-m", "gemmacli", "extract", "--schema", "name str", "-m", str(tiny_model_dir),
            str(huge)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    for extra, status in (([], 1), (["--truncate"], 0)):
        started = time.monotonic()
        result = subprocess.run([*argv, *extra], capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == status, result.stderr
        # The target is < 2 s of work; the process also starts Python and loads the model, on a
        # shared machine, so the bound here is looser: the old code took over a minute for this input.
        assert time.monotonic() - started < 20
    assert "too long" not in result.stderr


# ------------------------------------------------------------------------ 9. closed standard streams


@pytest.mark.parametrize(("redirect", "status", "message"), [("<&-", 2, "stdin is closed"),
                                                             (">&-", 5, "stdout is closed")])
def test_closed_standard_streams_are_usage_or_io_errors(redirect: str, status: int, message: str,
                                                        tmp_path: Path) -> None:
    command = (f"{sys.executable} -m gemmacli schema show contact {redirect}" if redirect == ">&-"
               else f"{sys.executable} -m gemmacli extract --schema 'name str' {redirect}")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert result.returncode == status and message in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- 12. the smaller ones


def test_the_repetition_guard_ignores_a_repetition_the_grammar_forces(tiny_model_dir: Path) -> None:
    from gemmacli.engine.extractor import Extractor

    schema = {"type": "object", "required": ["xs"],
              "properties": {"xs": {"type": "array", "items": {"const": "abc"},
                                    "minItems": 40, "maxItems": 80}}}
    result = Extractor(schema, model=tiny_model_dir).extract("hello there")
    assert len(result.data["xs"]) >= 40 and result.repeats == []


def test_check_and_extract_share_the_empty_input_rule(fake: str, tmp_path: Path) -> None:
    write(tmp_path / "docs" / "empty.md", "")
    argv = ["check", "--schema", PII, "--policy", NO_PII, "-m", fake, "--no-cache", "docs"]
    assert run_cli(argv).status == 1
    assert run_cli(["extract", *SCHEMA, "-m", fake, "docs/empty.md"]).status == 1
    allowed = run_cli([*argv, "--allow-empty"])
    assert allowed.status == 1 and "violation" in allowed.stderr  # judged (the fake's data violate no-pii)


def test_offline_model_export_is_one_line_and_exit_4_at_once(tmp_path: Path) -> None:
    """No network: one clear error at once, not ~26 s of the hub client's retry tracebacks."""
    pytest.importorskip("transformers")
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import sys\n"
        "def refuse(event, args):\n"
        "    if event in ('socket.connect', 'socket.getaddrinfo'):\n"
        "        raise OSError(101, 'Network is unreachable')\n"
        "sys.addaudithook(refuse)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HTTP", "http", "ALL_PROXY"))}
    env.update(PYTHONPATH=f"{hook}:{REPO}", HF_HOME=str(tmp_path / "hf"))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "gemmacli", "model", "export", "google/gemma-3-270m-it",
                             "--name", "x", "--out-dir", str(tmp_path / "models")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 4, result.stderr
    assert "cannot fetch 'google/gemma-3-270m-it'" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("error:") == 1
    assert time.monotonic() - started < 20  # imports of torch/transformers take most of it


def test_model_synth_without_torch_is_exit_2_with_the_pip_command(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    result = run_cli(["model", "synth", "x", "--out-dir", str(tmp_path)])
    assert result.status == 2 and "pip install" in result.stderr and "torch" in result.stderr


# ------------------------------------------------------------------------------------ progress


def test_progress_shows_a_loading_phase_and_rates_from_finished_documents(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    clock = RateClock()
    clock.total = 20
    assert clock.loading and clock.rate() is None and clock.eta() is None
    now[0] = 110.0  # 10 s of model loading, then two workers finish a 3 s document each
    clock.advance(True, 3.0)
    clock.advance(True, 3.0)
    assert clock.rate() == pytest.approx(2 / 3.0)
    assert clock.eta() == pytest.approx(18 / (2 / 3.0))


def test_the_bar_says_loading_model_before_the_first_document() -> None:
    import io

    from gemmacli.env import Environment

    stderr = io.StringIO()
    env = Environment(stdin=io.BytesIO(), stdout=io.BytesIO(), stderr=stderr, stderr_isatty=True,
                      environ={"TERM": "xterm"})
    progress = make_progress(env, every=100)
    assert isinstance(progress, RichProgress)
    progress.start(20)
    progress.progress.refresh()
    progress.stop()
    assert "loading model" in stderr.getvalue() and "docs/s" in stderr.getvalue()


# ------------------------------------------------------------------------------- help and completion


def _help(*argv: str) -> str:
    from gemmacli.cli.core import build_parser

    parser = build_parser()
    for name in argv:
        parser = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[name]
    return parser.format_help()


def test_help_puts_examples_right_after_usage_everywhere() -> None:
    for argv in ([], ["extract"], ["check"], ["schema"], ["model"]):
        text = _help(*argv)
        assert text.startswith("usage:") and "\n\nexamples:\n" in text, argv
        assert text.index("examples:") < text.index("options:"), argv


def test_every_command_has_a_description() -> None:
    from gemmacli.cli.completion import _subparsers
    from gemmacli.cli.core import build_parser

    def walk(parser: Any, path: list[str]) -> None:
        assert parser.description, path
        assert parser.description.split()[0] in parser.format_help(), path
        for name, _help_text, child in _subparsers(parser):
            walk(child, [*path, name])

    walk(build_parser(), [])
    assert "Print the JSON Schema a schema argument turns into." in _help("schema", "show")


def test_check_help_has_jobs_and_every_exit_code() -> None:
    text = _help("check")
    assert "--jobs" in text
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "5 ", "130"):
        assert f"\n  {code}" in text, code
    assert "143" in text


def test_completion_offers_policies_models_shells_and_folders(tmp_path: Path) -> None:
    script = run_cli(["completion", "bash"]).stdout.decode()
    path = tmp_path / "gemmacli.bash"
    path.write_text(script)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_cli = bin_dir / "gemmacli"
    fake_cli.write_text("#!/bin/sh\nprintf 'tiny-model\\t1.0 MiB\\tint4\\t/x\\n'\n")
    fake_cli.chmod(0o755)
    (tmp_path / "outdir").mkdir()
    probes = [
        "gemmacli check --policy no-",
        "gemmacli extract --model tiny",
        "gemmacli model info tin",
        "gemmacli completion ",
        "gemmacli model pull --out-dir outd",
    ]
    lines = []
    for probe in probes:
        words = probe.split(" ")
        script_line = (f"source {path}; COMP_WORDS=({' '.join(repr(w) for w in words)}); "
                       f"COMP_CWORD={len(words) - 1}; _gemmacli; echo \"${{COMPREPLY[*]}}\"")
        out = subprocess.run(["bash", "-c", script_line], capture_output=True, text=True, cwd=tmp_path,
                             env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, check=True)
        lines.append(out.stdout.strip())
    assert lines == ["no-pii", "tiny-model", "tiny-model", "bash zsh fish", "outdir"]
    fish = run_cli(["completion", "fish"]).stdout.decode()
    assert "model list" in fish and "'bash zsh fish'" in fish and "no-pii" in fish


# ------------------------------------------------------------------------------------ the README


def test_readme_30_seconds_examples_name_files_that_exist() -> None:
    """Every input the '30 seconds' lines read ships with the repository, so they run from a fresh clone."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## 30 seconds of gemmacli", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    paths = []
    for line in block.splitlines():
        for word in line.split("#")[0].split():
            if "/" in word and not word.startswith(("-", "'")) and not word.endswith((".jsonl", ".sarif")):
                paths.append(word)
    assert paths, block
    for word in paths:
        matches = list(REPO.glob(word)) if "*" in word else [REPO / word]
        assert matches and all(m.exists() for m in matches), word
    assert shutil.which("bash")


def test_check_jobs_gives_the_same_report_as_one_process(fake: str, tmp_path: Path) -> None:
    for i in range(4):
        write(tmp_path / "docs" / f"{i}.md", f"document {i}")
    write(tmp_path / "docs" / "empty.md", "")
    argv = ["check", "--schema", PII, "--policy", NO_PII, "-m", fake, "--no-cache", "docs", "--format",
            "jsonl"]
    one, two = run_cli(argv), run_cli([*argv, "--jobs", "2"])
    assert one.status == two.status == 1
    assert one.stdout == two.stdout and len(two.stdout.splitlines()) == 5


def test_an_input_that_cannot_fit_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    """Longer than the context times the longest token: refused from its length alone. The folder here has
    a config and nothing else, so a model load would be exit 4; a 50 MB file took 0.3 s and 140 MB RSS
    this way with the real 270M model (it took 2.8 s and 830 MB after loading the model)."""
    from gemmacli.models.store import ModelConfig

    folder = tmp_path / "models" / "configonly"
    folder.mkdir(parents=True)
    ModelConfig(context_length=64, max_token_chars=4, kind="base").write(folder)
    result = run_cli(["extract", "--schema", "name str", "-m", str(folder)], b"x" * 257,
                     environ={"HOME": str(tmp_path), "NO_COLOR": "1"})
    assert result.status == 1 and "at most 256" in result.stderr and "--truncate" in result.stderr


def test_option_names_become_flags_but_not_inside_paths() -> None:
    from gemmacli.cli.core import as_flag

    assert as_flag("max_tokens must be at least 1", "max_tokens") == "--max-tokens must be at least 1"
    assert as_flag("raise max_tokens.", "max_tokens") == "raise --max-tokens."
    assert as_flag("../data/dev.jsonl shares texts; dev is checked", "dev") == \
        "../data/dev.jsonl shares texts; --dev is checked"
    assert as_flag("dev.jsonl: no such file", "dev") == "dev.jsonl: no such file"
