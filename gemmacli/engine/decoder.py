"""The grammar-constrained decoding loop: grammar masks in, one valid JSON text out.

Three things make it fast, none of which changes what greedy decoding would produce:
- tokens the grammar decides (jump-forward tokens, and steps where exactly one token is allowed) never
  need logits; they are queued and fed to the model together with the next chosen token in ONE forward
  call, so a run of forced keys/punctuation costs one onnxruntime run, not one per token;
- when few tokens are allowed, only their lm_head rows are computed (`Model.logits_for`), otherwise the
  full lm_head runs and is masked;
- the last tokens (closing brackets) are never fed at all: nothing needs logits after them.

One thing does change it, on purpose: the repetition guard (gemmacli.engine.loops). When the model is
stuck in a loop, the guard narrows that step's choice to a way out of it, so a loop ends in valid JSON
(reported in
`repeats`) rather than in a spent budget. It only ever narrows the grammar's allowed set, deterministically.

How to read it: `decode` builds a `_Decoding` (the state of one run) and runs it. Each step of
`_Decoding._step` takes exactly one of these ways, tried in this order:
  forced   the grammar alone decides the next tokens (`_jump_forward`); they are queued, not fed yet;
  likely   greedy, at the start of a closed choice's value (an enum): the listed value with the highest
           total log-probability, written whole (`_likely_choice`, gemmacli.engine.likely);
  lazy     greedy, inside a string: the full logits first, then the best token the grammar accepts, with
           no mask at all (`_lazy_choice`); falls through to the masked choice when none is found;
  masked   the grammar's mask, then logits for the allowed tokens only (`_masked_choice`); a mask that
           allows one token needs no logits; at a loop the choice is narrowed (`_lead_out`), or a text
           the grammar takes is forced instead.
Queued tokens reach the model only when a choice needs logits (`_model_input`), all in one forward call.
Every path that adds tokens to the output checks the budget first (`_check_budget`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from gemmacli.engine.choices import PROBES as PROBES  # re-exported: its meaning is documented here
from gemmacli.engine.choices import _best_accepted, _one_text, _single_token_probes
from gemmacli.engine.grammar import Mask
from gemmacli.engine.likely import best_candidate, can_score
from gemmacli.engine.loops import JsonLexer, Loop, RepeatGuard, lead_out
from gemmacli.engine.protocols import Cache as Cache  # re-exported: the loop's typed needs live there
from gemmacli.engine.protocols import DecoderModel as DecoderModel
from gemmacli.engine.protocols import DecoderTokenizer as DecoderTokenizer
from gemmacli.engine.protocols import GrammarMatcher as GrammarMatcher
from gemmacli.engine.sampling import Sampler
from gemmacli.engine.speculate import speculation_for
from gemmacli.errors import ExtractionFailed

if TYPE_CHECKING:
    from gemmacli.engine.likely import LikelyChoice
    from gemmacli.engine.speculate import Speculation

#: In free text most of the vocabulary is allowed, and its mask is the dearest (4-5 ms for the first token
#: of a length-bounded string at 262k tokens, measured) while the full lm_head must run anyway. There (the
#: grammar accepts each of the PROBES: not an enum or a pattern) the greedy loop computes the full logits
#: first and takes the best token the grammar accepts (checked one by one, a few µs each) among the
#: LAZY_CANDIDATES best; only when none is accepted does it compute the mask. Same token either way.
LAZY_CANDIDATES = 8

#: Allowed-set size up to which only the allowed lm_head rows are computed (and never more than 1/16 of the
#: vocabulary). Dequantizing n INT4 rows in numpy costs far more per row than onnxruntime's fused kernel,
#: so the crossover is a few hundred rows; bench/bench_extract.py measures it.
LM_HEAD_THRESHOLD = 512
#: More allowed tokens than this: free text (a name, a span), not a few values (see loops.RepeatGuard.push).
FREE_CHOICE = 16


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
    speculate: int = 0  # most prompt-lookup draft tokens a run verifies (speculate.py); 0: off


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
    drafted: int = 0  # prompt-lookup draft tokens fed to the model (gemmacli.engine.speculate)
    accepted: int = 0  # of them, the ones decoding then chose (their positions needed no run)

    @property
    def overhead_seconds(self) -> float:
        """Time spent outside onnxruntime: grammar masks, sampling, bookkeeping."""
        return max(0.0, self.seconds - self.model_seconds)


def decode(
    model: DecoderModel,
    cache: Cache,
    matcher: GrammarMatcher,
    tokenizer: DecoderTokenizer,
    pending: Sequence[int],
    options: DecodeOptions,
    *,
    hidden: np.ndarray | None = None,
    model_calls: int = 0,
    model_seconds: float = 0.0,
    hints: Sequence[str] = (),
    context: Sequence[int] = (),
    choices: LikelyChoice | None = None,
) -> DecodeResult:
    """Run the loop until the grammar is complete; ExtractionFailed when max_tokens runs out first.

    `pending` holds tokens not yet fed to the model (the prompt, or nothing when the caller prefilled it
    and passes the resulting `hidden`). `tokenizer` is llguidance's LLTokenizer (for the text). `hints`
    are short texts the schema allows (gemmacli.schema.sizing.string_hints), a way out of a loop.
    `context`: the prompt's ids, where speculation looks for drafts (default: `pending`). `choices`: the
    schema's closed-choice values, decided by likelihood when greedy (None: token by token).
    """
    decoding = _Decoding(model, cache, matcher, tokenizer, options, pending=pending, hidden=hidden,
                         model_calls=model_calls, model_seconds=model_seconds, hints=hints)
    if decoding.sampler.temperature <= 0.0:
        decoding.choices = choices
    # Greedy and fed in groups only: a draft is a guess of greedy choices, verified in one grouped run.
    if options.batch_forced and decoding.sampler.temperature <= 0.0:
        decoding.spec = speculation_for(model, cache, options.speculate, list(context or pending))
    return decoding.run()


class _Decoding:
    """One run of the loop: what the model has been fed and what is still queued for it, the output so
    far, the counters DecodeResult reports, and where the output is in the JSON (for the lazy choice and
    the repetition guard). Each `_step` adds tokens to the output in one of the ways the module doc lists."""

    def __init__(self, model: DecoderModel, cache: Cache, matcher: GrammarMatcher,
                 tokenizer: DecoderTokenizer, options: DecodeOptions, *, pending: Sequence[int],
                 hidden: np.ndarray | None, model_calls: int, model_seconds: float,
                 hints: Sequence[str]) -> None:
        self.start = time.perf_counter() - model_seconds  # a prefill done by the caller counts as model time
        self.model, self.cache, self.matcher, self.tokenizer = model, cache, matcher, tokenizer
        self.options, self.hints = options, hints
        # The model's side: tokens queued for it, its latest hidden state, what running it cost.
        self.pending = list(pending)
        self.hidden = hidden
        self.model_calls, self.model_seconds = model_calls, model_seconds
        # The output and its counters (DecodeResult).
        self.out: list[int] = []
        self.generated = self.forced = self.small = self.full = 0
        self.sizes: list[int] = []
        self.repeats: list[str] = []
        self.last_chosen = False  # whether the masked choice was the model's (see _one_text)
        self.last_free = False  # whether it was made in free text (most of the vocabulary allowed)
        # The grammar's side.
        self.eos = frozenset(int(e) for e in tokenizer.eos_tokens)
        self.n_vocab = int(tokenizer.vocab_size)
        self.rows = _model_rows(model, self.n_vocab)
        self.mask = Mask(self.n_vocab, self.rows)
        self.scratch: Mask | None = None  # lead_out's spare mask, made at the first loop
        self.threshold = _lm_head_threshold(options, self.n_vocab)
        self.sampler = Sampler(options)
        # Where the output is in the JSON; the repetition guard reads it too.
        self.position = JsonLexer()
        self.guard = RepeatGuard(tokenizer, self.position) if options.repeat_guard else None
        # Greedy only: the lazy choice is an argmax. Off without jump-forward too, as it has always been.
        self.lazy = options.lazy_mask and options.jump_forward and self.sampler.temperature <= 0.0
        self.probes = _single_token_probes(tokenizer)
        self.spec: Speculation | None = None  # prompt-lookup drafts (set by decode)
        self.choices: LikelyChoice | None = None  # closed choices decided by likelihood (set by decode)

    # ---------------------------------------------------------------------------------------- the loop

    def run(self) -> DecodeResult:
        """Step until the grammar stops or the model ends the output, then check and return it."""
        while self._step():
            pass
        return self._result()

    def _step(self) -> bool:
        """Add the next token(s) to the output; False when the output is complete."""
        if self.matcher.is_error():
            raise self._fail(f"the grammar engine stopped with an error: {self.matcher.get_error()}")
        if self.matcher.is_stopped():
            return False
        if self._jump_forward():
            return True
        loop = self._loop()
        if loop is None and self._likely_choice():
            return True
        lazy_logits = self._full_logits() if self._lazy_applies(loop) else None
        if lazy_logits is not None and self._lazy_choice(lazy_logits):
            return True
        token = self._masked_choice(loop, lazy_logits)
        if token is None:  # the lead-out forced a completion instead
            return True
        if token in self.eos:
            return False
        self._take(token, "an allowed token", chosen=self.last_chosen, free=self.last_free)
        return True

    # ------------------------------------------------------------------------------ the ways of a step

    def _jump_forward(self) -> bool:
        """Forced: the tokens the grammar alone decides, queued without asking the model. False if none
        (or jump-forward is off)."""
        if not self.options.jump_forward:
            return False
        tokens = self.matcher.compute_ff_tokens()
        if not tokens:
            return False
        self._force(tokens, "its own forced tokens")
        return True

    def _loop(self) -> Loop | None:
        """The loop the output is in, if the guard is on and sees one. Asked once a step, after any
        forced tokens: asking has effects (a loop is reported once; a structural one starts closing)."""
        return self.guard.loop() if self.guard is not None else None

    def _likely_choice(self) -> bool:
        """Likely: at the start of a closed choice's value, the listed value the model finds most probable
        as a whole, written at once (gemmacli.engine.likely). False where there is no such choice (fewer
        than two values the grammar accepts here), or the model cannot run candidates and take them back.
        Not with speculation, whose drafts may already sit in the cache."""
        point = self.position.choice_point() if self.choices is not None and self.spec is None else None
        if point is None:
            return False
        assert self.choices is not None
        candidates = self.choices.candidates(*point, self._accepts_whole)
        if len(candidates) < 2:
            return False
        hidden = self._model_input()
        if not can_score(self.model, self.cache, max(len(c.tokens) for c in candidates)):
            return False
        t0 = time.perf_counter()
        best, runs = best_candidate(self.model, self.cache, hidden, candidates)
        self.model_seconds += time.perf_counter() - t0
        self.model_calls += runs
        tokens = list(best.tokens)
        self._check_budget(len(tokens))
        if not self.matcher.consume_tokens(tokens):
            raise self._fail(f"the grammar engine refused a listed value: {self.matcher.get_error()}")
        self._advance(tokens, chosen=True)
        self.generated += len(tokens)
        self.sizes.append(len(candidates))
        return True

    def _accepts_whole(self, tokens: list[int]) -> bool:
        """Whether the grammar takes every one of `tokens` from here."""
        return self.matcher.validate_tokens(tokens) == len(tokens)

    def _lazy_applies(self, loop: Loop | None) -> bool:
        """Whether to try the lazy choice: greedy, inside free text (the grammar accepts every probe, so
        the mask would allow most of the vocabulary and cost most), and no loop to lead out of."""
        return (self.lazy and self.position.in_string and loop is None and bool(self.probes)
                and all(self.matcher.validate_tokens([t]) == 1 for t in self.probes))

    def _lazy_choice(self, logits: np.ndarray) -> bool:
        """Lazy: the best token the grammar accepts among the best-scored few, the one the masked argmax
        would give (`_best_accepted`). False if none of them is accepted (or it is an end of output):
        the masked choice then decides, from these same logits."""
        token = _best_accepted(self.matcher, logits, LAZY_CANDIDATES)
        if token is None or token in self.eos:
            return False
        self.generated += 1
        self._take(token, "an accepted token", chosen=True, free=True)
        return True

    def _masked_choice(self, loop: Loop | None, lazy_logits: np.ndarray | None) -> int | None:
        """Masked: the grammar's mask, then the model's choice among the allowed tokens (narrowed by the
        repetition guard at a loop). A mask that allows one token decides it without logits. None when
        the lead-out forced a completion instead of a choice."""
        count, ids = self._fill_mask()
        decided = self._decided_by_mask(ids)
        self.last_chosen = False
        if decided is not None:
            self.forced += 1
            return decided
        ids, logits = self._allowed_logits(ids, lazy_logits)
        self.last_chosen = not _one_text(ids, self.tokenizer)
        self.last_free = count > FREE_CHOICE  # free text, not one of an enum's few values
        if loop is not None and count > 1:  # with one token allowed there is no way out to choose
            narrowed = self._lead_out(loop, ids, logits)
            if narrowed is None:
                return None
            ids, logits = narrowed
        self.sizes.append(int(ids.size))
        token = self.sampler.choose(ids, logits)
        self.generated += 1
        return token

    def _fill_mask(self) -> tuple[int, np.ndarray | None]:
        """(how many tokens the grammar allows, their ids when few enough to be worth listing: a small
        head computes only their rows)."""
        self.mask.fill(self.matcher)
        count = self.mask.count()
        if count == 0:
            raise self._fail(f"the grammar allows no next token: {self.matcher.get_error() or 'dead end'}")
        return count, self.mask.allowed() if (count <= self.threshold or count == 1) else None

    def _decided_by_mask(self, ids: np.ndarray | None) -> int | None:
        """The one token the mask allows, when jump-forward is on: no logits needed (an end of output is
        still the model's to choose)."""
        if self.options.jump_forward and ids is not None and ids.size == 1 and int(ids[0]) not in self.eos:
            return int(ids[0])
        return None

    def _lead_out(self, loop: Loop, ids: np.ndarray,
                  logits: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Lead-out: the repetition guard's narrowed choice at a loop (gemmacli.engine.loops.lead_out), noted
        for the user; or, when it found a text the grammar takes, that text forced (then None)."""
        guard = self.guard
        assert guard is not None  # only the guard finds loops
        if self.scratch is None:
            self.scratch = Mask(self.n_vocab, self.rows)
        way_out = lead_out(ids, logits, loop, self.tokenizer, self.matcher, self.scratch, self.hints)
        if way_out.note:
            self.repeats.append(way_out.note)
        if way_out.ends_value:
            guard.forget()
        elif not loop.structural:
            guard.leading = True
        if way_out.forced:  # queued like jump-forward tokens
            self._force(way_out.forced, "a checked completion")
            return None
        return way_out.ids, way_out.logits

    # ---------------------------------------------------------------------------------- the model side

    def _model_input(self) -> np.ndarray:
        """The hidden state a choice is made from: feeds what is queued, if the budget has room for the
        token about to be chosen."""
        self._check_budget(1)
        if self.pending:
            self.hidden = self._feed(self.pending)
            self.pending = []
        elif self.hidden is None:
            raise self._fail("nothing to decode from: empty prompt")
        return self.hidden

    def _feed(self, tokens: list[int]) -> np.ndarray:
        """One forward call for all the queued tokens (the prompt always in one; token by token when the
        options say so, to compare). onnxruntime's floats depend on this grouping: keep it as it is. With
        speculation, the tokens may already have been run as a draft (gemmacli.engine.speculate)."""
        if self.spec is not None:
            t0 = time.perf_counter()
            ahead, runs = self.spec.next_hidden(tokens, self.out, self.matcher.validate_tokens)
            self.model_seconds += time.perf_counter() - t0
            self.model_calls += runs
            return ahead
        groups = [tokens] if self.options.batch_forced or self.model_calls == 0 else [[t] for t in tokens]
        hidden = None
        for group in groups:
            t0 = time.perf_counter()
            hidden = self.model.forward(self.cache, group)
            self.model_seconds += time.perf_counter() - t0
            self.model_calls += 1
        assert hidden is not None  # never called with nothing queued
        return hidden

    def _full_logits(self) -> np.ndarray:
        """Every logit, from the full lm_head."""
        hidden = self._model_input()
        return self._head(hidden, None)

    def _allowed_logits(self, ids: np.ndarray | None,
                        lazy_logits: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(allowed ids, their logits): from the lazy choice's full logits when it computed them, from the
        allowed rows alone when `ids` was worth listing (few allowed), else from the full lm_head."""
        hidden = self._model_input()
        if lazy_logits is not None:
            ids = ids if ids is not None else self.mask.allowed()
            return ids, lazy_logits[ids]
        if ids is not None and self.threshold > 0:
            return ids, self._head(hidden, ids)
        ids = ids if ids is not None else self.mask.allowed()
        return ids, self._head(hidden, None)[ids]

    def _head(self, hidden: np.ndarray, ids: np.ndarray | None) -> np.ndarray:
        """The lm_head: only the rows `ids` (a small head), or all of them (None: a full head)."""
        t0 = time.perf_counter()
        if ids is None:
            shared = self.spec.full_logits(hidden, self._head_rows) if self.spec is not None else None
            logits = np.asarray(self.model.logits(hidden) if shared is None else shared, dtype=np.float32)
            self.full += 1
        else:
            logits = np.asarray(self.model.logits_for(hidden, ids), dtype=np.float32)
            self.small += 1
        self.model_seconds += time.perf_counter() - t0
        return logits

    def _head_rows(self, hidden: np.ndarray) -> np.ndarray:
        """The full lm_head over several rows in one run (a speculative run's positions), else row by row."""
        # Looked up on the class: a wrapper that changes `logits` (tests) and passes the rest on must not
        # have its `logits` skipped.
        rows = getattr(type(self.model), "logits_rows", None)
        if rows is None or hidden.shape[0] == 1:
            return np.stack([np.asarray(self.model.logits(h), dtype=np.float32) for h in hidden])
        return np.asarray(rows(self.model, hidden), dtype=np.float32)

    # --------------------------------------------------------------------------------- the output side

    def _force(self, tokens: list[int], what: str) -> None:
        """Consume tokens the grammar (or the lead-out) decided, and queue them for the model."""
        self._check_budget(len(tokens))
        if not self.matcher.consume_tokens(tokens):
            raise self._fail(f"the grammar engine refused {what}: {self.matcher.get_error()}")
        self._advance(tokens)
        self.forced += len(tokens)

    def _take(self, token: int, what: str, *, chosen: bool, free: bool = False) -> None:
        """Consume one token of a step, and queue it for the model. `chosen`: the model picked it among
        texts that differ (not one the grammar left no real choice about)."""
        self._check_budget(1)
        if not self.matcher.consume_token(token):
            raise self._fail(f"the grammar engine refused {what}: {self.matcher.get_error()}")
        self._advance([token], chosen=chosen, free=free)

    def _advance(self, tokens: Sequence[int], *, chosen: bool = False, free: bool = False) -> None:
        """Append consumed tokens to the output and the model's queue; follow them in the lexer and the
        guard (which counts only the model's choices towards a loop)."""
        for t in tokens:
            token = int(t)
            self.out.append(token)
            self.pending.append(token)
            self.position.feed(self.tokenizer.decode_bytes([token]))
            if self.guard is not None:
                self.guard.push(token, chosen=chosen, free=free)

    def _check_budget(self, adding: int) -> None:
        """The one budget check: the output may not grow past max_tokens. Failing beats a cut JSON."""
        if len(self.out) + adding > self.options.max_tokens:
            raise self._fail(_budget_message(self.options.max_tokens), hint="raise max_tokens",
                             option="max_tokens")

    def _result(self) -> DecodeResult:
        """The finished output: the grammar must accept it, and it must be whole UTF-8."""
        if not self.matcher.is_accepting():
            error = (self.matcher.get_error() or "").strip().split("\n")[0][:200]
            raise self._fail(f"the grammar engine gave up before the JSON was complete "
                             f"({self.matcher.stop_reason()}{': ' + error if error else ''}); "
                             "the schema is too complex for it at this point")
        try:
            text = self.tokenizer.decode_bytes(self.out).decode("utf-8", errors="strict")
        except UnicodeDecodeError as exc:  # the JSON grammar only completes on whole characters
            raise self._fail(f"the model emitted invalid UTF-8: {exc}") from exc
        seconds = time.perf_counter() - self.start
        spec = self.spec
        return DecodeResult(self.out, text, self.generated, self.forced, self.model_calls, seconds,
                            self.model_seconds, self.small, self.full, self.sizes, self.repeats,
                            spec.drafted if spec else 0, spec.accepted if spec else 0)

    def _fail(self, why: str, *, hint: str | None = None, option: str | None = None) -> ExtractionFailed:
        """The failure to raise, with the output so far for whoever reports it."""
        exc = ExtractionFailed(why, hint=hint, option=option)
        partial = self.tokenizer.decode_bytes(self.out).decode("utf-8", errors="replace")
        exc.partial_text = partial  # type: ignore[attr-defined]
        return exc


def _model_rows(model: DecoderModel, n_vocab: int) -> int:
    """The model's lm_head rows (its config's vocab_size), else the grammar's vocabulary."""
    return int(getattr(getattr(model, "config", None), "vocab_size", n_vocab) or n_vocab)


def _lm_head_threshold(options: DecodeOptions, n_vocab: int) -> int:
    """Allowed-set size up to which only the allowed rows are computed (LM_HEAD_THRESHOLD)."""
    if options.lm_head_threshold is not None:
        return options.lm_head_threshold
    return min(LM_HEAD_THRESHOLD, max(1, n_vocab // 16))


def _budget_message(max_tokens: int) -> str:
    """What a spent budget says: the fix is a larger one."""
    return (f"the model did not finish the JSON within max_tokens {max_tokens} tokens; "
            "no partial output is given")
