"""`gemmacli extract`: texts in (stdin, files, folders, JSON Lines), JSON out.

This module holds the command line, the schema and input checks and a single result; several inputs
go on to gemmacli.cli.extract_batch (records, -o FILE, --resume), and the work itself to gemmacli.jobs.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from gemmacli.cli.commands import (
    HashingReader,
    add_common_flags,
    add_decoding_options,
    add_model_options,
    add_parallel_option,
    check_max_tokens,
    check_parallel,
    default_model,
    extraction_config,
    warn_if_tuned_elsewhere,
)
from gemmacli.cli.extract_batch import BatchRun, extract_batch
from gemmacli.cli.ray_flags import add_ray_options, ray_options
from gemmacli.env import Environment
from gemmacli.errors import ExitStatus, ExtractionFailed, InputOutputError, UsageError
from gemmacli.files import write_atomically
from gemmacli.jobs import batch, capacity
from gemmacli.jobs.inputs import Readable, Source, collect_sources
from gemmacli.jobs.parquet import is_parquet

DEFAULT_MODEL_HELP = "the best installed Gemma 3 model"

EXAMPLES = """\
examples:
  cat mail.txt | gemmacli extract --schema schemas/contact.json
  gemmacli extract --schema invoice notes/*.txt -o invoices.jsonl --jobs 2
  gemmacli extract --schema 'name, age int, email?: their email, tags [str], mood enum(happy|sad)' -
  gemmacli extract --schema s.json --input-jsonl tickets.jsonl --text-field body --id-field id
  gemmacli extract --schema ticket inbox/ --glob '*.txt' -o triage.jsonl --resume
  gemmacli extract --schema ticket inbox/ -o triage.jsonl --resume --ray HEAD:6379 --jobs 16
"""

DESCRIPTION = """\
Extract JSON matching a schema from text. One input prints one JSON object (pretty on a terminal,
compact when piped); several inputs print JSON Lines, one record per input, in input order:
  {"source": ..., "ok": true, "data": {...}}   or   {"source": ..., "ok": false, "error": {...}}

--schema takes a file path (only if that file exists), inline JSON, a bundled name
(`gemmacli schema list`) or the concise syntax (`gemmacli schema dsl`); -v says which it was.
"""

# The seam tests use to run the CLI with a fake model: a picklable callable(ExtractOptions) -> Extractor.
EXTRACTOR_FACTORY: batch.ExtractorFactory = batch.build_extractor


def register(sub: argparse._SubParsersAction) -> None:
    from gemmacli.cli.core import EXIT_CODES_HELP

    parser = sub.add_parser(
        "extract",
        help="extract JSON matching a schema from text",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP
        + "  In a batch, the exit code is 1 if any record failed (5 if any input could not be read).\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.examples = EXAMPLES  # printed first by the core parser
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="files, folders (recursive), globs, or - for stdin (the default when piped)",
    )
    parser.add_argument(
        "-s",
        "--schema",
        required=True,
        metavar="SCHEMA",
        help="a path, inline JSON, a bundled name, or 'name, age int, ...'",
    )

    source = parser.add_argument_group("input")
    source.add_argument(
        "--input-jsonl",
        action="append",
        default=[],
        metavar="FILE",
        help="read texts from a JSON Lines file, or the rows of a .parquet file (repeatable; - for stdin)",
    )
    source.add_argument(
        "--text-field",
        default="text",
        metavar="NAME",
        help="the field holding the text in --input-jsonl records (default: text)",
    )
    source.add_argument(
        "--id-field", metavar="NAME", help="the field naming each --input-jsonl record (default: FILE:LINE)"
    )
    source.add_argument("--glob", metavar="PATTERN", help="filter files found in folders, e.g. '*.txt'")
    add_decoding_options(source)
    source.add_argument(
        "--allow-empty", action="store_true", help="extract from empty input instead of failing (exit 1)"
    )

    output = parser.add_argument_group("output")
    output.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write to FILE (a single result atomically; JSON Lines record by record; a .parquet FILE gets "
        "the records as a Parquet table)",
    )
    output.add_argument(
        "--resume",
        action="store_true",
        help="with -o: skip sources already recorded in FILE, append the rest (same schema, model and "
        "options only)",
    )
    output.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: extract the sources of failed records again (they are dropped from FILE)",
    )
    shape = output.add_mutually_exclusive_group()
    shape.add_argument("--compact", action="store_true", help="one-line JSON even on a terminal")
    shape.add_argument("--pretty", action="store_true", help="indented JSON even when piped")
    output.add_argument(
        "--records",
        action="store_true",
        help="JSON Lines records even for a single input (stable shape for scripts)",
    )
    output.add_argument(
        "--with-meta",
        action="store_true",
        help="add model name + sha256, schema sha256, token counts and time",
    )

    run = parser.add_argument_group("model and decoding")
    add_model_options(run, default_model=DEFAULT_MODEL_HELP)
    run.add_argument(
        "--temperature", type=float, default=0.0, metavar="T", help="0 = greedy, deterministic (default)"
    )
    run.add_argument(
        "--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (default: 1.0)"
    )
    run.add_argument("--seed", type=int, metavar="N", help="random seed for sampling")
    run.add_argument(
        "--truncate",
        action="store_true",
        help="cut input that is too long for the context instead of failing",
    )

    batch_group = parser.add_argument_group("batches")
    batch_group.add_argument(
        "-j",
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="worker processes, each loading the model once (0 = auto: capped by CPUs and by memory); "
        "with --ray, Ray actors",
    )
    add_parallel_option(batch_group)
    batch_group.add_argument("--fail-fast", action="store_true", help="stop at the first failed record")
    batch_group.add_argument(
        "--progress-every",
        type=int,
        default=100,
        metavar="N",
        help="when stderr is not a terminal, a progress line every N records",
    )
    add_ray_options(batch_group)
    add_common_flags(parser)
    parser.set_defaults(handler=handle, usage_text=parser.format_usage)


def handle(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Validate the command line, load and check the schema, gather sources, then extract."""
    _validate(args)
    ray = ray_options(args, args.jobs)  # before any work: a missing Ray is exit 2
    check_parallel(args.parallel, args.jobs, ray)
    options_schema = _load_schema(args, env)
    stdin = HashingReader(env.stdin)
    sources = _gather_sources(args, env, stdin)
    output = Path(args.output) if args.output else None
    if output is not None:
        sources = _without_output_file(sources, output)
    as_records = (
        args.records
        or ray is not None
        or (output is not None and is_parquet(output))
        or args.resume
        or bool(args.input_jsonl)
        or len(sources) != 1
        or _names_a_set(args.inputs)
    )
    if not sources:
        if args.allow_empty:
            env.warn("no input found; nothing to do")
            return ExitStatus.OK
        raise ExtractionFailed("no input found", hint="check the paths and --glob, or pass --allow-empty")

    model = _check_model(args.model or default_model(env), env)
    warn_if_tuned_elsewhere(model, options_schema, env)
    check_max_tokens(args.max_tokens, Path(model))
    jobs = _plan_jobs(args.jobs, len(sources), Path(model), env) if ray is None else 1
    config = extraction_config(args, options_schema, env,
                               threads=max(1, capacity.cpu_count() // jobs) if jobs > 1 else None)
    options = batch.ExtractOptions(
        schema=options_schema,
        model=model,
        config=config,
        encoding=args.encoding,
        errors=args.errors,
        allow_empty=args.allow_empty,
        with_meta=args.with_meta,
        streams=args.parallel,
    )
    env.verbose(f"model: {model}; {len(sources)} input(s); "
                + (f"jobs: {jobs}" if ray is None else f"Ray actors: {ray.actors or 'auto'}"))
    if not as_records:
        return _extract_single(sources[0], options, output, args, env)
    if args.pretty:
        env.warn("--pretty applies to a single result; JSON Lines keep one record per line")
    run = BatchRun(sources, options, output, jobs, stdin.sha256(), EXTRACTOR_FACTORY, ray)
    return extract_batch(run, args, env)


def _plan_jobs(requested: int, count: int, model: Path, env: Environment) -> int:
    """Workers for this batch (gemmacli.jobs.capacity.plan_jobs); a lowered --jobs is said on stderr."""
    from gemmacli.models.store import folder_size

    try:
        model_bytes = folder_size(model)
    except OSError:
        model_bytes = 0
    jobs, why = capacity.plan_jobs(requested, count, model_bytes)
    if why is not None:
        env.warn(why)
    return jobs


def _validate(args: argparse.Namespace) -> None:
    if args.resume and not args.output:
        raise UsageError("--resume needs -o FILE: the records already in FILE say what to skip")
    if args.resume and is_parquet(Path(args.output)):
        raise UsageError("--resume needs a JSON Lines FILE: a Parquet file is written whole, at the end",
                         hint="write -o FILE.jsonl to resume; convert it to Parquet afterwards")
    if args.retry_failed and not args.resume:
        raise UsageError("--retry-failed goes with --resume -o FILE")
    if args.jobs < 0:
        raise UsageError("--jobs must be 0 (auto) or more")
    if not math.isfinite(args.temperature) or args.temperature < 0:
        raise UsageError(f"--temperature must be a finite number, 0 or more, not {args.temperature}")
    if not math.isfinite(args.top_p) or not 0 < args.top_p <= 1:
        raise UsageError(f"--top-p must be in (0, 1], not {args.top_p}")
    if args.progress_every < 0:
        raise UsageError("--progress-every must be 0 (never) or more")


def _load_schema(args: argparse.Namespace, env: Environment) -> Any:
    """Load and check the schema before any model work, once (the batch hands the PreparedSchema down to
    every worker); say which reading of --schema was taken."""
    from gemmacli.schema import load_schema, prepare_schema
    from gemmacli.schema.dsl import looks_like_dsl

    loaded = load_schema(args.schema)
    readings = {
        "file": f"the file {loaded.path}",
        "inline": "inline JSON",
        "bundled": f"the bundled schema {loaded.path}",
        "dsl": "the concise syntax",
    }
    env.verbose(f"schema: read {args.schema!r} as {readings.get(loaded.source, loaded.source)}")
    if loaded.source == "dsl" and not looks_like_dsl(args.schema):
        env.warn(
            f"{args.schema!r} is not a file or a bundled schema; reading it as the concise syntax "
            "(one string field). `gemmacli schema list` shows the bundled names."
        )
    prepared = prepare_schema(loaded, lenient=args.lenient)
    for warning in prepared.warnings:
        env.warn(warning)
    return prepared


def _gather_sources(args: argparse.Namespace, env: Environment, stdin: Readable) -> list[Source]:
    inputs = list(args.inputs)
    if not inputs and not args.input_jsonl:
        if env.stdin_isatty:
            env.console.print(args.usage_text().rstrip(), markup=False, highlight=False)
            raise UsageError(
                "no input: pipe text in, name files or folders, or pass - to type it",
                hint="gemmacli extract --help",
            )
        inputs = ["-"]
    if inputs.count("-") + args.input_jsonl.count("-") > 1:
        raise UsageError("stdin (-) can be read only once")
    sources = collect_sources(inputs, glob=args.glob, stdin=stdin) if inputs else []
    if args.input_jsonl:
        sources += collect_sources(
            args.input_jsonl, stdin=stdin, jsonl=True, text_field=args.text_field, id_field=args.id_field
        )
    return sources


def _names_a_set(inputs: list[str]) -> bool:
    """A folder or an unexpanded glob asks for a set: records, even when it holds a single file today."""
    for arg in inputs:
        path = Path(arg)
        if path.is_dir() or (not path.exists() and set("*?[") & set(arg)):
            return True
    return False


def _without_output_file(sources: list[Source], output: Path) -> list[Source]:
    """A folder or glob that contains -o FILE must not feed the results back in as input."""
    try:
        target = output.resolve()
    except OSError:
        return sources
    return [s for s in sources if s.path is None or s.path.resolve() != target]


def _check_model(model: str, env: Environment) -> str:
    """Fail fast (exit 4) on a missing model, before loading anything or starting workers.

    Returns the model's folder, so every worker loads exactly the model found here.
    """
    from gemmacli.models import store

    resolve = getattr(store, "resolve_model", None)
    if resolve is None:
        return model
    return str(Path(resolve(model, env.environ)).resolve())


def dumps(value: Any, *, pretty: bool) -> bytes:
    """JSON text for stdout or a file: UTF-8 as is, newline-terminated."""
    if pretty:
        text = json.dumps(value, ensure_ascii=False, indent=2)
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return (text + "\n").encode("utf-8")


def _refuse_what_cannot_fit(text: str, model_folder: Path) -> None:
    """An input longer than the context times the longest token cannot fit, whatever it says: refuse it
    from its length, before the model loads (a 50 MB file: refused at once, not after loading and
    tokenizing). Folders whose gemmacli.json does not record the longest token are left to the prompt."""
    from gemmacli.models.store import ModelConfig

    try:
        config = ModelConfig.from_folder(model_folder)
    except Exception:  # the loader reports a broken folder with exit 4
        return
    most = config.context_length * config.max_token_chars
    if config.max_token_chars and len(text) > most:
        raise ExtractionFailed(
            f"the input is too long: {len(text):,} characters, and this model's "
            f"{config.context_length}-token context holds at most {most:,} (no token is longer than "
            f"{config.max_token_chars} characters)",
            hint="pass --truncate to cut the text to fit")


def _extract_single(
    source: Source,
    options: batch.ExtractOptions,
    output: Path | None,
    args: argparse.Namespace,
    env: Environment,
) -> ExitStatus:
    """One input -> one JSON object; every failure is raised so raw_main reports it with its exit code."""
    text = batch.read_source(source, options)
    if not options.config.truncate:
        _refuse_what_cannot_fit(text, Path(options.model))
    extractor = EXTRACTOR_FACTORY(options)
    result = extractor.extract(text)
    for note in getattr(result, "repeats", ()):
        env.warn(note)
    value: Any = result.data
    if options.with_meta:
        value = batch.success_record(source.name, result, extractor, with_meta=True)
    pretty = args.pretty or (not args.compact and output is None and bool(env.stdout_isatty))
    data = dumps(value, pretty=pretty)
    if output is None:
        env.write_data(data)
    else:
        try:
            write_atomically(output, data)  # a device or FIFO is written through, a symlink's target replaced
        except OSError as exc:
            raise InputOutputError(f"cannot write {output}: {exc.strerror or exc}") from exc
        env.verbose(f"wrote {output}")
    return ExitStatus.OK
