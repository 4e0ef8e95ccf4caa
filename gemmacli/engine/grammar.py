"""Checked schema -> llguidance grammar and matcher; the model's token table for llguidance; token masks.

Building llguidance's tokenizer (its token trie over the whole vocabulary) costs 0.6-1.5 s at 262k tokens
(measured, bench/bench_extract.py). llguidance holds the GIL while it builds, so a thread started early
would stall model loading and Python work instead of hiding behind them. `TokenizerBuild` therefore starts
its thread only when asked, right before the prompt's prefill: onnxruntime releases the GIL while it runs,
and the two overlap. No token-class slices are built (`slices=[]`): that halves the build and costs
~0.08 ms per mask on JSON grammars (measured). One build per tokenizer file per process: a batch pays once.
Given the model's tokenizer, a Gemma tokenizer builds from a checked, cached token table
(gemmacli.engine.tokens): 0.47 s instead of 0.87 s at 262k tokens, which a cold call spends waiting for the
GIL.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from gemmacli.errors import ModelError, SchemaError
from gemmacli.schema import json_options, walk_schema

# ------------------------------------------------------------------------------------------ tokenizer

_TOKENIZERS: dict[tuple[str, int, tuple[int, ...]], Any] = {}
_LOCK = threading.Lock()


class TokenizerBuild:
    """llguidance's LLTokenizer for a model's tokenizer.json, built on a thread and cached per process."""

    def __init__(self, tokenizer_json: Path, n_vocab: int, eos_ids: list[int], *, encoder: Any = None,
                 bos: int = 2, cache_dir: Path | None = None) -> None:
        """`encoder`: the model's tokenizers.Tokenizer; with it a Gemma tokenizer builds from a checked,
        cached token table in half the time (gemmacli.engine.tokens). `cache_dir`: where those tables live."""
        self.path = Path(tokenizer_json)
        self.encoder = encoder
        self.bos = int(bos)
        self.cache_dir = cache_dir
        self.how = ""  # tokens.build's answer: "table", "checked", "llguidance" ("" when cached)
        # A tokenizer may name more ids than the model has rows (Gemma 3's real one: 262,145 entries,
        # <image_soft_token> = 262144, for 262,144 rows): llguidance gets the tokenizer's size, and the
        # decoder's masks never allow an id past the model's rows (gemmacli.engine.grammar.Mask).
        self.model_rows = int(n_vocab)
        self.n_vocab = max(int(n_vocab), tokenizer_size(encoder))
        self.eos_ids = tuple(int(e) for e in eos_ids)
        try:
            self._text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ModelError(f"cannot read {self.path}: {exc}") from exc
        self.key = (hashlib.sha256(self._text.encode("utf-8")).hexdigest(), self.n_vocab, self.eos_ids)
        self.build_seconds = 0.0  # time the build took (0 when cached)
        self.wait_seconds = 0.0  # time a caller blocked waiting for it
        self._result: Any = _TOKENIZERS.get(self.key)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self, delay: float = 0.003) -> None:
        """Build on a thread from now; call right before a long onnxruntime run (see module doc)."""
        if self._result is None and self._thread is None:
            def run() -> None:
                time.sleep(delay)  # let the caller enter onnxruntime (and drop the GIL) first
                self._build()

            self._thread = threading.Thread(target=run, name="llguidance-tokenizer", daemon=True)
            self._thread.start()

    def _build(self) -> None:
        from gemmacli.engine import tokens

        start = time.perf_counter()
        try:
            tok, self.how = tokens.build(self._text, self.key[0], self.n_vocab, self.eos_ids,
                                         encoder=self.encoder, bos=self.bos, cache_dir=self.cache_dir)
        except BaseException as exc:  # surfaced in result()
            self._error = exc
            return
        self.build_seconds = time.perf_counter() - start
        with _LOCK:
            self._result = _TOKENIZERS.setdefault(self.key, tok)

    def done(self) -> bool:
        return self._result is not None or self._error is not None

    def result(self) -> Any:
        """The LLTokenizer (waits for the thread, or builds here); ModelError if it cannot be read."""
        if self._result is None and self._error is None:
            start = time.perf_counter()
            if self._thread is not None:
                self._thread.join()
            else:
                self._build()
            self.wait_seconds += time.perf_counter() - start
        if self._error is not None:
            raise ModelError(f"llguidance cannot read {self.path}: {self._error}")
        return self._result


# -------------------------------------------------------------------------------------------- grammar


def close_objects(schema: dict) -> dict:
    """Give objects that list `properties` `additionalProperties: false` when that is safe.

    JSON Schema allows extra keys by default; a small model then invents keys until max tokens. Closing
    only narrows the set of outputs (they still validate against the original schema). Skipped where
    schemas are intersected (allOf, $ref with siblings, anyOf/oneOf with siblings), where `required` names
    a key not in `properties`, and where another keyword already decides about extra keys.
    """
    work = copy.deepcopy(schema)
    skip: set[int] = set()

    def validating(node: dict, but: str) -> bool:
        return any(k != but and k not in _ANNOTATIONS for k in node)

    def mark(_pointer: str, node: dict) -> None:
        for key in ("allOf", "anyOf", "oneOf"):
            branches = node.get(key)
            if isinstance(branches, list) and (key == "allOf" or validating(node, key)):
                for branch in branches:
                    if isinstance(branch, dict):
                        skip.add(id(branch))
                skip.add(id(node))
        if "$ref" in node and validating(node, "$ref"):
            skip.add(id(node))

    walk_schema(work, mark)
    # A $ref target used where it is intersected with something else must stay open.
    intersected: set[str] = set()
    walk_schema(work, lambda _p, n: intersected.add(n["$ref"])
                if id(n) in skip and isinstance(n.get("$ref"), str) else None)

    def close(pointer: str, node: dict) -> None:
        if id(node) in skip or "#" + pointer in intersected:
            return
        props = node.get("properties")
        if not isinstance(props, dict) or not props:
            return
        if any(k in node for k in ("additionalProperties", "patternProperties", "unevaluatedProperties",
                                   "minProperties", "maxProperties", "$ref", "allOf", "anyOf", "oneOf")):
            return
        required = node.get("required", [])
        if isinstance(required, list) and all(r in props for r in required):
            node["additionalProperties"] = False

    walk_schema(work, close)
    return work


_ANNOTATIONS = frozenset({"description", "title", "default", "examples", "$comment", "deprecated",
                          "readOnly", "writeOnly", "$id", "$schema", "$anchor", "$defs", "definitions"})


@dataclass
class Grammar:
    """A compiled grammar (llguidance's serialized form) and how it was made."""

    text: str
    closed: bool  # whether objects were closed (close_objects)


def compile_grammar(schema: dict, *, pretty: bool = False, closed: bool = True) -> Grammar:
    """The llguidance grammar for a checked schema (see gemmacli.schema.check_schema)."""
    from llguidance import LLMatcher

    options = json_options(pretty)
    if closed:
        grammar = LLMatcher.grammar_from_json_schema(close_objects(schema), overrides=cast(Any, options))
        if not LLMatcher.validate_grammar_with_warnings(grammar)[0]:
            return Grammar(grammar, True)
    grammar = LLMatcher.grammar_from_json_schema(schema, overrides=cast(Any, options))
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise SchemaError(f"the grammar engine refused the schema: {messages[0] if messages else '?'}")
    return Grammar(grammar, False)


def lark_grammar(lark: str) -> Grammar:
    """A grammar from llguidance's Lark syntax (gemmacli.engine.spans writes one per document)."""
    from llguidance import LLMatcher

    grammar = LLMatcher.grammar_from_lark(lark)
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise SchemaError(f"the grammar engine refused the span grammar: {messages[0] if messages else '?'}")
    return Grammar(grammar, True)


def new_matcher(tokenizer: Any, grammar: Grammar) -> Any:
    """A fresh LLMatcher (one per document); SchemaError when llguidance refuses it with this vocabulary."""
    from llguidance import LLMatcher

    matcher = LLMatcher(tokenizer, grammar.text, log_level=0)
    if matcher.is_error():
        raise SchemaError(f"the grammar engine refused the schema: {matcher.get_error()}")
    return matcher


# ---------------------------------------------------------------------------------------------- masks

_BIT = np.arange(32, dtype=np.uint32)


def tokenizer_size(encoder: Any) -> int:
    """Ids a tokenizers.Tokenizer can produce (added tokens included); 0 without one."""
    if encoder is None or not hasattr(encoder, "get_vocab_size"):
        return 0
    return int(encoder.get_vocab_size(with_added_tokens=True))


class Mask:
    """One reusable bitmask buffer: fill it from a matcher, then ask for the allowed token ids.

    `n_vocab` is the grammar's vocabulary (the tokenizer's); `rows`, when fewer, the model's: ids at or past
    it have no logits, so fill() clears them and they are never allowed, counted or chosen.
    """

    def __init__(self, n_vocab: int, rows: int | None = None) -> None:
        self.n_vocab = n_vocab if rows is None else min(n_vocab, rows)
        self.words = np.zeros((n_vocab + 31) // 32, dtype=np.int32)
        self._ptr = self.words.ctypes.data
        self._nbytes = self.words.nbytes
        self._tail: tuple[int, np.int32] | None = None
        if self.n_vocab < n_vocab:
            word, bit = divmod(self.n_vocab, 32)
            self._tail = (word, np.int32(np.uint32((1 << bit) - 1).view(np.int32)))

    def fill(self, matcher: Any) -> None:
        matcher.unsafe_compute_mask_ptr(self._ptr, self._nbytes)
        if self._tail is not None:
            word, keep = self._tail
            self.words[word] &= keep
            self.words[word + 1:] = 0

    def count(self) -> int:
        if hasattr(np, "bitwise_count"):  # numpy >= 2.0
            return int(np.bitwise_count(self.words.view(np.uint32)).sum())
        return int(np.unpackbits(self.words.view(np.uint8)).sum())

    def allowed(self) -> np.ndarray:
        """Allowed token ids, ascending (int64)."""
        words = self.words.view(np.uint32)
        nz = np.flatnonzero(words)
        if nz.size * 32 < self.n_vocab // 4:
            bits = (words[nz, None] >> _BIT) & 1
            ids = (nz[:, None] * 32 + _BIT.astype(np.int64))[bits.astype(bool)]
        else:
            ids = np.flatnonzero(np.unpackbits(self.words.view(np.uint8), bitorder="little"))
        return ids[ids < self.n_vocab]
