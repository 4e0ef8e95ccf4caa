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
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
from gemmacli.examples import Examples
from gemmacli.inputs import Source


@dataclass(frozen=True)
class ExtractOptions:
    """Everything a worker needs to build its Extractor and turn a source into a record (picklable)."""

    schema: Any  # a dict or gemmacli.schema.LoadedSchema
    model: str
    lenient: bool = False
    max_tokens: int | None = None  # None: sized from the schema (gemmacli.api.budget_for)
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
    """What the batch layer needs from gemmacli.api.Extractor (tests pass a fake with this shape)."""

    model_name: str
    model_sha256: str
    schema_sha256: str

    def extract(self, text: str) -> Any: ...


ExtractorFactory = Callable[[ExtractOptions], ExtractorLike]


def build_extractor(options: ExtractOptions) -> ExtractorLike:
    """The real factory: load the model and compile the schema once for this process."""
    from gemmacli.api import Extractor

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

    @property
    def ok(self) -> bool:
        return self.status == ExitStatus.OK


def read_source(source: Source, options: ExtractOptions) -> str:
    """Decode a source and refuse an empty one (unless allowed): the shared first step of single and batch."""
    text = source.read_text(encoding=options.encoding, errors=options.errors)
    if not text.strip() and not options.allow_empty:
        where = "stdin" if source.name == "-" else source.name
        raise ExtractionFailed(f"{where}: input is empty", hint="pass --allow-empty to extract anyway")
    return text


def success_record(
    source_name: str, result: Any, extractor: ExtractorLike, with_meta: bool
) -> dict[str, Any]:
    """`{"source", "ok": true, "data"}`, plus model/schema hashes, token counts and time with --with-meta.
    A value the repetition guard ended (gemmacli.loops) is reported in `warnings`, so it is never silent."""
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
    """Turn one source into a record; only errors that would fail every source escape (model, schema)."""
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
    """One JSON Lines record: compact, UTF-8, newline-terminated."""
    return (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


class StdoutSink:
    """Records to stdout, flushed one by one so `| head`, `| jq` and friends see them as they finish."""

    def __init__(self, env: Environment) -> None:
        self.env = env

    def write(self, record: dict[str, Any]) -> None:
        self.env.write_data(record_line(record))

    def close(self) -> None:
        return None


class JsonlFileSink:
    """Appends records to FILE, one write() per line (see the module docstring for why that resumes)."""

    def __init__(self, path: Path, *, resume: bool) -> None:
        self.path = path
        self.recorded: Counter[str] = Counter()
        self.schema_hashes: set[str] = set()
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        if resume and path.exists():
            found = scan_records(path)
            self.recorded, self.schema_hashes = found.sources, found.schema_hashes
            with open(path, "r+b") as handle:
                handle.truncate(found.good_end)
        else:
            flags |= os.O_TRUNC
        try:
            self.fd: int | None = os.open(path, flags, 0o644)
        except OSError as exc:
            raise InputOutputError(f"cannot write {path}: {exc.strerror or exc}") from exc

    def write(self, record: dict[str, Any]) -> None:
        assert self.fd is not None
        data = memoryview(record_line(record))
        while data:  # a regular file takes it in one write; loop only for the pathological case
            written = os.write(self.fd, data)
            data = data[written:]

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
            found.sources[str(record["source"])] += 1
            meta = record.get("meta")
            if isinstance(meta, dict) and isinstance(meta.get("schema_sha256"), str):
                found.schema_hashes.add(meta["schema_sha256"])
            found.good_end = offset
    return found


def skip_recorded(sources: Sequence[Source], recorded: Counter[str]) -> list[Source]:
    """Drop the first k occurrences of each source name already recorded k times."""
    remaining = Counter(recorded)
    todo = []
    for source in sources:
        if remaining[source.name] > 0:
            remaining[source.name] -= 1
        else:
            todo.append(source)
    return todo


# ------------------------------------------------------------------------------------------ progress


class ProgressReporter(Protocol):
    def start(self, total: int) -> None: ...
    def advance(self, ok: bool) -> None: ...
    def stop(self) -> None: ...


class NoProgress:
    def start(self, total: int) -> None:
        return None

    def advance(self, ok: bool) -> None:
        return None

    def stop(self) -> None:
        return None


class LineProgress:
    """A plain line every `every` records (logs, CI, pipes): no escape codes, nothing redrawn."""

    def __init__(self, env: Environment, every: int) -> None:
        self.env = env
        self.every = every
        self.total = 0
        self.done = 0
        self.failed = 0
        self.started = 0.0

    def start(self, total: int) -> None:
        self.total = total
        self.started = time.monotonic()

    def advance(self, ok: bool) -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        if self.every > 0 and (self.done % self.every == 0) and self.done < self.total:
            elapsed = max(time.monotonic() - self.started, 1e-9)
            rate = self.done / elapsed
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            self.env.console.print(
                f"progress: {self.done}/{self.total} done, {self.failed} failed, "
                f"{rate:.2f} docs/s, ETA {format_duration(eta)}",
                markup=False,
                highlight=False,
            )

    def stop(self) -> None:
        return None


class RichProgress:
    """The terminal bar: done/total, docs/s, ETA and failures, redrawn in place on stderr."""

    def __init__(self, env: Environment) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            ProgressColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.text import Text

        class RateColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                speed = task.finished_speed or task.speed
                return Text("  -  docs/s" if speed is None else f"{speed:5.2f} docs/s", style="cyan")

        class FailedColumn(ProgressColumn):
            def render(self, task: Any) -> Text:
                failed = task.fields.get("failed", 0)
                return Text(f"{failed} failed", style="red" if failed else "dim")

        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]extract"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("elapsed"),
            TimeElapsedColumn(),
            FailedColumn(),
            console=env.console,
            transient=False,
            speed_estimate_period=60.0,
        )
        self.task: Any = None
        self.failed = 0

    def start(self, total: int) -> None:
        self.task = self.progress.add_task("extract", total=total, failed=0)
        self.progress.start()

    def advance(self, ok: bool) -> None:
        self.failed += 0 if ok else 1
        self.progress.update(self.task, advance=1, failed=self.failed)

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
    outcomes = (
        _outcomes_serial(sources, options, factory, progress)
        if jobs <= 1
        else _outcomes_parallel(sources, options, factory, progress, jobs)
    )
    progress.start(len(sources))
    try:
        for source, outcome in outcomes:
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
        outcomes.close()  # stops workers (also on Ctrl-C, a closed pipe or a fatal error)
        progress.stop()
        summary.seconds = time.monotonic() - started
    return summary


def _outcomes_serial(
    sources: Sequence[Source], options: ExtractOptions, factory: ExtractorFactory, progress: ProgressReporter
) -> Iterator[tuple[Source, Outcome]]:
    extractor = factory(options) if sources else None
    for source in sources:
        assert extractor is not None
        outcome = process_source(extractor, source, options)
        progress.advance(outcome.ok)
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
) -> Iterator[tuple[Source, Outcome]]:
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
                progress.advance(result.ok)
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
