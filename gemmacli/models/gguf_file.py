"""A Gemma 3 GGUF file: its metadata as a Hugging Face-style config, its tensors de-quantized on demand.

llama.cpp's converter renames tensors (`blk.N.attn_q`), stores Linear weights as [out, in] rows of
quantized blocks and adds 1 to every Gemma RMSNorm weight (Gemma computes x * (1 + w)); those norm weights
are therefore used as they are, as the `1 + w` factor. The `gguf` package de-quantizes every block type
(F32, F16, BF16, Q8_0, Q5_0, Q4_K, Q6_K, ...) in numpy; rows are read in slices so the 262,144-row
embedding never needs more than one slice of float32 beside it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any

import numpy as np

from gemmacli.errors import ModelError, UsageError
from gemmacli.models.vocab import Vocabulary

ARCHITECTURE = "gemma3"
#: Gemma 3 hard-codes these in its modelling code; llama.cpp does not store them.
LOCAL_ROPE_BASE = 10_000.0
SLIDING_WINDOW_PATTERN = 6
GEMMA_END_OF_TURN = "<end_of_turn>"
INSTRUCT_MARK = re.compile(r"(?:^|[\s\-_.])(?:it|instruct|chat)(?:$|[\s\-_.])")


def require_gguf() -> Any:
    """The `gguf` package, or a UsageError that names the pip command (it is an optional extra)."""
    try:
        import gguf
    except ImportError as exc:
        raise UsageError("importing a GGUF file needs the gguf package, which this installation lacks",
                         hint="pip install 'gemmacli[gguf]'   # or: pip install gguf") from exc
    return gguf


@dataclass
class GGUFModel:
    """An opened GGUF file (memory-mapped: tensors are read only when asked for)."""

    path: Path
    reader: Any
    tensors: dict[str, Any]
    #: the vocabulary, read once: 262,144 pieces, scores and types are three costly field reads
    _vocabulary: Vocabulary | None = dataclass_field(default=None, repr=False, compare=False)

    @classmethod
    def open(cls, path: Path) -> GGUFModel:
        gguf = require_gguf()
        try:
            reader = gguf.GGUFReader(str(path))
        except FileNotFoundError as exc:
            raise UsageError(f"{path}: no such file") from exc
        except (ValueError, OSError, KeyError, IndexError) as exc:
            raise ModelError(f"{path} is not a readable GGUF file: {exc}") from exc
        model = cls(path, reader, {t.name: t for t in reader.tensors})
        arch = model.field("general.architecture")
        if arch != ARCHITECTURE:
            raise UsageError(f"{path} holds a {arch or 'unknown'} model; gemmacli imports Gemma 3 text "
                             f"models (general.architecture {ARCHITECTURE})")
        if "token_embd.weight" not in model.tensors:
            raise ModelError(f"{path} has no token_embd.weight: not a complete Gemma 3 model")
        return model

    # ------------------------------------------------------------------------------------- metadata

    def field(self, key: str, default: Any = None) -> Any:
        found = self.reader.fields.get(key)
        if found is None:
            return default
        try:
            return found.contents()
        except (ValueError, IndexError):
            return default

    def arch(self, key: str, default: Any = None) -> Any:
        return self.field(f"{ARCHITECTURE}.{key}", default)

    def hf_config(self) -> dict[str, Any]:
        """The Hugging Face `Gemma3TextConfig` these weights correspond to (as a dict)."""
        layers = int(self.arch("block_count"))
        heads = int(self.arch("attention.head_count"))
        hidden = int(self.arch("embedding_length"))
        head_dim = int(self.arch("attention.key_length", hidden // heads))
        # llama.cpp: 27B scales queries by 1/sqrt(hidden/heads), every other size by 1/sqrt(head_dim)
        scalar = hidden // heads if layers == 62 else head_dim
        scaling_type = self.arch("rope.scaling.type")
        factor = self.arch("rope.scaling.factor")
        rope_scaling = ({"rope_type": "linear", "factor": float(factor)}
                        if scaling_type == "linear" and factor else None)
        vocab = self.vocabulary()
        return {
            "model_type": "gemma3_text",
            "architectures": ["Gemma3ForCausalLM"],
            "vocab_size": int(self.tensors["token_embd.weight"].shape[-1]),
            "hidden_size": hidden,
            "intermediate_size": int(self.arch("feed_forward_length")),
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": int(self.arch("attention.head_count_kv", heads)),
            "head_dim": head_dim,
            "query_pre_attn_scalar": scalar,
            "rms_norm_eps": float(self.arch("attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": float(self.arch("rope.freq_base", 1_000_000.0)),
            "rope_local_base_freq": LOCAL_ROPE_BASE,
            "rope_scaling": rope_scaling,
            "sliding_window": int(self.arch("attention.sliding_window", 512)),
            "layer_types": ["full_attention" if (i + 1) % SLIDING_WINDOW_PATTERN == 0
                            else "sliding_attention" for i in range(layers)],
            "max_position_embeddings": int(self.arch("context_length", 32768)),
            "hidden_activation": "gelu_pytorch_tanh",
            "attn_logit_softcapping": None,
            "final_logit_softcapping": None,
            "tie_word_embeddings": "output.weight" not in self.tensors,
            "bos_token_id": vocab.bos_id,
            "eos_token_id": vocab.eos_id,
            "pad_token_id": vocab.pad_id,
        }

    def vocabulary(self) -> Vocabulary:
        if self._vocabulary is None:
            self._vocabulary = self._read_vocabulary()
        return self._vocabulary

    def _read_vocabulary(self) -> Vocabulary:
        tokens = self.field("tokenizer.ggml.tokens")
        if not tokens or self.field("tokenizer.ggml.model") != "llama":
            raise ModelError(f"{self.path} carries no SentencePiece vocabulary (tokenizer.ggml.model llama)")
        pad = self.field("tokenizer.ggml.padding_token_id")
        return Vocabulary(
            pieces=tokens,
            scores=self.field("tokenizer.ggml.scores"),
            types=self.field("tokenizer.ggml.token_type"),
            bos_id=int(self.field("tokenizer.ggml.bos_token_id", 2)),
            eos_id=int(self.field("tokenizer.ggml.eos_token_id", 1)),
            unk_id=int(self.field("tokenizer.ggml.unknown_token_id", 3)),
            pad_id=None if pad is None else int(pad),
            add_bos=bool(self.field("tokenizer.ggml.add_bos_token", True)),
        )

    def kind(self) -> str:
        """"instruct" for an instruction-tuned model, else "base": from the GGUF's own name fields."""
        words = " ".join(str(self.field(k) or "") for k in ("general.finetune", "general.name",
                                                             "general.basename")).lower()
        words += " " + self.path.name.lower()
        # whole words only: "Gemma 3 Italian" and "…-items.gguf" are not instruction-tuned
        return "instruct" if INSTRUCT_MARK.search(words) else "base"

    # -------------------------------------------------------------------------------------- tensors

    def has(self, name: str) -> bool:
        return name in self.tensors

    def rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows [start, stop) of a tensor as float32 [rows, columns] (a Linear weight: [out, in])."""
        gguf = require_gguf()
        tensor = self.tensors.get(name)
        if tensor is None:
            raise ModelError(f"{self.path} has no tensor {name}")
        data = tensor.data
        if data.ndim == 1:
            data = data.reshape(1, -1)
        block = data[start:stop]
        values = gguf.quants.dequantize(np.asarray(block), tensor.tensor_type)
        return np.asarray(values, dtype=np.float32).reshape(block.shape[0], -1)

    def stored_bits(self, name: str) -> float:
        """Bits per weight in the file (Q4_K 4.5, Q5_0 5.5, Q6_K 6.56, Q8_0 8.5, F16 16, F32 32)."""
        gguf = require_gguf()
        block, size = gguf.GGML_QUANT_SIZES[self.tensors[name].tensor_type]
        return size * 8 / block

    def vector(self, name: str) -> np.ndarray:
        return self.rows(name).reshape(-1)

    def row_count(self, name: str) -> int:
        data = self.tensors[name].data
        return 1 if data.ndim == 1 else int(data.shape[0])

    def row_slices(self, name: str, rows_per_slice: int) -> Iterator[tuple[int, np.ndarray]]:
        total = self.row_count(name)
        for start in range(0, total, rows_per_slice):
            yield start, self.rows(name, start, min(total, start + rows_per_slice))

