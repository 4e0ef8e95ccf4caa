"""Graph rewrites applied after optimum's export and before INT4 quantization.

CONTRACT: fuse_attention(model: onnx.ModelProto, config: dict) -> onnx.ModelProto
    `config` is the HF config.json as a dict. Keeps the graph's input and output names and their meaning
    unchanged (input_ids, attention_mask, past_key_values.N.key/value in; hidden or logits and
    present.N.key/value out), so gemmacli.runtime needs no knowledge of which attention the graph uses.

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
scaling for full layers), local_window_size = sliding_window - 1 on sliding layers (GQA attends to
local_window_size + 1 keys; Gemma's window covers `sliding_window` keys including the query's own), and
scale = query_pre_attn_scalar ** -0.5. seqlens_k and total_sequence_length are computed once in the graph
from attention_mask, which therefore must be all ones for each sequence (batch 1, no padding) — the same
assumption optimum's graph makes when it derives positions from the past length.
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


def fuse_attention(model: onnx.ModelProto, config: dict, *, max_positions: int | None = None) -> onnx.ModelProto:
    """Rewrite every Gemma 3 attention block of an optimum export into one GroupQueryAttention node.

    `max_positions` bounds the rotary caches (rows of cos/sin per rope base; defaults to the config's
    max_position_embeddings). Positions past it are undefined, so pass the model's context length.
    The model is modified in place and returned.
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
    layer_types = _layer_types(cfg, len(layers))
    positions = int(max_positions or cfg.get("max_position_embeddings") or 8192)
    softcap = cfg.get("attn_logit_softcapping") or 0.0

    new_nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    _add_shared_inputs(new_nodes, new_inits)
    caches: dict[str, tuple[str, str]] = {}

    for i in layers:
        concat = producers.get(f"present.{i}.key")
        if concat is None or concat.op_type != "Concat":
            raise FuseError(f"present.{i}.key is not produced by a Concat (already fused?)")
        prefix = concat.name.rsplit("/", 1)[0] + "/"
        proj = {p: nodes_by_name.get(f"{prefix}{p}_proj/MatMul") for p in ("q", "k", "v", "o")}
        missing = [p for p, n in proj.items() if n is None]
        if missing:
            raise FuseError(f"layer {i}: no {', '.join(missing)}_proj MatMul under {prefix}")
        q_w = _norm_weight(graph.node, f"{prefix}q_norm/", inits, producers, head_dim)
        k_w = _norm_weight(graph.node, f"{prefix}k_norm/", inits, producers, head_dim)

        kind = layer_types[i]
        if kind not in caches:
            cos, sin = _rotary_cache(cfg, kind, head_dim, positions)
            caches[kind] = (f"gqa_{kind}_cos_cache", f"gqa_{kind}_sin_cache")
            new_inits += [numpy_helper.from_array(cos, caches[kind][0]),
                          numpy_helper.from_array(sin, caches[kind][1])]

        tag = f"/model/layers.{i}/attn_fused/"
        q = _normed_heads(new_nodes, new_inits, tag + "q", proj["q"].output[0], q_w, n_heads, head_dim, eps)
        k = _normed_heads(new_nodes, new_inits, tag + "k", proj["k"].output[0], k_w, n_kv, head_dim, eps)
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
        ))
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
    return model


def _text_config(config: dict) -> dict:
    """Gemma 3 multimodal configs nest the decoder's settings under text_config."""
    return config.get("text_config") or config


def _layer_types(cfg: dict, n_layers: int) -> list[str]:
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


def _rotary_cache(cfg: dict, kind: str, head_dim: int, positions: int) -> tuple[np.ndarray, np.ndarray]:
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


def _add_shared_inputs(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> None:
    """seqlens_k = sum(attention_mask) - 1 and total_sequence_length = mask width, both int32, as GQA wants."""
    inits += [
        numpy_helper.from_array(np.array([1], dtype=np.int64), "gqa_axis_1"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "gqa_index_1"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "gqa_one_i64"),
    ]
    nodes += [
        helper.make_node("ReduceSum", ["attention_mask", "gqa_axis_1"], ["gqa_mask_sum"], keepdims=0,
                         name="/model/gqa/ReduceSum"),
        helper.make_node("Sub", ["gqa_mask_sum", "gqa_one_i64"], ["gqa_seqlens_k_i64"], name="/model/gqa/Sub"),
        helper.make_node("Cast", ["gqa_seqlens_k_i64"], ["gqa_seqlens_k"], to=TensorProto.INT32,
                         name="/model/gqa/Cast_seqlens"),
        helper.make_node("Shape", ["attention_mask"], ["gqa_mask_shape"], name="/model/gqa/Shape"),
        helper.make_node("Gather", ["gqa_mask_shape", "gqa_index_1"], ["gqa_total_i64"], axis=0,
                         name="/model/gqa/Gather"),
        helper.make_node("Cast", ["gqa_total_i64"], ["gqa_total_seq_len"], to=TensorProto.INT32,
                         name="/model/gqa/Cast_total"),
    ]


def _normed_heads(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], tag: str, x: str, weight: str,
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
