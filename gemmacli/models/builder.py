"""The gemmacli decoder and lm_head graphs, written straight from Gemma 3 weights (no torch, no optimum).

The graphs are the ones `model export` reaches after optimum and `gemmacli.models.fuse` (see fuse.py), built
directly, as onnxruntime-genai's model builder does:

    input_ids -> embedding (GatherBlockQuantized over the lm_head's INT4 rows, or Gather) * sqrt(hidden)
    per layer:  SkipSimplifiedLayerNormalization (residual add + input norm)
                -> q|k|v in one MatMul(NBits) -> Split -> per-head q/k RMSNorm
                -> GroupQueryAttention (rotary inside, sliding window and a fixed window-sized cache on
                   sliding layers) -> o_proj -> post-attention norm
                -> SkipSimplifiedLayerNormalization (residual add + pre-MLP norm)
                -> gate, up -> FastGelu(gate) * up -> down -> post-MLP norm
    final SkipSimplifiedLayerNormalization -> last position -> last_hidden_state [batch, hidden]
    lm_head.onnx: hidden [batch, hidden] -> logits [batch, vocab]

Input and output names are the runtime's contract (gemmacli.engine.runtime): input_ids, attention_mask,
past_key_values.N.key/value in; last_hidden_state and present.N.key/value out. Weights come from any
`WeightSource` (a GGUF file here): Linear weights as float32 [out, in], Gemma norm weights already as
`1 + w`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from gemmacli.models import quant
from gemmacli.models.fuse import MS_DOMAIN, add_shared_inputs, layer_types_of, normed_heads, rotary_cache

HIDDEN_OUTPUT = "last_hidden_state"
LM_HEAD_INPUT = "hidden"
LM_HEAD_OUTPUT = "logits"
OPSET = 21
IR_VERSION = 10
EMBEDDING_SLICE_ROWS = 16384

Progress = Callable[[int, int], None]


class WeightSource(Protocol):
    """Where the weights come from, by llama.cpp tensor name (`blk.3.attn_q.weight`)."""

    def has(self, name: str) -> bool: ...
    def rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray: ...
    def vector(self, name: str) -> np.ndarray: ...
    def row_count(self, name: str) -> int: ...
    def stored_bits(self, name: str) -> float: ...


#: --precision: how many bits each Linear weight gets in MatMulNBits.
#:   auto  the bits the source file gave it: weights stored in 4.5 bits or fewer (Q4_K, Q4_0, ...) get 4,
#:         the others (Q5_0, Q6_K, Q8_0, F16, ...) 8, so the GGUF's own choice of which tensors need more
#:         precision survives (re-quantizing Q8_0/Q6_K to 4 bits compounds two rounding errors)
#:   int4 / int8  every weight at that width;  fp32  no quantization (checks against transformers)
PRECISIONS = ("auto", "int4", "int8", "fp32")


@dataclass(frozen=True)
class BuildOptions:
    """How to write the graphs."""

    precision: str = "auto"
    #: the block of 4-bit weights (one scale and zero point per `block_size` weights of a row)
    block_size: int = 32
    accuracy_level: int = 4
    #: rows of the rotary caches: positions past it are undefined, so the model's context length
    max_positions: int | None = None
    #: The projections fed by a norm (qkv, gate, up) as int8 weights per output column times int8
    #: activations per row (MatMulInteger: onnxruntime's integer GEMM, on AMX/VNNI where the CPU has them)
    #: instead of MatMulNBits, whose activations are quantized per block of 32. Measured on the real 270M
    #: (bench/README.md, "Integer prefill"): 1.5x the prefill tokens/s, next-token NLL 3.143 -> 3.155,
    #: top-1 91% the same; opt-in, as the shared dev sets moved both ways. The others (o_proj,
    #: down_proj) stay MatMulNBits: per-row int8 of their inputs cost more (NLL 3.169 with every one).
    qgemm: bool = False
    #: The block of 8-bit weights. 128 (opt-in) was measured on the real 270M (bench/README.md, "8-bit weights
    #: in blocks of 128"): 11-17% faster prefill, decode steps and lm_head, 8% fewer weight bytes, next-token
    #: NLL 3.3412 -> 3.3428, but the shared dev sets moved both ways (conllpp down on 160 records, with more
    #: runaway outputs), so 32 stays the default. Rows whose length 128 does not divide keep `block_size`.
    block_size_8bit: int = 32

    def block_for(self, bits: int, columns: int) -> int:
        """The block size of a `bits`-wide weight whose rows hold `columns` weights."""
        if bits == 8 and columns % self.block_size_8bit == 0:
            return self.block_size_8bit
        return self.block_size

    def bits_for(self, weights: WeightSource, *names: str) -> int | None:
        """MatMulNBits width for a weight made of the tensors `names`; None: float32."""
        if self.precision == "fp32":
            return None
        if self.precision in ("int4", "int8"):
            return int(self.precision[3:])
        return 4 if max(weights.stored_bits(n) for n in names) <= 4.5 else 8


@dataclass
class Graph:
    """Nodes, initializers and the names of quantized weights, collected while a graph is written."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    quantized: list[str] = field(default_factory=list)

    def has(self, name: str) -> bool:
        return any(i.name == name for i in self.initializers)

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, *, domain: str = "",
             **attributes: Any) -> None:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain or None,
                                           **attributes))


# ------------------------------------------------------------------------------------------- lm_head


def build_lm_head(weights: WeightSource, config: dict[str, Any], options: BuildOptions,
                  progress: Progress | None = None) -> onnx.ModelProto:
    """hidden [batch, H] -> logits [batch, V]: the tied embedding (or output.weight) as the lm_head."""
    name = lm_head_tensor(weights)
    hidden, vocab = int(config["hidden_size"]), weights.row_count(name)
    graph = Graph()
    bits = options.bits_for(weights, name)
    if bits is not None:
        quantized = _quantized_rows(weights, name, options.block_for(bits, hidden), bits, progress)
        _matmul_nbits(graph, LM_HEAD_INPUT, LM_HEAD_OUTPUT, quantized, "lm_head", options.accuracy_level)
    else:
        table = _float_rows(weights, name, progress)
        graph.node("MatMul", [LM_HEAD_INPUT, graph.constant("lm_head.weight", table.T)], [LM_HEAD_OUTPUT],
                   "lm_head")
    return _model(graph, "gemmacli_lm_head",
                  [helper.make_tensor_value_info(LM_HEAD_INPUT, TensorProto.FLOAT, ["batch_size", hidden])],
                  [helper.make_tensor_value_info(LM_HEAD_OUTPUT, TensorProto.FLOAT, ["batch_size", vocab])])


def lm_head_tensor(weights: WeightSource) -> str:
    """Gemma ties the lm_head to the embedding; a GGUF of an untied fine-tune carries output.weight."""
    return "output.weight" if weights.has("output.weight") else "token_embd.weight"


def _quantized_rows(weights: WeightSource, name: str, block_size: int, bits: int,
                    progress: Progress | None) -> quant.QuantizedWeight:
    """A large table quantized a slice at a time: float32 of one slice at most, beside the quantized parts."""
    total = weights.row_count(name)
    parts = []
    for start in range(0, total, EMBEDDING_SLICE_ROWS):
        rows = weights.rows(name, start, start + EMBEDDING_SLICE_ROWS)
        parts.append(quant.quantize(rows, block_size, bits))
        if progress:
            progress(min(total, start + EMBEDDING_SLICE_ROWS), total)
    return quant.concat_rows(parts)


def _float_rows(weights: WeightSource, name: str, progress: Progress | None) -> np.ndarray:
    total = weights.row_count(name)
    table = weights.rows(name)
    if progress:
        progress(total, total)
    return table


# ------------------------------------------------------------------------------------------- decoder


def build_decoder(weights: WeightSource, config: dict[str, Any], options: BuildOptions,
                  embedding: SharedEmbedding | None = None,
                  progress: Progress | None = None) -> onnx.ModelProto:
    """The decoder graph. `embedding`: GatherBlockQuantized's tensors (data, scales, zero points) already on
    disk in the lm_head's data file; None: a float32 embedding is written into this graph."""
    layers = int(config["num_hidden_layers"])
    graph = Graph()
    x = _embedding(graph, weights, config, options, embedding)
    add_shared_inputs(graph.nodes, graph.initializers)
    kinds = layer_types_of(config, layers)
    positions = int(options.max_positions or config.get("max_position_embeddings") or 8192)
    for kind in sorted(set(kinds)):
        cos, sin = rotary_cache(config, kind, int(config["head_dim"]), positions)
        graph.constant(f"gqa_{kind}_cos_cache", cos)
        graph.constant(f"gqa_{kind}_sin_cache", sin)
    mlp_out: str | None = None
    for i in range(layers):
        x, mlp_out = _layer(graph, weights, config, options, i, kinds[i], x, mlp_out)
        if progress:
            progress(i + 1, layers)
    final = _skip_norm(graph, x, mlp_out, weights.vector("output_norm.weight"), "/model/norm", config)[0]
    _last_position(graph, final)
    return _model(graph, "gemmacli_decoder", _decoder_inputs(config, kinds), _decoder_outputs(config, kinds))


def _embedding(graph: Graph, weights: WeightSource, config: dict[str, Any], options: BuildOptions,
               shared: SharedEmbedding | None) -> str:
    """input_ids -> embeddings * sqrt(hidden), as Gemma scales them."""
    out = "/model/embed_tokens/output_0"
    if shared is not None:
        graph.initializers.extend(shared.tensors)
        graph.node("GatherBlockQuantized", [shared.tensors[0].name, "input_ids",
                                            *(t.name for t in shared.tensors[1:])],
                   [out], "/model/embed_tokens/GatherBlockQuantized", domain=MS_DOMAIN, gather_axis=0,
                   quantize_axis=1, block_size=shared.block_size, bits=shared.bits)
    else:
        table = weights.rows("token_embd.weight")
        graph.node("Gather", [graph.constant("model.embed_tokens.weight", table), "input_ids"], [out],
                   "/model/embed_tokens/Gather", axis=0)
    scale = graph.constant("model.embed_scale", np.array(math.sqrt(int(config["hidden_size"])),
                                                         dtype=np.float32))
    graph.node("Mul", [out, scale], ["/model/embed_tokens/scaled"], "/model/embed_tokens/Mul")
    return "/model/embed_tokens/scaled"


def _layer(graph: Graph, weights: WeightSource, config: dict[str, Any], options: BuildOptions, i: int,
           kind: str, x: str, mlp_out: str | None) -> tuple[str, str]:
    """One Gemma 3 block. Returns (residual stream, this block's normed MLP output) for the next."""
    blk, tag = f"blk.{i}.", f"/model/layers.{i}"
    if mlp_out is None:
        h = f"{tag}/input_layernorm/output_0"
        weight = graph.constant(f"{tag}.input_layernorm.weight", weights.vector(blk + "attn_norm.weight"))
        graph.node("SimplifiedLayerNormalization", [x, weight], [h], f"{tag}/input_layernorm", axis=-1,
                   epsilon=_eps(config), stash_type=1)
    else:
        h, x = _skip_norm(graph, x, mlp_out, weights.vector(blk + "attn_norm.weight"),
                          f"{tag}/input_layernorm", config)
    attention = _attention(graph, weights, config, options, i, kind, h)
    normed = _norm(graph, attention, weights.vector(blk + "post_attention_norm.weight"),
                   f"{tag}/post_attention_layernorm", config)
    h2, x = _skip_norm(graph, x, normed, weights.vector(blk + "ffn_norm.weight"),
                       f"{tag}/pre_feedforward_layernorm", config)
    mlp = _mlp(graph, weights, options, i, h2)
    return x, _norm(graph, mlp, weights.vector(blk + "post_ffw_norm.weight"),
                    f"{tag}/post_feedforward_layernorm", config)


def _attention(graph: Graph, weights: WeightSource, config: dict[str, Any], options: BuildOptions, i: int,
               kind: str, h: str) -> str:
    blk, tag = f"blk.{i}.", f"/model/layers.{i}/self_attn"
    heads, kv_heads = int(config["num_attention_heads"]), int(config["num_key_value_heads"])
    head_dim = int(config["head_dim"])
    q_w, k_w, v_w = (weights.rows(blk + f"attn_{p}.weight") for p in ("q", "k", "v"))
    bits = options.bits_for(weights, *(blk + f"attn_{p}.weight" for p in ("q", "k", "v")))
    qkv = _linear(graph, h, np.concatenate([q_w, k_w, v_w]), f"{tag}/qkv_proj", options, bits,
                  qgemm=options.qgemm)
    q, k, v = (f"{tag}/{p}_proj/output_0" for p in ("q", "k", "v"))
    sizes = graph.constant(f"{tag}/qkv_split", np.array([len(q_w), len(k_w), len(v_w)], dtype=np.int64))
    graph.node("Split", [qkv, sizes], [q, k, v], f"{tag}/qkv_proj/Split", axis=-1)
    q_norm = graph.constant(f"{tag}.q_norm.weight", weights.vector(blk + "attn_q_norm.weight"))
    k_norm = graph.constant(f"{tag}.k_norm.weight", weights.vector(blk + "attn_k_norm.weight"))
    q = normed_heads(graph.nodes, graph.initializers, f"{tag}/q", q, q_norm, heads, head_dim, _eps(config))
    k = normed_heads(graph.nodes, graph.initializers, f"{tag}/k", k, k_norm, kv_heads, head_dim, _eps(config))
    window = int(config.get("sliding_window") or 0)
    sliding = kind == "sliding" and window > 0
    out = f"{tag}/GroupQueryAttention/output_0"
    graph.node(
        "GroupQueryAttention",
        [q, k, v, f"past_key_values.{i}.key", f"past_key_values.{i}.value", "gqa_seqlens_k",
         "gqa_total_seq_len", f"gqa_{kind}_cos_cache", f"gqa_{kind}_sin_cache"],
        [out, f"present.{i}.key", f"present.{i}.value"], f"{tag}/GroupQueryAttention", domain=MS_DOMAIN,
        num_heads=heads, kv_num_heads=kv_heads,
        scale=float(config.get("query_pre_attn_scalar") or head_dim) ** -0.5, do_rotary=1,
        rotary_interleaved=0, local_window_size=window if sliding else -1,
        softcap=float(config.get("attn_logit_softcapping") or 0.0),
        **({"sliding_window_cache": 1} if sliding else {}))
    return _weight_linear(graph, weights, out, blk + "attn_output.weight", f"{tag}/o_proj", options)


def _mlp(graph: Graph, weights: WeightSource, options: BuildOptions, i: int, h: str) -> str:
    blk, tag = f"blk.{i}.", f"/model/layers.{i}/mlp"
    gate = _weight_linear(graph, weights, h, blk + "ffn_gate.weight", f"{tag}/gate_proj", options,
                          qgemm=options.qgemm)
    up = _weight_linear(graph, weights, h, blk + "ffn_up.weight", f"{tag}/up_proj", options,
                        qgemm=options.qgemm)
    graph.node("FastGelu", [gate], [f"{tag}/act/output_0"], f"{tag}/act/FastGelu", domain=MS_DOMAIN)
    graph.node("Mul", [f"{tag}/act/output_0", up], [f"{tag}/gated"], f"{tag}/Mul")
    return _weight_linear(graph, weights, f"{tag}/gated", blk + "ffn_down.weight", f"{tag}/down_proj",
                          options)


# ------------------------------------------------------------------------------------------ pieces


def _weight_linear(graph: Graph, weights: WeightSource, x: str, name: str, tag: str,
                   options: BuildOptions, *, qgemm: bool = False) -> str:
    return _linear(graph, x, weights.rows(name), tag, options, options.bits_for(weights, name),
                   qgemm=qgemm)


def _linear(graph: Graph, x: str, weight: np.ndarray, tag: str, options: BuildOptions,
            bits: int | None, *, qgemm: bool = False) -> str:
    """x @ weight.T, with weight [out, in] as stored: MatMulNBits (`bits` wide), MatMul (None: fp32), or
    with `qgemm` (and any bits) int8 rows times int8 columns (_integer_linear)."""
    out = f"{tag}/output_0"
    if qgemm and bits is not None:
        _integer_linear(graph, x, out, weight, tag)
    elif bits is not None:
        block = options.block_for(bits, weight.shape[1])
        _matmul_nbits(graph, x, out, quant.quantize(weight, block, bits), tag, options.accuracy_level)
    else:
        graph.node("MatMul", [x, graph.constant(f"{tag}.weight", weight.T)], [out], f"{tag}/MatMul")
    return out


def _matmul_nbits(graph: Graph, x: str, out: str, weight: quant.QuantizedWeight, tag: str,
                  accuracy_level: int) -> None:
    inputs = [graph.constant(f"{tag}.weight_Q{weight.bits}", weight.packed),
              graph.constant(f"{tag}.weight_scales", weight.scales),
              graph.constant(f"{tag}.weight_zp", weight.zero_points)]
    graph.node("MatMulNBits", [x, *inputs], [out], f"{tag}/MatMulNBits", domain=MS_DOMAIN, K=weight.columns,
               N=weight.rows, bits=weight.bits, block_size=weight.block_size, accuracy_level=accuracy_level)
    graph.quantized.append(f"{tag}/MatMulNBits:{weight.bits}")


def _integer_linear(graph: Graph, x: str, out: str, weight: np.ndarray, tag: str) -> None:
    """out = x @ weight.T through an integer GEMM: weight [out, in] as int8 with one scale per output
    column; x quantized per row (each token its own scale, so rows never share one: a prefill's rows
    are exactly what they would be one at a time, and Gemma's outsized first-token activations do not
    flatten the others) to uint8 around 128. The int32 sums are exact, then scaled back to float."""
    scales = np.abs(weight).max(axis=1) / 127.0
    scales[scales == 0] = 1.0
    quantized = np.clip(np.rint(weight / scales[:, None]), -127, 127).astype(np.int8)
    if not graph.has("qgemm_axes"):  # the constants every integer linear shares
        graph.constant("qgemm_axes", np.array([-1], dtype=np.int64))
        graph.constant("qgemm_inverse_127", np.array(1 / 127, dtype=np.float32))
        graph.constant("qgemm_smallest", np.array(1e-30, dtype=np.float32))
        graph.constant("qgemm_one", np.array(1.0, dtype=np.float32))
        graph.constant("qgemm_zero_point", np.array(128, dtype=np.uint8))
    weight_q = graph.constant(f"{tag}.weight_int8", quantized.T)
    weight_scales = graph.constant(f"{tag}.weight_column_scales", scales.astype(np.float32))
    t = f"{tag}/rows"
    graph.node("Abs", [x], [f"{t}/abs"], f"{t}/Abs")
    graph.node("ReduceMax", [f"{t}/abs", "qgemm_axes"], [f"{t}/max"], f"{t}/ReduceMax", keepdims=1)
    graph.node("Mul", [f"{t}/max", "qgemm_inverse_127"], [f"{t}/scale_raw"], f"{t}/Mul")
    graph.node("Max", [f"{t}/scale_raw", "qgemm_smallest"], [f"{t}/scale"], f"{t}/Max")  # a row of zeros
    graph.node("Div", [x, f"{t}/scale"], [f"{t}/scaled"], f"{t}/Div")
    graph.node("QuantizeLinear", [f"{t}/scaled", "qgemm_one", "qgemm_zero_point"], [f"{t}/uint8"],
               f"{t}/QuantizeLinear")
    graph.node("MatMulInteger", [f"{t}/uint8", weight_q, "qgemm_zero_point"], [f"{t}/int32"],
               f"{tag}/MatMulInteger")
    graph.node("Cast", [f"{t}/int32"], [f"{t}/sums"], f"{t}/Cast", to=TensorProto.FLOAT)
    graph.node("Mul", [f"{t}/sums", f"{t}/scale"], [f"{t}/row_scaled"], f"{t}/RowScale")
    graph.node("Mul", [f"{t}/row_scaled", weight_scales], [out], f"{t}/ColumnScale")
    graph.quantized.append(f"{tag}/MatMulInteger:8")


def _eps(config: dict[str, Any]) -> float:
    return float(config.get("rms_norm_eps", 1e-6))


def _norm(graph: Graph, x: str, weight: np.ndarray, tag: str, config: dict[str, Any]) -> str:
    out = f"{tag}/output_0"
    graph.node("SimplifiedLayerNormalization", [x, graph.constant(f"{tag}.weight", weight)], [out],
               f"{tag}/SimplifiedLayerNormalization", axis=-1, epsilon=_eps(config), stash_type=1)
    return out


def _skip_norm(graph: Graph, x: str, skip: str | None, weight: np.ndarray, tag: str,
               config: dict[str, Any]) -> tuple[str, str]:
    """(norm(x + skip), x + skip) in one SkipSimplifiedLayerNormalization."""
    out, total = f"{tag}/output_0", f"{tag}/residual_0"
    graph.node("SkipSimplifiedLayerNormalization", [x, skip or "", graph.constant(f"{tag}.weight", weight)],
               [out, "", "", total], f"{tag}/SkipSimplifiedLayerNormalization", domain=MS_DOMAIN,
               epsilon=_eps(config))
    return out, total


def _last_position(graph: Graph, hidden: str) -> None:
    """[batch, seq, H] -> [batch, H] of the last position: the lm_head runs on one row only."""
    start = graph.constant("gemmacli_last_start", np.array([-1], dtype=np.int64))
    end = graph.constant("gemmacli_last_end", np.array([2**62], dtype=np.int64))
    axis = graph.constant("gemmacli_seq_axis", np.array([1], dtype=np.int64))
    graph.node("Slice", [hidden, start, end, axis], ["gemmacli_last_position"], "gemmacli/last_position")
    graph.node("Squeeze", ["gemmacli_last_position", axis], [HIDDEN_OUTPUT], "gemmacli/squeeze_last_position")


def _cache_dims(config: dict[str, Any], kind: str, symbol: str) -> list[Any]:
    window = int(config.get("sliding_window") or 0)
    rows: Any = window if kind == "sliding" and window else symbol
    return ["batch_size", int(config["num_key_value_heads"]), rows, int(config["head_dim"])]


def _decoder_inputs(config: dict[str, Any], kinds: list[str]) -> list[onnx.ValueInfoProto]:
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                            ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                            ["batch_size", "total_sequence_length"])]
    for i, kind in enumerate(kinds):
        for part in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{part}", TensorProto.FLOAT,
                                                        _cache_dims(config, kind, "past_sequence_length")))
    return inputs


def _decoder_outputs(config: dict[str, Any], kinds: list[str]) -> list[onnx.ValueInfoProto]:
    outputs = [helper.make_tensor_value_info(HIDDEN_OUTPUT, TensorProto.FLOAT,
                                             ["batch_size", int(config["hidden_size"])])]
    for i, kind in enumerate(kinds):
        for part in ("key", "value"):
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{part}", TensorProto.FLOAT,
                                                         _cache_dims(config, kind, "total_sequence_length")))
    return outputs


def _model(graph: Graph, name: str, inputs: list[onnx.ValueInfoProto],
           outputs: list[onnx.ValueInfoProto]) -> onnx.ModelProto:
    model = helper.make_model(
        helper.make_graph(graph.nodes, name, inputs, outputs, initializer=graph.initializers),
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)],
        producer_name="gemmacli", ir_version=IR_VERSION)
    model.metadata_props.add(key="gemmacli.quantized", value="\n".join(graph.quantized))
    return model


# --------------------------------------------------------------------------- embedding sharing


@dataclass(frozen=True)
class SharedEmbedding:
    """GatherBlockQuantized's inputs (data, scales, zero points), pointing into the lm_head's data file."""

    tensors: list[onnx.TensorProto]
    bits: int
    block_size: int


def embedding_from_lm_head(lm_head_on_disk: onnx.ModelProto, data_file: str,
                           block_size: int | None = None) -> SharedEmbedding | None:
    """GatherBlockQuantized's inputs over a saved MatMulNBits lm_head's bytes.

    MatMulNBits' B [V, K/block, block*bits/8] is, row by row, the tied embedding in GatherBlockQuantized's
    [V, K*bits/8] layout, so the decoder reads the same bytes: one copy of the table on disk and in memory.
    `lm_head_on_disk` is the saved lm_head.onnx loaded without its data. None when the layouts differ (or
    the lm_head's block is not `block_size`, when one is asked for).
    """
    node = next((n for n in lm_head_on_disk.graph.node if n.op_type == "MatMulNBits"), None)
    if node is None:
        return None
    attrs = {a.name: a.i for a in node.attribute}
    hidden, vocab, bits = attrs["K"], attrs["N"], attrs.get("bits", 4)
    block_size = block_size or attrs.get("block_size", 0)
    if not block_size or hidden % block_size or attrs.get("block_size") != block_size or bits not in (4, 8):
        return None
    blocks = hidden // block_size
    zero_point_bytes = -(-blocks // 2) if bits == 4 else blocks
    on_disk = {init.name: init for init in lm_head_on_disk.graph.initializer}
    shapes = {"data": [vocab, hidden * bits // 8], "scales": [vocab, blocks],
              "zero_points": [vocab, zero_point_bytes]}
    names = [name for name in node.input[1:4] if name]  # symmetric: no zero points (both ops: the middle)
    tensors = []
    for (role, dims), source_name in zip(list(shapes.items())[: len(names)], names, strict=True):
        source = on_disk[source_name]
        entries = {e.key: e.value for e in source.external_data}
        if source.data_location != TensorProto.EXTERNAL or entries.get("location") != data_file:
            return None
        tensor = TensorProto(name=f"gemmacli_embedding_{role}", data_type=source.data_type)
        tensor.dims.extend(dims)
        tensor.data_location = TensorProto.EXTERNAL
        for key in ("location", "offset", "length"):
            if key in entries:
                tensor.external_data.add(key=key, value=entries[key])
        tensors.append(tensor)
    return SharedEmbedding(tensors, bits, block_size)
