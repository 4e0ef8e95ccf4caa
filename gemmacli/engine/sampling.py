"""Choosing one token among the allowed ones: greedy (the default: deterministic, byte-identical runs), or
temperature and top-p sampling with a seed. The decoder hands over only the allowed ids with their logits,
so a sampler can never pick what the grammar forbids.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gemmacli.engine.decoder import DecodeOptions


class Sampler:
    """Greedy or temperature/top-p sampling over the allowed tokens only (ids ascending, logits aligned)."""

    def __init__(self, options: DecodeOptions) -> None:
        self.temperature = float(options.temperature)
        self.top_p = float(options.top_p)
        self.rng = np.random.default_rng(options.seed)

    def choose(self, ids: np.ndarray, logits: np.ndarray) -> int:
        if self.temperature <= 0.0:
            return int(ids[int(np.argmax(logits))])  # ties -> lowest token id, whichever head computed it
        scaled = logits.astype(np.float64) / self.temperature
        scaled -= scaled.max()
        probs = np.exp(scaled)
        probs /= probs.sum()
        if self.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cumulative, self.top_p) + 1)]
            kept = np.zeros_like(probs)
            kept[keep] = probs[keep]
            probs = kept / kept.sum()
        return int(ids[int(self.rng.choice(len(ids), p=probs))])
