"""The grammar-constrained decoding loop: grammar masks in, one valid JSON text out.

Three things make it fast, none of which changes what greedy decoding would produce:
- tokens the grammar decides (jump-forward tokens, and steps where exactly one token is allowed) never
  need logits; they are queued and fed to the model together with the next chosen token in ONE forward
  call, so a run of forced keys/punctuation costs one onnxruntime run, not one per token;
- when few tokens are allowed, only their lm_head rows are computed (`Model.logits_for`), otherwise the
  full lm_head runs and is masked;
- the last tokens (closing brackets) are never fed at all: nothing needs logits after them.

One thing does change it, on purpose: the repetition guard (gemmacli.loops). When the model is stuck in a
loop, the guard narrows that step's choice to a way out of it, so a loop ends in valid JSON (reported in
`repeats`) rather than in a spent budget. It only ever narrows the grammar's allowed set, deterministically.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gemmacli.errors import ExtractionFailed
from gemmacli.grammar import Mask
from gemmacli.loops import JsonLexer, RepeatGuard, lead_out

#: In free text most of the vocabulary is allowed, and its mask is the dearest (4-5 ms for the first token
#: of a length-bounded string at 262k tokens, measured) while the full lm_head must run anyway. There (the
#: grammar accepts each of the PROBES: not an enum or a pattern) the greedy loop computes the full logits
#: first and takes the best token the grammar accepts (checked one by one, a few µs each) among the
#: LAZY_CANDIDATES best; only when none is accepted does it compute the mask. Same token either way.
LAZY_CANDIDATES = 8
PROBES = ("e", "x", "Q", "7")

#: Allowed-set size up to which only the allowed lm_head rows are computed (and never more than 1/16 of the
#: vocabulary). Dequantizing n INT4 rows in numpy costs far more per row than onnxruntime's fused kernel,
#: so the crossover is a few hundred rows; bench/bench_extract.py measures it.
LM_HEAD_THRESHOLD = 512


@dataclass
class DecodeOptions:
    max_tokens: int = 1024
    temperature: float = 0.0  # 0 = greedy (deterministic)
    top_p: float = 1.0
    seed: int | None = None
    jump_forward: bool = True  # take grammar-forced tokens without asking the model
    batch_forced: bool = True  # False: feed queued tokens one forward call each (tests/benchmarks compare)
    #: None: min(LM_HEAD_THRESHOLD, vocab / 16); 0 disables the grammar-aware lm_head
    lm_head_threshold: int | None = None
    repeat_guard: bool = True  # end a value the model keeps repeating (RepeatGuard) instead of failing
    lazy_mask: bool = True  # greedy, inside strings: best accepted token first, the mask only if needed


@dataclass
class DecodeResult:
    tokens: list[int]  # output tokens (no eos)
    text: str
    generated_tokens: int  # chosen by the model (from logits)
    forced_tokens: int  # decided by the grammar alone
    model_calls: int  # decoder forward runs (prefill included)
    seconds: float = 0.0  # the loop, plus any prefill the caller did and passed in as model_seconds
    model_seconds: float = 0.0  # running the model (forward + lm_head rows)
    small_heads: int = 0  # steps that used logits_for
    full_heads: int = 0  # steps that used the full lm_head
    allowed_sizes: list[int] = field(default_factory=list)
    repeats: list[str] = field(default_factory=list)  # what the repetition guard cut, for the user

    @property
    def overhead_seconds(self) -> float:
        """Time spent outside onnxruntime: grammar masks, sampling, bookkeeping."""
        return max(0.0, self.seconds - self.model_seconds)


class _Sampler:
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


def decode(
    model: Any,
    cache: Any,
    matcher: Any,
    tokenizer: Any,
    pending: Sequence[int],
    options: DecodeOptions,
    *,
    hidden: np.ndarray | None = None,
    model_calls: int = 0,
    model_seconds: float = 0.0,
    hints: Sequence[str] = (),
) -> DecodeResult:
    """Run the loop until the grammar is complete; ExtractionFailed when max_tokens runs out first.

    `pending` holds tokens not yet fed to the model (the prompt, or nothing when the caller prefilled it
    and passes the resulting `hidden`). `tokenizer` is llguidance's LLTokenizer (for the text). `hints`
    are short texts the schema allows (gemmacli.sizing.string_hints), a way out of a loop.
    """
    start = time.perf_counter() - model_seconds  # a prefill done by the caller counts as model time
    eos = set(int(e) for e in tokenizer.eos_tokens)
    n_vocab = int(tokenizer.vocab_size)
    mask = Mask(n_vocab)
    threshold = options.lm_head_threshold
    if threshold is None:
        threshold = min(LM_HEAD_THRESHOLD, max(1, n_vocab // 16))
    sampler = _Sampler(options)
    pending = list(pending)
    out: list[int] = []
    generated = forced = small = full = 0
    sizes: list[int] = []
    position = JsonLexer()
    guard = RepeatGuard(tokenizer, position) if options.repeat_guard else None
    lazy = options.lazy_mask and options.jump_forward and sampler.temperature <= 0.0
    probes = [ids[0] for ids in (tokenizer.tokenize_str(text) for text in PROBES) if len(ids) == 1]
    scratch: Mask | None = None
    repeats: list[str] = []

    def feed(tokens: list[int]) -> np.ndarray:
        nonlocal model_calls, model_seconds
        groups = [tokens] if options.batch_forced or model_calls == 0 else [[t] for t in tokens]
        for group in groups:
            t0 = time.perf_counter()
            result = model.forward(cache, group)
            model_seconds += time.perf_counter() - t0
            model_calls += 1
        return result

    def advance(tokens: Sequence[int], *, chosen: bool = False) -> None:
        """Queue consumed tokens for the model and follow them in the lexer and the guard (which tells the
        model's choices from what the grammar forced)."""
        for t in tokens:
            out.append(int(t))
            pending.append(int(t))
            position.feed(tokenizer.decode_bytes([int(t)]))
            if guard is not None:
                guard.push(int(t), chosen=chosen)

    def model_input() -> np.ndarray:
        """The hidden state a choice is made from: feeds what is pending (the budget allowing)."""
        nonlocal pending, hidden
        if len(out) >= options.max_tokens:
            raise fail(_budget_message(options.max_tokens))
        if pending:
            hidden = feed(pending)
            pending = []
        elif hidden is None:
            raise fail("nothing to decode from: empty prompt")
        return hidden

    def fail(why: str) -> ExtractionFailed:
        exc = ExtractionFailed(why, hint="raise --max-tokens" if "max-tokens" in why else None)
        exc.partial_text = tokenizer.decode_bytes(out).decode("utf-8", errors="replace")  # type: ignore[attr-defined]
        return exc

    while True:
        if matcher.is_error():
            raise fail(f"the grammar engine stopped with an error: {matcher.get_error()}")
        if matcher.is_stopped():
            break
        if options.jump_forward:
            ff = matcher.compute_ff_tokens()
            if ff:
                if len(out) + len(ff) > options.max_tokens:
                    raise fail(_budget_message(options.max_tokens))
                if not matcher.consume_tokens(ff):
                    raise fail(f"the grammar engine refused its own forced tokens: {matcher.get_error()}")
                advance(ff)
                forced += len(ff)
                continue
        loop = guard.loop() if guard is not None else None
        all_logits = None
        if lazy and position.in_string and loop is None and probes \
                and all(matcher.validate_tokens([t]) == 1 for t in probes):
            hidden = model_input()
            t0 = time.perf_counter()
            all_logits = np.asarray(model.logits(hidden), dtype=np.float32)
            model_seconds += time.perf_counter() - t0
            full += 1
            token = _best_accepted(matcher, all_logits, LAZY_CANDIDATES)
            if token is not None and token not in eos:
                generated += 1
                if not matcher.consume_token(token):
                    raise fail(f"the grammar engine refused an accepted token: {matcher.get_error()}")
                advance([token], chosen=True)
                continue
        mask.fill(matcher)
        count = mask.count()
        if count == 0:
            raise fail(f"the grammar allows no next token: {matcher.get_error() or 'dead end'}")
        ids = mask.allowed() if (count <= threshold or count == 1) else None
        loop = loop if count > 1 else None
        chosen = False
        if options.jump_forward and ids is not None and ids.size == 1 and int(ids[0]) not in eos:
            token = int(ids[0])  # the grammar decides: no logits needed
            forced += 1
        else:
            chosen = True
            hidden = model_input()
            t0 = time.perf_counter()
            if all_logits is not None:  # computed by the lazy path above: no second lm_head
                ids = ids if ids is not None else mask.allowed()
                logits = all_logits[ids]
            elif ids is not None and threshold > 0:
                logits = np.asarray(model.logits_for(hidden, ids), dtype=np.float32)
                small += 1
            else:
                allowed = ids if ids is not None else mask.allowed()
                logits = np.asarray(model.logits(hidden), dtype=np.float32)[allowed]
                ids = allowed
                full += 1
            model_seconds += time.perf_counter() - t0
            chosen = not _one_text(ids, tokenizer)
            if loop is not None:
                if scratch is None:
                    scratch = Mask(n_vocab)
                way_out = lead_out(ids, logits, loop, tokenizer, matcher, scratch, hints)
                if way_out.note:
                    repeats.append(way_out.note)
                if way_out.ends_value:
                    guard.forget()  # type: ignore[union-attr]
                elif not loop.structural:
                    guard.leading = True  # type: ignore[union-attr]
                ids, logits = way_out.ids, way_out.logits
                if way_out.forced:  # a text the grammar takes: queue it like jump-forward tokens
                    if len(out) + len(way_out.forced) > options.max_tokens:
                        raise fail(_budget_message(options.max_tokens))
                    if not matcher.consume_tokens(way_out.forced):
                        raise fail(f"the grammar engine refused a checked completion: {matcher.get_error()}")
                    advance(way_out.forced)
                    forced += len(way_out.forced)
                    continue
            sizes.append(int(ids.size))
            token = sampler.choose(ids, logits)
            generated += 1
        if token in eos:
            break
        if len(out) >= options.max_tokens:
            raise fail(_budget_message(options.max_tokens))
        if not matcher.consume_token(token):
            raise fail(f"the grammar engine refused an allowed token: {matcher.get_error()}")
        advance([token], chosen=chosen)
    if not matcher.is_accepting():
        error = (matcher.get_error() or "").strip().split("\n")[0][:200]
        raise fail(f"the grammar engine gave up before the JSON was complete ({matcher.stop_reason()}"
                   f"{': ' + error if error else ''}); the schema is too complex for it at this point")
    try:
        text = tokenizer.decode_bytes(out).decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:  # the JSON grammar only completes on whole characters
        raise fail(f"the model emitted invalid UTF-8: {exc}") from exc
    seconds = time.perf_counter() - start
    return DecodeResult(out, text, generated, forced, model_calls, seconds, model_seconds, small, full, sizes,
                        repeats)


def _best_accepted(matcher: Any, logits: np.ndarray, candidates: int) -> int | None:
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


def _one_text(ids: np.ndarray, tokenizer: Any, most: int = 8) -> bool:
    """Whether the allowed tokens all spell the same text, only cut differently (`"` or `",` when the
    grammar forces `","`): picking one is no choice of the model's, so the repetition guard does not count
    it (a schema that forces a repetition is not a loop). Only small sets are looked at."""
    if ids.size > most:
        return False
    pieces = sorted((bytes(tokenizer.decode_bytes([int(t)])) for t in ids.tolist()), key=len)
    return all(longer.startswith(shorter) for shorter, longer in itertools.pairwise(pieces))


def _budget_message(max_tokens: int) -> str:
    return (f"the model did not finish the JSON within --max-tokens {max_tokens} tokens; "
            "no partial output is given")
