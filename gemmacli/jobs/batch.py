"""Batches: one record per source, in input order, from one process or `--jobs N` worker processes.

Design
------
* The model loads once per process. `jobs == 1` extracts in this process; `jobs > 1` starts N spawned
  worker processes (nothing mutable is shared: each builds its own Extractor from a picklable
  `ExtractOptions` and a picklable factory), with a bounded window of sources in flight.
* Records are written in input order as soon as every earlier record is done (results that finish early
  wait in a small reorder buffer), and each record is flushed as it is written, so a pipe sees them live.
* A failing source becomes an `ok: false` record; the batch goes on (unless `fail_fast`). Problems that
  would fail every source (model missing, schema refused) stop the batch with their own exit status.

Resume (`-o FILE --resume`)
---------------------------
The JSON Lines file is itself the checkpoint; there is no side file to get out of step with it:

1. Each record is one line, written with ONE `write()` on a file opened with O_APPEND. A process killed
   with SIGKILL cannot leave half a write in the page cache, so after a kill -9 the file holds only
   whole records. A power cut, a full disk or a crashed NFS client can still leave a torn last line.
2. `--resume` reads the file, keeps every line that ends in a newline and parses as a record, truncates
   the file just after the last good line (dropping a torn tail, which is then redone), and skips the
   sources already recorded. Sources are matched by name and by occurrence, so an input that names the
   same source twice is resumed correctly too.
3. Because records are written in input order, what is on disk is always a prefix of the work; work that
   had finished out of order but was not yet written is simply redone. Nothing is lost, nothing repeats.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gemmacli.engine.examples import Examples
from gemmacli.env import Environment
from gemmacli.errors import (
    ExitStatus,
    ExtractionFailed,
    GemmacliError,
    InputOutputError,
    ModelError,
    SchemaError,
    Terminated,
    UsageError,
)
from gemmacli.files import is_regular_or_new, json_bytes, write_atomically
from gemmacli.jobs.inputs import Source, require_text


@dataclass(frozen=True)
class ExtractOptions:
    """Everything a worker needs to build its Extractor and turn a source into a record (picklable)."""

    schema: Any  # a dict or gemmacli.schema.LoadedSchema
    model: str
    lenient: bool = False
    max_tokens: int | None = None  # None: sized from the schema (gemmacli.engine.extractor.budget_for)
    repeat_guard: bool = True
    spans: str = "annotated"
    examples: Examples = field(default_factory=Examples)
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    instructions: str | None = None
    truncate: bool = False
    threads: int | None = None
    encoding: str = "utf-8"
    errors: str = "strict"
    allow_empty: bool = False
    with_meta: bool = False


class ExtractorLike(Protocol):
    """What the batch layer needs from gemmacli.engine.extractor.Extractor (tests pass a fake with this
    shape)."""

    model_name: str
    model_sha256: str
    schema_sha256: str

    def extract(self, text: str) -> Any: ...


ExtractorFactory = Callable[[ExtractOptions], ExtractorLike]


def build_extractor(options: ExtractOptions) -> ExtractorLike:
    """The real factory: load the model and compile the schema once for this process."""
    from gemmacli.engine.extractor import Extractor

    return Extractor(
        options.schema,
        model=options.model,
        lenient=options.lenient,
        max_tokens=options.max_tokens,
        repeat_guard=options.repeat_guard,
        spans=options.spans,
        examples=options.examples,
        temperature=options.temperature,
        top_p=options.top_p,
        seed=options.seed,
        instructions=options.instructions,
        truncate=options.truncate,
        threads=options.threads,
        warn=_ignore_warning,  # the CLI reports --lenient warnings once, before the batch starts
    )


def _ignore_warning(_message: str) -> None:
    return None


@dataclass
class Outcome:
    """One finished source: its record and the exit status it contributes (OK, FAILED or IO)."""

    record: dict[str, Any]
    status: ExitStatus = ExitStatus.OK
    seconds: float = 0.0  # reading and extracting it (the progress rate; not part of the record)

    @property
    def ok(self) -> bool:
        return self.status == ExitStatus.OK


def read_source(source: Source, options: ExtractOptions) -> str:
    """Decode a source and refuse an empty one (unless allowed): the shared first step of single and batch."""
    text = source.read_text(encoding=options.encoding, errors=options.errors)
    return require_text(text, source.name, allow_empty=options.allow_empty)


def success_record(
    source_name: str, result: Any, extractor: ExtractorLike, with_meta: bool
) -> dict[str, Any]:
    """`{"source", "ok": true, "data"}`, plus model/schema hashes, token counts and time with --with-meta.
    A value the repetition guard ended (gemmacli.engine.loops) is reported in `warnings`, so it is never
    silent."""
    record: dict[str, Any] = {"source": source_name, "ok": True, "data": result.data}
    repeats = list(getattr(result, "repeats", ()) or ())
    if repeats:
        record["warnings"] = repeats
    if with_meta:
        record["meta"] = {
            "model": extractor.model_name,
            "model_sha256": extractor.model_sha256,
            "schema_sha256": extractor.schema_sha256,
            "prompt_tokens": result.prompt_tokens,
            "generated_tokens": result.generated_tokens,
            "forced_tokens": result.forced_tokens,
            "model_calls": result.model_calls,
            "seconds": round(float(result.seconds), 4),
        }
    return record


def process_source(extractor: ExtractorLike, source: Source, options: ExtractOptions) -> Outcome:
    """One source to a timed record; only errors that would fail every source escape (model, schema)."""
    started = time.monotonic()
    outcome = _process(extractor, source, options)
    outcome.seconds = time.monotonic() - started
    return outcome


def _process(extractor: ExtractorLike, source: Source, options: ExtractOptions) -> Outcome:
    try:
        text = read_source(source, options)
        result = extractor.extract(text)
    except InputOutputError as exc:
        return _failure(source, "input", exc, ExitStatus.IO)
    except ExtractionFailed as exc:
        return _failure(source, "extraction", exc, ExitStatus.FAILED)
    except (ModelError, SchemaError, UsageError):
        raise
    except GemmacliError as exc:
        return _failure(source, "extraction", exc, ExitStatus.FAILED)
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # a bug or a runtime failure on this input: record it, keep the batch going
        return Outcome(
            {
                "source": source.name,
                "ok": False,
                "error": {"type": "internal", "message": f"{type(exc).__name__}: {exc}"},
            },
            ExitStatus.FAILED,
        )
    return Outcome(success_record(source.name, result, extractor, options.with_meta))


def _failure(source: Source, kind: str, exc: GemmacliError, status: ExitStatus) -> Outcome:
    error: dict[str, Any] = {"type": kind, "message": exc.message}
    return Outcome({"source": source.name, "ok": False, "error": error}, status)


# --------------------------------------------------------------------------------------------- sinks


class RecordSink(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def record_line(record: dict[str, Any]) -> bytes:
    """One JSON Lines record: compact, UTF-8, newline-terminated.

    A file name that is not valid UTF-8 reaches us surrogate-escaped (PEP 383); it is written as a JSON
    `\\udcXX` escape, which reads back (json.loads) as the very same name, so --resume matches it.
    """
    return json_bytes(record) + b"\n"


class StdoutSink:
    """Records to stdout, flushed one by one so `| head`, `| jq` and friends see them as they finish."""

    def __init__(self, env: Environment) -> None:
        self.env = env

    def write(self, record: dict[str, Any]) -> None:
        self.env.write_data(record_line(record))

    def close(self) -> None:
        return None


class JsonlFileSink:
    """Appends records to FILE, one write() per line (see the module docstring for why that resumes).

    FILE is opened without O_TRUNC and only then emptied (or, with `resume`, cut after its last whole
    record), so a caller holding gemmacli.jobs.outfile.OutputLock has checked FILE before anything in it
    changes. A FIFO or a device (`/dev/null`) is written through and never truncated or resumed.
    `retry_failed` drops the failed records first, so their sources are extracted again.
    """

    def __init__(self, path: Path, *, resume: bool, retry_failed: bool = False) -> None:
        self.path = Path(path)
        self.found = RecordedFile(Counter(), 0, set())
        self.regular = is_regular_or_new(self.path)
        if resume and not self.regular:
            raise UsageError(f"--resume needs a regular file, and {path} is not one (a device or a FIFO)")
        if resume and self.path.exists():
            self.found = scan_records(self.path)
            if retry_failed and self.found.failed():
                self._drop_failed()
        try:
            self.fd: int | None = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            if self.regular:
                os.ftruncate(self.fd, self.found.good_end)
        except OSError as exc:
            raise InputOutputError(f"cannot write {path}: {exc.strerror or exc}") from exc

    @property
    def recorded(self) -> Counter[str]:
        return self.found.sources

    @property
    def schema_hashes(self) -> set[str]:
        return self.found.schema_hashes

    def _drop_failed(self) -> None:
        """Rewrite FILE (atomically) with its whole records minus the failed ones."""
        kept = bytearray()
        with open(self.path, "rb") as handle:
            data = handle.read(self.found.good_end)
        for line in data.splitlines(keepends=True):
            try:
                record = json.loads(line) if line.strip() else None
            except ValueError:
                record = None
            if not (isinstance(record, dict) and record.get("ok") is False):
                kept += line
        try:
            write_atomically(self.path, bytes(kept))
        except OSError as exc:
            raise InputOutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc
        self.found = scan_records(self.path)

    def write(self, record: dict[str, Any]) -> None:
        assert self.fd is not None
        data = memoryview(record_line(record))
        try:
            while data:  # a regular file takes it in one write; loop only for the pathological case
                written = os.write(self.fd, data)
                data = data[written:]
        except OSError as exc:  # ENOSPC, EIO, a FIFO nobody reads any more: say which file
            raise InputOutputError(f"cannot write {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None


@dataclass
class RecordedFile:
    """What --resume learns from an existing JSON Lines file."""

    sources: Counter[str]  # source name -> how many records it has
    good_end: int  # byte offset just after the last whole record
    schema_hashes: set[str]  # meta.schema_sha256 values seen (records written with --with-meta)
    entries: list[tuple[str, ExitStatus]] = field(default_factory=list)  # (source, status) in file order

    def failed(self) -> list[tuple[str, ExitStatus]]:
        return [(name, status) for name, status in self.entries if status != ExitStatus.OK]

    def status(self) -> ExitStatus:
        """The exit status the records in the file stand for: 5 for an unreadable input, 1 for a failure."""
        return max((status for _name, status in self.entries), default=ExitStatus.OK)


def scan_records(path: Path) -> RecordedFile:
    """Read the whole records of a JSON Lines file; only a torn tail may be dropped, never a record.

    A line that is not a whole record is accepted only at the end of the file (a write cut short).
    Anywhere else it means the file was edited or is not ours, and resuming could destroy records, so
    that is refused (exit 5).
    """
    found = RecordedFile(Counter(), 0, set())
    offset = 0
    bad_line: int | None = None
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            offset += len(line)
            whole = line.endswith(b"\n")
            if whole and not line.strip():
                if bad_line is None:
                    found.good_end = offset
                continue
            record: Any = None
            if whole:
                try:
                    record = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    record = None
            if record is None:
                bad_line = bad_line or number
                continue
            if bad_line is not None or not isinstance(record, dict) or "source" not in record:
                where = bad_line if bad_line is not None else number
                raise InputOutputError(
                    f"{path}, line {where}: not a gemmacli record (nor a torn last line); refusing to resume",
                    hint="write to a new file, or drop --resume to overwrite it",
                )
            _note_record(found, record)
            found.good_end = offset
    return found


def _note_record(found: RecordedFile, record: dict[str, Any]) -> None:
    name = str(record["source"])
    found.sources[name] += 1
    status = ExitStatus.OK
    if record.get("ok") is False:
        error = record.get("error")
        kind = error.get("type") if isinstance(error, dict) else None
        status = ExitStatus.IO if kind == "input" else ExitStatus.FAILED
    found.entries.append((name, status))
    meta = record.get("meta")
    if isinstance(meta, dict) and isinstance(meta.get("schema_sha256"), str):
        found.schema_hashes.add(meta["schema_sha256"])


def skip_recorded(
    sources: Sequence[Source],
    recorded: Counter[str] | Sequence[str],
    *,
    base: Path | None = None,
    skip_stdin: bool = True,
) -> list[Source]:
    """Drop each source already recorded, matching names by occurrence (a name given twice is resumed right).

    A file is matched by its resolved path, with the recorded names read relative to `base` (the working
    folder of the run that wrote them), so a resume from another folder finds them. Text read from stdin is
    skipped only when `skip_stdin` says stdin holds the same text as before.
    """
    names = list(recorded.elements()) if isinstance(recorded, Counter) else list(recorded)
    folder = str(base) if base is not None else os.getcwd()
    by_name: dict[str, deque[int]] = {}
    by_path: dict[str, deque[int]] = {}
    for index, name in enumerate(names):
        by_name.setdefault(name, deque()).append(index)
        by_path.setdefault(os.path.realpath(os.path.join(folder, name)), deque()).append(index)
    used: set[int] = set()
    todo = []
    for source in sources:
        if source.from_stdin and not skip_stdin:
            todo.append(source)
            continue
        if source.kind == "file" and source.path is not None:
            queue = by_path.get(os.path.realpath(source.path))
        else:
            queue = by_name.get(source.name)
        if not _take(queue, used):
            todo.append(source)
    return todo


def _take(queue: deque[int] | None, used: set[int]) -> bool:
    """Consume the first recorded entry of `queue` not yet matched to a source."""
    while queue:
        index = queue.popleft()
        if index not in used:
            used.add(index)
            return True
    return False


# ------------------------------------------------------------------------------------------ progress


class ProgressReporter(Protocol):
    def start(self, total: int) -> None: ...
    def advance(self, ok: bool, seconds: float = 0.0) -> None: ...
    def stop(self) -> None: ...


class NoProgress:
    def start(self, total: int) -> None:
        return None

    def advance(self, ok: bool, seconds: float = 0.0) -> None:
        return None

    def stop(self) -> None:
        return None


class RateClock:
    """Docs/s and ETA from completed documents only, timed from when extraction really began.

    Loading the model can take longer than a document; counting it (or timing from the first two documents
    that two workers finish together) made the old bar say 7.95 docs/s for a real 0.32. The work is taken to
    have begun when the first finished document started: its finish time minus its own duration.
    """

    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.failed = 0
        self.began: float | None = None

    def advance(self, ok: bool, seconds: float) -> None:
        if self.began is None:
            self.began = time.monotonic() - max(seconds, 0.0)
        self.done += 1
        self.failed += 0 if ok else 1

    @property
    def loading(self) -> bool:
        """Nothing finished yet: the model is (most likely) still loading."""
        return self.began is None

    def rate(self) -> float | None:
        if self.began is None:
            return None
        elapsed = time.monotonic() - self.began
        return self.done / elapsed if elapsed > 0 else None

    def eta(self) -> float | None:
        rate = self.rate()
        return (self.total - self.done) / rate if rate else None


class LineProgress:
    """A plain line every `every` records (logs, CI, pipes): no escape codes, nothing redrawn."""

    def __init__(self, env: Environment, every: int) -> None:
        self.env = env
        self.every = every
        self.clock = RateClock()

    def start(self, total: int) -> None:
        self.clock.total = total
        if 0 < self.every < total:  # a batch long enough for progress lines: say what the first wait is
            self._line(f"progress: loading model; {total} document(s) to extract")

    def advance(self, ok: bool, seconds: float = 0.0) -> None:
        clock = self.clock
        clock.advance(ok, seconds)
        if self.every > 0 and (clock.done % self.every == 0) and clock.done < clock.total:
            rate, eta = clock.rate() or 0.0, clock.eta() or 0.0
            self._line(
                f"progress: {clock.done}/{clock.total} done, {clock.failed} failed, "
                f"{rate:.2f} docs/s, ETA {format_duration(eta)}"
            )

    def _line(self, text: str) -> None:
        self.env.console.print(text, markup=False, highlight=False)

    def stop(self) -> None:
        return None


class RichProgress:
    """The terminal bar: a 'loading model' phase, then done/total, docs/s, ETA and failures, on stderr."""

    def __init__(self, env: Environment) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.text import Text

        clock = self.clock = RateClock()

        class RateColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                rate = clock.rate()
                return Text("  -  docs/s" if rate is None else f"{rate:5.2f} docs/s", style="cyan")

        class EtaColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                eta = clock.eta()
                return Text("eta " + ("-:--" if eta is None else format_duration(eta)), style="cyan")

        class FailedColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                failed = task.fields.get("failed", 0)
                return Text(f"{failed} failed", style="red" if failed else "dim")

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.fields[phase]}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            EtaColumn(),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            FailedColumn(),
            console=env.console,
            transient=False,
        )
        self.task: Any = None

    def start(self, total: int) -> None:
        self.clock.total = total
        self.task = self.progress.add_task("extract", total=total, failed=0, phase="loading model")
        self.progress.start()

    def advance(self, ok: bool, seconds: float = 0.0) -> None:
        self.clock.advance(ok, seconds)
        self.progress.update(self.task, advance=1, failed=self.clock.failed, phase="extract")

    def stop(self) -> None:
        self.progress.stop()


def make_progress(env: Environment, *, every: int, records_on_terminal: bool = False) -> ProgressReporter:
    """A bar on a real terminal, a line per `every` records elsewhere, nothing with -q.

    When the records themselves go to the same terminal (stdout not redirected), a live bar would be torn
    by the lines written under it, so plain progress lines are used there too.
    """
    if env.verbosity < 0:
        return NoProgress()
    if env.stderr_isatty and env.environ.get("TERM") != "dumb" and not records_on_terminal:
        return RichProgress(env)
    return LineProgress(env, every)


def format_duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# ---------------------------------------------------------------------------------------------- jobs

#: What a worker costs beyond its model files: Python, onnxruntime, llguidance, the KV cache (measured:
#: ~50 MiB a worker with the tiny test model, ~0.9 GiB with the 270m one).
WORKER_OVERHEAD = 200 * 2**20
#: Model files are memory-mapped and partly copied by onnxruntime: count them at this factor.
MODEL_MEMORY_FACTOR = 1.5


def plan_jobs(
    requested: int,
    sources: int,
    model_bytes: int,
    *,
    cpus: int | None = None,
    available: int | None = None,
) -> tuple[int, str | None]:
    """How many workers to start: `requested` (0 = auto) capped by CPUs, by available memory at one model
    per worker, and by the number of sources. Returns (jobs, why it was lowered, for stderr, or None).

    Each worker loads its own model, so `--jobs 1000` would start 1000 models: 10.6 GB with the tiny test
    model on 200 files, far more with the real one. The cap keeps a typo from exhausting the machine.
    """
    cpus = cpus if cpus is not None else cpu_count()
    available = available if available is not None else available_memory()
    per_worker = int(model_bytes * MODEL_MEMORY_FACTOR) + WORKER_OVERHEAD
    by_memory = max(1, int(available * 0.8) // per_worker) if available else cpus
    cap = max(1, min(cpus, by_memory))
    jobs = min(requested if requested > 0 else cap, cap, max(sources, 1))
    if requested > cap and sources > cap:
        why = (f"--jobs {requested} lowered to {cap}: {cpus} CPU(s), {available / 2**30:.1f} GiB available "
               f"at about {per_worker / 2**30:.2f} GiB per worker (each loads the model)")
        return jobs, why
    return jobs, None


def cpu_count() -> int:
    """CPUs this process may run on (a container's or taskset's share, not the machine's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def available_memory() -> int:
    """Bytes a new process can still get: MemAvailable, or less under a cgroup v2 memory limit; 0 unknown."""
    found = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    found = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit.isdigit():
            found = min(found, max(int(limit) - used, 0)) if found else max(int(limit) - used, 0)
    except (OSError, ValueError):
        pass
    return found


# --------------------------------------------------------------------------------------------- runner


@dataclass
class BatchSummary:
    total: int = 0
    ok: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, message)
    status: ExitStatus = ExitStatus.OK
    seconds: float = 0.0
    stopped_early: bool = False


def run_batch(
    sources: Sequence[Source],
    options: ExtractOptions,
    sink: RecordSink,
    *,
    jobs: int = 1,
    factory: ExtractorFactory = build_extractor,
    progress: ProgressReporter | None = None,
    fail_fast: bool = False,
) -> BatchSummary:
    """Extract every source, write records in input order, and say how it went."""
    progress = progress or NoProgress()
    summary = BatchSummary(total=len(sources))
    started = time.monotonic()
    ordered = outcomes(sources, options, factory, jobs, progress)
    progress.start(len(sources))
    try:
        for source, outcome in ordered:
            sink.write(outcome.record)
            if outcome.ok:
                summary.ok += 1
            else:
                summary.failed.append((source.name, outcome.record["error"]["message"]))
                summary.status = max(summary.status, outcome.status)
                if fail_fast:
                    summary.stopped_early = True
                    break
    finally:
        ordered.close()  # stops workers (also on Ctrl-C, a closed pipe or a fatal error)
        progress.stop()
        summary.seconds = time.monotonic() - started
    return summary


def outcomes(
    sources: Sequence[Source],
    options: ExtractOptions,
    factory: ExtractorFactory,
    jobs: int,
    progress: ProgressReporter | None = None,
) -> Generator[tuple[Source, Outcome], None, None]:
    """(source, outcome) in input order, from this process or `jobs` workers; close() stops the workers.
    What run_batch iterates; `check --jobs` uses it too."""
    progress = progress or NoProgress()
    if jobs <= 1:
        return _outcomes_serial(sources, options, factory, progress)
    return _outcomes_parallel(sources, options, factory, progress, jobs)


def _outcomes_serial(
    sources: Sequence[Source], options: ExtractOptions, factory: ExtractorFactory, progress: ProgressReporter
) -> Generator[tuple[Source, Outcome], None, None]:
    extractor = factory(options) if sources else None
    for source in sources:
        assert extractor is not None
        outcome = process_source(extractor, source, options)
        progress.advance(outcome.ok, outcome.seconds)
        yield source, outcome


# Worker-process state: one Extractor per process, built by the pool initializer.
_WORKER: dict[str, Any] = {}


def _worker_init(factory: ExtractorFactory, options: ExtractOptions, parent_pid: int) -> None:
    """Build this worker's Extractor once; remember (not raise) a fatal error so the parent can report it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    threading.Thread(target=_exit_when_orphaned, args=(parent_pid,), daemon=True).start()
    try:
        _WORKER["extractor"] = factory(options)
    except GemmacliError as exc:
        _WORKER["fatal"] = _describe(exc)
    except Exception as exc:
        _WORKER["fatal"] = {
            "kind": "ModelError",
            "message": f"worker could not start: {type(exc).__name__}: {exc}",
        }


def _exit_when_orphaned(parent_pid: int) -> None:
    """A worker whose parent was killed (kill -9) exits instead of lingering with the model in memory."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(1)


def _worker_run(source: Source, options: ExtractOptions) -> Outcome | dict[str, Any]:
    if "fatal" in _WORKER:
        return _WORKER["fatal"]
    try:
        return process_source(_WORKER["extractor"], source, options)
    except GemmacliError as exc:
        return _describe(exc)


def _describe(exc: GemmacliError) -> dict[str, Any]:
    """A fatal error as plain data: exceptions with keyword arguments do not survive pickling intact."""
    return {
        "kind": type(exc).__name__,
        "message": exc.message,
        "hint": exc.hint,
        "pointer": getattr(exc, "pointer", None),
    }


def _rebuild(description: dict[str, Any]) -> GemmacliError:
    kinds: dict[str, type[GemmacliError]] = {
        "ModelError": ModelError,
        "SchemaError": SchemaError,
        "UsageError": UsageError,
        "InputOutputError": InputOutputError,
    }
    kind = kinds.get(description["kind"], ModelError)
    if kind is SchemaError:
        return SchemaError(
            description["message"], pointer=description.get("pointer"), hint=description.get("hint")
        )
    return kind(description["message"], hint=description.get("hint"))


def _outcomes_parallel(
    sources: Sequence[Source],
    options: ExtractOptions,
    factory: ExtractorFactory,
    progress: ProgressReporter,
    jobs: int,
) -> Generator[tuple[Source, Outcome], None, None]:
    """Keep `2 * jobs` sources in flight; yield outcomes in input order as soon as the next one is ready."""
    if not sources:
        return
    import multiprocessing

    executor = ProcessPoolExecutor(
        max_workers=min(jobs, len(sources)),
        mp_context=multiprocessing.get_context("spawn"),  # no fork after onnxruntime threads exist
        initializer=_worker_init,
        initargs=(factory, options, os.getpid()),
    )
    window = 2 * jobs
    upcoming = iter(enumerate(sources))
    in_order: deque[tuple[int, Future]] = deque()
    ready: dict[int, Outcome | dict[str, Any]] = {}
    pending: set[Future] = set()
    index_of: dict[Future, int] = {}
    clean_exit = False
    try:

        def submit_more() -> None:
            while len(pending) < window:
                item = next(upcoming, None)
                if item is None:
                    return
                index, source = item
                future = executor.submit(_worker_run, source, options)
                pending.add(future)
                index_of[future] = index
                in_order.append((index, future))

        submit_more()
        while in_order:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                pending.discard(future)
                try:
                    result = future.result()
                except BrokenProcessPool as exc:
                    if Terminated.requested:  # a group-wide SIGTERM reached the workers first
                        raise Terminated from exc
                    raise ModelError(
                        "a worker process stopped unexpectedly (out of memory, or the model runtime crashed)",
                        hint="retry with fewer --jobs; add --debug for details",
                    ) from exc
                if isinstance(result, dict):
                    raise _rebuild(result)
                ready[index_of.pop(future)] = result
                progress.advance(result.ok, result.seconds)
            while in_order and in_order[0][0] in ready:
                index, _future = in_order.popleft()
                yield sources[index], ready.pop(index)  # type: ignore[misc]
            submit_more()
        clean_exit = True
    finally:
        _stop_executor(executor, graceful=clean_exit)


def _stop_executor(executor: ProcessPoolExecutor, *, graceful: bool) -> None:
    """Finish cleanly after a whole batch; else (Ctrl-C, closed pipe, --fail-fast) kill the workers."""
    if graceful:
        executor.shutdown(wait=True)
        return
    processes = list(getattr(executor, "_processes", {}).values())  # no public API to stop running tasks
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)
