"""Model runtime: one onnxruntime session for the decoder graph, one for the lm_head.

CONTRACT (the decoder codes against exactly this; the model-pipeline issue implements it):

A model folder holds (see gemmacli/store.py and onnx_models/README.md):
  model.onnx (+ model.onnx.data)   decoder graph: token ids + KV cache in, final-normed hidden state of the
                                   LAST new position out (no lm_head inside), plus the new KV cache.
  lm_head.onnx (+ .data)           hidden [1, H] -> logits [1, V] (INT4 MatMulNBits of the tied embedding).
  tokenizer.json, gemmacli.json (ModelConfig fields), manifest.json (hashes, source, quantization).

class Model:
    config: ModelConfig
    tokenizer: tokenizers.Tokenizer
    folder: Path
    manifest: dict

    @classmethod
    def load(cls, ref: str | Path, *, threads: int | None = None) -> Model
        ref is a model name (resolved by gemmacli.store.resolve_model) or a folder path.
        Raises gemmacli.errors.ModelError (exit 4) for missing/broken models.

    def new_cache(self) -> KVCache            empty cache for one sequence
    def forward(self, cache: KVCache, token_ids: Sequence[int]) -> np.ndarray
        Feed 1..n new tokens in ONE session run (prefill and forced tokens alike); advances `cache`
        in place; returns the final hidden state of the last new position, float32 shape [H].
    def logits(self, hidden: np.ndarray) -> np.ndarray
        Full lm_head: float32 [V].
    def logits_for(self, hidden: np.ndarray, token_ids: np.ndarray) -> np.ndarray
        Logits of only `token_ids` (int array), float32 [len(token_ids)], equal (to float rounding)
        to logits(hidden)[token_ids]; cheap when the set is small (gathers INT4 rows).

KVCache.length -> int is the number of tokens already in the cache.
"""

from __future__ import annotations
