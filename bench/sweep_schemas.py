"""Schema coverage over the whole shared jsonschemabench set, per subset, next to llguidance's own rate.

For every schema in ../shared/jsonschemabench it records:
  llguidance   llguidance compiles the raw schema with its default options (its own compile rate)
  strict       gemmacli accepts it (check_schema + grammar), i.e. `extract` would run; otherwise the
               refusal message (exit 3), which must name why
  lenient      the same under --lenient
and with --decode MODEL also runs the whole extraction on each accepted schema (the tiny model is the
intended one): valid (output validated; `guarded` counts those where the repetition guard ended a loop),
sized (refused up front, exit 3: the schema's smallest output does not fit the budget), budget (the random
model ran out of --max-tokens: ExtractionFailed, never output), engine (llguidance gave up mid-way, e.g.
its lexer limit: ExtractionFailed, never output), rejected (decoded but failed jsonschema validation:
ExtractionFailed, never output).

    .venv/bin/python bench/sweep_schemas.py                       # coverage only (~3 min on 2 cores)
    .venv/bin/python bench/sweep_schemas.py --decode .cache/test-models/<key>/tiny-int4   # default budget
    .venv/bin/python bench/sweep_schemas.py --json bench/out/sweep.json --limit 500
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT.parent / "shared" / "jsonschemabench"
TEXT = "Alice Martin (34) emailed from Paris on 2024-05-01 about invoice 1042: total 99.50 EUR, urgent."


def subset_of(path: Path) -> str:
    name = path.stem
    return name.split("---")[0] if "---" in name else name.rsplit("_", 1)[0]


def llguidance_compiles(schema: Any) -> bool:
    from llguidance import LLMatcher

    try:
        grammar = LLMatcher.grammar_from_json_schema(schema)
    except (ValueError, TypeError):
        return False
    return not LLMatcher.validate_grammar_with_warnings(grammar)[0]


def gemmacli_accepts(schema: Any, lenient: bool) -> tuple[bool, str]:
    from gemmacli.engine.grammar import compile_grammar
    from gemmacli.errors import SchemaError
    from gemmacli.schema import check_schema

    try:
        compiled, _ = check_schema(schema, lenient=lenient)
        compile_grammar(compiled)
    except SchemaError as exc:
        return False, exc.message
    return True, ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=BENCH)
    parser.add_argument("--decode", metavar="MODEL", help="also extract with this model (name or folder)")
    parser.add_argument("--max-tokens", type=int, default=None, help="default: extract's own (sized)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N files (sorted)")
    parser.add_argument("--json", type=Path, help="write per-schema outcomes here")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no jsonschemabench data at {args.data}")

    from gemmacli.engine.extractor import Extractor
    from gemmacli.errors import ExtractionFailed, SchemaError

    model = None
    if args.decode:
        from gemmacli.engine.runtime import Model

        model = Model.load(args.decode, threads=1)
    files = sorted(args.data.glob("*.json"))[: args.limit or None]
    table: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    reasons: collections.Counter[str] = collections.Counter()
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for path in files:
        schema = json.loads(path.read_text(encoding="utf-8"))["schema"]
        subset = subset_of(path)
        row: dict[str, Any] = {"file": path.name, "subset": subset, "llguidance": llguidance_compiles(schema)}
        t0 = time.perf_counter()
        row["strict"], why = gemmacli_accepts(schema, lenient=False)
        row["check_s"] = time.perf_counter() - t0
        row["lenient"], why_lenient = gemmacli_accepts(schema, lenient=True)
        if not row["strict"]:
            row["refusal"] = why
            assert why.strip(), f"{path.name}: a refusal must say why"
        if not row["lenient"]:
            reasons[why_lenient.split(":")[0][:80]] += 1
        counts = table[subset]
        counts["n"] += 1
        for key in ("llguidance", "strict", "lenient"):
            counts[key] += bool(row[key])
        if model is not None and row["strict"]:
            try:
                result = Extractor(schema, model=model, max_tokens=args.max_tokens).extract(TEXT)
                row["outcome"] = "valid"
                row["text"] = result.text
                if result.repeats:
                    counts["guarded"] += 1
            except ExtractionFailed as exc:
                row["outcome"] = ("budget" if "--max-tokens" in exc.message
                                  else "rejected" if "does not validate" in exc.message else "engine")
                row["error"] = exc.message[:300]
            except SchemaError as exc:
                row["outcome"] = "sized"
                row["error"] = exc.message[:300]
            counts[row["outcome"]] += 1
        rows.append(row)
    elapsed = time.perf_counter() - start

    decode_cols = ["valid", "guarded", "sized", "budget", "engine", "rejected"] if model is not None else []
    header = f"{'subset':24s} {'n':>5s} {'llguidance':>11s} {'strict':>8s} {'lenient':>8s}"
    header += "".join(f" {c:>8s}" for c in decode_cols)
    print(header)
    total: collections.Counter[str] = collections.Counter()
    for subset, counts in sorted(table.items()):
        total.update(counts)
        line = (f"{subset:24s} {counts['n']:5d} {counts['llguidance'] / counts['n']:11.1%} "
                f"{counts['strict'] / counts['n']:8.1%} {counts['lenient'] / counts['n']:8.1%}")
        line += "".join(f" {counts[c]:8d}" for c in decode_cols)
        print(line)
    n = total["n"]
    line = (f"{'all':24s} {n:5d} {total['llguidance'] / n:11.1%} {total['strict'] / n:8.1%} "
            f"{total['lenient'] / n:8.1%}")
    line += "".join(f" {total[c]:8d}" for c in decode_cols)
    print(line)
    print(f"({total['llguidance']} / {total['strict']} / {total['lenient']} of {n} schemas; {elapsed:.0f} s)")
    print("most common refusals under --lenient:")
    for reason, count in reasons.most_common(10):
        print(f"  {count:4d}  {reason}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
