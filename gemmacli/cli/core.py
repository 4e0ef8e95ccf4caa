"""The one place where exceptions become messages on stderr and numbered exit statuses."""

from __future__ import annotations

import argparse
import errno
import os
import re
import signal
import sys
from collections.abc import Sequence

from rich.markup import escape

from gemmacli import __version__
from gemmacli.env import Environment
from gemmacli.errors import ExitStatus, GemmacliError, Terminated

EXIT_CODES_HELP = """\
exit codes:
  0    ok
  1    an extraction or validation failed (check: a policy was violated)
  2    usage error
  3    schema (or policy) invalid or unsupported
  4    model missing or broken
  5    input/output error
  130  interrupted (Ctrl-C); 143 after SIGTERM, with the same cleanup
"""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so usage errors flow through raw_main like any other.

    A parser with an `examples` attribute prints them right after the usage line, in every command's
    --help alike: people look for a command line to copy first, the option reference second.
    """

    examples: str | None = None

    def format_help(self) -> str:
        help_text = super().format_help()
        if not self.examples:
            return help_text
        usage = self.format_usage()
        if help_text.startswith(usage):
            return f"{usage}\n{self.examples}{help_text[len(usage):]}"
        return f"{self.examples}\n{help_text}"

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
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.examples = commands.EXAMPLES
    parser.add_argument("--version", action="version", version=f"gemmacli {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.register_all(sub)
    _describe_every_command(parser)
    return parser


def _describe_every_command(parser: argparse.ArgumentParser) -> None:
    """A command registered with only a one-line `help` gets it as its --help description too, so no
    command's --help starts with a bare usage line."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, child in action.choices.items():
                if not child.description and helps.get(name):
                    text = str(helps[name])
                    child.description = text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")
                _describe_every_command(child)


def raw_main(argv: Sequence[str] | None, env: Environment) -> ExitStatus:
    """Run one command; map every failure to an exit status and a message a person understands."""
    parser = build_parser()
    args = None
    try:
        try:
            args = parser.parse_args(list(argv) if argv is not None else None)
        except SystemExit as exc:  # --help and --version print, then argparse exits: keep it a return
            return ExitStatus(exc.code or 0) if isinstance(exc.code, int | None) else ExitStatus.USAGE
        env.verbosity = getattr(args, "verbose", 0) - getattr(args, "quiet", 0)
        env.debug = bool(getattr(args, "debug", False))
        handler = getattr(args, "handler", None)
        if handler is None:
            env.console.print(parser.format_help(), markup=False, highlight=False)
            return ExitStatus.USAGE
        return ExitStatus(handler(args, env))
    except _ArgparseUsage as exc:
        env.console.print(exc.usage.rstrip(), markup=False)
        env.console.print(f"[red]error:[/red] {escape(exc.message)}", highlight=False)
        return ExitStatus.USAGE
    except GemmacliError as exc:
        if env.debug:
            env.console.print_exception()
        _report(env, exc)
        return exc.exit_status
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated):
            env.console.print("[yellow]terminated[/yellow]")
            return ExitStatus.TERMINATED
        env.console.print("[yellow]interrupted[/yellow]")
        return ExitStatus.INTERRUPTED
    except BrokenPipeError:
        silence_stdout(env)
        return ExitStatus.OK
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            silence_stdout(env)
            return ExitStatus.OK
        if env.debug:
            env.console.print_exception()
        name = f": {exc.filename}" if exc.filename else ""
        message = escape(f"{exc.strerror or exc}{name}")
        env.console.print(f"[red]error:[/red] {message}", highlight=False)
        return ExitStatus.IO


def as_flag(message: str, option: str | tuple[str, ...] | None) -> str:
    """The library names options (`max_tokens`); the command line knows them as flags (`--max-tokens`)."""
    for name in (option,) if isinstance(option, str) else option or ():
        # not inside a path or a file name: "…/dev.jsonl" stays as it is when the option is `dev`
        message = re.sub(rf"(?<![\w/.-]){re.escape(name)}\b(?![/.]\w)", "--" + name.replace("_", "-"),
                         message)
    return message


def _report(env: Environment, exc: GemmacliError) -> None:
    message = as_flag(exc.message, getattr(exc, "option", None))
    pointer = getattr(exc, "pointer", None)
    if pointer is not None:
        message = f"{message} (at {pointer or '/'})"
    env.console.print(f"[red]error:[/red] {escape(message)}", markup=True, highlight=False)
    if exc.hint:
        hint = as_flag(exc.hint, getattr(exc, "option", None))
        env.console.print(f"[dim]hint:[/dim] {escape(hint)}", highlight=False)


def silence_stdout(env: Environment) -> None:
    """After a closed pipe (`| head -1`), point stdout at devnull: the final flush stays quiet.

    Only when the command wrote to the process's real stdout: a test's swapped stream must not cost the
    test runner its own fd 1.
    """
    if env.stdout is not getattr(sys.stdout, "buffer", None):
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> None:
    """The executable: this process is gemmacli's alone, so its models may share one thread pool."""
    os.environ.setdefault("GEMMACLI_PROCESS_THREAD_POOL", "1")  # gemmacli.engine.runtime.PROCESS_POOL_ENV
    _occupy_closed_std_fds()
    signal.signal(signal.SIGTERM, _terminate)
    sys.exit(int(raw_main(argv, Environment())))


def _occupy_closed_std_fds() -> None:
    """Put /dev/null on fd 0, 1 or 2 when the shell closed it (`<&-`, `>&-`, `2>&-`).

    Python has already set sys.stdin/stdout/stderr to None (gemmacli.env.ClosedStream reports that); the fd
    must not stay free either, or the next file opened (an `-o` file, a model) would get fd 1 and whatever a
    native library prints to stdout would land in it.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)
            if opened != fd:  # a lower fd was free too and is being filled in this same loop
                os.dup2(opened, fd)
                os.close(opened)


def _terminate(_signum: int, _frame: object) -> None:
    """SIGTERM stops like Ctrl-C (what was written stays, --resume continues), then exits 143."""
    Terminated.requested = True
    raise Terminated
