"""Quality levers on the shared dev sets: `gemmacli eval` per (set, configuration), one table.

    python bench/eval_sweep.py [--sets sroie,conllpp] [--configs plain,ex2,ex2-spans] [-n 40] [--model M]

Each run writes its JSON report to bench/eval/<set>--<config>.json (kept in git: the figures behind the
table in bench/README.md) and the table is printed in Markdown. Only train and dev are read: examples come
from the set's train.jsonl, scores from its dev.jsonl.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATASETS = HERE.parent.parent / "shared" / "datasets"
OUT = HERE / "eval"
SETS = ("banking77", "clinc150", "conllpp", "wnut17", "sroie", "restaurant8k", "sst2", "uci_sentiment")

#: configuration name -> extra `gemmacli eval` flags ({train} is the set's train.jsonl)
CONFIGS: dict[str, list[str]] = {
    "plain": ["--examples", "none", "--spans", "none"],
    "spans": ["--examples", "none", "--spans", "all"],
    "ex2": ["--examples", "{train}", "--shots", "2", "--spans", "none"],
    "ex2-spans": ["--examples", "{train}", "--shots", "2", "--spans", "all"],
    "ex4-spans": ["--examples", "{train}", "--shots", "4", "--spans", "all"],
    "sim4": ["--examples", "{train}", "--shots", "4", "--select", "similar", "--spans", "none"],
    "sim4-spans": ["--examples", "{train}", "--shots", "4", "--select", "similar", "--spans", "all"],
    "sim8": ["--examples", "{train}", "--shots", "8", "--select", "similar", "--spans", "none"],
    "sim16": ["--examples", "{train}", "--shots", "16", "--select", "similar", "--spans", "none"],
    "sim8-likely": ["--examples", "{train}", "--shots", "8", "--select", "similar", "--spans", "none",
                    "--choose", "likely"],
    # The chat-turn prompt on the base model (its own is the document style): a copy of the model folder
    # that declares prompt_style "chat" (made by chat_style_model below).
    "sim4-chat": ["-m", "{chat}", "--examples", "{train}", "--shots", "4", "--select", "similar",
                  "--spans", "none"],
    "plain-likely": ["--examples", "none", "--spans", "none", "--choose", "likely"],
    "sim4-likely": ["--examples", "{train}", "--shots", "4", "--select", "similar", "--spans", "none",
                    "--choose", "likely"],
}


def run(dataset: str, config: str, limit: int | None, model: str | None) -> dict:
    folder = DATASETS / dataset
    flags = [f.replace("{train}", str(folder / "train.jsonl")) for f in CONFIGS[config]]
    if "{chat}" in flags:
        flags = [str(chat_style_model(model)) if f == "{chat}" else f for f in flags]
    out = OUT / f"{dataset}--{config}.json"
    command = [sys.executable, "-m", "gemmacli", "eval", "--schema", str(folder / "schema.json"),
               "--data", str(folder / "dev.jsonl"), "-o", str(out), "-q", *flags]
    if limit:
        command += ["-n", str(limit)]
    if model and "-m" not in flags:
        command += ["-m", model]
    subprocess.run(command, check=False)
    return json.loads(out.read_text()) if out.is_file() else {}


def chat_style_model(model: str | None) -> Path:
    """A folder beside the base model's that hard-links its files and declares `prompt_style: "chat"`: the
    same weights, read with the chat turn instead of the document prompt."""
    from gemmacli.models import store

    base = store.resolve_model(model or "gemma-3-270m")
    folder = base.parent / f"{base.name}-chatstyle"
    folder.mkdir(exist_ok=True)
    for item in base.iterdir():
        if item.name not in ("gemmacli.json", "manifest.json") and not (folder / item.name).exists():
            (folder / item.name).hardlink_to(item.resolve())  # onnxruntime refuses symlinks out
    config = json.loads((base / "gemmacli.json").read_text())
    (folder / "gemmacli.json").write_text(json.dumps({**config, "prompt_style": "chat"}, indent=1))
    manifest = json.loads((base / "manifest.json").read_text())
    manifest["name"] = folder.name
    manifest["files"]["gemmacli.json"] = {"sha256": store.sha256_file(folder / "gemmacli.json"),
                                          "size": (folder / "gemmacli.json").stat().st_size}
    (folder / "manifest.json").unlink(missing_ok=True)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--configs", default="plain,ex2,ex2-spans")
    parser.add_argument("-n", "--limit", type=int, default=None, help="first N dev records per set")
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    print("| set | config | n | failed | overall | fields | s/record |")
    print("|---|---|---|---|---|---|---|")
    for dataset in args.sets.split(","):
        for config in args.configs.split(","):
            report = run(dataset, config, args.limit, args.model)
            if not report:
                print(f"| {dataset} | {config} | - | - | - | (no report) | - |")
                continue
            fields = ", ".join(f"{path} {row['score']:.2f}" for path, row in report["fields"].items())
            print(f"| {dataset} | {config} | {report['records']} | {report['failures']} | "
                  f"{report['overall']:.3f} | {fields} | {report['seconds_per_record']} |", flush=True)


if __name__ == "__main__":
    main()
