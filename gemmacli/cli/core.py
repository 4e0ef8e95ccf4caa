"""The one place where exceptions become messages on stderr and numbered exit statuses."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence

from gemmacli import __version__
from gemmacli.env import Environment
from gemmacli.errors import ExitStatus, GemmacliError

EXIT_CODES_HELP = """\
exit codes:
  0    ok
  1    an extraction or validation failed (check: a policy was violated)
  2    usage error
  3    schema (or policy) invalid or unsupported
  4    model missing or broken
  5    input/output error
  130  interrupted
"""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so usage errors flow through raw_main like any other."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgparseUsage(self.format_usage(), message)


class _ArgparseUsage(Exception):
    def __init__(self, usage: str, message: str) -> None:
        super().__init__(message)
        self.usage = usage
        self.message = message


def build_parser() -> argparse.ArgumentParser:
    from gemmacli.cli import commands

    parser = _Parser(
        prog="gemmacli",
        description="Unstructured text in, JSON that matches your JSON Schema out. Local, no cloud.",
        epilog=commands.EXAMPLES + "\n" + EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gemmacli {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.register_all(sub)
    return parser


def raw_main(argv: Sequence[str] | None, env: Environment) -> ExitStatus:
    """Run one command; map every failure to an exit status and a message a person understands."""
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
        env.verbosity = getattr(args, "verbose", 0) - getattr(args, "quiet", 0)
        env.debug = bool(getattr(args, "debug", False))
        handler = getattr(args, "handler", None)
        if handler is None:
            env.console.print(parser.format_help(), markup=False, highlight=False)
            return ExitStatus.USAGE
        return ExitStatus(handler(args, env))
    except _ArgparseUsage as exc:
        env.console.print(exc.usage.rstrip(), markup=False)
        env.console.print(f"[red]error:[/red] {exc.message}", highlight=False)
        return ExitStatus.USAGE
    except GemmacliError as exc:
        if env.debug:
            env.console.print_exception()
        _report(env, exc)
        return exc.exit_status
    except KeyboardInterrupt:
        env.console.print("[yellow]interrupted[/yellow]")
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return ExitStatus.OK
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            _silence_stdout()
            return ExitStatus.OK
        if env.debug:
            env.console.print_exception()
        name = f": {exc.filename}" if exc.filename else ""
        env.console.print(f"[red]error:[/red] {exc.strerror or exc}{name}", highlight=False)
        return ExitStatus.IO


def _report(env: Environment, exc: GemmacliError) -> None:
    message = exc.message
    pointer = getattr(exc, "pointer", None)
    if pointer is not None:
        message = f"{message} (at {pointer or '/'})"
    env.console.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    if exc.hint:
        env.console.print(f"[dim]hint:[/dim] {exc.hint}", highlight=False)


def _silence_stdout() -> None:
    """After a closed pipe (`| head -1`), point stdout at devnull so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(int(raw_main(argv, Environment())))
