"""Gemma 3 weights between the GGUF / graph-builder naming and transformers' torch model (`gemmacli tune`).

The graph builder (gemmacli.models.builder) reads weights by llama.cpp tensor name (`blk.3.attn_q.weight`,
Linear weights as float32 [out, in], RMSNorm weights stored as `1 + w`); transformers' Gemma3ForCausalLM
names them `model.layers.3.self_attn.q_proj.weight` and keeps norms as `w`. Tuning loads the first into the
second, trains, and hands the result back to the builder as a `TunedWeights` source, so a tuned model is
written by exactly the code that imports a GGUF.

torch and transformers are imported inside the functions that need them (the `gemmacli[tune]` extra).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gemmacli.models.builder import WeightSource

#: llama.cpp's tensor roles -> transformers' Gemma3 parameter names (per block)
HF_NAMES = {
    "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
#: transformers' names of every Linear in a block (LoRA targets), in HF_NAMES' order
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def block_names(layers: int) -> dict[str, str]:
    """transformers' block parameter name -> llama.cpp's, for every block (embedding and head excluded)."""
    names = {"model.norm.weight": "output_norm.weight"}
    for block in range(layers):
        for role, hf_name in HF_NAMES.items():
            names[f"model.layers.{block}.{hf_name}.weight"] = f"blk.{block}.{role}.weight"
    return names


def is_norm(llama_name: str) -> bool:
    return llama_name.split(".")[-2].endswith("norm")


def hf_state_dict(weights: WeightSource, layers: int) -> dict[str, np.ndarray]:
    """transformers' Gemma3ForCausalLM weights from a weight source's de-quantized tensors (norms minus 1)."""
    state = {"model.embed_tokens.weight": _table(weights, "token_embd.weight")}
    for hf_name, llama_name in block_names(layers).items():
        state[hf_name] = (weights.vector(llama_name) - 1.0 if is_norm(llama_name)
                          else weights.rows(llama_name))
    if weights.has("output.weight"):
        state["lm_head.weight"] = weights.rows("output.weight")
    return state


def _table(weights: WeightSource, name: str, rows_per_slice: int = 16384) -> np.ndarray:
    """A large table de-quantized a slice at a time into one array (the whole table at once doubled the
    peak memory with the de-quantizer's temporaries)."""
    total = weights.row_count(name)
    first = weights.rows(name, 0, min(total, rows_per_slice))
    table = np.empty((total, first.shape[1]), dtype=np.float32)
    table[: len(first)] = first
    for start in range(len(first), total, rows_per_slice):
        table[start: start + rows_per_slice] = weights.rows(name, start, min(total, start + rows_per_slice))
    return table


def _without_init() -> Any:
    try:
        from transformers.modeling_utils import no_init_weights
    except ImportError:  # pragma: no cover - transformers moved it
        return contextlib.nullcontext()
    return no_init_weights()


def torch_model(weights: WeightSource, config: Mapping[str, Any], *, attention: str = "sdpa") -> Any:
    """A float32 Gemma3ForCausalLM holding the source's weights (the embedding tied to the lm_head)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    options = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
    hf_config = Gemma3TextConfig(**options)
    hf_config._attn_implementation = attention
    # The arrays become the parameters (assign=True; torch.from_numpy shares them), built before the
    # model's random ones exist: one copy of the weights beside those at the peak, not two
    # (4.4 GiB to load the 270M model before, 2.4 with the init skipped too, measured).
    state = {name: torch.from_numpy(np.require(array, dtype=np.float32, requirements=["C", "W"]))
             for name, array in hf_state_dict(weights, hf_config.num_hidden_layers).items()}
    with _without_init():  # the random initialisation is discarded: skip it (and its temporaries)
        model = Gemma3ForCausalLM(hf_config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected or not set(missing) <= {"lm_head.weight"}:
        raise ValueError(f"weights do not fit Gemma3ForCausalLM: missing {missing}, unexpected {unexpected}")
    if hf_config.tie_word_embeddings:
        model.tie_weights()
    return model


@dataclass
class TunedWeights:
    """A WeightSource: tuned block tensors over the base model's source (the embedding, never tuned).

    `stored_bits` answers for the base tensor of the same name, so `--precision auto` gives each tuned
    weight the width the base GGUF gave it, exactly as importing the base did.
    """

    base: WeightSource
    tensors: dict[str, np.ndarray] = field(default_factory=dict)  # llama.cpp names, builder layout

    @classmethod
    def from_state(cls, base: WeightSource, state: Mapping[str, Any], layers: int) -> TunedWeights:
        """From a transformers state dict (torch tensors or arrays): block weights and the final norm."""
        tensors = {}
        for hf_name, llama_name in block_names(layers).items():
            value = state[hf_name]
            array = np.asarray(value.detach().float().cpu().numpy() if hasattr(value, "detach") else value,
                               dtype=np.float32)
            tensors[llama_name] = array.reshape(-1) + 1.0 if is_norm(llama_name) else array
        return cls(base, tensors)

    def has(self, name: str) -> bool:
        return name in self.tensors or self.base.has(name)

    def rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        if name in self.tensors:
            array = self.tensors[name]
            return (array.reshape(1, -1) if array.ndim == 1 else array)[start:stop]
        return self.base.rows(name, start, stop)

    def vector(self, name: str) -> np.ndarray:
        return self.tensors[name].reshape(-1) if name in self.tensors else self.base.vector(name)

    def row_count(self, name: str) -> int:
        if name in self.tensors:
            array = self.tensors[name]
            return 1 if array.ndim == 1 else int(array.shape[0])
        return self.base.row_count(name)

    def stored_bits(self, name: str) -> float:
        return self.base.stored_bits(name)
