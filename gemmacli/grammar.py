"""Checked schema -> llguidance grammar and matcher; the model's token table for llguidance; token masks.

Building llguidance's tokenizer (its token trie over the whole vocabulary) costs seconds at 262k tokens,
so `TokenizerBuild` starts it on a thread (llguidance's Rust code runs while onnxruntime prefills) and keeps
one per tokenizer file per process, so a batch pays it once.
"""

from __future__ import annotations

import copy
import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gemmacli.errors import ModelError, SchemaError
from gemmacli.schema import COMPACT_OPTIONS, walk_schema

#: Pretty mode: a newline and up to 16 spaces of indentation where JSON allows whitespace, never more,
#: so a model still cannot spin in whitespace.
PRETTY_OPTIONS: dict[str, Any] = {"whitespace_pattern": r"(\n {0,16})?", "item_separator": ",",
                                  "key_separator": ": ?"}


def json_options(pretty: bool = False) -> dict[str, Any]:
    """llguidance JSON options: compact (default) or bounded pretty whitespace."""
    return dict(PRETTY_OPTIONS if pretty else COMPACT_OPTIONS)


# ------------------------------------------------------------------------------------------ tokenizer

_TOKENIZERS: dict[tuple[str, int, tuple[int, ...]], Any] = {}
_LOCK = threading.Lock()


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class TokenizerBuild:
    """llguidance's LLTokenizer for a model's tokenizer.json, built on a thread and cached per process."""

    def __init__(self, tokenizer_json: Path, n_vocab: int, eos_ids: list[int]) -> None:
        self.path = Path(tokenizer_json)
        self.n_vocab = int(n_vocab)
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
        if self._result is None:
            self._thread = threading.Thread(target=self._build, name="llguidance-tokenizer", daemon=True)
            self._thread.start()

    def _build(self) -> None:
        from llguidance import LLTokenizer

        start = time.perf_counter()
        try:
            tok = LLTokenizer(self._text, n_vocab=self.n_vocab, eos_token=list(self.eos_ids),
                              slices=LLTokenizer.json_slices())
        except BaseException as exc:  # surfaced in result()
            self._error = exc
            return
        self.build_seconds = time.perf_counter() - start
        with _LOCK:
            self._result = _TOKENIZERS.setdefault(self.key, tok)

    def done(self) -> bool:
        return self._result is not None or self._error is not None

    def result(self) -> Any:
        """The LLTokenizer (waits for the thread); ModelError if the tokenizer cannot be read."""
        if self._result is None and self._thread is not None:
            start = time.perf_counter()
            self._thread.join()
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

    def mark(_pointer: str, node: dict) -> None:
        for key in ("allOf", "anyOf", "oneOf"):
            branches = node.get(key)
            if isinstance(branches, list) and (key == "allOf" or len(node) > 1):
                for branch in branches:
                    if isinstance(branch, dict):
                        skip.add(id(branch))
                skip.add(id(node))
        if "$ref" in node and any(k not in ("$ref", "description", "title", "$comment") for k in node):
            skip.add(id(node))

    walk_schema(work, mark)
    # $ref targets can be intersected wherever they are used: never close them.
    targets: set[str] = set()
    walk_schema(work, lambda _p, n: targets.add(n["$ref"]) if isinstance(n.get("$ref"), str) else None)

    def close(pointer: str, node: dict) -> None:
        if id(node) in skip or "#" + pointer in targets:
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
        grammar = LLMatcher.grammar_from_json_schema(close_objects(schema), overrides=options)
        if not LLMatcher.validate_grammar_with_warnings(grammar)[0]:
            return Grammar(grammar, True)
    grammar = LLMatcher.grammar_from_json_schema(schema, overrides=options)
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise SchemaError(f"the grammar engine refused the schema: {messages[0] if messages else '?'}")
    return Grammar(grammar, False)


def new_matcher(tokenizer: Any, grammar: Grammar) -> Any:
    """A fresh LLMatcher (one per document); SchemaError when llguidance refuses it with this vocabulary."""
    from llguidance import LLMatcher

    matcher = LLMatcher(tokenizer, grammar.text, log_level=0)
    if matcher.is_error():
        raise SchemaError(f"the grammar engine refused the schema: {matcher.get_error()}")
    return matcher


# ---------------------------------------------------------------------------------------------- masks

_BIT = np.arange(32, dtype=np.uint32)


class Mask:
    """One reusable bitmask buffer: fill it from a matcher, then ask for the allowed token ids."""

    def __init__(self, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self.words = np.zeros((n_vocab + 31) // 32, dtype=np.int32)
        self._ptr = self.words.ctypes.data
        self._nbytes = self.words.nbytes

    def fill(self, matcher: Any) -> None:
        matcher.unsafe_compute_mask_ptr(self._ptr, self._nbytes)

    def count(self) -> int:
        return int(np.bitwise_count(self.words.view(np.uint32)).sum())

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
