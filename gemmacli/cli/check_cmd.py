"""`gemmacli check`: extract every input with one schema, judge it with a policy, gate CI on the result.

Order of work, so each class of problem gets its own exit status before any model time is spent:
policy (3) -> schema (3) -> inputs (5) -> model manifest (4) -> per file: cache, else extract + judge.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from gemmacli import __version__
from gemmacli.cli.commands import (
    add_common_flags,
    add_decoding_options,
    add_model_options,
    check_max_tokens,
    default_model,
    extraction_config,
    positive_int,
)
from gemmacli.cli.core import silence_stdout
from gemmacli.cli.ray_flags import add_ray_options, ray_options
from gemmacli.env import Environment
from gemmacli.errors import ExitStatus, ExtractionFailed, InputOutputError, UsageError
from gemmacli.files import write_atomically
from gemmacli.jobs import batch, capacity
from gemmacli.jobs.cache import ResultCache, default_cache_dir
from gemmacli.jobs.policy import (
    ERROR,
    PASS,
    CheckRunner,
    CheckSummary,
    ExtractMany,
    FileOutcome,
    Policy,
    load_policy,
    sha256_text,
)
from gemmacli.jobs.reports import FORMATS, compact_value, format_for_path, render
from gemmacli.schema import canonical_json

if TYPE_CHECKING:
    from gemmacli.jobs.ray_data import RayOptions

DESCRIPTION = """\
Extract each input with --schema and judge the result with --policy (a JSON Schema over the extracted
JSON). A per-file summary goes to stderr; --format jsonl|junit|sarif writes a report to stdout or -o.
Results are cached by content, schema, policy, model and version, so unchanged files are not re-run.
"""

EXAMPLES = """\
examples:
  gemmacli check --schema pii --policy no-pii docs/
  gemmacli check --schema schemas/pii.json --policy schemas/policies/no-pii.json 'docs/**/*.md'
  gemmacli check --schema pii --policy no-pii --format junit -o report.xml changed/*.txt
  gemmacli check --schema pii --policy no-pii --format sarif -o gemmacli.sarif --jobs 2 .
"""

EXIT_CODES = """\
exit codes:
  0    every file passed
  1    a policy was violated, or a file could not be extracted or was empty (unless --allow-errors)
  2    usage error
  3    schema or policy invalid or unsupported (an unknown name too)
  4    model missing or broken
  5    input/output error (a file could not be read; the report could not be written or stdout closed)
  130  interrupted (Ctrl-C); 143 after SIGTERM
"""

# The seam tests use to run `check --jobs` workers with a fake model (a picklable factory, as for extract).
EXTRACTOR_FACTORY: batch.ExtractorFactory = batch.build_extractor


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "check",
        help="gate CI: extract with a schema, judge with a policy",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.examples = EXAMPLES  # printed first by the core parser
    parser.add_argument("inputs", nargs="*", metavar="INPUT",
                        help="files, folders (recursive), globs (quote them for '**'), or - for stdin")
    parser.add_argument("--schema", "-s", required=True,
                        help="extraction schema: a file, inline JSON, a bundled name, or the concise syntax")
    parser.add_argument("--policy", "-p", required=True,
                        help="a JSON Schema over the extracted JSON (file, inline JSON, bundled name)")
    parser.add_argument("--format", "-f", choices=FORMATS, default=None,
                        help="machine-readable report on stdout (or -o); default: none, or from -o's suffix")
    parser.add_argument("-o", "--output", metavar="FILE", help="write the report to FILE (atomically)")
    parser.add_argument("--glob", metavar="PATTERN", help="only files matching PATTERN inside folders")
    parser.add_argument("--allow-errors", action="store_true",
                        help="a file that could not be extracted does not fail the check")
    parser.add_argument("--allow-empty", action="store_true",
                        help="judge empty files instead of counting them as errors (as `extract` does)")
    parser.add_argument("-j", "--jobs", type=int, default=1, metavar="N",
                        help="worker processes for the files not in the cache, each loading the model once "
                             "(0 = auto: capped by CPUs and by memory); with --ray, Ray actors")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the result cache")
    add_model_options(parser, default_model="the best installed Gemma 3 model")
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="onnxruntime threads")
    add_decoding_options(parser)
    add_ray_options(parser)
    add_common_flags(parser)
    parser.set_defaults(handler=run_check)


def _report_format(args: argparse.Namespace) -> str | None:
    if args.format is not None or args.output is None:
        return args.format
    guessed = format_for_path(args.output)
    if guessed is None:
        raise UsageError(f"cannot tell the report format from {args.output!r}",
                         hint="add --format jsonl|junit|sarif")
    return guessed


def _model_ref(args: argparse.Namespace, env: Environment) -> str:
    if args.model:
        return args.model
    return default_model(env)


def model_fingerprint(model_ref: str, env: Environment) -> str:
    """sha256 of the model's manifest file list, read without loading the model (ModelError -> 4).

    Hashing the manifest rather than the weights keeps an all-cached CI run free of model work, and the
    manifest already holds the sha256 of every model file.
    """
    from gemmacli.models.store import check_sizes, read_manifest, resolve_model

    folder = resolve_model(model_ref, env.environ)
    manifest = read_manifest(folder)
    check_sizes(folder, manifest)
    return sha256_text(canonical_json(manifest["files"]))


def run_check(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Policy, schema, inputs, model, then judge every file; the gate's status is decided before any
    report is written, and writing it can only make that status worse (a closed stdout is not a pass)."""
    fmt = _report_format(args)
    if args.jobs < 0:
        raise UsageError("--jobs must be 0 (auto) or more")
    ray = ray_options(args, args.jobs)  # a missing Ray is exit 2, before any work
    policy = load_policy(args.policy)

    from gemmacli.schema import load_schema, prepare_schema

    loaded_schema = prepare_schema(load_schema(args.schema), lenient=args.lenient)  # checked once
    for warning in loaded_schema.warnings:
        env.warn(warning)

    sources = _sources(args, env)
    model_ref = _model_ref(args, env)
    config = extraction_config(args, loaded_schema, env, threads=args.threads)
    fingerprint: dict[str, Any] = {  # the cache key: from the config's fields, never listed by hand
        "gemmacli": __version__,
        "schema": loaded_schema.sha256,
        "policy": policy.sha256,
        "model": model_fingerprint(model_ref, env),
        "options": config.summary(),
    }
    if args.allow_empty:  # only when set, so the cache keys of every earlier run stay valid
        fingerprint["options"]["allow_empty"] = True
    from gemmacli.models.store import resolve_model

    folder = resolve_model(model_ref, env.environ)
    check_max_tokens(args.max_tokens, folder)
    options = batch.ExtractOptions(schema=loaded_schema, model=model_ref, config=config, allow_empty=True)

    def make_extractor() -> Any:
        env.verbose(f"loading model {model_ref}")
        return EXTRACTOR_FACTORY(options)  # the schema's warnings were printed above

    cache = None
    if not args.no_cache:
        cache = ResultCache(default_cache_dir(env.environ), warn=env.warn)
        env.verbose(f"cache: {cache.folder}")
    jobs, why = capacity.plan_jobs(args.jobs, len(sources), _size(folder)) if ray is None else (1, None)
    if why is not None:
        env.warn(why)
    runner = CheckRunner(policy=policy, extractor_factory=make_extractor, fingerprint=fingerprint,
                         cache=cache, encoding=args.encoding, decode_errors=args.errors,
                         on_outcome=lambda outcome: _print_outcome(env, outcome, args.allow_errors),
                         allow_empty=args.allow_empty,
                         extract_many=_parallel(options, jobs, env, ray) if jobs > 1 or ray else None)
    if not sources:
        env.warn("no input files to check")
    outcomes = runner.run(sources)
    summary = CheckSummary(outcomes, allow_errors=args.allow_errors)
    _print_totals(env, policy, summary, cached=cache is not None)
    status = summary.exit_status()  # the gate: decided here, before a byte of the report is written
    if fmt is None:
        return status
    report = render(fmt, outcomes, policy, allow_errors=args.allow_errors, base_dir=Path.cwd())
    delivered = _deliver(report, fmt, args, env)
    return status if status != ExitStatus.OK else delivered  # a failed gate stays 1; a lost pass is 5


def _sources(args: argparse.Namespace, env: Environment) -> list[Any]:
    from gemmacli.jobs.inputs import collect_sources

    inputs = list(args.inputs)
    if not inputs:
        if env.stdin_isatty:
            raise UsageError("no input: name files, folders or globs (or pipe text and pass -)",
                             hint="gemmacli check --schema pii --policy no-pii docs/")
        inputs = ["-"]
    return collect_sources(inputs, glob=args.glob, stdin=env.stdin)


def _size(folder: Path) -> int:
    from gemmacli.models.store import folder_size

    try:
        return folder_size(folder)
    except OSError:
        return 0


def _parallel(options: batch.ExtractOptions, jobs: int, env: Environment, ray: RayOptions | None = None
              ) -> ExtractMany:
    """`--jobs N`: the files the cache does not know go through N worker processes (gemmacli.jobs.batch),
    or, with --ray, through Ray actors (their threads follow their CPUs)."""
    threads = max(1, capacity.cpu_count() // jobs) if ray is None else None
    worker_options = dataclasses.replace(
        options, config=dataclasses.replace(options.config, threads=options.config.threads or threads))

    def extract_many(texts: list[tuple[str, str]]) -> Iterator[tuple[Any, list[str]] | ExtractionFailed]:
        from gemmacli.jobs.inputs import Source

        sources = [Source(name=name, kind="jsonl", path=None, text=text) for name, text in texts]
        env.verbose(f"extracting {len(sources)} file(s) with "
                    + (f"{jobs} workers" if ray is None else f"Ray actors: {ray.actors or 'auto'}"))
        ordered = batch.outcomes(sources, worker_options, EXTRACTOR_FACTORY, min(jobs, len(sources)), ray=ray)
        try:
            for _source, outcome in ordered:
                record = outcome.record
                if outcome.ok:
                    yield record["data"], list(record.get("warnings", []))
                else:
                    yield ExtractionFailed(record["error"]["message"])
        finally:
            ordered.close()

    return extract_many


def _deliver(report: bytes, fmt: str, args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Write the report to -o FILE or stdout: OK, or IO (5) when it could not be written. A closed stdout
    (`| head -c1`) is an I/O failure like any other: it can never turn a failed gate into a pass."""
    if args.output:
        try:
            write_atomically(Path(args.output), report, make_parents=True)
        except OSError as exc:
            raise InputOutputError(f"cannot write {args.output}: {exc.strerror or exc}") from exc
        env.verbose(f"wrote {fmt} report to {args.output}")
        return ExitStatus.OK
    try:
        env.write_data(report)
    except OSError as exc:  # BrokenPipeError and friends
        silence_stdout(env)
        env.warn(f"the {fmt} report was not delivered: stdout closed ({exc.strerror or exc})")
        return ExitStatus.IO
    return ExitStatus.OK


def _print_outcome(env: Environment, outcome: FileOutcome, allow_errors: bool) -> None:
    """One line per file (plus one per violation): what CI logs show a person.

    -q keeps only the files that did not pass; -qq prints nothing but errors from raw_main.
    """
    name = escape(outcome.source)
    cached = " [dim](cached)[/dim]" if outcome.cached else ""
    for warning in outcome.warnings:  # a value cut short by the repetition guard: never silent
        env.warn(f"{outcome.source}: {warning}")
    if outcome.status == PASS:
        env.info(f"[green]pass[/green]      {name}{cached}")
        return
    if env.verbosity < -1:
        return
    if outcome.status == ERROR:
        label = "[yellow]error[/yellow]    " if allow_errors else "[red]error[/red]    "
        env.console.print(f"{label} {name}{cached}: {escape(outcome.error or 'extraction failed')}",
                          highlight=False)
        return
    lines = [f"[red]violation[/red] {name}{cached}"]
    for violation in outcome.violations:
        where = violation.path or "/"
        extracted = escape(compact_value(violation.value))
        lines.append(f"  [bold]{escape(violation.rule)}[/bold] at {escape(where)}: "
                     f"{escape(violation.message)} [dim](extracted: {extracted})[/dim]")
        if violation.description:
            lines.append(f"    {escape(violation.description)}")
    env.console.print("\n".join(lines), highlight=False)


def _print_totals(env: Environment, policy: Policy, summary: CheckSummary, *, cached: bool) -> None:
    if env.verbosity < -1:
        return
    total = len(summary.outcomes)
    parts = [f"{summary.passed} passed", f"{summary.violated} violated", f"{summary.errors} errors"]
    if summary.errors and summary.allow_errors:
        parts[-1] += " (allowed)"
    cache_text = (f"cache: {summary.cache_hits} hits, {summary.cache_misses} misses" if cached
                  else "cache: off")
    files = "file" if total == 1 else "files"
    env.console.print(f"{escape(policy.title)}: {total} {files}: {', '.join(parts)}; {cache_text}",
                      highlight=False)

