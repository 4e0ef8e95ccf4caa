"""`gemmacli tune` on the shared sets: tuned dev scores (exported and fp32) against the untuned base model.

    python bench/bench_tune.py --sets uci_sentiment:5,banking77:30 [--method lora] [--dev-limit 200]

For each SET:MINUTES: `gemmacli eval` of the base model on the first --dev-limit dev records (cached in
the results file), then `gemmacli tune --minutes MINUTES` on the set's train split, scored on the same dev
records; each run in its own process, OMP_WAIT_POLICY=PASSIVE, machine otherwise quiet (run it under
`flock /tmp/gemmacli-heavy.lock` where others share the cores). Results accumulate in
bench/out/tune/results.json; the table printed at the end is the one in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ROOT.parent / "shared" / "datasets"
OUT = ROOT / "bench" / "out" / "tune"
RESULTS = OUT / "results.json"


def gemmacli(*args: str, log: Path) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "NO_COLOR": "1"}
    with log.open("wb") as handle:
        return subprocess.run([sys.executable, "-m", "gemmacli", *args], stdout=subprocess.PIPE,
                              stderr=handle, env=env, cwd=ROOT, check=False)


def base_score(name: str, dev_limit: int, base: str, results: dict[str, Any]) -> dict[str, Any]:
    key = f"base:{name}:{dev_limit}:{base}"
    if key not in results:
        folder = DATASETS / name
        done = gemmacli("eval", "--schema", str(folder / "schema.json"), "--data", str(folder / "dev.jsonl"),
                        "-n", str(dev_limit), "--model", base, "-f", "json", "-q",
                        log=OUT / f"{name}-base.log")
        report = json.loads(done.stdout)
        results[key] = {"overall": report["overall"],
                        "fields": {k: v["score"] for k, v in report["fields"].items()}}
    return dict(results[key])


def tune(name: str, minutes: float, args: argparse.Namespace) -> dict[str, Any]:
    folder = DATASETS / name
    model = f"tuned-{name}-{args.method}"
    started = time.monotonic()
    done = gemmacli("tune", "--schema", str(folder / "schema.json"), "--data", str(folder / "train.jsonl"),
                    "--dev", str(folder / "dev.jsonl"), "--dev-limit", str(args.dev_limit), "--name", model,
                    "--out-dir", str(OUT / "models"), "--minutes", str(minutes), "--method", args.method,
                    "--prompt", args.prompt, "--force", *args.extra, log=OUT / f"{name}-{args.method}.log")
    if done.returncode != 0:
        raise SystemExit(f"tune {name} failed ({done.returncode}): see {OUT / f'{name}-{args.method}.log'}")
    manifest = json.loads((OUT / "models" / model / "manifest.json").read_text(encoding="utf-8"))
    record = manifest["tune"]
    return {"set": name, "method": args.method, "prompt": args.prompt, "budget_minutes": minutes,
            "wall_minutes": round((time.monotonic() - started) / 60, 1),
            "training": {k: v for k, v in record["training"].items() if k != "losses"},
            "scores": record["scores"], "extra": args.extra}


def table(rows: list[dict[str, Any]], results: dict[str, Any], dev_limit: int, base: str) -> str:
    lines = ["| set | method | prompt | train min | examples/s | epochs | peak RSS GB | dev fp32 "
             "| dev exported (auto) | untuned base |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        training, scores = row["training"], row["scores"]
        untuned = results.get(f"base:{row['set']}:{dev_limit}:{base}", {})
        lines.append(
            f"| {row['set']} | {row['method']} | {row['prompt']} | {training['minutes']} "
            f"| {training['examples_per_second']} | {training['epochs']} "
            f"| {training['peak_rss_bytes'] / 1e9:.1f} | {_score(scores.get('fp32'))} "
            f"| {_score(scores.get('auto'))} | {_score(untuned)} |")
    return "\n".join(lines)


def _score(scores: dict[str, Any] | None) -> str:
    if not scores:
        return "-"
    fields = scores.get("fields", {})
    if len(fields) <= 1:
        return f"{scores['overall']:.3f}"
    return f"{scores['overall']:.3f} (" + ", ".join(f"{k} {v:.2f}" for k, v in fields.items()) + ")"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", required=True, help="SET:MINUTES,… (e.g. uci_sentiment:5,banking77:30)")
    parser.add_argument("--method", default="lora", choices=("lora", "full"))
    parser.add_argument("--prompt", default="bare")
    parser.add_argument("--dev-limit", type=int, default=200)
    parser.add_argument("--base", default="gemma-3-270m")
    parser.add_argument("--no-base-score", action="store_true")
    parser.add_argument("extra", nargs="*", help="more `gemmacli tune` flags, after --")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else {}
    rows = results.setdefault("runs", [])
    for item in args.sets.split(","):
        name, minutes = item.split(":")
        if not args.no_base_score:
            base_score(name, args.dev_limit, args.base, results)
        rows.append(tune(name, float(minutes), args))
        RESULTS.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        print(table(rows[-1:], results, args.dev_limit, args.base).splitlines()[-1], flush=True)
    print(table(rows, results, args.dev_limit, args.base))


if __name__ == "__main__":
    main()
