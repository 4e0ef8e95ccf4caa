"""gemmacli against llama.cpp on the same weights (the real Gemma 3 270M Q4_K_M GGUF), side by side.

    bash bench/setup_llamacpp_env.sh                       # once: llama-cpp-python into bench/.venv-llamacpp
    OMP_WAIT_POLICY=PASSIVE flock /tmp/gemmacli-heavy.lock python bench/bench_llamacpp.py [--runs 3]

Both sides get the same prompt token ids (gemmacli's prompt, encoded once by our worker), the same schema
(bench_extract.SCHEMA on bench_extract's ~300-token letter), greedy decoding and the same thread count; each
side runs in its own processes. llama.cpp decodes grammar-constrained the fastest way it offers (the way
llama-server samples): the greedy token is checked against the grammar alone, and the grammar is applied
to the whole vocabulary only when it refuses it. Printed, as medians over --runs processes with their
spread (min-max):
  prefill tokens/s at 300 and 1,000 tokens (one run over the prompt, last position's logits)
  decode ms/token at 64 and 2,048 tokens of context (one token, full logits, argmax), and beside it the
        physical limit: bytes of weights read per token / this machine's memory bandwidth (measured)
  extract cold (a new process: imports, model load, one document) and warm (per document, loaded)
  batch: --batch-n records of a shared dev set, fixed few-shot examples (the prompt head, paid once)
  peak RSS of each side's process, and whether each side's outputs parse and validate.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LLAMA_PY = HERE / ".venv-llamacpp" / "bin" / "python"
DEFAULT_MODEL = ROOT / "onnx_models" / "gemma-3-270m"
DEFAULT_GGUF = ROOT / ".cache" / "gguf" / "gemma-3-270m-q4_k_m.gguf"
DATASETS = ROOT.parent / "shared" / "datasets"
DECODE_STEPS = 32


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median_ms(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


# ------------------------------------------------------------------------------------------ our side


def _our_batch(model: Any, dataset: str, n: int, shots: int, speculate: int) -> dict[str, Any]:
    """Extract n dev records with fixed examples; the prompts (ids) for the peer, our outputs, docs/s."""
    from gemmacli.engine import examples
    from gemmacli.engine.extractor import Extractor
    from gemmacli.engine.prompt import encode_prompt
    from gemmacli.errors import ExtractionFailed

    folder = DATASETS / dataset
    schema = json.loads((folder / "schema.json").read_text())
    pool = examples.load_examples(examples.ExampleSource(folder / "train.jsonl"), schema, shots)
    extractor = Extractor(schema, model=model, examples=examples.Examples(pool, shots, "fixed"),
                          speculate=speculate)
    records = [json.loads(line) for line in (folder / "dev.jsonl").read_text().splitlines()[:n]]
    prompts, texts, failed = [], [], 0
    start = time.perf_counter()
    for record in records:
        try:
            texts.append(extractor.extract(record["text"]).text)
        except ExtractionFailed:
            failed += 1
            texts.append("")
    seconds = time.perf_counter() - start
    for record in records:
        prompt = encode_prompt(model.tokenizer, model.config, extractor.schema, record["text"],
                               max_tokens=extractor.max_tokens, examples=extractor.config.examples.for_text(
                                   record["text"]), examples_in_head=True)
        prompts.append([prompt.prefix_len, list(prompt.ids)])
    return {"docs_per_s": len(records) / seconds, "failed": failed, "valid": len(records) - failed,
            "prompts": prompts, "schema": schema, "max_tokens": extractor.max_tokens, "texts": texts}


def worker_ours(model_dir: str, threads: int, docs: int, batch: list[Any], speculate: int) -> dict[str, Any]:
    os.environ["GEMMACLI_PROCESS_THREAD_POOL"] = "1"  # as the gemmacli executable sets it
    sys.path.insert(0, str(HERE))
    import numpy as np
    from bench_extract import SCHEMA, make_input

    from gemmacli.engine.extractor import Extractor
    from gemmacli.engine.prompt import encode_prompt

    extractor = Extractor(SCHEMA, model=model_dir, threads=threads, max_tokens=256, speculate=speculate)
    model = extractor.model
    text = make_input(model.tokenizer)
    first = extractor.extract(text)
    warm = []
    for _ in range(docs):
        result = extractor.extract(text)
        warm.append(result.seconds)
    assert result.text == first.text
    out: dict[str, Any] = {
        "extract_warm_s": statistics.median(warm), "output_tokens": result.generated_tokens
        + result.forced_tokens, "model_calls": result.model_calls, "text": result.text, "valid": True,
        "decode_model_s": result.model_seconds, "overhead_s": result.seconds - result.model_seconds,
        "letter": text,
        "prompt_ids": list(encode_prompt(model.tokenizer, model.config, extractor.schema, text,
                                         max_tokens=256).ids)}
    ids = model.tokenizer.encode(make_input(model.tokenizer, 2100), add_special_tokens=False).ids
    for n in (300, 1000):
        def prefill(n: int = n) -> None:
            model.logits(model.forward(model.new_cache(), [2, *ids[: n - 1]]))
        prefill()
        out[f"prefill_{n}_tok_s"] = n / (_median_ms(prefill, 3) / 1000)
    for ctx in (64, 2048):
        cache = model.new_cache()
        hidden = model.forward(cache, [2, *ids[: ctx - 1]])

        def step(cache: Any = cache) -> None:
            nonlocal hidden
            token = int(np.argmax(model.logits(hidden)))
            hidden = model.forward(cache, [token])
        step()
        out[f"decode_{ctx}_ms"] = _median_ms(step, DECODE_STEPS)
    if batch:
        out["batch"] = _our_batch(model, *batch, speculate=speculate)
    out["peak_rss_mib"] = _peak_rss_mib()
    return out


def worker_ours_cold(model_dir: str, threads: int, speculate: int, letter: str) -> dict[str, Any]:
    """A new process extracting one document: the letter comes from the warm worker, so that building it
    (encoding a growing text until it is 300 tokens) is not timed as part of a cold start."""
    os.environ["GEMMACLI_PROCESS_THREAD_POOL"] = "1"
    sys.path.insert(0, str(HERE))
    from bench_extract import SCHEMA

    from gemmacli.engine.extractor import Extractor

    extractor = Extractor(SCHEMA, model=model_dir, threads=threads, max_tokens=256, speculate=speculate)
    return {"text": extractor.extract(letter).text, "peak_rss_mib": _peak_rss_mib()}


# ------------------------------------------------------------------------------------------ llama.cpp


def _llama(gguf: str, threads: int) -> Any:
    from llama_cpp import Llama

    return Llama(model_path=gguf, n_ctx=4096, n_threads=threads, n_threads_batch=threads, n_batch=512,
                 verbose=False)


class _GrammarFirst:
    """llama.cpp's grammar sampler driven as llama-server drives it: the greedy token checked alone first,
    the whole vocabulary only when the grammar refuses it."""

    def __init__(self, llm: Any, schema: dict[str, Any]) -> None:
        import llama_cpp as lc
        import numpy as np
        from llama_cpp.llama_grammar import json_schema_to_gbnf

        self.lc, self.np, self.llm = lc, np, llm
        self.vocab = lc.llama_model_get_vocab(llm.model)
        self.gbnf = json_schema_to_gbnf(json.dumps(schema)).encode()
        self.n_vocab = llm.n_vocab()
        self.one = (lc.llama_token_data * 1)()
        self.all = (lc.llama_token_data * self.n_vocab)()
        self.all_np = np.frombuffer(self.all, dtype=np.dtype([("id", np.int32), ("logit", np.float32),
                                                              ("p", np.float32)]))
        self.full_passes = 0

    def run(self, prompt: list[int], head: int, max_tokens: int) -> tuple[str, int]:
        lc, np, llm = self.lc, self.np, self.llm
        sampler = lc.llama_sampler_init_grammar(self.vocab, self.gbnf, b"root")
        keep = head if head and llm.n_tokens >= head and list(llm.input_ids[:head]) == prompt[:head] else 0
        llm.n_tokens = keep  # the prompt head's KV reused (eval drops everything past n_tokens)
        llm.eval(prompt[keep:])
        out: list[int] = []
        try:
            for _ in range(max_tokens):
                logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(llm.ctx, -1), shape=(self.n_vocab,))
                token = int(np.argmax(logits))
                self.one[0].id, self.one[0].logit, self.one[0].p = token, float(logits[token]), 0.0
                single = lc.llama_token_data_array(data=self.one, size=1, selected=-1, sorted=False)
                lc.llama_sampler_apply(sampler, lc.ctypes.byref(single))
                if not np.isfinite(self.one[0].logit):
                    self.full_passes += 1
                    self.all_np["id"] = np.arange(self.n_vocab, dtype=np.int32)
                    self.all_np["logit"] = logits
                    every = lc.llama_token_data_array(data=self.all, size=self.n_vocab, selected=-1,
                                                      sorted=False)
                    lc.llama_sampler_apply(sampler, lc.ctypes.byref(every))
                    token = int(self.all_np["id"][int(np.argmax(self.all_np["logit"]))])
                lc.llama_sampler_accept(sampler, token)
                if lc.llama_vocab_is_eog(self.vocab, token):
                    break
                out.append(token)
                llm.eval([token])
        finally:
            lc.llama_sampler_free(sampler)
        return llm.detokenize(out).decode("utf-8", errors="replace"), len(out)


def _valid(text: str, schema: dict[str, Any]) -> bool:
    import jsonschema

    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def worker_llama(gguf: str, threads: int, docs: int, prompt_ids: list[int], batch: dict[str, Any] | None,
                 schema: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    llm = _llama(gguf, threads)
    grammar = _GrammarFirst(llm, schema)
    first = grammar.run(prompt_ids, 0, 256)
    warm, tokens = [], 0
    for _ in range(docs):
        start = time.perf_counter()
        text, tokens = grammar.run(prompt_ids, 0, 256)
        warm.append(time.perf_counter() - start)
    out: dict[str, Any] = {"extract_warm_s": statistics.median(warm), "output_tokens": tokens, "text": text,
                           "valid": _valid(text, schema), "deterministic": text == first[0],
                           "full_grammar_passes": grammar.full_passes}
    ids = llm.tokenize(_letter(2100).encode(), add_bos=False, special=False)
    for n in (300, 1000):
        def prefill(n: int = n) -> None:
            llm.reset()
            llm.eval([2, *ids[: n - 1]])
        prefill()
        out[f"prefill_{n}_tok_s"] = n / (_median_ms(prefill, 3) / 1000)
    for ctx in (64, 2048):
        llm.reset()
        llm.eval([2, *ids[: ctx - 1]])

        def step() -> None:
            logits = np.ctypeslib.as_array(__import__("llama_cpp").llama_get_logits_ith(llm.ctx, -1),
                                           shape=(llm.n_vocab(),))
            llm.eval([int(np.argmax(logits))])
        step()
        out[f"decode_{ctx}_ms"] = _median_ms(step, DECODE_STEPS)
    if batch:
        bschema = batch["schema"]
        batch_grammar = _GrammarFirst(llm, bschema)
        llm.reset()
        start = time.perf_counter()
        texts = [batch_grammar.run(ids_, head, batch["max_tokens"])[0] for head, ids_ in batch["prompts"]]
        seconds = time.perf_counter() - start
        out["batch"] = {"docs_per_s": len(texts) / seconds, "valid": sum(_valid(t, bschema) for t in texts)}
    out["peak_rss_mib"] = _peak_rss_mib()
    return out


def worker_llama_cold(gguf: str, threads: int, prompt_ids: list[int],
                      schema: dict[str, Any]) -> dict[str, Any]:
    llm = _llama(gguf, threads)
    text, _ = _GrammarFirst(llm, schema).run(prompt_ids, 0, 256)
    return {"text": text, "peak_rss_mib": _peak_rss_mib()}


def _letter(tokens: int) -> str:
    """bench_extract's letter, long enough for `tokens` Gemma tokens (the sides tokenize it themselves)."""
    sys.path.insert(0, str(HERE))
    from bench_extract import _SENTENCES

    return " ".join(_SENTENCES[i % len(_SENTENCES)] for i in range(tokens // 12))


# ---------------------------------------------------------------------------------------------- driver


def _run(python: str, kind: str, args: list[Any], threads: int) -> tuple[dict[str, Any], float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run([python, __file__, "--worker", kind], input=json.dumps(args), capture_output=True,
                          text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def memory_bandwidth_gb_s(threads: int) -> float:
    """Read bandwidth of this machine as a decode step sees it: `threads` threads each summing its part of a
    512 MiB array (numpy releases the GIL in the reduction); best of 5."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    data = np.ones(512 * 2**20 // 8, dtype=np.float64)
    parts = np.array_split(data, threads)
    with ThreadPoolExecutor(threads) as pool:
        def read() -> None:
            list(pool.map(np.sum, parts))
        best = min(_median_ms(read, 1) for _ in range(5))
    return data.nbytes / (best / 1000) / 1e9


def _spread(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    return (fmt.format(med) + (f" ({fmt.format(min(values))}-{fmt.format(max(values))})"
                               if len(values) > 1 else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--gguf", default=str(DEFAULT_GGUF))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3, help="processes per side (warm and cold each)")
    parser.add_argument("--docs", type=int, default=5, help="warm documents per process")
    parser.add_argument("--batch-set", default="restaurant8k")
    parser.add_argument("--batch-n", type=int, default=100)
    parser.add_argument("--shots", type=int, default=2)
    parser.add_argument("--speculate", type=int, default=0, help="our --speculate (0: plain greedy)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        a = json.loads(sys.stdin.read())
        result = {"ours": worker_ours, "ours-cold": worker_ours_cold, "llama": worker_llama,
                  "llama-cold": worker_llama_cold}[args.worker](*a)
        print(json.dumps(result))
        return
    sys.path.insert(0, str(HERE))
    from bench_extract import SCHEMA

    batch = [args.batch_set, args.batch_n, args.shots] if args.batch_n else []
    ours, llama, cold_ours, cold_llama = [], [], [], []
    for run in range(args.runs):
        result, _ = _run(sys.executable, "ours", [args.model, args.threads, args.docs,
                                                  batch if run == 0 else [], args.speculate], args.threads)
        ours.append(result)
        peer_batch = ours[0].get("batch") if run == 0 else None
        peer_args = [args.gguf, args.threads, args.docs, result["prompt_ids"], peer_batch, SCHEMA]
        llama.append(_run(str(LLAMA_PY), "llama", peer_args, args.threads)[0])
        cold, wall = _run(sys.executable, "ours-cold", [args.model, args.threads, args.speculate,
                                                        result["letter"]], args.threads)
        cold_ours.append((wall, cold))
        cold, wall = _run(str(LLAMA_PY), "llama-cold",
                          [args.gguf, args.threads, result["prompt_ids"], SCHEMA], args.threads)
        cold_llama.append((wall, cold))
    bandwidth = memory_bandwidth_gb_s(args.threads)
    our_bytes = sum(p.stat().st_size for p in Path(args.model).glob("*.onnx.data"))
    llama_bytes = Path(args.gguf).stat().st_size
    rows = [
        ("prefill tok/s @300", "prefill_300_tok_s", "{:.0f}", True),
        ("prefill tok/s @1000", "prefill_1000_tok_s", "{:.0f}", True),
        ("decode ms/token @64", "decode_64_ms", "{:.1f}", False),
        ("decode ms/token @2048", "decode_2048_ms", "{:.1f}", False),
        ("extract warm s/doc", "extract_warm_s", "{:.3f}", False),
    ]
    print(f"| {args.threads} threads, medians (min-max) over {args.runs} processes | gemmacli | llama.cpp "
          "| gemmacli / llama.cpp |")
    print("|---|---|---|---|")
    for label, key, fmt, higher in rows:
        a, b = [r[key] for r in ours], [r[key] for r in llama]
        ratio = statistics.median(a) / statistics.median(b)
        better = " (higher is better)" if higher else ""
        print(f"| {label} | {_spread(a, fmt)} | {_spread(b, fmt)} | {ratio:.2f}x{better} |")
    tok_ours, tok_llama = ours[0]["output_tokens"], llama[0]["output_tokens"]
    per_tok_ours = statistics.median(r["extract_warm_s"] for r in ours) / max(1, tok_ours) * 1000
    per_tok_llama = statistics.median(r["extract_warm_s"] for r in llama) / max(1, tok_llama) * 1000
    print(f"| extract output tokens, ms/output token | {tok_ours}, {per_tok_ours:.1f} | {tok_llama}, "
          f"{per_tok_llama:.1f} | |")
    a, b = [w for w, _ in cold_ours], [w for w, _ in cold_llama]
    print(f"| extract cold s (new process) | {_spread(a, '{:.2f}')} | {_spread(b, '{:.2f}')} "
          f"| {statistics.median(a) / statistics.median(b):.2f}x |")
    if ours[0].get("batch") and llama[0].get("batch"):
        ob, lb = ours[0]["batch"], llama[0]["batch"]
        print(f"| batch {args.batch_n} {args.batch_set} ({args.shots} fixed shots) docs/s, valid "
              f"| {ob['docs_per_s']:.2f}, {ob['valid']} | {lb['docs_per_s']:.2f}, {lb['valid']} "
              f"| {ob['docs_per_s'] / lb['docs_per_s']:.2f}x (higher is better) |")
    rss_o = max([r["peak_rss_mib"] for r in ours] + [c["peak_rss_mib"] for _, c in cold_ours])
    rss_l = max([r["peak_rss_mib"] for r in llama] + [c["peak_rss_mib"] for _, c in cold_llama])
    print(f"| peak RSS MiB (cold process; warm incl. batch) | {cold_ours[0][1]['peak_rss_mib']:.0f}; "
          f"{rss_o:.0f} | {cold_llama[0][1]['peak_rss_mib']:.0f}; {rss_l:.0f} | |")
    print(f"| output parses and validates | {ours[0]['valid']} | {llama[0]['valid']} | |")
    print(f"| decode physical limit ms/token (weights read / {bandwidth:.1f} GB/s) "
          f"| {our_bytes / bandwidth / 1e6:.1f} ({our_bytes / 1e6:.0f} MB) "
          f"| {llama_bytes / bandwidth / 1e6:.1f} ({llama_bytes / 1e6:.0f} MB) | |")
    overhead = statistics.median(r["overhead_s"] / r["extract_warm_s"] for r in ours)
    print(f"\ngemmacli: {ours[0]['text']}\nllama.cpp: {llama[0]['text']}\n"
          f"gemmacli grammar+decoder bookkeeping: {overhead:.1%} of the warm document; llama.cpp full "
          f"grammar passes per document: {llama[0]['full_grammar_passes'] // (args.docs + 1)}")
    if args.json:
        args.json.write_text(json.dumps({"ours": ours, "llama": llama, "cold_ours": cold_ours,
                                         "cold_llama": cold_llama, "bandwidth_gb_s": bandwidth}, indent=1))


if __name__ == "__main__":
    main()
