"""Graph rewrites applied after optimum's export and before INT4 quantization.

In brief: fuse_attention(model: onnx.ModelProto, config: dict) -> onnx.ModelProto
    `config` is the HF config.json as a dict. Keeps the graph's input and output names and their meaning
    unchanged (input_ids, attention_mask, past_key_values.N.key/value in; hidden or logits and
    present.N.key/value out), so gemmacli.engine.runtime needs no knowledge of which attention the graph uses.

Why: optimum exports Gemma 3 attention as ~120 small ops per layer (rotary by Slice/Neg/Concat, the single KV
head expanded to every query head with Expand/Reshape, a materialised mask, MatMul/Softmax/MatMul). At 2048
tokens of context that costs ~40 ms per token on 2 cores. onnxruntime's com.microsoft GroupQueryAttention
does rotary, the causal + sliding-window mask, KV-head sharing and the cache concat in one kernel, which is
what onnxruntime-genai's model builder emits. We rewrite each layer into that op after export, so optimum
stays the exporter.

Per layer the rewrite is:
    q_proj -> Reshape[b,s,H,d] -> SimplifiedLayerNormalization(q_norm) -> Reshape[b,s,H*d] --+
    k_proj -> Reshape[b,s,K,d] -> SimplifiedLayerNormalization(k_norm) -> Reshape[b,s,K*d] --+-> GQA -> o_proj
    v_proj ---------------------------------------------------------------------------------+
with rotary inside GQA (per-layer cos/sin cache: local base for sliding layers, global base and rope
scaling for full layers), local_window_size = sliding_window on sliding layers (checked against the optimum
graph and transformers past the window), scale = query_pre_attn_scalar ** -0.5, and by default a fixed
window-sized KV cache on the sliding layers (see `window_cache`). seqlens_k and total_sequence_length
are computed once in the graph from attention_mask, which therefore must be all ones for each sequence
(batch 1, no padding): the same assumption optimum's graph makes when it derives positions from the past
length.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"
_PRESENT_KEY = re.compile(r"^present\.(\d+)\.key$")


class FuseError(ValueError):
    """The graph does not have the shape of optimum's Gemma 3 export, so it cannot be rewritten."""


def fuse_attention(model: onnx.ModelProto, config: dict, *, max_positions: int | None = None,
                   window_cache: bool = True, window_cache_rows: int | None = None,
                   other_fusions: bool = True) -> onnx.ModelProto:
    """Rewrite every Gemma 3 attention block of an optimum export into one GroupQueryAttention node.

    `max_positions` bounds the rotary caches (rows of cos/sin per rope base; defaults to the config's
    max_position_embeddings). Positions past it are undefined, so pass the model's context length.
    `window_cache`: sliding layers keep a fixed `sliding_window`-row cache (GQA's sliding_window_cache)
    instead of the whole history, so a decode step at long context neither copies nor reads the old rows.
    Their past/present inputs and outputs then have the static shape [batch, kv_heads, sliding_window,
    head_dim] (rows [0, L) hold the most recent positions; an empty cache is all zeros of that shape), and
    attention_mask must still span the whole sequence: the caller counts tokens, it does not read them off
    the cache shape. `window_cache_rows` (>= sliding_window, default sliding_window) sets that static
    row count: GQA evicts `rows - window + 1` rows at a time once full, so a runtime that shares past and
    present buffers moves memory once per that many steps instead of every step. `other_fusions` also
    applies `fuse_decoder_ops` (norms, GELU, shared-input projections): otherwise the 270m graph runs
    ~550 small ops per step after onnxruntime's own fusions, whose overhead was ~25% of a step in a
    profile here (fused: 353 nodes, the builder's graph 355). The model is modified in place and returned.
    """
    cfg = _text_config(config)
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    nodes_by_name = {n.name: n for n in graph.node}
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}

    layers = sorted(int(m.group(1)) for o in outputs if (m := _PRESENT_KEY.match(o)))
    if not layers:
        raise FuseError("no present.N.key outputs: not a decoder graph with a KV cache")
    n_heads = int(cfg["num_attention_heads"])
    n_kv = int(cfg["num_key_value_heads"])
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // n_heads)
    eps = float(cfg.get("rms_norm_eps", 1e-6))
    scale = float(cfg.get("query_pre_attn_scalar") or head_dim) ** -0.5
    window = cfg.get("sliding_window")
    layer_types = layer_types_of(cfg, len(layers))
    positions = int(max_positions or cfg.get("max_position_embeddings") or 8192)
    if window_cache_rows is not None and window and window_cache_rows < int(window):
        raise FuseError(f"window_cache_rows {window_cache_rows} is below the sliding window {window}")
    softcap = cfg.get("attn_logit_softcapping") or 0.0

    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    add_shared_inputs(new_nodes, new_inits)
    caches: dict[str, tuple[str, str]] = {}

    for i in layers:
        concat = producers.get(f"present.{i}.key")
        if concat is None or concat.op_type != "Concat":
            raise FuseError(f"present.{i}.key is not produced by a Concat (already fused?)")
        prefix = concat.name.rsplit("/", 1)[0] + "/"
        found = {p: nodes_by_name.get(f"{prefix}{p}_proj/MatMul") for p in ("q", "k", "v", "o")}
        missing = [p for p, n in found.items() if n is None]
        if missing:
            raise FuseError(f"layer {i}: no {', '.join(missing)}_proj MatMul under {prefix}")
        proj = {p: n for p, n in found.items() if n is not None}
        q_w = _norm_weight(graph.node, f"{prefix}q_norm/", inits, producers, head_dim)
        k_w = _norm_weight(graph.node, f"{prefix}k_norm/", inits, producers, head_dim)

        kind = layer_types[i]
        windowed = bool(window_cache and kind == "sliding" and window)
        if kind not in caches:
            cos, sin = rotary_cache(cfg, kind, head_dim, positions)
            caches[kind] = (f"gqa_{kind}_cos_cache", f"gqa_{kind}_sin_cache")
            new_inits += [numpy_helper.from_array(cos, caches[kind][0]),
                          numpy_helper.from_array(sin, caches[kind][1])]

        tag = f"/model/layers.{i}/attn_fused/"
        cache_attribute: dict[str, Any] = {"sliding_window_cache": 1} if windowed else {}
        q = normed_heads(new_nodes, new_inits, tag + "q", proj["q"].output[0], q_w, n_heads, head_dim, eps)
        k = normed_heads(new_nodes, new_inits, tag + "k", proj["k"].output[0], k_w, n_kv, head_dim, eps)
        attn_out = tag + "GroupQueryAttention_output_0"
        new_nodes.append(helper.make_node(
            "GroupQueryAttention",
            [q, k, proj["v"].output[0], f"past_key_values.{i}.key", f"past_key_values.{i}.value",
             "gqa_seqlens_k", "gqa_total_seq_len", caches[kind][0], caches[kind][1]],
            [attn_out, f"present.{i}.key", f"present.{i}.value"],
            name=tag + "GroupQueryAttention", domain=MS_DOMAIN,
            num_heads=n_heads, kv_num_heads=n_kv, scale=scale, do_rotary=1, rotary_interleaved=0,
            local_window_size=int(window) if kind == "sliding" and window else -1,
            softcap=float(softcap),
            **cache_attribute,
        ))
        if windowed:
            _set_cache_rows(graph, i, int(window_cache_rows or window or 0))
        proj["o"].input[0] = attn_out
        # The old cache concats would be second producers of the present outputs: drop them now.
        for name in (f"present.{i}.key", f"present.{i}.value"):
            graph.node.remove(producers[name])

    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    _prune(graph)
    _topological_sort(graph)
    if not any(op.domain == MS_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    if other_fusions:
        fuse_decoder_ops(model, eps)
    return model


def fuse_decoder_ops(model: onnx.ModelProto, eps: float) -> onnx.ModelProto:
    """The builder graph's other fusions, on optimum's Gemma 3 graph (after the attention rewrite).

    - each RMSNorm (Cast/Pow/ReduceMean/Add/Sqrt/Div/Mul/Mul) -> SimplifiedLayerNormalization, and where its
      input is a residual Add -> SkipSimplifiedLayerNormalization (the sum comes out as a second output);
    - gelu_pytorch_tanh (6 Mul, 2 Add, Tanh) -> com.microsoft FastGelu (the same tanh formula);
    - the q/k/v MatMuls (one input, constant weights) -> one MatMul + Split, so the INT4 quantizer later
      makes one MatMulNBits where there were three. gate/up stay apart, as in the builder's graph (profiled:
      merging them saved 0.08 ms of MatMulNBits and cost 0.16 ms of Split per token; bench/README.md).
    onnxruntime fuses the plain RMSNorms itself at load, but not the residual adds, the GELU or the
    projections. Returns the model, changed in place.
    """
    graph = model.graph
    _drop_float_casts(graph)
    _fuse_groups(graph, eps)
    _merge_shared_input_matmuls(graph, scope="self_attn")
    _fuse_skip_norms(graph)
    _prune(graph)
    _topological_sort(graph)
    return model


def _drop_float_casts(graph: onnx.GraphProto) -> None:
    """Remove Cast-to-float of float activations (Gemma's norms upcast to fp32; a no-op in an fp32 graph).

    Their outputs also feed the residual stream, which would hide the norm pattern. Only casts whose input
    comes from Add/Mul/MatMul are touched, and only in a graph whose KV cache is float32.
    """
    if not any(i.name.startswith("past_key_values.") and i.type.tensor_type.elem_type == TensorProto.FLOAT
               for i in graph.input):
        return
    producers = {o: n for n in graph.node for o in n.output}
    rename: dict[str, str] = {}
    for n in list(graph.node):
        to = next((a.i for a in n.attribute if a.name == "to"), None)
        src = producers.get(n.input[0]) if n.op_type == "Cast" else None
        if to == TensorProto.FLOAT and src is not None and src.op_type in ("Add", "Mul", "MatMul") \
                and n.output[0] not in {o.name for o in graph.output}:
            rename[n.output[0]] = n.input[0]
            graph.node.remove(n)
    for n in graph.node:
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]


_RMSNORM_OPS = {"Pow": 1, "ReduceMean": 1, "Add": 1, "Sqrt": 1, "Div": 1, "Mul": 2}
_GELU_TANH_OPS = {"Mul": 6, "Add": 2, "Tanh": 1}


def _constant_value(name: str, inits: dict[str, onnx.TensorProto],
                    producers: dict[str, onnx.NodeProto]) -> np.ndarray | None:
    """The value of an initializer or Constant (through Identity chains), else None."""
    while name in producers and producers[name].op_type == "Identity":
        name = producers[name].input[0]
    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        attr = next((a for a in node.attribute if a.name == "value"), None)
        return numpy_helper.to_array(attr.t) if attr is not None else None
    return None


def _fuse_groups(graph: onnx.GraphProto, eps: float) -> None:
    """Replace RMSNorm and tanh-GELU subgraphs, found as the ops under one exporter scope (name prefix)."""
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    graph_outputs = {o.name for o in graph.output}
    groups: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        if "/" in n.name:
            groups.setdefault(n.name.rsplit("/", 1)[0], []).append(n)
    replaced: list[tuple[list[onnx.NodeProto], onnx.NodeProto]] = []
    for scope, nodes in groups.items():
        ops: dict[str, int] = {}
        for n in nodes:
            if n.op_type not in ("Constant", "Cast"):
                ops[n.op_type] = ops.get(n.op_type, 0) + 1
        if ops not in (_RMSNORM_OPS, _GELU_TANH_OPS):
            continue
        inner = {o for n in nodes for o in n.output}
        used_inside = [i for n in nodes for i in n.input]
        outside_inputs = [i for i in dict.fromkeys(used_inside) if i and i not in inner
                          and _constant_value(i, inits, producers) is None]
        outputs = [o for o in inner if o in graph_outputs
                   or consumers.get(o, 0) > sum(1 for i in used_inside if i == o)]
        if len(outside_inputs) != 1 or len(outputs) != 1:
            continue
        (x,), (y,) = outside_inputs, outputs
        if ops == _GELU_TANH_OPS:
            node = helper.make_node("FastGelu", [x], [y], name=f"{scope}/FastGelu", domain=MS_DOMAIN)
        else:
            last = producers[y]
            weight = next((i for i in last.input if _constant_value(i, inits, producers) is not None), None)
            if last.op_type != "Mul" or weight is None:
                continue
            node = helper.make_node("SimplifiedLayerNormalization", [x, weight], [y], axis=-1,
                                    epsilon=eps, stash_type=1, name=f"{scope}/SimplifiedLayerNormalization")
        replaced.append((nodes, node))
    for nodes, node in replaced:
        for n in nodes:
            graph.node.remove(n)
        graph.node.append(node)


def _merge_shared_input_matmuls(graph: onnx.GraphProto, scope: str = "") -> None:
    """MatMuls reading the same activation with constant 2-D weights (and `scope` in their names) -> one
    MatMul over the concatenated weights, then Split: same numbers (each output column only sees its own
    weight column)."""
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    by_input: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        if n.op_type == "MatMul" and scope in n.name \
                and _constant_value(n.input[1], inits, producers) is not None:
            by_input.setdefault(n.input[0], []).append(n)
    for x, nodes in by_input.items():
        if len(nodes) < 2:
            continue
        found = [_constant_value(n.input[1], inits, producers) for n in nodes]
        weights = [w for w in found if w is not None]
        if len(weights) != len(found) \
                or any(w.ndim != 2 or w.shape[0] != weights[0].shape[0] for w in weights):
            continue
        scope = nodes[0].name.rsplit("/", 2)[0]
        stem = "/".join(sorted(n.name.rsplit("/", 2)[-2] for n in nodes))
        name = f"{scope}/{stem.replace('/', '_')}_merged"
        sizes = np.array([w.shape[1] for w in weights], dtype=np.int64)
        graph.initializer.extend([numpy_helper.from_array(np.concatenate(weights, axis=1), f"{name}.weight"),
                                  numpy_helper.from_array(sizes, f"{name}.split")])
        graph.node.extend([
            helper.make_node("MatMul", [x, f"{name}.weight"], [f"{name}/MatMul_output_0"],
                             name=f"{name}/MatMul"),
            helper.make_node("Split", [f"{name}/MatMul_output_0", f"{name}.split"],
                             [n.output[0] for n in nodes], axis=-1, name=f"{name}/Split"),
        ])
        for n in nodes:
            graph.node.remove(n)


def _fuse_skip_norms(graph: onnx.GraphProto) -> None:
    """Add(a, b) -> SimplifiedLayerNormalization  ==>  SkipSimplifiedLayerNormalization(a, b) with the sum
    as its 4th output (the residual stream continues from there)."""
    producers = {o: n for n in graph.node for o in n.output}
    for norm in [n for n in graph.node if n.op_type == "SimplifiedLayerNormalization"]:
        add = producers.get(norm.input[0])
        if add is None or add.op_type != "Add" or not all(i in producers for i in add.input):
            continue  # only residual adds of two activations (a constant operand means a broadcast)
        eps = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-6)
        total = add.output[0]
        skip = helper.make_node("SkipSimplifiedLayerNormalization",
                                [add.input[0], add.input[1], norm.input[1]],
                                [norm.output[0], "", "", total], epsilon=eps, domain=MS_DOMAIN,
                                name=norm.name.rsplit("/", 1)[0] + "/SkipSimplifiedLayerNormalization")
        graph.node.remove(add)
        graph.node.remove(norm)
        graph.node.append(skip)
        producers[total] = skip
        producers[norm.output[0]] = skip


def _set_cache_rows(graph: onnx.GraphProto, layer: int, rows: int) -> None:
    """Give layer `layer`'s past inputs and present outputs a static sequence dimension of `rows`."""
    names = {f"past_key_values.{layer}.key", f"past_key_values.{layer}.value",
             f"present.{layer}.key", f"present.{layer}.value"}
    for info in [*graph.input, *graph.output]:
        if info.name in names:
            dim = info.type.tensor_type.shape.dim[2]
            dim.Clear()
            dim.dim_value = rows


def _text_config(config: dict) -> dict:
    """Gemma 3 multimodal configs nest the decoder's settings under text_config."""
    return config.get("text_config") or config


def layer_types_of(cfg: dict, n_layers: int) -> list[str]:
    """'sliding' or 'full' per layer, from layer_types (transformers >= 4.53) or the sliding pattern."""
    types = cfg.get("layer_types")
    if types:
        return ["sliding" if t == "sliding_attention" else "full" for t in types]
    pattern = int(cfg.get("sliding_window_pattern") or cfg.get("_sliding_window_pattern") or 6)
    return ["full" if (i + 1) % pattern == 0 else "sliding" for i in range(n_layers)]


def _rope_params(cfg: dict, kind: str) -> tuple[float, float]:
    """(base, linear scaling factor) for a layer kind, from transformers 4.x or 5.x config layouts."""
    nested = cfg.get("rope_parameters")
    if isinstance(nested, dict) and ("full_attention" in nested or "sliding_attention" in nested):
        p = nested.get("sliding_attention" if kind == "sliding" else "full_attention") or {}
        factor = float(p.get("factor", 1.0)) if p.get("rope_type", "default") == "linear" else 1.0
        return float(p.get("rope_theta", 10_000.0)), factor
    if kind == "sliding":
        return float(cfg.get("rope_local_base_freq", 10_000.0)), 1.0
    scaling = cfg.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ("default", "linear"):
        raise FuseError(f"rope scaling {rope_type!r} is not supported by the attention rewrite")
    factor = float(scaling.get("factor", 1.0)) if rope_type == "linear" else 1.0
    return float(cfg.get("rope_theta", 10_000.0)), factor


def rotary_cache(cfg: dict, kind: str, head_dim: int, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """GQA's cos/sin caches [positions, head_dim/2], computed like HF's default/linear rope in float32."""
    base, factor = _rope_params(cfg, kind)
    inv_freq = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    inv_freq = inv_freq / factor
    freqs = np.outer(np.arange(positions, dtype=np.float32), inv_freq.astype(np.float32))
    return np.cos(freqs).astype(np.float32), np.sin(freqs).astype(np.float32)


def _norm_weight(nodes: Iterable[onnx.NodeProto], prefix: str, inits: dict[str, onnx.TensorProto],
                 producers: dict[str, onnx.NodeProto], head_dim: int) -> str:
    """The constant that scales the RMSNorm under `prefix` (Gemma's 1 + weight, as exported).

    The exporter deduplicates equal weights into Identity nodes of one initializer, and may emit Constants.
    """
    for node in nodes:
        if node.op_type == "Mul" and node.name.startswith(prefix):
            for name in node.input:
                src = name
                while src in producers and producers[src].op_type == "Identity":
                    src = producers[src].input[0]
                t = inits.get(src)
                if t is None and src in producers and producers[src].op_type == "Constant":
                    t = next((a.t for a in producers[src].attribute if a.name == "value"), None)
                if t is not None and list(t.dims) == [head_dim]:
                    return name
    raise FuseError(f"no RMSNorm weight of shape [{head_dim}] under {prefix}")


def add_shared_inputs(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> None:
    """seqlens_k = sum(attention_mask) - 1 and total_sequence_length = mask width, int32 as GQA wants."""
    inits += [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "gqa_axis_1"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "gqa_index_1"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "gqa_one_i64"),
    ]
    nodes += [
        helper.make_node("ReduceSum", ["attention_mask", "gqa_axis_1"], ["gqa_mask_sum"], keepdims=0,
                         name="/model/gqa/ReduceSum"),
        helper.make_node("Sub", ["gqa_mask_sum", "gqa_one_i64"], ["gqa_seqlens_k_i64"],
                         name="/model/gqa/Sub"),
        helper.make_node("Cast", ["gqa_seqlens_k_i64"], ["gqa_seqlens_k"], to=TensorProto.INT32,
                         name="/model/gqa/Cast_seqlens"),
        helper.make_node("Shape", ["attention_mask"], ["gqa_mask_shape"], name="/model/gqa/Shape"),
        helper.make_node("Gather", ["gqa_mask_shape", "gqa_index_1"], ["gqa_total_i64"], axis=0,
                         name="/model/gqa/Gather"),
        helper.make_node("Cast", ["gqa_total_i64"], ["gqa_total_seq_len"], to=TensorProto.INT32,
                         name="/model/gqa/Cast_total"),
    ]


def normed_heads(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], tag: str, x: str, weight: str,
                  heads: int, head_dim: int, eps: float) -> str:
    """Per-head RMSNorm of a projection [b, s, heads*d] in BSNH layout, flattened back for GQA."""
    split, merged = f"{tag}_shape_split", f"{tag}_shape_merged"
    inits += [numpy_helper.from_array(np.array([0, 0, heads, head_dim], dtype=np.int64), split),
              numpy_helper.from_array(np.array([0, 0, heads * head_dim], dtype=np.int64), merged)]
    nodes += [
        helper.make_node("Reshape", [x, split], [f"{tag}_heads"], name=f"{tag}_Reshape_split"),
        helper.make_node("SimplifiedLayerNormalization", [f"{tag}_heads", weight], [f"{tag}_normed"],
                         axis=-1, epsilon=eps, stash_type=1, name=f"{tag}_norm"),
        helper.make_node("Reshape", [f"{tag}_normed", merged], [f"{tag}_flat"], name=f"{tag}_Reshape_merge"),
    ]
    return f"{tag}_flat"


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers no graph output depends on (the old attention, mask and rotary)."""
    producers = {o: n for n in graph.node for o in n.output}
    live: set[str] = set()
    keep: set[int] = set()
    stack = [o.name for o in graph.output]
    while stack:
        name = stack.pop()
        if name in live:
            continue
        live.add(name)
        node = producers.get(name)
        if node is not None and id(node) not in keep:
            keep.add(id(node))
            stack.extend(i for i in node.input if i)
    kept = [n for n in graph.node if id(n) in keep]
    del graph.node[:]
    graph.node.extend(kept)
    used_inits = [t for t in graph.initializer if t.name in live]
    del graph.initializer[:]
    graph.initializer.extend(used_inits)
    value_info = [v for v in graph.value_info if v.name in live]
    del graph.value_info[:]
    graph.value_info.extend(value_info)


def _topological_sort(graph: onnx.GraphProto) -> None:
    """ONNX requires producers before consumers; the new nodes were appended at the end."""
    known = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending: list[Any] = list(graph.node)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in known for i in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise FuseError(f"graph has a cycle or a dangling input at {rest[0].name}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
