"""`gemmacli eval`: extract every record of a labelled JSON Lines file and score the values field by field.

The extraction is `extract`'s own (gemmacli.jobs.batch over the records, --jobs workers, the same
prompt, examples, spans and grammar); scoring is gemmacli.jobs.evaluate. A table goes to stderr, the full
report (JSON) to stdout or -o; `--min-score X` exits 1 when the overall score is below X, so a model or
prompt change
can be gated in CI.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from gemmacli.cli.commands import (
    add_common_flags,
    add_model_options,
    add_parallel_option,
    check_parallel,
    default_model,
    extraction_config,
    positive_int,
    warn_if_tuned_elsewhere,
)
from gemmacli.cli.ray_flags import add_ray_options, ray_options
from gemmacli.env import Environment
from gemmacli.errors import ExitStatus, UsageError
from gemmacli.files import write_atomically
from gemmacli.jobs import batch
from gemmacli.jobs.evaluate import LabelledFields, read_labelled
from gemmacli.jobs.progress import make_progress
from gemmacli.jobs.scoring_run import evaluate_records
from gemmacli.schema import load_schema, prepare_schema

EXAMPLES = """\
examples:
  gemmacli eval --schema ../shared/datasets/sroie/schema.json --data ../shared/datasets/sroie/dev.jsonl
  gemmacli eval --schema s.json --data dev.jsonl --examples train.jsonl --shots 3 -o report.json
  gemmacli eval --schema s.json --data dev.jsonl -n 50 --min-score 0.8 -q    # a CI gate
"""

EXIT_CODES = """\
exit codes:
  0  scored (and at least --min-score)      1  overall score below --min-score
  2  usage (bad flags, bad labelled records) 3  schema invalid or unsupported
  4  model missing or broken                 5  unreadable data, examples or output
  130/143  interrupted / terminated
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="score extractions against labelled records, field by field",
        description=__doc__, epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.examples = EXAMPLES
    parser.add_argument("--schema", "-s", required=True,
                        help="extraction schema: a file, inline JSON, a bundled name, or the concise syntax")
    parser.add_argument("--data", "-d", required=True, type=Path, metavar="LABELLED.jsonl",
                        help='JSON Lines records {"id", "text", "label"}')
    parser.add_argument("-n", "--limit", type=positive_int, default=None, metavar="N",
                        help="score the first N records only")
    parser.add_argument("--jobs", "-j", type=int, default=1, metavar="N",
                        help="worker processes (0: one per CPU; default 1); with --ray, Ray actors")
    parser.add_argument("--format", "-f", choices=("table", "json"), default=None,
                        help="stdout: the JSON report (json) or nothing but the table on stderr (table); "
                             "default: json when stdout is not a terminal and there is no -o")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the JSON report to FILE")
    parser.add_argument("--min-score", type=float, default=None, metavar="X",
                        help="exit 1 when the overall score is below X (0..1)")
    parser.add_argument("--text-field", default="text", help="record field with the text (default: text)")
    parser.add_argument("--label-field", default="label", help="record field with the label (default: label)")
    parser.add_argument("--id-field", default="id", help="record field with the id (default: id)")
    add_model_options(parser, default_model="the best installed Gemma 3 model")
    add_parallel_option(parser)
    add_ray_options(parser)
    add_common_flags(parser)
    parser.set_defaults(handler=handle)


def handle(args: argparse.Namespace, env: Environment) -> ExitStatus:
    if args.min_score is not None and not 0 <= args.min_score <= 1:
        raise UsageError(f"--min-score is a score between 0 and 1, not {args.min_score}")
    if args.jobs < 0:
        raise UsageError("--jobs must be 0 (one per CPU) or more")
    ray = ray_options(args, args.jobs)  # a missing Ray is exit 2, before any work
    check_parallel(args.parallel, args.jobs, ray)
    loaded = prepare_schema(load_schema(args.schema), lenient=args.lenient)  # checked once
    for warning in loaded.warnings:
        env.warn(warning)
    fields = LabelledFields(args.text_field, args.label_field, args.id_field)
    records = read_labelled(args.data, fields, args.limit)
    if not records:
        raise UsageError(f"{args.data} holds no records")
    model = args.model or default_model(env)
    warn_if_tuned_elsewhere(model, loaded, env)
    jobs = min(args.jobs if args.jobs > 0 else (os.cpu_count() or 1), len(records))
    config = extraction_config(args, loaded, env, threads=max(1, (os.cpu_count() or 1) // jobs)
                               if jobs > 1 and ray is None else None)  # Ray actors: threads = their CPUs
    examples = config.examples
    _warn_on_overlap(examples, records, env)
    options = batch.ExtractOptions(schema=loaded, model=model, config=config, with_meta=True,
                                   streams=args.parallel)
    where = f"jobs: {jobs}" if ray is None else f"Ray actors: {ray.actors or 'auto'}"
    env.info(f"eval: {len(records)} record(s) of {args.data} with {model}; {where}")
    report = evaluate_records(records, options, jobs=jobs, progress=make_progress(env, every=10), ray=ray)
    report |= {"schema": args.schema, "data": str(args.data), "model": model, "spans": args.spans,
               "examples": {"pool": len(examples.pool), "shots": examples.shots, "select": examples.select},
               "jobs": jobs}
    _print_table(report, env)
    _write_report(report, args, env)
    if args.min_score is not None and report["overall"] < args.min_score:
        env.warn(f"overall score {report['overall']:.3f} is below --min-score {args.min_score}")
        return ExitStatus.FAILED
    return ExitStatus.OK


def _warn_on_overlap(examples: Any, records: list[Any], env: Environment) -> None:
    """An example that is also a scored record inflates the score: say so."""
    texts = {r.text.strip() for r in records}
    shared = sum(e.text.strip() in texts for e in examples.pool)
    if shared:
        env.warn(f"{shared} worked example(s) are also records being scored: the score is inflated")


def _print_table(report: dict[str, Any], env: Environment) -> None:
    if env.verbosity < 0:
        return
    table = Table(title=f"{report['records']} records, {report['failures']} failed, "
                        f"{report['seconds_per_record']} s/record", title_justify="left")
    for column in ("field", "score", "detail", "hallucinated", "missed", "top confusion"):
        table.add_column(column, justify="right" if column in ("score", "hallucinated", "missed") else "left")
    for path, row in report["fields"].items():
        detail = (f"{row['correct']}/{row['total']}" if row["kind"] == "scalar"
                  else f"P {row['precision']:.2f} R {row['recall']:.2f}")
        confusion = row.get("confusions", [{}])[0]
        shown = f"{confusion['label']} -> {confusion['predicted']} x{confusion['count']}" if confusion else ""
        table.add_row(escape(path), f"{row['score']:.3f}", detail, str(row["hallucinated"]),
                      str(row["missed"]), escape(shown))
    table.add_row("[bold]overall[/bold]", f"[bold]{report['overall']:.3f}[/bold]", "", "", "", "")
    env.console.print(table)


def _write_report(report: dict[str, Any], args: argparse.Namespace, env: Environment) -> None:
    text = json.dumps(report, indent=1, ensure_ascii=False) + "\n"
    if args.output is not None:
        write_atomically(args.output, text.encode("utf-8"))
        env.info(f"report: {args.output}")
    fmt = args.format or ("json" if args.output is None and not env.stdout_isatty else "table")
    if fmt == "json" and args.output is None:
        env.write_data(text.encode("utf-8"))
