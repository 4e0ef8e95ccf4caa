"""Closed choices decided by likelihood: an enum's value as the model's most probable whole value, not
its most probable first token.

Greedy decoding picks a value's first token and lets the grammar finish it; an intent such as
`card_payment_wrong_exchange_rate` is then chosen by `card` alone. Here, where the output starts the value
of a property whose allowed values the schema lists (gemmacli.schema.choices), each listed value the
grammar accepts at this point is scored by the model's total log-probability of its tokens (the canonical
tokenization of the text still to write, closing quote included: that the value ENDS is part of it), over
the full vocabulary at every position, and the best one is written. Ties go to the earlier value in the
schema. Deterministic, greedy mode only.

Cost: a best-first search over the candidates' tokens (`best_candidate`); each prefix it looks past is one
forward run from a rewound cache and one lm_head row, and it stops at the first whole value, which is
exactly the best one.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gemmacli.engine.protocols import can_rewind_runs


@dataclass(frozen=True)
class Candidate:
    text: str  # the whole value's JSON text
    tokens: tuple[int, ...]  # the canonical tokens of what is still to write


class LikelyChoice:
    """The closed-choice values by property name, tokenized lazily, and the scoring of them."""

    def __init__(self, values: Mapping[str, Sequence[str]], tokenizer: Any) -> None:
        self.values = values
        self.tokenizer = tokenizer
        self._tokens: dict[tuple[str, bytes], list[Candidate]] = {}

    def candidates(self, key: str, written: bytes, accepts: Callable[[list[int]], bool]) -> list[Candidate]:
        """The listed values of `key` that start with what is `written` of the value, whose rest the grammar
        `accepts` whole. Fewer than two: nothing to choose by likelihood."""
        if key not in self.values:
            return []
        return [c for c in self._for(key, written) if accepts(list(c.tokens))]

    def _for(self, key: str, written: bytes) -> list[Candidate]:
        """Every listed value of `key` that continues `written`, with the tokens of its rest (cached)."""
        cached = self._tokens.get((key, written))
        if cached is None:
            cached = []
            for text in self.values[key]:
                whole = text.encode("utf-8")
                if whole.startswith(written) and len(whole) > len(written):
                    rest = whole[len(written):].decode("utf-8", errors="strict")
                    cached.append(Candidate(text, tuple(self.tokenizer.tokenize_str(rest))))
            self._tokens[(key, written)] = cached
        return cached


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Log-probabilities over the last axis."""
    top = logits.max(axis=-1, keepdims=True)
    return logits - top - np.log(np.exp(logits - top).sum(axis=-1, keepdims=True))


def can_score(model: Any, cache: Any, longest: int) -> bool:
    """Whether the model can run a candidate and take it back (runtime.Model's forward_all and rewind)."""
    return can_rewind_runs(model) and bool(model.can_rewind(cache, longest))


def best_candidate(model: Any, cache: Any, hidden: np.ndarray,
                   candidates: Sequence[Candidate]) -> tuple[Candidate, int]:
    """(the candidate with the highest total log-probability, the model runs that took). `hidden` is the
    model's state at the value's next position; the cache holds everything before it and is left as it was.

    Best-first over the candidates' token trie: a log-probability only falls as a value grows, so the
    first whole value taken off the queue beats every other, and a value whose start is already less
    likely than it is never run. Each token's probability is the model's own, among the whole vocabulary.
    (Weighing it only among the tokens that go on with some candidate, which is cheaper, scored like greedy
    on the shared dev sets: bench/README.md.)
    """
    trie = _Trie(candidates)
    states = _States(model, cache, hidden)
    queue: list[tuple[float, int, tuple[int, ...]]] = [(0.0, 0, ())]
    while queue:
        cost, _, prefix = heapq.heappop(queue)
        if prefix in trie.whole:
            return candidates[trie.whole[prefix]], states.runs
        nexts = trie.nexts[prefix]
        for (token, first), lp in zip(nexts, states.logprobs(prefix, [t for t, _ in nexts]), strict=True):
            heapq.heappush(queue, (cost - float(lp), first, (*prefix, token)))
    raise AssertionError("a trie of candidates always holds a whole value")


class _Trie:
    """The candidates' token sequences as a trie: `nexts[prefix]`, each token that goes on from `prefix`
    with the first candidate (in schema order) under it; `whole[tokens]`, the candidate they spell."""

    def __init__(self, candidates: Sequence[Candidate]) -> None:
        nexts: dict[tuple[int, ...], dict[int, int]] = {}
        self.whole: dict[tuple[int, ...], int] = {}
        for index, candidate in enumerate(candidates):
            tokens = candidate.tokens
            self.whole.setdefault(tokens, index)
            for depth in range(len(tokens)):
                nexts.setdefault(tokens[:depth], {}).setdefault(tokens[depth], index)
        self.nexts = {prefix: sorted(ways.items(), key=lambda kv: kv[1]) for prefix, ways in nexts.items()}


class _States:
    """The model's hidden state after each prefix a search asks about: one forward run a prefix (every
    position of it kept), the cache rewound after each."""

    def __init__(self, model: Any, cache: Any, hidden: np.ndarray) -> None:
        self.model, self.cache = model, cache
        self.hidden: dict[tuple[int, ...], np.ndarray] = {(): np.asarray(hidden, dtype=np.float32)}
        self.runs = 0

    def logprobs(self, prefix: tuple[int, ...], tokens: list[int]) -> np.ndarray:
        """The log-probabilities of `tokens` right after `prefix`, among the whole vocabulary."""
        logits = np.asarray(self.model.logits(self._after(prefix)), dtype=np.float64)
        return log_softmax(logits)[tokens]

    def _after(self, prefix: tuple[int, ...]) -> np.ndarray:
        if prefix not in self.hidden:
            length = self.cache.length
            rows = self.model.forward_all(self.cache, list(prefix))
            self.model.rewind(self.cache, length)
            self.runs += 1
            for depth in range(1, len(prefix) + 1):
                self.hidden[prefix[:depth]] = rows[depth - 1]
        return self.hidden[prefix]
