"""`extract --parallel N` against one document at a time: documents/s on a batch of shared dev records.

    python bench/bench_parallel.py [--sets restaurant8k:100,conllpp:40,sroie:20] [--streams 2,4]
                                   [--shots 2] [--rounds 2] [--json bench/out/parallel.json]

Each (set, streams) run is its own process (`gemmacli.jobs.batch.outcomes`, as `extract` batches call it,
the model load included), rounds interleaved so machine noise hits every row alike; the table gives the
median docs/s over rounds, [min-max], the speed-up over streams 1, and whether every record is
byte-identical to streams 1's. Records come from the set's dev.jsonl (first N), with its first --shots
train records as fixed worked examples (the prompt head, prefilled once per stream).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATASETS = HERE.parent.parent / "shared" / "datasets"


def worker(dataset: str, count: int, streams: int, shots: int, model: str) -> None:
    """One batch in this process: prints {"seconds", "records", "lockstep"} as JSON."""
    from gemmacli.engine import examples
    from gemmacli.engine.config import ExtractionConfig
    from gemmacli.jobs.batch import ExtractOptions, build_extractor, outcomes
    from gemmacli.jobs.inputs import Source
    from gemmacli.schema import load_schema, prepare_schema

    folder = DATASETS / dataset
    loaded = prepare_schema(load_schema(str(folder / "schema.json")))
    pool = examples.load_examples(examples.ExampleSource(folder / "train.jsonl"), loaded.schema, shots)
    config = ExtractionConfig(examples=examples.Examples(tuple(pool), shots, "fixed"))
    rows = [json.loads(line) for line in (folder / "dev.jsonl").read_text().splitlines()[:count]]
    sources = [Source(row["id"], "jsonl", None, text=row["text"]) for row in rows]
    options = ExtractOptions(loaded, model, config, streams=streams)
    started = time.perf_counter()
    records = [json.dumps(outcome.record, sort_keys=True)
               for _, outcome in outcomes(sources, options, build_extractor, 1)]
    print(json.dumps({"seconds": time.perf_counter() - started, "records": records}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="restaurant8k:100,conllpp:40,sroie:20", help="SET:N,...")
    parser.add_argument("--streams", default="2,4", help="the --parallel values compared with 1")
    parser.add_argument("--shots", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        dataset, count, streams, shots, model = args.worker
        worker(dataset, int(count), int(streams), int(shots), model)
        return
    plans = [(item.split(":")[0], int(item.split(":")[1])) for item in args.sets.split(",")]
    streams = [1, *(int(s) for s in args.streams.split(","))]
    results: dict[str, dict[int, list[dict]]] = {name: {s: [] for s in streams} for name, _ in plans}
    for _ in range(args.rounds):
        for name, count in plans:
            for n in streams:
                command = [sys.executable, __file__, "--worker", name, str(count), str(n), str(args.shots),
                           args.model]
                out = subprocess.run(command, capture_output=True, text=True, check=True)
                results[name][n].append(json.loads(out.stdout.splitlines()[-1]))
    print("| set (records, fixed shots) | --parallel | docs/s median [min-max] | speed-up | identical to 1 |")
    print("|---|---|---|---|---|")
    summary = {}
    for name, count in plans:
        base = results[name][1][0]["records"]
        base_rate = statistics.median(count / r["seconds"] for r in results[name][1])
        for n in streams:
            rates = [count / r["seconds"] for r in results[name][n]]
            same = all(r["records"] == base for r in results[name][n])
            median = statistics.median(rates)
            summary[f"{name}/{n}"] = {"docs_per_s": rates, "identical": same}
            spread = f"{min(rates):.2f}-{max(rates):.2f}"
            print(f"| {name} ({count}, {args.shots}) | {n} | {median:.2f} [{spread}] | "
                  f"{median / base_rate:.2f}x | {'yes' if same else 'NO'} |", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
