"""Screenshot a real `gemmacli extract` batch, progress bar included, for the README.

    python docs/make_batch_svg.py MODEL [--jobs 2]

Runs the real CLI in a real terminal (a detached 110x24 tmux pane, bash with a `$ ` prompt), types the
command, captures the pane with its colours mid-batch (docs/batch.svg: the live bar with rate, ETA and
failures) and at the end (docs/batch-done.svg: the summary), and renders each capture as SVG with rich.
MODEL is a model name or folder; the tiny test model works (.cache/test-models/*/tiny-int4), though its
random weights make some records run out of --max-tokens, which shows the failure count at work.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.text import Text

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "tests" / "examples"
SESSION = f"gemmacli-svg-{os.getpid()}"
WIDTH, HEIGHT = 110, 24


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout


def capture() -> str:
    """The visible pane with its SGR colour codes, trailing blank lines dropped."""
    return tmux("capture-pane", "-p", "-e", "-t", SESSION).rstrip("\n") + "\n"


def to_svg(ansi: str, path: Path, title: str) -> None:
    with open(os.devnull, "w") as sink:
        console = Console(record=True, file=sink, force_terminal=True, width=WIDTH, color_system="truecolor")
        console.print(Text.from_ansi(ansi), soft_wrap=True)
        console.save_svg(str(path), title=title)
    print(f"wrote {path}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model")
    parser.add_argument("--jobs", default="2")
    parser.add_argument("--copies", type=int, default=3, help="copies of each example input")
    parser.add_argument("--max-tokens", default="300")
    args = parser.parse_args()
    model = str(Path(args.model).resolve()) if Path(args.model).exists() else args.model
    gemmacli = shutil.which("gemmacli", path=str(Path(sys.executable).parent)) or "gemmacli"

    with tempfile.TemporaryDirectory() as scratch:
        inbox = Path(scratch) / "inbox"
        inbox.mkdir()
        for copy in range(args.copies):
            for example in sorted(EXAMPLES.glob("*.txt")):
                shutil.copy(example, inbox / f"{copy:02d}-{example.name}")
        total = len(list(inbox.iterdir()))
        env = {
            **os.environ,
            "TERM": "xterm-256color",
            "GEMMACLI_MODEL": model,
            "PATH": f"{Path(gemmacli).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        env.pop("NO_COLOR", None)
        subprocess.run(
            [
                "tmux",
                "new-session",
                "-d",
                "-s",
                SESSION,
                "-x",
                str(WIDTH),
                "-y",
                str(HEIGHT),
                "-c",
                scratch,
                "bash --norc --noprofile",
            ],
            check=True,
            env=env,
        )
        try:
            command = (
                f"gemmacli extract --schema ticket inbox/ -o triage.jsonl --jobs {args.jobs} "
                f"--max-tokens {args.max_tokens}"
            )
            tmux("send-keys", "-t", SESSION, "PS1='$ '; clear", "Enter")
            time.sleep(0.5)
            tmux("send-keys", "-t", SESSION, command, "Enter")
            out = Path(scratch) / "triage.jsonl"
            middle = None
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                time.sleep(0.2)
                done = out.exists() and out.read_bytes().count(b"\n")
                if middle is None and done and done >= total // 2:
                    middle = capture()
                if "record(s) to triage.jsonl" in tmux("capture-pane", "-p", "-t", SESSION):
                    break
            time.sleep(0.5)
            tmux("send-keys", "-t", SESSION, "head -c 230 triage.jsonl; echo", "Enter")
            time.sleep(0.5)
            final = capture()
        finally:
            subprocess.run(["tmux", "kill-session", "-t", SESSION], check=False)
    title = f"gemmacli extract --jobs {args.jobs}"
    to_svg(middle or final, HERE / "batch.svg", title + " (mid-batch)")
    to_svg(final, HERE / "batch-done.svg", title)


if __name__ == "__main__":
    main()
