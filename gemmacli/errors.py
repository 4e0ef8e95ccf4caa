"""Every failure a user can see, each bound to the exit status the CLI reports for it.

The work raises these; only `gemmacli.cli.core.raw_main` turns them into messages and exit codes,
so the mapping lives in one place and the library API raises ordinary exceptions.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Documented exit codes (README, `--help`)."""

    OK = 0
    FAILED = 1  # an extraction or validation failed (or a policy was violated)
    USAGE = 2  # bad command line
    SCHEMA = 3  # schema (or policy) invalid or unsupported
    MODEL = 4  # model missing or broken
    IO = 5  # input/output error
    INTERRUPTED = 130  # Ctrl-C
    TERMINATED = 143  # SIGTERM (a cancelled CI job, `timeout`, `kill`): 128 + 15, as if uncaught


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by the executable's handler (gemmacli.cli.core.main).

    A KeyboardInterrupt, so every path that stops cleanly on Ctrl-C (records kept, workers stopped, the
    --resume hint) does the same here; only the exit status differs. `requested` stays True once the signal
    came, for code that sees its side effects first (worker processes killed by a group-wide SIGTERM).
    """

    requested = False


class GemmacliError(Exception):
    """Base class: a message for a person, an optional hint (often the command that fixes it), and the
    library option at fault when there is one (`max_tokens`): the CLI words it as its flag, so the
    library's messages name options the way a Python caller passes them."""

    exit_status: ExitStatus = ExitStatus.FAILED

    def __init__(self, message: str, *, hint: str | None = None,
                 option: str | tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.option = option


class ExtractionFailed(GemmacliError):
    """The model could not produce a valid object (budget exhausted, validation failed, input too long)."""

    exit_status = ExitStatus.FAILED


class UsageError(GemmacliError):
    """A wrong option or argument. `option` names the library option at fault (`max_tokens`), so the CLI
    can word it as its flag (`--max-tokens`) while the library's message stays free of flags."""

    exit_status = ExitStatus.USAGE


class SchemaError(GemmacliError):
    """Invalid or unsupported schema; `pointer` is the JSON pointer of the offending part when known."""

    exit_status = ExitStatus.SCHEMA

    def __init__(self, message: str, *, pointer: str | None = None, hint: str | None = None,
                 option: str | tuple[str, ...] | None = None) -> None:
        super().__init__(message, hint=hint, option=option)
        self.pointer = pointer


class ModelError(GemmacliError):
    exit_status = ExitStatus.MODEL


class InputOutputError(GemmacliError):
    exit_status = ExitStatus.IO
