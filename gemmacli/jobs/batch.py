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

Where the rest lives: records, sinks and --resume in gemmacli.jobs.records, progress reporters in
gemmacli.jobs.progress, the worker count (`--jobs`) in gemmacli.jobs.capacity, and the same outcomes from
Ray Data actors on a cluster (`--ray`) in gemmacli.jobs.ray_data.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gemmacli.engine.config import ExtractionConfig
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
from gemmacli.jobs.inputs import Source, require_text
from gemmacli.jobs.progress import NoProgress, ProgressReporter
from gemmacli.jobs.records import RecordSink

if TYPE_CHECKING:
    from gemmacli.jobs.ray_data import RayOptions


@dataclass(frozen=True)
class ExtractOptions:
    """Everything a worker needs to build its Extractor and turn a source into a record (picklable): the
    schema, the model, how to extract (one ExtractionConfig, as the Extractor takes it) and how to read."""

    schema: Any  # a dict or gemmacli.schema.LoadedSchema
    model: str
    config: ExtractionConfig = field(default_factory=ExtractionConfig)
    encoding: str = "utf-8"
    errors: str = "strict"
    allow_empty: bool = False
    with_meta: bool = False
    #: Documents decoded together in this process, their model steps batched (gemmacli.jobs.streams).
    streams: int = 1


class ExtractorLike(Protocol):
    """What the batch layer needs from gemmacli.engine.extractor.Extractor (tests pass a fake with this
    shape)."""

    model_name: str
    model_sha256: str
    schema_sha256: str

    def extract(self, text: str) -> Any: ...


ExtractorFactory = Callable[[ExtractOptions], ExtractorLike]


def build_extractor(options: ExtractOptions, model: Any = None) -> ExtractorLike:
    """The real factory: load the model (or use `model`, a loaded one) and compile the schema once."""
    from gemmacli.engine.extractor import Extractor

    return Extractor(options.schema, model=options.model if model is None else model, config=options.config,
                     warn=_ignore_warning)  # the CLI reports --lenient warnings once, before the batch


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


# --------------------------------------------------------------------------------------------- runner


@dataclass
class BatchSummary:
    """How a batch went: counts, the failures by source, the worst exit status, the time taken."""

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
    ray: RayOptions | None = None,
) -> BatchSummary:
    """Extract every source, write records in input order, and say how it went."""
    progress = progress or NoProgress()
    summary = BatchSummary(total=len(sources))
    started = time.monotonic()
    ordered = outcomes(sources, options, factory, jobs, progress, ray=ray)
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
    *,
    ray: RayOptions | None = None,
) -> Generator[tuple[Source, Outcome], None, None]:
    """(source, outcome) in input order, from this process, `jobs` workers or `ray.actors` Ray actors
    (gemmacli.jobs.ray_data); close() stops the workers. What run_batch iterates; `check --jobs` uses it
    too."""
    progress = progress or NoProgress()
    if ray is not None:
        from gemmacli.jobs.ray_data import ray_outcomes

        return ray_outcomes(sources, options, factory, ray, progress)
    if jobs <= 1 and options.streams > 1 and factory is build_extractor:
        from gemmacli.jobs.streams import stream_outcomes

        return stream_outcomes(sources, options, progress, options.streams)
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
        _WORKER["fatal"] = describe_fatal(exc)
    except Exception as exc:
        _WORKER["fatal"] = startup_failure(exc)


def startup_failure(exc: Exception) -> dict[str, Any]:
    """A worker (process or Ray actor) that could not build its Extractor: a model problem (exit 4)."""
    return {"kind": "ModelError", "message": f"worker could not start: {type(exc).__name__}: {exc}"}


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
        return describe_fatal(exc)


def describe_fatal(exc: GemmacliError) -> dict[str, Any]:
    """A fatal error as plain data: exceptions with keyword arguments do not survive pickling intact
    (worker processes and Ray actors send this instead; rebuild_fatal turns it back)."""
    return {
        "kind": type(exc).__name__,
        "message": exc.message,
        "hint": exc.hint,
        "pointer": getattr(exc, "pointer", None),
    }


def rebuild_fatal(description: dict[str, Any]) -> GemmacliError:
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
                    raise rebuild_fatal(result)
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
