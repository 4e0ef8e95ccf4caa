"""The KV cache of one sequence (KVCache) and the IOBinding that keeps its buffers bound step after step
(_CacheBinding): what gemmacli.engine.runtime.Model.forward writes into, kept apart from the Model itself."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort


@dataclass
class KVCache:
    """The KV cache of one sequence: one preallocated buffer per past input, and how many tokens it holds.

    With a GroupQueryAttention graph, forward() binds each buffer as both the past input and the present
    output, so the op appends in place (past_present_share_buffer) and no step copies the cache. Buffers
    of window layers have the graph's static row count; the others grow by doubling.
    """

    values: dict[str, Any] = field(default_factory=dict)  # numpy buffers (shared) or OrtValues (copying)
    length: int = 0
    growable: frozenset[str] = frozenset()
    # forward()'s IOBinding with these buffers bound (shared mode), kept across steps; None: bind afresh.
    bound: _CacheBinding | None = field(default=None, repr=False, compare=False)
    # After forward_all: (length before it, the window rows it evicted, by buffer) for Model.rewind.
    undo: tuple[int, dict[str, np.ndarray]] | None = field(default=None, repr=False, compare=False)

    def copy(self) -> KVCache:
        """A snapshot: forward() writes shared buffers in place, so a snapshot owns copies of them."""
        values = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in self.values.items()}
        return KVCache(values, self.length, self.growable)

    def reserve(self, total: int) -> None:
        """Make every growable buffer hold at least `total` rows (keeps rows [0, length))."""
        for name in self.growable:
            buf = self.values[name]
            if buf.shape[2] < total:
                rows = max(2 * buf.shape[2], 256)
                while rows <= total:  # headroom: a prefill is followed by decode steps
                    rows *= 2
                grown = np.zeros((*buf.shape[:2], rows, buf.shape[3]), dtype=buf.dtype)
                grown[:, :, : self.length] = buf[:, :, : self.length]
                self.values[name] = grown
                self.bound = None  # the binding holds the old buffer


class _CacheBinding:
    """One decoder IOBinding per cache, reused step after step: every past input and its present output
    bound once to the cache's buffer; per step only input_ids (a one-token step writes its id into a bound
    array), attention_mask and the hidden output are (re)bound."""

    __slots__ = ("binding", "buffers", "one_id", "one_id_bound", "one_id_value", "wide")

    def __init__(self, session: ort.InferenceSession, cache: KVCache,
                 past_for_present: Mapping[str, str]) -> None:
        self.binding = session.io_binding()
        self.buffers = {}  # OrtValues over the cache's numpy buffers, alive as long as the binding
        for present, past in past_for_present.items():
            value = ort.OrtValue.ortvalue_from_numpy(cache.values[past])
            self.buffers[past] = value
            self.binding.bind_ortvalue_input(past, value)
            self.binding.bind_ortvalue_output(present, value)
        self.one_id = np.zeros((1, 1), dtype=np.int64)
        self.one_id_value = ort.OrtValue.ortvalue_from_numpy(self.one_id)
        self.one_id_bound = False
        self.wide: _CacheBinding | None = None  # forward_all's binding (every position's hidden state out)
