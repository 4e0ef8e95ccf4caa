"""`extract --ray` against `extract --jobs`: documents per second and Ray's overhead per document.

    flock /tmp/gemmacli-heavy.lock env OMP_WAIT_POLICY=PASSIVE \\
        .venv/bin/python bench/bench_ray.py [-n 40] [--runs 3] [--kinds jobs1,jobs2,ray1,ray2] [--model M]

The first N records of restaurant8k's dev set (short booking requests, a 5-field schema) go through the
real model with `gemmacli extract --input-jsonl … --with-meta`, records on stdout, once per kind and run,
the kinds interleaved so a neighbour's load spreads over all of them:

  jobs1 / jobs2   `--jobs 1` / `--jobs 2`: this process / two worker processes
  ray1 / ray2     `--ray --jobs 1` / `--ray --jobs 2`: a local Ray started by the command, 1 or 2 actors

Per kind, medians over the runs (min-max in brackets):
  wall s       the whole command: Python start, Ray start (ray*), model load(s), every record
  first s      until the first record arrives on stdout (start-up: Ray, actors, model load)
  docs/s       the steady rate: records after the first arrival / the time they took
  model s/doc  the extractor's own time per steady-state document (mean meta.seconds)
  overhead     steady wall time per document and worker (workers / docs/s) minus the model's time per
               document: what the batch machinery costs each document (for jobs1, reading and writing
               records). Below the table, ray1 - jobs1 and ray2 - jobs2 run by run: Ray's cost per
               document (steady wall s/doc) and its fixed cost (the first record's delay)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATASET = ROOT.parent / "shared" / "datasets" / "restaurant8k"
KINDS: dict[str, list[str]] = {
    "jobs1": ["--jobs", "1"],
    "jobs2": ["--jobs", "2"],
    "ray1": ["--ray", "--jobs", "1"],
    "ray2": ["--ray", "--jobs", "2"],
}


def run_once(kind: str, data: Path, model: str, count: int) -> dict[str, float]:
    """One command; arrival time of every record on stdout."""
    command = [sys.executable, "-m", "gemmacli", "extract", "--schema", str(DATASET / "schema.json"),
               "--input-jsonl", str(data), "--id-field", "id", "-m", model, "--with-meta", "-q", *KINDS[kind]]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    assert process.stdout is not None
    arrivals: list[tuple[float, float]] = []  # (when it reached stdout, the extractor's seconds)
    for line in process.stdout:
        arrivals.append((time.monotonic() - started, json.loads(line).get("meta", {}).get("seconds", 0.0)))
    process.wait()
    wall = time.monotonic() - started
    if len(arrivals) != count:
        raise SystemExit(f"{kind}: {len(arrivals)} records of {count} (exit {process.returncode})")
    # Steady state: the records after the first arrival (which carries start-up and the first document's
    # warm-up); a batch of records reaches stdout within a millisecond, so "first" is a 50 ms window.
    first = arrivals[0][0]
    steady = [(t, s) for t, s in arrivals if t > first + 0.05]
    span = arrivals[-1][0] - first
    rate = len(steady) / span if steady and span > 0 else float("nan")
    workers = 2 if kind.endswith("2") else 1
    model = statistics.fmean(s for _t, s in steady) if steady else float("nan")
    return {"wall": wall, "first": first, "rate": rate, "model": model, "overhead": workers / rate - model}


def summary(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}-{max(values):.{digits}f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--docs", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--model", default=str(ROOT / "onnx_models" / "gemma-3-270m"))
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    lines = (DATASET / "dev.jsonl").read_text().splitlines()[: args.docs]
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "dev.jsonl"
        data.write_text("\n".join(lines) + "\n")
        for run in range(args.runs):
            for kind in kinds:
                result = run_once(kind, data, args.model, len(lines))
                results[kind].append(result)
                print(f"run {run + 1} {kind}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()),
                      file=sys.stderr, flush=True)
    print(f"\n{len(lines)} restaurant8k dev records, {args.runs} runs, {os.cpu_count()} CPUs\n")
    print("| kind | wall s | first record s | docs/s (steady) | model s/doc | overhead s/doc |")
    print("|---|---|---|---|---|---|")
    for kind in kinds:
        rows = results[kind]
        cells = [summary([r["wall"] for r in rows], 1), summary([r["first"] for r in rows], 1),
                 summary([r["rate"] for r in rows]), summary([r["model"] for r in rows], 3),
                 summary([r["overhead"] for r in rows], 3)]
        print(f"| {kind} | " + " | ".join(cells) + " |")
    for ray, local in (("ray1", "jobs1"), ("ray2", "jobs2")):
        if ray in results and local in results:
            pairs = list(zip(results[ray], results[local], strict=True))
            per_doc = [1 / r["rate"] - 1 / j["rate"] for r, j in pairs]
            start = [r["first"] - j["first"] for r, j in pairs]
            print(f"\n{ray} - {local}, run by run: steady s/doc {summary(per_doc, 3)}, "
                  f"first record s {summary(start, 1)}")


if __name__ == "__main__":
    main()
