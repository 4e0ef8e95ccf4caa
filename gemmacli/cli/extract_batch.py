"""`gemmacli extract` with several inputs: JSON Lines records to stdout or to -o FILE, and what goes with
FILE: its lock, --resume (refusing a FILE written with other settings, skipping what it records,
--retry-failed), the message after Ctrl-C and the closing report on stderr.

Kept apart from gemmacli.cli.extract_cmd (the command line, the schema, the inputs, a single result) so
each reads on its own; the work itself (workers, records, resume scanning) is gemmacli.jobs's.
"""

from __future__ import annotations

import argparse
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemmacli.env import Environment
from gemmacli.errors import ExitStatus, UsageError
from gemmacli.files import is_regular_or_new
from gemmacli.jobs import batch
from gemmacli.jobs.inputs import Source
from gemmacli.jobs.outfile import OutputLock, differences
from gemmacli.jobs.parquet import ParquetSink, is_parquet
from gemmacli.jobs.progress import format_duration, make_progress
from gemmacli.jobs.records import (
    JsonlFileSink,
    RecordedFile,
    RecordSink,
    StdoutSink,
    scan_records,
    skip_recorded,
)
from gemmacli.schema import schema_sha256

if TYPE_CHECKING:
    from gemmacli.jobs.ray_data import RayOptions


@dataclass
class BatchRun:
    """What one batch works on: the sources, how to extract them, where the records go."""

    sources: list[Source]
    options: batch.ExtractOptions
    output: Path | None
    jobs: int
    stdin_sha256: str | None
    factory: batch.ExtractorFactory  # extract_cmd.EXTRACTOR_FACTORY, the seam tests use for a fake model
    ray: RayOptions | None = None  # --ray: Ray Data actors instead of `jobs` worker processes


def extract_batch(run: BatchRun, args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Records to stdout, or to -o FILE under its lock (resuming it with --resume); the exit status covers
    every record in FILE, including those an earlier run wrote."""
    if run.output is None:
        return _run_records(run, StdoutSink(env), args, env, earlier=None)
    regular = is_regular_or_new(run.output)
    if args.resume and not regular:  # never read a FIFO or a device to find records in it
        raise UsageError(f"--resume needs a regular file, and {run.output} is not one (a device or a FIFO)")
    lock = OutputLock(run.output) if regular else None
    try:
        earlier = _open_checkpoint(run, lock, args, env)
        if is_parquet(run.output):  # written whole at the end (no --resume): nothing to scan or skip
            return _run_records(run, ParquetSink(run.output), args, env, earlier=None)
        sink = JsonlFileSink(run.output, resume=args.resume, retry_failed=args.retry_failed)
        if lock is not None:
            lock.record(_fingerprint(run.options, args), stdin_sha256=run.stdin_sha256)
        if args.resume:
            run.sources = _skip_done(run, sink.found, earlier, env)
        return _run_records(run, sink, args, env, earlier=sink.found)
    finally:
        if lock is not None:
            lock.close()


def _open_checkpoint(
    run: BatchRun, lock: OutputLock | None, args: argparse.Namespace, env: Environment
) -> dict[str, Any] | None:
    """With --resume, refuse (exit 2) a FILE written with another schema, model or options."""
    previous = lock.previous if lock is not None else None
    if not args.resume or run.output is None or not run.output.exists():
        return previous
    now = _fingerprint(run.options, args)
    before = previous.get("fingerprint") if previous else None
    if isinstance(before, dict):
        changed = differences(before, now)
    else:  # a file from before sidecars: only --with-meta records say which schema made them
        hashes = scan_records(run.output).schema_hashes
        there = ", ".join(sorted(h[:12] + "…" for h in hashes))
        changed = [f"schema ({there} there, {now['schema'][:12]}… now)"] if hashes - {now["schema"]} else []
    if changed:
        raise UsageError(
            f"cannot resume {run.output}: it was written with another configuration: {'; '.join(changed)}",
            hint="resume with the same settings, write to a new file, or drop --resume to start FILE afresh",
        )
    return previous


def _skip_done(
    run: BatchRun, found: RecordedFile, previous: dict[str, Any] | None, env: Environment
) -> list[Source]:
    """The sources still to do: files matched by resolved path, stdin only when it holds the same text."""
    before = len(run.sources)
    base = Path(previous["cwd"]) if previous and isinstance(previous.get("cwd"), str) else None
    same_stdin = bool(previous) and previous.get("stdin_sha256") == run.stdin_sha256  # type: ignore[union-attr]
    if not same_stdin and any(s.from_stdin for s in run.sources) and found.sources:
        env.warn("stdin is not the text the recorded run read (or that is unknown): extracting it again")
    todo = skip_recorded(run.sources, found.sources, base=base, skip_stdin=same_stdin)
    where = _escape(str(run.output))
    env.info(f"resuming {where}: {before - len(todo)} of {before} already recorded, {len(todo)} to go")
    return todo


def _fingerprint(options: batch.ExtractOptions, args: argparse.Namespace) -> dict[str, Any]:
    """Everything besides the text that decides a record: a resumed FILE must not mix two of these."""
    schema = getattr(options.schema, "sha256", None) or schema_sha256(options.schema)
    return {
        "schema": schema,
        "model": _model_identity(Path(options.model)),
        **{key.replace("_", "-"): value for key, value in options.config.summary().items()},
        "encoding": options.encoding,
        "errors": options.errors,
        "allow-empty": options.allow_empty,
        "with-meta": options.with_meta,
        "text-field": args.text_field if args.input_jsonl else None,
        "id-field": args.id_field if args.input_jsonl else None,
    }


def _model_identity(folder: Path) -> str:
    """The model's folder and the sha256 of its manifest (which holds every file's sha256)."""
    from gemmacli.models.store import MANIFEST

    try:
        digest = hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()[:16]
    except OSError:
        return str(folder)
    return f"{folder} ({digest})"


def _run_records(
    run: BatchRun,
    sink: RecordSink,
    args: argparse.Namespace,
    env: Environment,
    *,
    earlier: RecordedFile | None,
) -> ExitStatus:
    records_on_terminal = run.output is None and bool(env.stdout_isatty)
    progress = make_progress(env, every=args.progress_every, records_on_terminal=records_on_terminal)
    written = _Counting(sink)
    try:
        summary = batch.run_batch(
            run.sources,
            run.options,
            written,
            jobs=run.jobs,
            factory=run.factory,
            progress=progress,
            fail_fast=args.fail_fast,
            ray=run.ray,
        )
    except KeyboardInterrupt:
        if run.output is not None and not is_parquet(run.output):
            where = _escape(str(run.output))
            env.info(f"{written.count} record(s) written to {where}; rerun with --resume to continue")
        raise
    finally:
        sink.close()
    _report(summary, run.output, env)
    return _with_earlier(summary.status, earlier, run.output, env)


def _with_earlier(
    status: ExitStatus, earlier: RecordedFile | None, output: Path | None, env: Environment
) -> ExitStatus:
    """A resumed FILE still holding failed records is not a success: say so and keep the worse status."""
    if earlier is None or not earlier.failed():
        return status
    count = len(earlier.failed())
    env.info(
        f"[red]{count} earlier record(s) in {_escape(str(output))} failed[/red]; "
        "rerun with --resume --retry-failed to extract them again"
    )
    return max(status, earlier.status())


class _Counting:
    """Counts records as they are written, for the message after Ctrl-C."""

    def __init__(self, sink: RecordSink) -> None:
        self.sink = sink
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        self.sink.write(record)
        self.count += 1

    def close(self) -> None:
        self.sink.close()


def _report(summary: batch.BatchSummary, output: Path | None, env: Environment) -> None:
    """The closing lines on stderr: counts, speed, and the first failures by name."""
    done = summary.ok + len(summary.failed)
    rate = done / summary.seconds if summary.seconds > 0 else 0.0
    where = f" to {_escape(str(output))}" if output is not None else ""
    failed = len(summary.failed)
    colour = "red" if failed else "green"
    env.info(
        f"[{colour}]{done} record(s){where}: {summary.ok} ok, {failed} failed[/{colour}] "
        f"in {format_duration(summary.seconds)} ({rate:.2f} docs/s)"
    )
    for name, message in summary.failed[:10]:
        env.info(f"  [red]failed[/red] {_escape(name)}: {_escape(message)}")
    if failed > 10:
        env.info(f'  ... and {failed - 10} more (see the records with "ok": false)')
    if summary.stopped_early:
        env.info("stopped at the first failure (--fail-fast)")


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
