"""Prompt-lookup speculation: draft the next tokens from the input, verify them in the same forward run.

Why: extraction copies spans of its input, so once the output has started a span, its next tokens are
usually the tokens that followed the same few tokens in the prompt. Each decoder run costs about the same for
one token as for eight (the weights are read once either way), so feeding a draft with the queued tokens and
keeping every position's hidden state (`Model.forward_all`) turns several steps into one run.

How it stays greedy: the draft is only a guess of which tokens the decoder will queue next. The decoder
still makes every choice itself, step by step, from the hidden state of the position it is at; when the
tokens it queued are the draft's next ones, that hidden state is already there (no run). At the first token
that differs, the cache is rewound to the last matching position and decoding goes on from it. The
grammar cuts a draft before the first token it refuses, so drafts into structure that cannot follow are
never paid for.

What can differ: onnxruntime's floats depend on how positions are grouped into runs (a position computed in
a run of several tokens is not bit-equal to the same position computed alone), so where a greedy choice is
a near tie a speculative run may choose differently from a plain one: off by default for that
(ExtractionConfig.speculate). tests/test_speculate.py checks byte-identity on the test models;
bench/bench_speculate.py counts differences on the shared dev sets (bench/README.md has the findings).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from gemmacli.engine.protocols import can_rewind_runs

#: Most draft tokens fed with one run. A run of 1 + 8 tokens cost ~1.3x a run of one here (270m, 2 cores).
DRAFT_TOKENS = 8
#: Longest and shortest suffix of the output looked up in the prompt. One token alone (`"`, `,`) matches
#: everywhere and mostly drafts the wrong continuation.
NGRAM_MAX = 4
NGRAM_MIN = 2


class SpeculativeModel(Protocol):
    """What speculation needs beyond gemmacli.engine.decoder.DecoderModel (gemmacli.engine.runtime.Model)."""

    def forward(self, cache: Any, token_ids: Sequence[int]) -> np.ndarray: ...

    def forward_all(self, cache: Any, token_ids: Sequence[int]) -> np.ndarray: ...

    def can_rewind(self, cache: Any, adding: int) -> bool: ...

    def rewind(self, cache: Any, length: int) -> None: ...


class Drafter:
    """Where each n-gram of the prompt and output last ended, to propose what followed it."""

    def __init__(self, context: Sequence[int], *, most: int = DRAFT_TOKENS, ngram_max: int = NGRAM_MAX,
                 ngram_min: int = NGRAM_MIN) -> None:
        self.most, self.ngram_max, self.ngram_min = most, ngram_max, ngram_min
        self.history: list[int] = []
        self.ends: dict[tuple[int, ...], int] = {}  # n-gram -> index just past its latest occurrence
        self.extend(context)
        self.context = len(self.history)

    def extend(self, tokens: Sequence[int]) -> None:
        """Append tokens. The n-grams ending at the newest token are indexed only when the next arrives,
        so that a lookup never finds the suffix it is looking for as its own match."""
        for token in tokens:
            end = len(self.history)
            for n in range(self.ngram_min, self.ngram_max + 1):
                if end >= n:
                    self.ends[tuple(self.history[end - n:end])] = end
            self.history.append(int(token))

    def sync(self, out: Sequence[int]) -> None:
        """Catch up with the decoder's output (history = context + output)."""
        seen = len(self.history) - self.context
        if len(out) > seen:
            self.extend(out[seen:])

    def propose(self) -> list[int]:
        """The tokens that followed the latest earlier occurrence of the longest matching suffix."""
        history = self.history
        for n in range(self.ngram_max, self.ngram_min - 1, -1):
            if len(history) < n:
                continue
            end = self.ends.get(tuple(history[-n:]))
            if end is not None:
                return history[end:end + self.most]
        return []


class Speculation:
    """The draft fed ahead of the decoder and the hidden states of its positions; counts for the report."""

    def __init__(self, model: SpeculativeModel, cache: Any, context: Sequence[int], *,
                 most: int = DRAFT_TOKENS) -> None:
        self.model, self.cache = model, cache
        self.drafter = Drafter(context, most=most)
        self.draft: list[int] = []  # fed to the model, not yet matched by the decoder's queue
        self.rows: np.ndarray | None = None  # hidden state after each draft token
        self.row_logits: np.ndarray | None = None  # their full logits, once computed (full_logits)
        self.current: np.ndarray | None = None  # the hidden state handed out last, and its full logits
        self.current_logits: np.ndarray | None = None
        self.drafted = self.accepted = self.runs = 0  # draft tokens fed, matched; speculative runs

    def next_hidden(self, queued: list[int], out: Sequence[int],
                    allowed: Callable[[list[int]], int]) -> tuple[np.ndarray, int]:
        """(the hidden state after the decoder's `queued` tokens, how many model runs that took: 0 when
        they were all draft tokens already run). `out` is the output so far (it ends with `queued`, except
        for a prompt fed by the decoder itself); `allowed` is the grammar's validate_tokens after it."""
        hidden, rest = self._take(queued)
        if hidden is not None:
            return hidden, 0
        self.drafter.sync(out)
        draft = self.drafter.propose()
        draft = draft[:allowed(draft)] if draft else draft
        if not draft or not self.model.can_rewind(self.cache, len(rest) + len(draft)):
            return self._remember(self.model.forward(self.cache, rest)), 1
        rows = self.model.forward_all(self.cache, [*rest, *draft])
        self.runs += 1
        self.drafted += len(draft)
        self.draft, self.rows = draft, rows[len(rest):]
        return self._remember(rows[len(rest) - 1]), 1

    def full_logits(self, hidden: np.ndarray, head: Callable[[np.ndarray], np.ndarray]) -> np.ndarray | None:
        """The full lm_head for `hidden` when it is the latest state handed out: computed together with the
        draft rows after it in one lm_head run (`head`, [n, H] -> [n, V]; row for row the same logits), so
        the accepted draft positions need no run of their own. None: not a state this object handed out."""
        if hidden is not self.current:
            return None
        if self.current_logits is None:
            stacked = hidden.reshape(1, -1) if self.rows is None else np.vstack([hidden, self.rows])
            logits = head(stacked)
            self.current_logits, self.row_logits = logits[0], logits[1:] if self.rows is not None else None
        return self.current_logits

    def _remember(self, hidden: np.ndarray) -> np.ndarray:
        self.current, self.current_logits = hidden, None
        return hidden

    def _take(self, queued: list[int]) -> tuple[np.ndarray | None, list[int]]:
        """Match the tokens the decoder queued since the last run against the draft fed with it.

        (hidden state after the last queued token, []) when they are all draft tokens already in the cache;
        else (None, the tokens still to feed), the cache rewound past the first draft token that differs."""
        draft, rows, row_logits = self.draft, self.rows, self.row_logits
        matched = 0
        while matched < min(len(queued), len(draft)) and queued[matched] == draft[matched]:
            matched += 1
        self.accepted += matched
        if rows is not None and matched == len(queued) and matched > 0:
            self.draft, self.rows = draft[matched:], rows[matched:]
            self._remember(rows[matched - 1])
            if row_logits is not None:
                self.current_logits, self.row_logits = row_logits[matched - 1], row_logits[matched:]
            return self.current, []
        if len(draft) > matched:
            self.model.rewind(self.cache, self.cache.length - (len(draft) - matched))
        self.draft, self.rows, self.row_logits = [], None, None
        return None, queued[matched:]


def speculation_for(model: Any, cache: Any, most: int, context: Sequence[int]) -> Speculation | None:
    """A Speculation when it is on (`most` > 0) and the model can verify drafts (forward_all, rewind)."""
    if most <= 0 or not can_rewind_runs(model):
        return None
    return Speculation(model, cache, context, most=most)
