"""Prompt-lookup speculation on the shared dev sets: same outputs? how many tokens per model call? faster?

    python bench/bench_speculate.py [--sets restaurant8k,sroie] [-n 100] [--shots 2] [--model M]

One process, one model. Per set: the set's schema, its first `--shots` train records as fixed examples (in
the prompt head, prefilled once), spans on every string field (`--spans all`, the set-up of the eval table's
ex2-spans column); every record decoded plain (speculate 0) and with speculation (8 draft tokens), one
after the other, so both see the same machine load. Prints per set: records whose output bytes differ,
output tokens per decode-time model call (prefill excluded) plain and speculative, draft tokens fed and
accepted, and the medians of seconds per record with their spread (p10-p90). Run it under the heavy-job
lock with OMP_WAIT_POLICY=PASSIVE on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATASETS = ROOT.parent / "shared" / "datasets"
DEFAULT_MODEL = ROOT / "onnx_models" / "gemma-3-270m"


def _quantiles(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "-"
    deciles = statistics.quantiles(values, n=10)
    return f"{statistics.median(values):.3f} ({deciles[0]:.3f}-{deciles[-1]:.3f})"


def run_set(name: str, model: Any, limit: int, shots: int, draft: int) -> dict[str, Any]:
    from gemmacli.engine import examples
    from gemmacli.engine.extractor import Extractor
    from gemmacli.errors import ExtractionFailed

    folder = DATASETS / name
    schema = json.loads((folder / "schema.json").read_text())
    pool = examples.load_examples(examples.ExampleSource(folder / "train.jsonl"), schema, shots)
    config = {"examples": examples.Examples(pool, shots, "fixed"), "spans": "all"}
    records = [json.loads(line) for line in (folder / "dev.jsonl").read_text().splitlines()[:limit]]
    sides = {0: Extractor(schema, model=model, **config), draft: Extractor(schema, model=model, **config)}
    sides[0].options.speculate = 0
    sides[draft].options.speculate = draft
    seconds: dict[int, list[float]] = {0: [], draft: []}
    out_tokens = {0: 0, draft: 0}
    decode_calls = {0: 0, draft: 0}
    differ, failed = [], 0
    drafted = accepted = 0
    for record in records:
        texts = {}
        for side, extractor in sides.items():
            start = time.perf_counter()
            try:
                result = extractor.extract(record["text"])
            except ExtractionFailed as exc:
                texts[side] = "FAILED " + exc.message
                seconds[side].append(time.perf_counter() - start)
                failed += side == 0
                continue
            seconds[side].append(time.perf_counter() - start)
            texts[side] = result.text
            out_tokens[side] += result.generated_tokens + result.forced_tokens
            decode_calls[side] += result.model_calls - 2  # head and text prefill
            if side:
                drafted += result.drafted
                accepted += result.accepted
        if texts[0] != texts[draft]:
            differ.append({"id": record.get("id"), "plain": texts[0], "speculative": texts[draft]})
    return {
        "set": name, "records": len(records), "failed_plain": failed, "differ": differ,
        "tokens_per_call_plain": out_tokens[0] / max(1, decode_calls[0]),
        "tokens_per_call_speculative": out_tokens[draft] / max(1, decode_calls[draft]),
        "drafted": drafted, "accepted": accepted,
        "seconds_plain": seconds[0], "seconds_speculative": seconds[draft],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="restaurant8k,sroie")
    parser.add_argument("-n", type=int, default=100, help="dev records per set")
    parser.add_argument("--shots", type=int, default=2)
    parser.add_argument("--draft", type=int, default=8, help="draft tokens per run (speculate)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--grouped", action="store_true", help="Model(grouped_only=True) on both sides: no "
                        "run of one token (outputs then independent of grouping inside the sliding window)")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args = parser.parse_args()
    os.environ.setdefault("GEMMACLI_PROCESS_THREAD_POOL", "1")
    sys.path.insert(0, str(ROOT))
    from gemmacli.engine.runtime import Model

    model = Model.load(args.model, threads=args.threads, grouped_only=args.grouped)
    rows = [run_set(name, model, args.n, args.shots, args.draft) for name in args.sets.split(",")]
    print("| set | records | outputs differ | tokens/call plain | tokens/call spec | drafted | accepted "
          "| s/record plain, median (p10-p90) | s/record spec | speed-up (sum) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        plain, spec = row["seconds_plain"], row["seconds_speculative"]
        print(f"| {row['set']} | {row['records']} | {len(row['differ'])} "
              f"| {row['tokens_per_call_plain']:.2f} "
              f"| {row['tokens_per_call_speculative']:.2f} | {row['drafted']} | {row['accepted']} "
              f"| {_quantiles(plain)} | {_quantiles(spec)} | {sum(plain) / max(1e-9, sum(spec)):.2f}x |")
        for case in row["differ"][:5]:
            print(f"  differs {case['id']}:\n    plain {case['plain'][:200]}\n"
                  f"    spec  {case['speculative'][:200]}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
