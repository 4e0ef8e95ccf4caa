"""Where texts come from: stdin, files, globs, folders, JSON Lines. Shared by `extract` and `check`.

CONTRACT:
@dataclass(frozen=True)
class Source:
    name: str              # what a record calls "source": the path as given, "-" for stdin, or a JSONL id
    kind: str              # "stdin" | "file" | "jsonl"
    path: Path | None
    def read_text(self, *, encoding="utf-8", errors="strict") -> str
        Bad bytes -> InputOutputError (exit 5) naming the file and byte offset.

def collect_sources(args: list[str], *, glob: str | None = None, stdin: IO[bytes] | None = None,
                    jsonl: bool = False, text_field="text", id_field=None) -> list[Source]
    Files, shell-unexpanded globs and folders (recursively, filtered by `glob`), "-" for stdin;
    sorted deterministically within a folder. Missing path -> InputOutputError (exit 5).
"""

from __future__ import annotations
