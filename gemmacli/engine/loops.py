"""The repetition guard: how the decoder gets a small model out of a loop without breaking the grammar.

A small model can fall into a loop (`statusstatusstatus…`, `5555…`) that would burn the whole token
budget and end in a failure. `RepeatGuard` notices one: the last tokens repeat one pattern of at most
MAX_PERIOD tokens at least three times over at least SPAN tokens, or the last WINDOW tokens use at most
DISTINCT different tokens (a loop with variations: `ouvelistriouvelistrimentmiment…`). At such a step
`lead_out` narrows the choice, in this order, to:
1. the allowed tokens that end the value (in a string: hold a `"`; else a `}` or `]`, or failing those
   a `,`) and are not part of the loop: the best-scored of them is taken;
2. one of the LOOKAHEAD best-scored tokens after which such a token is allowed (`21:55:55.5555` needs `Z`);
3. the shortest text the schema's own patterns and formats allow from here (`pbj:a:a::a:0-0-0` for a
   pattern `^pbj:…`, gemmacli.schema.sizing), checked token by token with the grammar before it is taken;
4. any allowed token the loop has not used.
A loop of whole members (`"k":"v","k":"v",…`) is ended by closing its object or array instead: each
string it is in is ended, then the container, as soon as the grammar allows.
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
    """Over the vocabulary, how well each token ends a value: in a string, 1 for an unescaped `"`;
    outside, 2 for `}` or `]` (ends a container), 1 for `,` (ends a number, but goes on with the
    container: an object that keeps adding keys loops through it). 0: it does not. Built once per
    tokenizer (~40 ms at 262k tokens)."""
    cached = _CLOSERS.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:
        pieces = [tokenizer.decode_bytes([i]) for i in range(int(tokenizer.vocab_size))]
        strings = np.array([b'"' in piece and b'\\"' not in piece for piece in pieces], dtype=np.int8)
        others = np.array([2 if (b"}" in piece or b"]" in piece) else 1 if b"," in piece else 0
                           for piece in pieces], dtype=np.int8)
        cached = _CLOSERS[id(tokenizer)] = (tokenizer, strings, others)
    return cached[1] if in_string else cached[2]


class JsonLexer:
    """Where the output is in the JSON: inside a string or not, and how deep in containers. Fed the bytes
    of each token; `last` says whether the latest token ended a value and whether it held structure;
    `array_items` lists the strings that ended as items of an array in the latest token (with its depth).
    `choice_point` says which property's value is being written and how much of it (the likelihood
    choice, gemmacli.engine.likely, reads it)."""

    def __init__(self) -> None:
        self.in_string = False
        self.depth = 0
        self._escaped = False
        self.last = (False, False)  # (ended a value, held JSON structure: a quote, , : { } [ ])
        self._containers: list[int] = []  # the open containers' opening bytes
        self._keys: list[str | None] = []  # per open container: an object's latest key
        self._string = bytearray()
        self.array_items: list[tuple[int, bytes]] = []
        self._awaiting_value = False  # after `:`, `[` or an array's `,`: the next bytes start a value
        self._value: bytearray | None = None  # the scalar value being written, from its first byte
        self._key = ""  # the latest object key, until its `:`

    def feed(self, data: bytes) -> None:
        ended = structure = False
        self.array_items = []
        for byte in data:
            if self._value is not None and (self.in_string or byte not in b",}] \t\n\r"):
                self._value.append(byte)
            if self._escaped:
                self._escaped = False
                self._string.append(byte)
            elif self.in_string and byte == 0x5C:  # backslash
                self._escaped = True
                self._string.append(byte)
            elif byte == 0x22:  # quote
                ended = ended or self.in_string
                self._quote()
                structure = True
            elif self.in_string:
                self._string.append(byte)
            elif byte in b"{[":
                self.depth += 1
                self._containers.append(byte)
                self._keys.append(None)
                self._awaiting_value = byte == 0x5B
                self._value = None
                structure = True
            elif byte in b",}]:":
                ended = ended or byte != 0x3A
                self._punctuation(byte)
                structure = True
            elif byte not in b" \t\n\r" and self._awaiting_value:  # a literal: true, false, null, a number
                self._awaiting_value = False
                self._value = bytearray([byte])
        self.last = (ended, structure)

    def _quote(self) -> None:
        """A quote opens or closes a string: a value's or an object key's."""
        if self.in_string:
            if self._containers[-1:] == [0x5B]:
                self.array_items.append((self.depth, bytes(self._string)))
            if self._value is None:  # a string that is no value: an object key
                self._key = self._string.decode("utf-8", errors="replace")
            self._value = None
        else:
            self._value = bytearray(b'"') if self._awaiting_value else None
            self._awaiting_value = False
        self.in_string = not self.in_string
        self._string.clear()

    def _punctuation(self, byte: int) -> None:
        """`,` `:` `}` `]` outside strings: a value ends, a key is named, a container closes."""
        self._value = None
        if byte == 0x3A and self._keys:
            self._keys[-1] = self._key
        if byte in b"}]":
            self.depth -= 1
            del self._containers[-1:]
            del self._keys[-1:]
        self._awaiting_value = byte == 0x3A or (byte == 0x2C and self._containers[-1:] == [0x5B])

    def choice_point(self) -> tuple[str, bytes] | None:
        """(the property, the bytes of its value written so far) while a value of a property (or an item of
        a property's array) is being started or written and has not ended yet; else None."""
        if not self._awaiting_value and self._value is None:
            return None
        keys = self._keys[-1:] if self._containers[-1:] == [0x7B] else self._keys[-2:-1]
        if not keys or keys[0] is None:
            return None
        return keys[0], bytes(self._value or b"")


@dataclass
class Loop:
    """The loop the output is in: its tokens (for the message) and the tokens that would go on with it.

    A loop whose unit holds JSON structure (`"k":"v",` again and again: an open object adding keys)
    spans whole members; ending one string inside it changes nothing, so the guard closes the container
    it lives in (`closing`: until the output is back above `depth`)."""

    unit: list[int]
    times: int
    avoid: set[int]
    in_string: bool
    structural: bool = False
    closing: bool = False  # a later step of closing a container (already reported)

    def describe(self, tokenizer: Any) -> str:
        unit = tokenizer.decode_bytes(self.unit).decode("utf-8", errors="replace")
        unit = unit if len(unit) <= 40 else unit[:40] + "…"
        return f"the model repeated {unit!r} {self.times} times" if self.times else \
            f"the model went round in circles ({unit!r}…)"


#: Model-chosen tokens a repetition needs before it counts as a loop (one per repetition, three repetitions).
MIN_CHOSEN = 3


class RepeatGuard:
    """Tracks, for every period p, how many trailing tokens equal the token p places before them; reads
    where the output is in the JSON from `position`, which the caller feeds each token before push()."""

    def __init__(self, tokenizer: Any, position: JsonLexer | None = None, max_period: int = MAX_PERIOD,
                 span: int = SPAN, window: int = WINDOW, distinct: int = DISTINCT) -> None:
        self.span, self.window, self.distinct = span, window, distinct
        self.periods = np.arange(1, max_period + 1)
        self.runs = np.zeros(max_period, dtype=np.int64)
        self.tokens: list[int] = []
        self.tokenizer = tokenizer
        self._own_position = position is None  # then push() feeds it itself
        self.position = position if position is not None else JsonLexer()
        self._since = 0  # tokens before this index are forgotten (a loop already dealt with)
        self.leading = False  # a way out was taken; forget the loop once the value ends
        self.close_below: int | None = None  # closing a container: until depth drops below this
        self._structure_at = -1  # index of the last token holding JSON structure (a quote, , : { } [ ])
        self._items: dict[int, set[bytes]] = {}  # strings already in each open array, by its depth
        self._repeated: Loop | None = None  # an array item written twice: a loop, reported once
        self._chosen = [0]  # _chosen[i]: how many of the first i tokens the model chose (not the grammar)
        self._item_free = False  # the string being written had a free-text choice (not an enum's)

    def forget(self) -> None:
        """Start afresh once a looping value is ended: the loop must not trip the next value. (After a
        step that only leads towards the end, the loop is still seen, so the next choice ends it.)"""
        self.runs[:] = 0
        self._since = len(self.tokens)
        self.leading = False
        self.close_below = None

    @property
    def in_string(self) -> bool:
        return self.position.in_string

    @property
    def depth(self) -> int:
        return self.position.depth

    def push(self, token: int, *, chosen: bool = True, free: bool = False) -> None:
        """Follow one more output token; `chosen=False` for a token the grammar forced (jump-forward, a
        single allowed token, a completion the guard itself queued); `free` for a choice in free text
        (most of the vocabulary allowed: a name, not one of an enum's few values)."""
        self._chosen.append(self._chosen[-1] + (1 if chosen else 0))
        was_in_string = self.position.in_string
        if self._own_position:
            self.position.feed(self.tokenizer.decode_bytes([token]))
        if not was_in_string:
            self._item_free = False  # a new string (if this token opened one) starts unchosen
        self._item_free = self._item_free or (free and chosen)
        ended, structure = self.position.last
        if structure:
            self._structure_at = len(self.tokens)
        history = self.tokens
        n = len(history)
        back = np.array([history[n - p] if p <= n - self._since else -1 for p in self.periods.tolist()])
        self.runs = np.where(back == token, self.runs + 1, 0)
        history.append(token)
        if (ended and self.leading) or (self.close_below is not None and self.depth < self.close_below):
            self.forget()
        self._track_items(token)

    def _track_items(self, token: int) -> None:
        """An array of strings that gets an item it already holds (`["Lebanon","Lebanon",…`) is a loop: a
        list of names has each once. The array is closed from here (the repeat itself is already written).
        Only items the model wrote as free text count: a repeated enum value or a forced `const` may be
        the data."""
        for depth in [d for d in self._items if d > self.depth]:
            del self._items[depth]  # arrays that closed
        for depth, item in self.position.array_items:
            seen = self._items.setdefault(depth, set())
            if item in seen and self.close_below is None and self._item_free:
                self.close_below = depth
                unit = [int(t) for t in self.tokenizer.tokenize_str(item.decode("utf-8", "replace"))]
                self._repeated = Loop(unit or [token], 2, set(), False, structural=True)
            seen.add(item)

    def loop(self) -> Loop | None:
        """The loop the output is in now, if any."""
        if self._repeated is not None:
            found, self._repeated = self._repeated, None
            return found
        if self.close_below is not None:
            return Loop([], 0, set(), self.in_string, structural=True, closing=True)
        hits = (self.runs >= 2 * self.periods) & (self.runs + self.periods >= self.span)
        if hits.any():
            period = int(self.periods[int(np.argmax(hits))])
            length = int(self.runs[period - 1]) + period
            if not self._model_chose_within(length):
                return None
            return self._found(self.tokens[-period:], length // period, {self.tokens[-period]}, period)
        recent = self.tokens[max(self._since, len(self.tokens) - self.window):]
        if len(recent) == self.window and len(set(recent)) <= self.distinct \
                and self._model_chose_within(len(recent)):
            return self._found(recent[-16:], 0, set(recent), self.window // 2)
        return None

    def _model_chose_within(self, last: int) -> bool:
        """Whether the model chose at least MIN_CHOSEN of the last `last` tokens: a loop is one repeated at
        least three times. A repetition the grammar forced (`minItems` of a `const`, a fixed key sequence)
        is the schema's, not a loop: nothing to lead out of, and nothing to warn about."""
        start = max(len(self._chosen) - 1 - last, 0)
        return self._chosen[-1] - self._chosen[start] >= MIN_CHOSEN

    def _found(self, unit: list[int], times: int, avoid: set[int], span: int) -> Loop:
        """`span`: how far back the loop's structure is looked for (a unit, half the window)."""
        structural = self.depth > 0 and self._structure_at >= len(self.tokens) - span
        if structural:
            self.close_below = self.depth
        return Loop(unit, times, avoid, self.in_string, structural=structural)


@dataclass
class LeadOut:
    """What a loop step may choose from (ids ascending, logits aligned), or a text to force."""

    ids: np.ndarray
    logits: np.ndarray
    note: str
    forced: list[int] | None = None
    ends_value: bool = False  # the choice ends the looping value: the guard can forget the loop


def lead_out(ids: np.ndarray, logits: np.ndarray, loop: Loop, tokenizer: Any, matcher: Any, scratch: Any,
             hints: Iterable[str]) -> LeadOut:
    """The choice at a loop step (module doc, steps 1-4). `scratch` is a spare grammar.Mask."""
    note = "" if loop.closing else loop.describe(tokenizer) + "; "
    rank = closing_tokens(tokenizer, loop.in_string)
    avoid = np.array(sorted(loop.avoid), dtype=ids.dtype)
    ranks = np.where(np.isin(ids, avoid), 0, rank[ids])
    if loop.structural:  # close strings, then containers; what the grammar still requires comes first
        wanted = 1 if loop.in_string else 2
        ending = ranks >= wanted
        if ending.any():
            return LeadOut(ids[ending], logits[ending], note and note + "its object or array was closed")
        return LeadOut(ids, logits, note and note + "its object or array was closed")
    if ranks.max() > 0:
        ending = ranks == ranks.max()
        return LeadOut(ids[ending], logits[ending], note + "the value was ended there", ends_value=True)
    closers = rank > 0
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
