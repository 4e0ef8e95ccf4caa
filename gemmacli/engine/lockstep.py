"""Several documents decoded together: their one-token steps run as one batched decoder run, and their full
lm_heads as one lm_head run.

Decoding one token reads every weight of the model once, whatever the number of sequences in the run, so
on this kind of CPU four sequences step in about 1.6x the time of one (bench/README.md). Each document
still runs its own decoding loop (gemmacli.engine.decoder, its own grammar and Extractor), on its own
thread, against a `StreamModel`: a model facade whose KV cache is one row of buffers shared by all the
streams (`Model.batch_buffers`). When every stream working on a document waits for the model, the last
one to ask runs the round (`Lockstep._run_round`):

- the single-token forward steps go in ONE `Model.forward_batch` run; a stream with another request gets
  a throwaway token in that run, written past its cache's end (rows past the length are never read, and
  the next real token overwrites it; a full attention window is saved first and put back, since a token
  there would push the window's oldest row out);
- longer runs (prefill, forced tokens, likelihood candidates) run alone, each on its own row;
- full lm_heads go in one `Model.logits_rows` run; a stream that asked for one after its previous step gets
  it computed with its step, in the same round (free text asks for one after every step).

onnxruntime computes each row of those runs exactly as it would alone (the tests check it), so every
output is byte-identical to decoding the documents one at a time. The threads only ever wait for each
other: all model work runs in the thread that completed the round, one round at a time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gemmacli.engine.runtime import KVCache, Model

#: Cache rows a stream holds for its non-window layers; a longer document runs alone (same output).
DEFAULT_ROWS = 4096


@dataclass
class _Request:
    """What one stream waits for: one token's step, another model run (`run`), or a full lm_head."""

    slot: int
    kind: str  # "step" | "run" | "head"
    cache: KVCache | None = None
    token: int = 0
    run: Callable[[], Any] | None = None
    hidden: np.ndarray | None = None
    wants_head: bool = False  # a step whose stream will likely ask for the full lm_head next (prefetched)
    logits: np.ndarray | None = None  # that lm_head, when prefetched
    result: Any = None
    error: BaseException | None = None
    done: bool = False


class Lockstep:
    """The shared KV buffers of `streams` documents and the rounds that run their model work."""

    def __init__(self, model: Model, streams: int, rows: int = DEFAULT_ROWS) -> None:
        self.model = model
        self.streams = streams
        self.buffers, self.growable = model.batch_buffers(streams, rows)
        self.window = model.window
        self._caches: list[KVCache | None] = [None] * streams  # each stream's current document's cache
        self._active = 0
        self._pending: list[_Request] = []
        self._cond = threading.Condition()

    def stream(self, slot: int) -> StreamModel:
        """The model facade of stream `slot` (0 <= slot < streams): one thread uses it at a time."""
        return StreamModel(self, slot)

    # ------------------------------------------------------------------------------ the streams' side

    def join(self) -> None:
        """A stream starts a document: rounds now wait for its requests too."""
        with self._cond:
            self._active += 1

    def leave(self, slot: int) -> None:
        """A stream is done with its document (or failed): rounds no longer wait for it."""
        with self._cond:
            self._active -= 1
            self._caches[slot] = None
            self._run_if_complete()

    def submit(self, request: _Request) -> Any:
        """Wait until the round holding `request` has run (run it if it is the last one asked); its result."""
        with self._cond:
            self._pending.append(request)
            self._run_if_complete()
            while not request.done:
                self._cond.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def _run_if_complete(self) -> None:
        if self._pending and len(self._pending) >= self._active:
            requests, self._pending = self._pending, []
            try:
                self._run_round(requests)
            except BaseException as exc:  # never leave a waiting stream waiting for ever
                for request in requests:
                    if not request.done:
                        request.error, request.done = exc, True
            finally:
                self._cond.notify_all()

    # ------------------------------------------------------------------------------------ the rounds

    def _run_round(self, requests: list[_Request]) -> None:
        """Every stream is waiting: run what they asked for, batched where it can be."""
        steps = [r for r in requests if r.kind == "step"]
        if len(steps) > 1 and all(self._attached(r) for r in steps):
            self._guarded(steps, self._batched_steps)
        else:
            for request in steps:
                self._guarded([request], self._alone_step)
        for request in requests:
            if request.kind == "run":
                self._guarded([request], self._alone_run)
        heads = [r for r in requests if r.kind == "head"]
        if heads:
            self._guarded(heads, self._heads)

    @staticmethod
    def _guarded(requests: Sequence[_Request], work: Callable[[Sequence[_Request]], None]) -> None:
        """Run `work`; an error goes to each request it was for (raised in their threads)."""
        try:
            work(requests)
        except BaseException as exc:
            for request in requests:
                request.error = exc
        for request in requests:
            request.done = True

    def _attached(self, request: _Request) -> bool:
        """Whether the request's cache is still its row of the shared buffers (a document longer than the
        rows grows its own copy, KVCache.reserve, and then runs alone)."""
        cache = request.cache  # a grown copy is a new allocation: a bounds check tells it apart, cheaply
        return cache is not None and all(
            np.may_share_memory(cache.values[name], self.buffers[name]) for name in self.buffers)

    def _alone_step(self, requests: Sequence[_Request]) -> None:
        (request,) = requests
        assert request.cache is not None
        request.result = self.model.forward(request.cache, [request.token])

    @staticmethod
    def _alone_run(requests: Sequence[_Request]) -> None:
        (request,) = requests
        assert request.run is not None
        request.result = request.run()

    def _heads(self, requests: Sequence[_Request]) -> None:
        hidden = np.stack([np.asarray(r.hidden, dtype=np.float32).reshape(-1) for r in requests])
        logits = self.model.logits_rows(hidden) if len(requests) > 1 else \
            self.model.logits(hidden[0]).reshape(1, -1)
        for request, row in zip(requests, logits, strict=True):
            request.result = row

    def _batched_steps(self, steps: Sequence[_Request]) -> None:
        """One run for every stream: the steps' tokens, a throwaway one for the other rows (put back)."""
        tokens, lengths = [0] * self.streams, [0] * self.streams
        by_slot = {r.slot: r for r in steps}
        saved: list[tuple[int, dict[str, np.ndarray]]] = []
        for slot in range(self.streams):
            request, cache = by_slot.get(slot), self._caches[slot]
            if request is not None and request.cache is not None:
                tokens[slot], lengths[slot] = request.token, request.cache.length
            elif cache is not None:
                lengths[slot] = cache.length
                if self.window is not None and cache.length >= self.window:
                    saved.append((slot, self._window_rows(slot)))
        hidden = self.model.forward_batch(self.buffers, tokens, lengths)
        for slot, rows in saved:  # the throwaway token pushed a full window's oldest row out
            for name, old in rows.items():
                self.buffers[name][slot] = old
        for request in steps:
            assert request.cache is not None
            request.cache.length += 1
            request.cache.undo = None
            request.result = hidden[request.slot].copy()
        prefetch = [r for r in steps if r.wants_head]
        if prefetch:  # in the same round: one lm_head run instead of one more round each
            logits = self.model.logits_rows(np.stack([r.result for r in prefetch]))
            for request, row in zip(prefetch, logits, strict=True):
                request.logits = row

    def _window_rows(self, slot: int) -> dict[str, np.ndarray]:
        return {name: buf[slot].copy() for name, buf in self.buffers.items() if name not in self.growable}


class StreamModel:
    """One stream's model: what the decoder and the Extractor use (gemmacli.engine.decoder.DecoderModel and
    more), its KV cache a row of the Lockstep's buffers, every model run made through the Lockstep's rounds.
    Everything else (config, tokenizer, folder, logits_for, rewind) is the shared Model's."""

    def __init__(self, lockstep: Lockstep, slot: int) -> None:
        self._lockstep, self._slot = lockstep, slot
        self._model = lockstep.model
        # The full lm_head of the latest step, when the lockstep computed it with the step: asked for right
        # after the previous step, it is likely asked for after this one (free text).
        self._prefetched: tuple[np.ndarray, np.ndarray] | None = None
        self._head_followed = False  # whether the full lm_head was asked for after the latest step

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def new_cache(self) -> KVCache:
        """The stream's row of the shared buffers, empty: a new document."""
        lockstep = self._lockstep
        values = {name: buf[self._slot: self._slot + 1] for name, buf in lockstep.buffers.items()}
        cache = KVCache(values, 0, lockstep.growable)
        lockstep._caches[self._slot] = cache
        return cache

    def adopt_cache(self, snapshot: KVCache) -> KVCache:
        """A cache holding `snapshot`'s tokens (a prompt head prefilled once) in the stream's row."""
        cache = self.new_cache()
        for name, view in cache.values.items():
            source = snapshot.values[name]
            rows = min(source.shape[2], view.shape[2])
            if rows < source.shape[2]:  # longer than the rows: the document runs alone, on its own copy
                copy = snapshot.copy()
                self._lockstep._caches[self._slot] = copy
                return copy
            view[:, :, :rows] = source[:, :, :rows]
        cache.length = snapshot.length
        return cache

    def forward(self, cache: KVCache, token_ids: Sequence[int]) -> np.ndarray:
        self._prefetched = None
        if len(token_ids) == 1:
            request = _Request(self._slot, "step", cache=cache, token=int(token_ids[0]),
                               wants_head=self._head_followed)
        else:
            tokens = list(token_ids)
            request = _Request(self._slot, "run", cache=cache, run=lambda: self._model.forward(cache, tokens))
        self._head_followed = False
        hidden = np.asarray(self._lockstep.submit(request))
        if request.logits is not None:
            self._prefetched = (hidden, request.logits)
        return hidden

    def forward_all(self, cache: KVCache, token_ids: Sequence[int]) -> np.ndarray:
        tokens = list(token_ids)
        return np.asarray(self._lockstep.submit(
            _Request(self._slot, "run", cache=cache, run=lambda: self._model.forward_all(cache, tokens))))

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        self._head_followed = True
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and prefetched[0] is hidden:
            return prefetched[1]
        return np.asarray(self._lockstep.submit(_Request(self._slot, "head", hidden=hidden)))

    def logits_rows(self, hidden: np.ndarray) -> np.ndarray:
        rows = np.asarray(hidden, dtype=np.float32)
        return np.asarray(self._lockstep.submit(
            _Request(self._slot, "run", run=lambda: self._model.logits_rows(rows))))
