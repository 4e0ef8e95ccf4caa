"""Progress on stderr while a batch runs: a rich bar on a terminal, plain lines elsewhere, nothing with -q.

Why here: the batch runner (gemmacli.jobs.batch) only calls `start`, `advance` and `stop` on a
`ProgressReporter`; how progress is shown (and how docs/s and the ETA are measured, RateClock) is a
concern of its own, shared by `extract` and `eval`.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from gemmacli.env import Environment


class ProgressReporter(Protocol):
    """What run_batch tells about progress: the total, each finished source, the end."""

    def start(self, total: int) -> None: ...
    def advance(self, ok: bool, seconds: float = 0.0) -> None: ...
    def stop(self) -> None: ...


class NoProgress:
    """-q, or a caller that shows no progress."""

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
