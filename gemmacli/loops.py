"""The repetition guard: how the decoder gets a small model out of a loop without breaking the grammar.

A small model can fall into a loop (`statusstatusstatus…`, `5555…`) that would burn the whole token
budget and end in a failure. `RepeatGuard` notices one: the last tokens repeat one pattern of at most
MAX_PERIOD tokens at least three times over at least SPAN tokens, or the last WINDOW tokens use at most
DISTINCT different tokens (a loop with variations: `ouvelistriouvelistrimentmiment…`). At such a step
`lead_out` narrows the choice, in this order, to:
1. the allowed tokens that end the value (in a string: hold a `"`; else a `}`, `]` or `,`) and are not
   part of the loop: the best-scored of them is taken;
2. one of the LOOKAHEAD best-scored tokens after which such a token is allowed (`21:55:55.5555` needs `Z`);
3. the shortest text the schema's own patterns and formats allow from here (`pbj:a:a::a:0-0-0` for a
   pattern `^pbj:…`, gemmacli.sizing), checked token by token with the grammar before it is taken;
4. any allowed token the loop has not used.
Every step only narrows what the grammar allows, so the output still validates; every step is
deterministic, so greedy output stays byte-identical from one run to the next. The decoder reports each
intervention (DecodeResult.repeats) and the CLI prints it: a value ended this way is the model's
degenerate output cut short, and the user should know.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Data has runs like `[0,0,0,…]` or `"0000"`; 48 tokens of one exact pattern is a model stuck, not a value.
#: Nor is a 64-token stretch made of 8 different tokens (a 16-item array of one enum value would be).
SPAN = 48
MAX_PERIOD = 64
WINDOW = 64
DISTINCT = 8
LOOKAHEAD = 64
_CLOSERS: dict[int, tuple[Any, np.ndarray, np.ndarray]] = {}
def closing_tokens(tokenizer: Any, in_string: bool) -> np.ndarray:
    """Boolean table over the vocabulary: does the token end a string (an unescaped `"`), or, outside
    strings, a number or container (`}`, `]`, `,`)? Built once per tokenizer (~40 ms at 262k tokens)."""
    cached = _CLOSERS.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:
        pieces = [tokenizer.decode_bytes([i]) for i in range(int(tokenizer.vocab_size))]
        strings = np.array([b'"' in piece and b'\\"' not in piece for piece in pieces], dtype=bool)
        others = np.array([any(c in piece for c in (b"}", b"]", b",")) for piece in pieces], dtype=bool)
        cached = _CLOSERS[id(tokenizer)] = (tokenizer, strings, others)
    return cached[1] if in_string else cached[2]


@dataclass
class Loop:
    """The loop the output is in: its tokens (for the message) and the tokens that would go on with it."""

    unit: list[int]
    times: int
    avoid: set[int]
    in_string: bool

    def describe(self, tokenizer: Any) -> str:
        unit = tokenizer.decode_bytes(self.unit).decode("utf-8", errors="replace")
        unit = unit if len(unit) <= 40 else unit[:40] + "…"
        return f"the model repeated {unit!r} {self.times} times" if self.times else \
            f"the model went round in circles ({unit!r}…)"


class RepeatGuard:
    """Tracks, for every period p, how many trailing tokens equal the token p places before them, and
    whether the output is inside a JSON string now (a two-state lexer over the token bytes)."""

    def __init__(self, tokenizer: Any, max_period: int = MAX_PERIOD, span: int = SPAN, window: int = WINDOW,
                 distinct: int = DISTINCT) -> None:
        self.span, self.window, self.distinct = span, window, distinct
        self.periods = np.arange(1, max_period + 1)
        self.runs = np.zeros(max_period, dtype=np.int64)
        self.tokens: list[int] = []
        self.tokenizer = tokenizer
        self.in_string = False
        self._escaped = False

    def push(self, token: int) -> None:
        for byte in self.tokenizer.decode_bytes([token]):
            if self._escaped:
                self._escaped = False
            elif self.in_string and byte == 0x5C:  # backslash
                self._escaped = True
            elif byte == 0x22:  # quote
                self.in_string = not self.in_string
        history = self.tokens
        n = len(history)
        back = np.array([history[n - p] if p <= n else -1 for p in self.periods.tolist()])
        self.runs = np.where(back == token, self.runs + 1, 0)
        history.append(token)

    def loop(self) -> Loop | None:
        """The loop the output is in now, if any."""
        hits = (self.runs >= 2 * self.periods) & (self.runs + self.periods >= self.span)
        if hits.any():
            period = int(self.periods[int(np.argmax(hits))])
            times = (int(self.runs[period - 1]) + period) // period
            return Loop(self.tokens[-period:], times, {self.tokens[-period]}, self.in_string)
        recent = self.tokens[-self.window:]
        if len(recent) == self.window and len(set(recent)) <= self.distinct:
            return Loop(recent[-16:], 0, set(recent), self.in_string)
        return None


@dataclass
class LeadOut:
    """What a loop step may choose from (ids ascending, logits aligned), or a text to force."""

    ids: np.ndarray
    logits: np.ndarray
    note: str
    forced: list[int] | None = None


def lead_out(ids: np.ndarray, logits: np.ndarray, loop: Loop, tokenizer: Any, matcher: Any, scratch: Any,
             hints: Iterable[str]) -> LeadOut:
    """The choice at a loop step (module doc, steps 1-4). `scratch` is a spare grammar.Mask."""
    note = loop.describe(tokenizer) + "; "
    closers = closing_tokens(tokenizer, loop.in_string)
    avoid = np.array(sorted(loop.avoid), dtype=ids.dtype)
    ending = closers[ids] & ~np.isin(ids, avoid)
    if ending.any():
        return LeadOut(ids[ending], logits[ending], note + "the value was ended there")
    for index in np.argsort(-logits, kind="stable")[:LOOKAHEAD].tolist():
        token = int(ids[index])
        if token in loop.avoid or not matcher.consume_token(token):
            continue
        scratch.fill(matcher)
        matcher.rollback(1)
        if closers[scratch.allowed()].any():
            chosen = slice(index, index + 1)
            return LeadOut(ids[chosen], logits[chosen], note + "the value was led to its end")
    completion = _shortest_completion(matcher, tokenizer, closers, hints)
    if completion:
        text = tokenizer.decode_bytes(completion).decode("utf-8", errors="replace")
        return LeadOut(ids, logits, note + f"the value was completed with {text!r}", forced=completion)
    keep = ~np.isin(ids, avoid)
    if keep.any():
        return LeadOut(ids[keep], logits[keep], note + "the pattern was broken there")
    return LeadOut(ids, logits, note + "the grammar allowed nothing else")


def _shortest_completion(matcher: Any, tokenizer: Any, closers: np.ndarray,
                         hints: Iterable[str]) -> list[int]:
    """The fewest tokens, from a suffix of a hint, that the grammar takes and after which a closer fits."""
    closing_ids = [int(t) for t in np.flatnonzero(closers)[:256]]
    best: list[int] = []
    for hint in hints:
        for start in range(len(hint), -1, -1):
            tokens = [int(t) for t in tokenizer.tokenize_str(hint[start:])] if start < len(hint) else []
            if not tokens or (best and len(tokens) >= len(best)):
                continue
            if matcher.validate_tokens(tokens) != len(tokens):
                continue
            if any(matcher.validate_tokens([*tokens, c]) == len(tokens) + 1 for c in closing_ids):
                best = tokens
    return best
