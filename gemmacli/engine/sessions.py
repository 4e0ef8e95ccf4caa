"""onnxruntime sessions as gemmacli runs them: threads (one process-wide pool, idle threads not spinning),
graph optimizations, and a graph edited in memory (gemmacli.engine.runtime.Model exposes every position)."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from gemmacli.errors import ModelError
from gemmacli.files import write_atomically
from gemmacli.models.store import sha256_file

PRESENT_PREFIX = "present"

#: Set by the `gemmacli` executable's entry point (and so inherited by its batch workers). Once a
#: process-wide pool exists, every later onnxruntime session of the process must opt out of per-session
#: threads, a library user's or optimum's included: only a process that is wholly gemmacli's may have one.
PROCESS_POOL_ENV = "GEMMACLI_PROCESS_THREAD_POOL"
_GLOBAL_POOL_THREADS: int | None = None  # threads of the process-wide pool, once created; -1: unavailable


def _use_global_pool(threads: int | None) -> bool:
    """One process-wide onnxruntime thread pool for the decoder and lm_head sessions.

    They run one after the other, so one pool serves both; with a pool per session the idle (spinning or
    waking) threads of one slowed the other (measured here, 270m, 2 threads, 64 tokens of context:
    14.6-18.3 -> 11.4-11.5 ms per token, decoder step + full lm_head). The pool size is fixed by the first
    Model of the process; a later Model asking for another size shares it all the same: once a process has
    global pools, onnxruntime refuses every session with per-session threads ("use_per_session_threads
    must be false when using a global thread pool").
    """
    global _GLOBAL_POOL_THREADS
    if _GLOBAL_POOL_THREADS is None:
        if os.environ.get(PROCESS_POOL_ENV) != "1":
            return False
        try:
            from onnxruntime.capi import onnxruntime_pybind11_state as C
        except ImportError:
            _GLOBAL_POOL_THREADS = -1
            return False
        wanted = threads or 0  # 0: onnxruntime's default (one thread per physical core)
        try:
            C.set_global_thread_pool_sizes(wanted, 1)
        except AttributeError:  # an onnxruntime without the call
            _GLOBAL_POOL_THREADS = -1
            return False
        except Exception:  # "Global thread pools have already been created" (elsewhere in the process)
            pass
        _GLOBAL_POOL_THREADS = wanted
    return _GLOBAL_POOL_THREADS != -1


@dataclass(frozen=True)
class DecoderGraph:
    """What the runtime reads off a decoder graph's structure (no weights)."""

    shared_kv: bool  # GroupQueryAttention: one cache buffer bound as past and present
    window: int  # the sliding window of its window layers (-1: none)
    all_hidden: str | None  # the [batch, seq, H] tensor its last position is cut from, when found
    edited: bytes | None  # the graph with that tensor as an extra output (None: load the file as it is)


def read_decoder_graph(path: Path, cache: Path | None = None) -> DecoderGraph:
    """The graph's structure, and the graph edited to give every position's hidden state (forward_all).

    With `cache` (a folder), both are kept there under the graph file's sha256 and read back next time:
    reading them needs the `onnx` package, whose import alone is ~0.6 s of a ~3.6 s cold `extract`
    (measured here). A cache that cannot be read or written is passed over."""
    key = sha256_file(path) if cache is not None and path.is_file() else None
    if cache is not None and key is not None:
        cached = _cached_graph(cache, key)
        if cached is not None:
            return cached
    graph = _edited_graph(path)
    if cache is not None and key is not None:
        _store_graph(cache, key, graph)
    return graph


def _cached_graph(cache: Path, key: str) -> DecoderGraph | None:
    try:
        fields = json.loads((cache / f"{key}.json").read_text(encoding="utf-8"))
        edited = (cache / f"{key}.onnx").read_bytes() if fields["all_hidden"] is not None else None
        return DecoderGraph(bool(fields["shared_kv"]), int(fields["window"]), fields["all_hidden"], edited)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store_graph(cache: Path, key: str, graph: DecoderGraph) -> None:
    """Write the edited graph, then its fields (the fields last: they say the graph is whole)."""
    fields = {"shared_kv": graph.shared_kv, "window": graph.window, "all_hidden": graph.all_hidden}
    with contextlib.suppress(OSError):  # a read-only or full cache: the next run reads the graph again
        if graph.edited is not None:
            write_atomically(cache / f"{key}.onnx", graph.edited, make_parents=True)
        write_atomically(cache / f"{key}.json", json.dumps(fields).encode("utf-8"), make_parents=True)


def _edited_graph(path: Path) -> DecoderGraph:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    attention = [n for n in proto.graph.node if n.op_type == "GroupQueryAttention"]
    window = max((a.i for n in attention for a in n.attribute if a.name == "local_window_size"), default=-1)
    all_hidden = _all_positions_tensor(proto.graph) if attention else None
    if all_hidden is None:
        return DecoderGraph(bool(attention), window, None, None)
    proto.graph.output.append(onnx.helper.make_tensor_value_info(
        all_hidden, onnx.TensorProto.FLOAT, ["batch_size", "sequence_length", "hidden"]))
    return DecoderGraph(True, window, all_hidden, proto.SerializeToString())


def _all_positions_tensor(graph: Any) -> str | None:
    """The [batch, seq, H] tensor behind the hidden output, when the graph cuts the last position from it
    the way gemmacli's builder does (Slice from -1 on the sequence axis, then Squeeze); else None."""
    producers = {out: node for node in graph.node for out in node.output}
    hidden = [o.name for o in graph.output if not o.name.startswith(PRESENT_PREFIX)]
    squeeze = producers.get(hidden[0]) if len(hidden) == 1 else None
    if squeeze is None or squeeze.op_type != "Squeeze":
        return None
    cut = producers.get(squeeze.input[0])
    if cut is None or cut.op_type != "Slice" or len(cut.input) < 4:
        return None
    from onnx import numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer
                 if init.name in cut.input[1:4]}
    start, axis = constants.get(cut.input[1]), constants.get(cut.input[3])
    if start is None or axis is None or start.tolist() != [-1] or axis.tolist() != [1]:
        return None
    return str(cut.input[0])


def _session(path: Path, threads: int | None, *, spin: bool,
             graph: bytes | None = None) -> ort.InferenceSession:
    """A session of `path`, or of `graph` (the file's graph edited in memory; its weights still read from
    beside `path`)."""
    if not path.is_file():
        raise ModelError(f"{path} is missing", hint=f"gemmacli model verify {path.parent}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if _use_global_pool(threads):
        options.use_per_session_threads = False
    else:
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if graph is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         str(path.parent))
    try:
        return ort.InferenceSession(graph if graph is not None else str(path), sess_options=options,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"{path} cannot be loaded by onnxruntime: {exc}",
                         hint=f"gemmacli model verify {path.parent}") from exc
