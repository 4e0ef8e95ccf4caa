"""What the decoding loop (gemmacli.engine.decoder) needs from the model, from llguidance's matcher and from
its tokenizer, as Protocols: runtime.Model, a lockstep.StreamModel and the tests' fakes all fit them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

#: The model's KV cache: opaque to the decoder, which only hands it back to `DecoderModel.forward`.
Cache = Any


class DecoderModel(Protocol):
    """What the loop needs from the model (gemmacli.engine.runtime.Model). It may also have a `config` whose
    `vocab_size` says how many lm_head rows it has, when fewer than the tokenizer's ids."""

    def forward(self, cache: Cache, token_ids: Sequence[int]) -> np.ndarray:
        """Run the decoder over `token_ids` (appending to `cache`); the last position's hidden state."""
        ...

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """The full lm_head: one logit per row."""
        ...

    def logits_for(self, hidden: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
        """Only the rows `token_ids` of the lm_head, aligned with them."""
        ...


class GrammarMatcher(Protocol):
    """What the loop needs from llguidance's LLMatcher (and gemmacli.engine.loops.lead_out from it)."""

    def is_error(self) -> bool: ...

    def get_error(self) -> str: ...

    def is_stopped(self) -> bool: ...

    def is_accepting(self) -> bool: ...

    def stop_reason(self) -> str: ...

    def compute_ff_tokens(self) -> list[int]: ...

    def consume_token(self, sampled_token: int) -> bool: ...

    def consume_tokens(self, sampled_tokens: list[int]) -> bool: ...

    def validate_tokens(self, tokens: list[int]) -> int: ...

    def rollback(self, num_tokens: int) -> bool: ...

    def unsafe_compute_mask_ptr(self, trg_pointer: int, trg_byte_size: int) -> None: ...


class DecoderTokenizer(Protocol):
    """What the loop needs from llguidance's LLTokenizer: the grammar's vocabulary, its ends, its bytes."""

    @property
    def eos_tokens(self) -> Sequence[int]: ...

    @property
    def vocab_size(self) -> int: ...

    def tokenize_str(self, text: str) -> list[int]: ...

    def decode_bytes(self, tokens: list[int]) -> bytes: ...


def can_rewind_runs(model: Any) -> bool:
    """Whether the model can run several tokens keeping every position and then take some back
    (runtime.Model's forward_all, can_rewind and rewind): what speculation and the likelihood choice need."""
    return all(callable(getattr(model, name, None)) for name in ("forward_all", "can_rewind", "rewind"))
