"""`gemmacli schema show|check|list|dsl`: see the JSON Schema a form turns into, before any model work."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gemmacli.cli.commands import add_common_flags
from gemmacli.env import Environment
from gemmacli.errors import ExitStatus

EXAMPLES = """\
examples:
  gemmacli schema list
  gemmacli schema show invoice
  gemmacli schema dsl 'name, age int, email?: their email, tags [str], mood enum(happy|sad)'
  gemmacli schema check my-schema.json && gemmacli extract --schema my-schema.json notes.txt
"""


def register(sub: argparse._SubParsersAction) -> None:
    from gemmacli.cli.core import EXIT_CODES_HELP

    parser = sub.add_parser(
        "schema",
        help="show, check and list schemas; translate the concise syntax",
        description="Schemas are read as a file path (if the file exists), inline JSON, a bundled name, "
        "or the concise syntax, in that order.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.examples = EXAMPLES
    # -q/-v/--debug live on each action: argparse lets a sub-subparser's defaults clobber its parent's.
    parser.set_defaults(handler=_no_action, usage_text=parser.format_help)
    actions = parser.add_subparsers(dest="schema_action", metavar="ACTION")

    show = actions.add_parser("show", help="print the JSON Schema a schema argument turns into")
    show.add_argument("schema", metavar="SCHEMA")
    _add_shape_flags(show)
    add_common_flags(show)
    show.set_defaults(handler=handle_show)

    check = actions.add_parser("check", help="check a schema: metaschema, refs, what the decoder enforces")
    check.add_argument("schema", metavar="SCHEMA")
    check.add_argument("--lenient", action="store_true", help="report droppable keywords as warnings")
    add_common_flags(check)
    check.set_defaults(handler=handle_check)

    listing = actions.add_parser("list", help="list the bundled schemas")
    listing.add_argument("--json", action="store_true", help="a JSON object name -> {path, description}")
    add_common_flags(listing)
    listing.set_defaults(handler=handle_list)

    dsl = actions.add_parser("dsl", help="translate the concise syntax (no argument: show the syntax)")
    dsl.add_argument("text", nargs="?", metavar="FIELDS", help="e.g. 'name, age int, tags [str]'")
    _add_shape_flags(dsl)
    add_common_flags(dsl)
    dsl.set_defaults(handler=handle_dsl)


def _add_shape_flags(parser: argparse.ArgumentParser) -> None:
    shape = parser.add_mutually_exclusive_group()
    shape.add_argument("--compact", action="store_true", help="one-line JSON even on a terminal")
    shape.add_argument("--pretty", action="store_true", help="indented JSON even when piped")


def _no_action(args: argparse.Namespace, env: Environment) -> ExitStatus:
    env.console.print(args.usage_text(), markup=False, highlight=False)
    return ExitStatus.USAGE


def _write_json(value: Any, args: argparse.Namespace, env: Environment) -> None:
    pretty = args.pretty or (not args.compact and bool(env.stdout_isatty))
    text = json.dumps(
        value, ensure_ascii=False, indent=2 if pretty else None, separators=None if pretty else (",", ":")
    )
    env.write_data((text + "\n").encode("utf-8"))


def _reading(loaded: Any) -> str:
    return {
        "file": f"the file {loaded.path}",
        "inline": "inline JSON",
        "bundled": f"the bundled schema {loaded.path}",
        "dsl": "the concise syntax",
    }.get(loaded.source, loaded.source)


def handle_show(args: argparse.Namespace, env: Environment) -> ExitStatus:
    from gemmacli.schema import load_schema

    loaded = load_schema(args.schema)
    env.verbose(f"schema: read {args.schema!r} as {_reading(loaded)} (sha256 {loaded.sha256[:12]})")
    _write_json(loaded.schema, args, env)
    return ExitStatus.OK


def handle_check(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Exit 0 when `extract` would accept the schema, 3 (naming the part) when it would not."""
    from rich.markup import escape

    from gemmacli.schema import check_schema, load_schema

    loaded = load_schema(args.schema)
    _, warnings = check_schema(loaded.schema, lenient=args.lenient)
    for warning in warnings:
        env.warn(warning)
    env.info(f"[green]ok[/green]: {escape(args.schema)} ({escape(_reading(loaded))}) can be enforced")
    return ExitStatus.OK


def handle_list(args: argparse.Namespace, env: Environment) -> ExitStatus:
    """Bundled names with their one-line descriptions: data, so it goes to stdout."""
    from gemmacli.schema import bundled_schemas

    entries: dict[str, dict[str, str]] = {}
    for name, path in bundled_schemas().items():
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            schema = {}
        description = schema.get("description") or schema.get("title") or ""
        entries[name] = {
            "path": str(path),
            "description": description if isinstance(description, str) else "",
        }
    if args.json:
        env.write_data((json.dumps(entries, ensure_ascii=False, indent=2) + "\n").encode("utf-8"))
        return ExitStatus.OK
    width = max((len(name) for name in entries), default=0)
    lines = [f"{name.ljust(width)}  {entry['description']}".rstrip() for name, entry in entries.items()]
    env.write_data(("\n".join(lines) + "\n").encode("utf-8") if lines else b"")
    return ExitStatus.OK


def handle_dsl(args: argparse.Namespace, env: Environment) -> ExitStatus:
    from gemmacli.schema.dsl import SYNTAX_HELP, parse_dsl

    if args.text is None:
        env.write_data(SYNTAX_HELP.encode("utf-8"))
        return ExitStatus.OK
    _write_json(parse_dsl(args.text), args, env)
    return ExitStatus.OK
