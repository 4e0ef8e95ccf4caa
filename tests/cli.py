"""One way to run the real CLI in-process: raw_main with swapped streams (httpie's Environment idea)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from gemmacli.cli.core import raw_main
from gemmacli.env import Environment


@dataclass
class Result:
    status: int
    stdout: bytes
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.decode().splitlines()]


def run_cli(
    argv: list[str],
    stdin: bytes | io.BytesIO = b"",
    *,
    stdin_isatty: bool = False,
    stdout_isatty: bool = False,
    stderr_isatty: bool = False,
    environ: dict[str, str] | None = None,
    stdout: Any = None,
) -> Result:
    """Run `gemmacli ARGV`; stdin/stdout/stderr are in-memory, the environment is only `environ`."""
    out = stdout if stdout is not None else io.BytesIO()
    err = io.StringIO()
    env = Environment(
        stdin=stdin if isinstance(stdin, io.BytesIO) else io.BytesIO(stdin),
        stdout=out,
        stderr=err,
        stdin_isatty=stdin_isatty,
        stdout_isatty=stdout_isatty,
        stderr_isatty=stderr_isatty,
        environ={} if environ is None else environ,
    )
    status = raw_main(argv, env)
    return Result(int(status), out.getvalue() if hasattr(out, "getvalue") else b"", err.getvalue())
