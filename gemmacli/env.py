"""The streams and terminal facts a command runs against, in one object tests can swap (as httpie does)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import IO

from rich.console import Console
from rich.markup import escape


class ClosedStream:
    """Stands in for a standard stream the shell closed (`<&-`, `>&-`): Python then has no sys.stdin or
    sys.stdout at all. Reading it is a usage error (2), writing it an I/O error (5), never a traceback."""

    def __init__(self, name: str) -> None:
        self.name = name

    def read(self, size: int = -1, /) -> bytes:
        from gemmacli.errors import UsageError

        raise UsageError(f"{self.name} is closed: there is no input to read",
                         hint="pipe text in, or name the input files")

    def write(self, data: bytes, /) -> int:
        from gemmacli.errors import InputOutputError

        raise InputOutputError(f"{self.name} is closed: there is nowhere to write the result",
                               hint="redirect it (> FILE), or pass -o FILE")

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return False


def _stdin() -> IO[bytes]:
    return sys.stdin.buffer if sys.stdin is not None else ClosedStream("stdin")  # type: ignore[return-value]


def _stdout() -> IO[bytes]:
    return sys.stdout.buffer if sys.stdout is not None else ClosedStream("stdout")  # type: ignore[return-value]


def _stderr() -> IO[str]:
    return sys.stderr if sys.stderr is not None else open(os.devnull, "w")  # lives as long as we do


def _isatty(stream: IO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@dataclass
class Environment:
    """stdin/stdout carry data; everything a person reads goes to `console` (stderr, via rich)."""

    stdin: IO[bytes] = field(default_factory=_stdin)
    stdout: IO[bytes] = field(default_factory=_stdout)
    stderr: IO[str] = field(default_factory=_stderr)
    stdin_isatty: bool | None = None
    stdout_isatty: bool | None = None
    stderr_isatty: bool | None = None
    environ: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    verbosity: int = 0  # -q lowers, -v raises
    debug: bool = False

    def __post_init__(self) -> None:
        if self.stdin_isatty is None:
            self.stdin_isatty = _isatty(self.stdin)
        if self.stdout_isatty is None:
            self.stdout_isatty = _isatty(self.stdout)
        if self.stderr_isatty is None:
            self.stderr_isatty = _isatty(self.stderr)
        self._console: Console | None = None

    @property
    def no_color(self) -> bool:
        return "NO_COLOR" in self.environ or self.environ.get("TERM") == "dumb" or not self.stderr_isatty

    @property
    def console(self) -> Console:
        """Rich console on stderr: plain text for NO_COLOR, TERM=dumb and non-terminals."""
        if self._console is None:
            self._console = Console(
                file=self.stderr,
                force_terminal=bool(self.stderr_isatty) and not self.no_color,
                no_color=self.no_color,
                highlight=False,
                soft_wrap=True,
                emoji=False,
                width=None if self.stderr_isatty else 100,
            )
        return self._console

    def info(self, message: str) -> None:
        """Rich markup allowed: escape anything user-supplied (paths, schemas) with rich.markup.escape."""
        if self.verbosity >= 0:
            self.console.print(message)

    def verbose(self, message: str) -> None:
        """Plain text (escaped here): these lines quote schemas like 'tags [str]' and paths verbatim."""
        if self.verbosity >= 1:
            self.console.print(f"[dim]{escape(message)}[/dim]")

    def warn(self, message: str) -> None:
        """Plain text (escaped here), shown down to -q; -qq hides it."""
        if self.verbosity >= -1:
            self.console.print(f"[yellow]warning:[/yellow] {escape(message)}")

    def write_data(self, data: bytes) -> None:
        """Write to stdout and flush, so records reach a pipe as they finish."""
        self.stdout.write(data)
        self.stdout.flush()
