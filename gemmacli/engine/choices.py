"""Small decisions of the decoding loop (gemmacli.engine.decoder), kept apart to keep that module short:
which probes mean free text, the best token the grammar accepts among the top few, whether a choice is one."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from gemmacli.engine.protocols import DecoderTokenizer, GrammarMatcher

#: The texts whose acceptance by the grammar means free text (see decoder.PROBES).
PROBES = ("e", "x", "Q", "7")


def _single_token_probes(tokenizer: DecoderTokenizer) -> list[int]:
    """The PROBES that are one token each: the grammar accepting them all means free text."""
    return [ids[0] for ids in (tokenizer.tokenize_str(text) for text in PROBES) if len(ids) == 1]


def _best_accepted(matcher: GrammarMatcher, logits: np.ndarray, candidates: int) -> int | None:
    """The best-scored of the `candidates` top tokens that the grammar accepts next, or None. The same
    token greedy picks from the masked logits: every better-scored token is refused (ties: lowest id)."""
    best = int(np.argmax(logits))  # the lowest id of the top score: usually accepted, and then the answer
    if matcher.validate_tokens([best]) == 1:
        return best
    ranked = np.argpartition(-logits, candidates)
    top = ranked[:candidates]
    order = top[np.lexsort((top, -logits[top]))]  # best first; among equal scores the lowest id
    if logits[order[-1]] == logits[ranked[candidates]]:
        return None  # a tie at the cut: a token outside the candidates could rank before one inside
    for token in order.tolist():
        if matcher.validate_tokens([token]) == 1:
            return int(token)
    return None


def _one_text(ids: np.ndarray, tokenizer: DecoderTokenizer, most: int = 8) -> bool:
    """Whether the allowed tokens all spell the same text, only cut differently (`"` or `",` when the
    grammar forces `","`): picking one is no choice of the model's, so the repetition guard does not count
    it (a schema that forces a repetition is not a loop). Only small sets are looked at."""
    if ids.size > most:
        return False
    pieces = sorted((bytes(tokenizer.decode_bytes([int(t)])) for t in ids.tolist()), key=len)
    return all(longer.startswith(shorter) for shorter, longer in itertools.pairwise(pieces))
