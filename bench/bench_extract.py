"""End-to-end extraction speed: gemmacli's decoder vs onnxruntime-genai with its llguidance guidance.

Same random 270m weights, same 5-field schema (string, integer, enum, optional string, array of strings),
same ~300-token input, same prompt token ids, same compact-JSON grammar (llguidance on both sides), greedy.
Each side runs in its own fresh process (two sessions in one process slow each other), several times.
Per side it prints, as medians over the runs:
  cold s      process-level: model load + llguidance tokenizer + first document (what one CLI call pays)
  doc s       wall time per document once loaded (the batch case: median over --docs repeats, so one
              document slowed by another process on a shared machine does not move it; the mean is in
              the --json output)
  calls       model forward runs per document (prefill included)
  forced      share of output tokens the grammar decided (jump-forward / single-choice steps)
  overhead    decoder time outside onnxruntime, as a share of the document time (ours only: the peer's
              loop is inside onnxruntime-genai)
and the ratio ours/peer of the per-document time. Also: the llguidance tokenizer build and how much of it
the first prefill hid, and where the grammar-aware lm_head pays (logits_for rows vs the full lm_head).

    .venv/bin/python bench/bench_extract.py                        # model `bench` (synth 270m if missing)
    .venv/bin/python bench/bench_extract.py --model DIR --builder DIR --runs 3 --docs 5

The peer runs inside bench/.venv-builder (bench/setup_builder_env.sh; it needs transformers 5.x); its graph
is the model builder's INT4 export of the same checkpoint (bench/builder_export.py), built on first use
into bench/out/builder-<model name>. `--kinds ours` measures our side alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
BUILDER_PY = HERE / ".venv-builder" / "bin" / "python"

#: The benchmark schema. The bounds keep a random-weight model finite (an unbounded string never closes
#: under random weights); both sides decode exactly this schema.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24, "description": "full name of the sender"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "mood": {"enum": ["happy", "neutral", "sad", "angry"]},
        "city": {"type": ["string", "null"], "maxLength": 20, "description": "city, if mentioned"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 4},
    },
    "required": ["name", "age", "mood", "tags"],
}
INPUT_TOKENS = 300
_SENTENCES = (
    "Hello team, this is Alice Martin writing from Paris about the invoice we received on Monday.",
    "I am 34 years old and have been a customer of your company for more than six years now.",
    "The total amount on the invoice was 1,250 euros, which is twice what we agreed in March.",
    "Please send a corrected version before Friday, because our accounting closes the month then.",
    "I am quite unhappy about the delay, but your support person Bob was friendly and helpful.",
    "You can reach me by phone at +33 1 23 45 67 89 or by email at alice.martin@example.com.",
    "Our order number is 88-1042 and the delivery address is 12 rue de Rivoli, 75001 Paris.",
    "Tags for your system: billing, urgent, invoice, refund. Thanks in advance, best regards.",
)


def make_input(tokenizer: Any, tokens: int = INPUT_TOKENS) -> str:
    """A deterministic letter of exactly `tokens` tokens (under this model's tokenizer)."""
    text = ""
    i = 0
    while len(tokenizer.encode(text, add_special_tokens=False).ids) < tokens:
        text += (" " if text else "") + _SENTENCES[i % len(_SENTENCES)]
        i += 1
    ids = tokenizer.encode(text, add_special_tokens=False).ids[:tokens]
    return tokenizer.decode(ids)


def peer_schema() -> dict[str, Any]:
    """The peer's llguidance gets the same compact JSON grammar as ours (no free whitespace)."""
    compact = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
    return {**SCHEMA, "x-guidance": compact}


# ------------------------------------------------------------------------------------------- workers


def worker_ours(model_dir: str, docs: int, threads: int, max_tokens: int, prefix_cache: bool = True,
                process_pool: bool = True) -> dict[str, Any]:
    """gemmacli.engine.extractor.Extractor exactly as the CLI uses it; times from the first import.

    `process_pool`: set up the process as the `gemmacli` executable does (one onnxruntime thread pool for
    the decoder and lm_head sessions); False measures what a library caller gets by default (a pool per
    session, idle threads not spinning).
    """
    t0 = time.perf_counter()
    from gemmacli.engine.runtime import PROCESS_POOL_ENV

    if process_pool:
        os.environ[PROCESS_POOL_ENV] = "1"
    else:
        os.environ.pop(PROCESS_POOL_ENV, None)
    from gemmacli.engine.extractor import Extractor
    from gemmacli.engine.prompt import encode_prompt

    extractor = Extractor(SCHEMA, model=model_dir, threads=threads, max_tokens=max_tokens,
                          prefix_cache=prefix_cache)
    text = make_input(extractor.model.tokenizer)
    first = extractor.extract(text)
    cold = time.perf_counter() - t0
    results = []
    for _ in range(docs):
        start = time.perf_counter()
        result = extractor.extract(text)
        results.append((time.perf_counter() - start, result))
    assert all(r.text == first.text for _, r in results), "greedy must be deterministic"
    prompt_ids = encode_prompt(extractor.model.tokenizer, extractor.model.config, SCHEMA, text,
                               max_tokens=max_tokens).ids
    last = results[-1][1]
    return {
        "cold_s": cold,
        "doc_s": statistics.median(w for w, _ in results),
        "doc_mean_s": statistics.mean(w for w, _ in results),
        "model_s": statistics.mean(r.model_seconds for _, r in results),
        "calls": last.model_calls,
        "generated": last.generated_tokens,
        "forced": last.forced_tokens,
        "prompt_tokens": last.prompt_tokens,
        "text": last.text,
        "prompt_ids": prompt_ids,
        "tokenizer_build_s": extractor.timings.get("tokenizer_build", 0.0),
        "tokenizer_wait_s": extractor.timings.get("tokenizer_wait", 0.0),
        "model_load_s": extractor.timings.get("model_load", 0.0),
        "first_doc_s": first.seconds,
    }


def worker_lm_head(model_dir: str, threads: int) -> dict[str, Any]:
    """ms for logits_for(n rows) against the full lm_head: where the grammar-aware lm_head pays."""
    import numpy as np

    from gemmacli.engine.runtime import Model

    model = Model.load(model_dir, threads=threads)
    cache = model.new_cache()
    hidden = model.forward(cache, [2, *range(1000, 1063)])
    rng = np.random.default_rng(0)

    def timed(fn: Any, repeat: int = 20) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - start) / repeat * 1000

    vocab = model.config.vocab_size
    out: dict[str, Any] = {"full_ms": timed(lambda: model.logits(hidden))}
    for n in (1, 16, 64, 256, 512, 1024):
        ids = np.sort(rng.choice(vocab, n, replace=False))
        out[f"rows_{n}_ms"] = timed(lambda ids=ids: model.logits_for(hidden, ids))
    return out


def worker_peer(model_dir: str, docs: int, threads: int, max_tokens: int, prompt_ids: list[int],
                ff_tokens: bool) -> dict[str, Any]:
    """onnxruntime-genai's own loop with its llguidance json_schema guidance (inside bench/.venv-builder)."""
    t0 = time.perf_counter()
    import onnxruntime_genai as og

    config = og.Config(model_dir)
    config.clear_providers()
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    grammar = json.dumps(peer_schema())

    def one() -> tuple[float, int, int, str]:
        start = time.perf_counter()
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt_ids) + max_tokens + 8, do_sample=False)
        params.set_guidance("json_schema", grammar, ff_tokens)
        generator = og.Generator(model, params)
        generator.append_tokens(prompt_ids)
        calls = 1
        while not generator.is_done():
            generator.generate_next_token()
            calls += 1
        output = list(generator.get_sequence(0))[len(prompt_ids):]
        return time.perf_counter() - start, calls, len(output), tokenizer.decode(output)

    first = one()
    cold = time.perf_counter() - t0
    runs = [one() for _ in range(docs)]
    return {"cold_s": cold, "doc_s": statistics.median(r[0] for r in runs),
            "doc_mean_s": statistics.mean(r[0] for r in runs), "calls": runs[-1][1],
            "output_tokens": runs[-1][2], "text": runs[-1][3], "first_doc_s": first[0]}


# ---------------------------------------------------------------------------------------------- driver


def _run_worker(python: str, kind: str, args: list[Any], threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.run([python, __file__, "--worker", kind, json.dumps(args)], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in runs)


def _min(runs: list[dict[str, Any]], key: str) -> float:
    return min(float(r[key]) for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="our model: name or folder (default: the real Gemma 3 "
                        "model if installed, else bench, synthesized on first use)")
    parser.add_argument("--builder", type=Path, help="the peer's builder graph folder (default: built from "
                        "the model's source checkpoint into bench/out/builder-<name>)")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per side")
    parser.add_argument("--docs", type=int, default=5, help="documents timed per process after the first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--kinds", default="ours,ours-noprefix,ours-library,peer,peer-ff",
                        help="comma list of ours (set up as the gemmacli executable), ours-noprefix (no "
                        "prompt-head KV reuse), ours-library (a library caller's default thread pools), "
                        "peer, peer-ff (the peer with llguidance's ff tokens enabled)")
    parser.add_argument("--json", type=Path, help="write every raw measurement here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        a = json.loads(args.args)
        if args.worker == "ours":
            result = worker_ours(*a)
        elif args.worker == "lm_head":
            result = worker_lm_head(*a)
        else:
            result = worker_peer(*a)
        print(json.dumps(result))
        return

    sys.path.insert(0, str(HERE))
    from bench_decode import (
        _set_builder_threads,
        default_model,
        describe_model,
        ensure_builder,
        ensure_model,
        source_checkpoint,
    )

    model_dir = ensure_model(args.model or default_model())
    print(f"model: {describe_model(model_dir)}")
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    raw: dict[str, Any] = {"model": str(model_dir), "schema": SCHEMA, "threads": args.threads}
    ours_args = [str(model_dir), args.docs, args.threads, args.max_tokens]
    first = _run_worker(sys.executable, "ours", ours_args, args.threads)  # also gives the prompt ids
    prompt_ids = first["prompt_ids"]
    jobs: dict[str, tuple[str, str, list[Any]]] = {"ours": (sys.executable, "ours", ours_args)}
    if "ours-noprefix" in kinds:
        jobs["ours-noprefix"] = (sys.executable, "ours", [*ours_args, False])
    if "ours-library" in kinds:
        jobs["ours-library"] = (sys.executable, "ours", [*ours_args, True, False])
    peer_kinds = [k for k in kinds if k.startswith("peer")]
    if peer_kinds:
        builder = args.builder or ensure_builder(source_checkpoint(model_dir),
                                                 OUT / f"builder-{model_dir.name}")
        _set_builder_threads(builder, args.threads)
        raw["builder"] = str(builder)
        for kind in peer_kinds:
            jobs[kind] = (str(BUILDER_PY), "peer", [str(builder), args.docs, args.threads, args.max_tokens,
                                                    prompt_ids, kind == "peer-ff"])
    # Interleaved rounds (ours, peer, ours, peer, ...): on a shared machine both sides see the same load.
    measured: dict[str, list[dict[str, Any]]] = {kind: [] for kind in jobs}
    for _ in range(args.runs):
        for kind, (python, worker, worker_args) in jobs.items():
            measured[kind].append(_run_worker(python, worker, worker_args, args.threads))
    raw.update(measured)
    raw["lm_head"] = _run_worker(sys.executable, "lm_head", [str(model_dir), args.threads], args.threads)
    ours = measured["ours"]
    variants = {k: v for k, v in measured.items() if k.startswith("ours-")}
    peers = {k: v for k, v in measured.items() if k.startswith("peer")}

    doc = _median(ours, "doc_s")
    print(f"model {model_dir} | threads {args.threads} | prompt {ours[0]['prompt_tokens']} tokens "
          f"(input {INPUT_TOKENS}) | {args.runs} interleaved rounds x {args.docs} docs | medians "
          "(min in brackets)")
    print(f"{'side':16s} {'cold s':>8s} {'doc s':>8s} {'calls':>6s} {'out tok':>8s} {'forced':>7s} "
          f"{'overhead':>9s} {'ratio':>6s}")
    sides: list[tuple[str, list[dict[str, Any]]]] = [("gemmacli", ours)]
    sides += [(k.replace("ours", "gemmacli"), v) for k, v in variants.items()]
    for label, runs in sides:
        side_doc = _median(runs, "doc_s")
        overhead = 1 - _median(runs, "model_s") / _median(runs, "doc_mean_s")
        tokens = runs[0]["generated"] + runs[0]["forced"]
        print(f"{label:16s} {_median(runs, 'cold_s'):8.3f} {side_doc:8.3f} {runs[0]['calls']:6d} {tokens:8d} "
              f"{runs[0]['forced'] / tokens:7.1%} {overhead:9.1%} {'':>6s} [doc {_min(runs, 'doc_s'):.3f}]")
    for kind, runs in peers.items():
        peer_doc = _median(runs, "doc_s")
        print(f"{kind:16s} {_median(runs, 'cold_s'):8.3f} {peer_doc:8.3f} {runs[0]['calls']:6d} "
              f"{runs[0]['output_tokens']:8d} {'':>7s} {'':>9s} {doc / peer_doc:6.2f} "
              f"[{_min(ours, 'doc_s') / _min(runs, 'doc_s'):.2f}]")
    for variant, variant_runs in variants.items():
        base = _median(variant_runs, "doc_s")
        print(f"ratio of {variant.replace('ours', 'gemmacli')} to " + ", ".join(
            f"{kind} {base / _median(runs, 'doc_s'):.2f}" for kind, runs in peers.items()))
    if "peer" in peers:  # the rounds are interleaved: round i of each side saw the same machine load
        rounds = ", ".join(f"{o['doc_s'] / p['doc_s']:.2f}" for o, p in zip(ours, peers["peer"], strict=True))
        cold = ", ".join(f"{o['cold_s'] / p['cold_s']:.2f}" for o, p in zip(ours, peers["peer"], strict=True))
        print(f"gemmacli / peer per round: per document {rounds}; cold {cold}")
    print(f"gemmacli output: {ours[0]['text']}")
    for kind, runs in peers.items():
        print(f"{kind} output: {runs[0]['text']}")
    print(f"llguidance tokenizer build {_median(ours, 'tokenizer_build_s'):.3f} s (on a thread during the "
          f"first prefill; it holds the GIL, so any wait shows inside that prefill: join waited "
          f"{_median(ours, 'tokenizer_wait_s'):.3f} s); model load {_median(ours, 'model_load_s'):.3f} s")
    head = raw["lm_head"]
    rows = ", ".join(f"{k[5:-3]} rows {v:.3f}" for k, v in head.items() if k.startswith("rows_"))
    print(f"lm_head ms: full {head['full_ms']:.3f} | logits_for: {rows}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
