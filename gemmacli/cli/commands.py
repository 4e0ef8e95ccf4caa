"""Registers each subcommand module; each owns its parser and its handler(args, env) -> ExitStatus."""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  cat mail.txt | gemmacli extract --schema contact
  gemmacli extract --schema 'name, age int, email?: their email' notes.txt
  gemmacli extract --schema invoice notes/*.txt -o invoices.jsonl --jobs 2
  gemmacli check --schema pii --policy schemas/policies/no-pii.json docs/
  gemmacli model synth tiny --size tiny
"""


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """-q/-v/--debug, shared by every subcommand."""
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less on stderr (repeatable)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more on stderr")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def register_all(sub: argparse._SubParsersAction) -> None:
    """Each command module adds its own subparser(s), in the order `--help` lists them."""
    from gemmacli.cli import check_cmd, completion, extract_cmd, model_cmd, schema_cmd

    for module in (extract_cmd, check_cmd, schema_cmd, model_cmd, completion):
        module.register(sub)
