"""llguidance's tokenizer for a Gemma tokenizer.json, built in half the time from a checked, cached table.

llguidance can read a tokenizer.json itself (`LLTokenizer(json_text)`): it parses the whole file with the
Hugging Face tokenizers crate, takes every token's bytes and builds its token trie. That is 0.87 s at 262k
tokens (measured here), and it holds the GIL all along, so a cold `gemmacli extract` waits for it once its
head prefill is done. Given the bytes of every token and an encoder instead (`llguidance.TokenizerWrapper`),
it builds the same tokenizer in 0.47 s. The bytes come from the model's own `tokenizers.Tokenizer`, already
loaded for the prompt, and are kept under ${XDG_CACHE_HOME:-~/.cache}/gemmacli/tokens, keyed by the
tokenizer file's sha256, the vocabulary size and llguidance's version.

A table is used only once it has been checked against llguidance's own reading of the same file: on a cache
miss both are built and compared token by token (bytes, special or not) and on probe strings, and the table
is stored and used only when they agree. Tokenizers not built like
Gemma's (SentencePiece BPE with byte fallback: decoder Replace("▁", " "), ByteFallback, Fuse) always take
llguidance's own path.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gemmacli.files import write_atomically
from gemmacli.models.store import cache_home

GEMMA_DECODERS = ["Replace", "ByteFallback", "Fuse"]
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
#: Text whose tokenization must be the same through the table's encoder as through llguidance's own.
PROBES = ('{"name":"', '","age":', '"a b"', " hello  world", "Zürich café ☃ 😀", "\n\n  x\t", "-0.5e+10",
          "<start_of_turn>user\n", "null,true,false]}")


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    return cache_home(environ) / "tokens"


def is_gemma_structure(tokenizer_json: str) -> bool:
    """True when the file's decoder is Gemma's (read without parsing the 8.7 MB around it).

    HF writes the top-level "decoder" before "model", so its first occurrence as a key is the decoder; a
    file ordered otherwise finds a vocabulary entry there (a number, not an object) and answers False.
    """
    at = tokenizer_json.find('"decoder":')
    if at < 0:
        return False
    start = at + len('"decoder":')
    while start < len(tokenizer_json) and tokenizer_json[start].isspace():
        start += 1
    try:  # decoded in place: a slice of the file would copy its megabytes
        decoder, _ = json.JSONDecoder().raw_decode(tokenizer_json, start)
    except ValueError:
        return False
    if not isinstance(decoder, dict) or decoder.get("type") != "Sequence":
        return False
    steps = decoder.get("decoders") or []
    if [d.get("type") for d in steps if isinstance(d, dict)] != GEMMA_DECODERS:
        return False
    replace = steps[0]
    return replace.get("pattern") == {"String": "\u2581"} and replace.get("content") == " "


def derive_table(encoder: Any, n_vocab: int) -> tuple[list[bytes], list[int]] | None:
    """Every token's bytes and the special token ids, from a Gemma `tokenizers.Tokenizer`; None when the
    tokenizer does not cover exactly `n_vocab` ids (llguidance pads those its own way)."""
    vocab: dict[str, int] = encoder.get_vocab(with_added_tokens=True)
    if len(vocab) != n_vocab or max(vocab.values()) != n_vocab - 1:
        return None
    # llguidance reads an added token as special when the file says so or when it looks like `<name>`
    # (Gemma 3's <unusedN>, <mask> and HTML tags are added but not flagged special in tokenizer.json).
    special = sorted(i for i, token in encoder.get_added_tokens_decoder().items()
                     if token.special or (len(token.content) > 2 and token.content.startswith("<")
                                          and token.content.endswith(">")))
    strings = [""] * n_vocab
    for text, i in vocab.items():
        strings[i] = text
    tokens = [text.replace("\u2581", " ").encode("utf-8") for text in strings]
    specials = set(special)
    for i, text in enumerate(strings):
        if len(text) == 6 and text.startswith("<0x") and i not in specials:
            match = _BYTE_TOKEN.fullmatch(text)
            if match:
                tokens[i] = bytes([int(match.group(1), 16)])
    return tokens, special


class TableTokenizer:
    """What `llguidance.TokenizerWrapper` reads: the token table and an encoder for text.

    The encoder refuses bytes, so llguidance hands it valid UTF-8 only and splits invalid bytes itself,
    as it does when it reads the tokenizer.json on its own.
    """

    def __init__(self, tokens: list[bytes], special: Sequence[int], encoder: Any, eos: int, bos: int) -> None:
        self.tokens = tokens
        self.special_token_ids = list(special)
        self.eos_token_id = eos
        self.bos_token_id = bos
        self._encoder = encoder

    def __call__(self, text: str | bytes) -> list[int]:
        if not isinstance(text, str):
            raise TypeError("text only")
        return list(self._encoder.encode(text, add_special_tokens=False).ids)


def from_table(tokens: list[bytes], special: Sequence[int], encoder: Any, n_vocab: int,
                eos_ids: Sequence[int], bos: int) -> Any:
    from llguidance import LLTokenizer, TokenizerWrapper

    table = TableTokenizer(tokens, special, encoder, int(eos_ids[0]), bos)
    return LLTokenizer(TokenizerWrapper(table), n_vocab=n_vocab, eos_token=list(eos_ids), slices=[])


def agree(ours: Any, theirs: Any) -> bool:
    """`ours` (built from a table) reads the vocabulary as llguidance's own reading (`theirs`) does: the
    same bytes and special flag for every token (llguidance's, e.g. the byte token 0xFF is its special
    marker), the same tokens for the probes."""
    if ours.vocab_size != theirs.vocab_size or list(ours.eos_tokens) != list(theirs.eos_tokens) \
            or ours.is_canonical != theirs.is_canonical:
        return False
    our_bytes, their_bytes = ours.decode_bytes, theirs.decode_bytes
    our_special, their_special = ours.is_special_token, theirs.is_special_token
    for i in range(theirs.vocab_size):
        if our_bytes([i]) != their_bytes([i]) or our_special(i) != their_special(i):
            return False
    return all(ours.tokenize_str(p) == theirs.tokenize_str(p) for p in PROBES)


def _table_path(folder: Path, sha256: str, n_vocab: int) -> Path:
    from importlib.metadata import version

    try:
        llguidance = version("llguidance")
    except Exception:
        llguidance = "unknown"
    return folder / f"{sha256[:32]}-{n_vocab}-llguidance{llguidance}.npz"


def _save(path: Path, tokens: list[bytes], special: Sequence[int]) -> None:
    lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    buffer = io.BytesIO()
    np.savez(buffer, offsets=offsets, blob=np.frombuffer(b"".join(tokens), dtype=np.uint8),
             special=np.asarray(special, dtype=np.int64))
    write_atomically(path, buffer.getvalue(), make_parents=True)


def _load(path: Path, n_vocab: int) -> tuple[list[bytes], list[int]] | None:
    """The stored table, or None when it is missing or not whole (then it is derived and checked again)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            offsets, blob, special = stored["offsets"], stored["blob"].tobytes(), stored["special"]
    except Exception:  # missing, cut short, not a zip, a member missing: derive and check again
        return None
    if offsets.shape != (n_vocab + 1,) or offsets[0] != 0 or offsets[-1] != len(blob) \
            or np.any(np.diff(offsets) < 0) or np.any((special < 0) | (special >= n_vocab)):
        return None
    bounds = offsets.tolist()
    return [blob[bounds[i]: bounds[i + 1]] for i in range(n_vocab)], special.tolist()


def _writable(folder: Path) -> bool:
    """Whether `folder` exists writable or can be made under its nearest existing ancestor."""
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            return candidate.is_dir() and os.access(candidate, os.W_OK | os.X_OK)
    return False


def build(tokenizer_json: str, sha256: str, n_vocab: int, eos_ids: Sequence[int], *,
          encoder: Any = None, bos: int = 2, cache_dir: Path | None = None) -> tuple[Any, str]:
    """(LLTokenizer, how it was built: "table", "checked" or "llguidance").

    "table": from the cached table (0.47 s at 262k); "checked": a cache miss: the table was derived, checked
    against llguidance's own reading, stored, and used (so every run decodes through the same machinery);
    "llguidance": llguidance's own reading only (no encoder, not Gemma's structure, or the table disagreed,
    which is remembered beside the table's name so later runs do not derive and check it again).
    """
    from llguidance import LLTokenizer

    def theirs() -> Any:
        return LLTokenizer(tokenizer_json, n_vocab=n_vocab, eos_token=list(eos_ids), slices=[])

    if encoder is None or not hasattr(encoder, "get_vocab") or not is_gemma_structure(tokenizer_json):
        return theirs(), "llguidance"
    path = _table_path(cache_dir or default_cache_dir(), sha256, n_vocab)
    stored = _load(path, n_vocab)
    if stored is not None:
        return from_table(*stored, encoder, n_vocab, eos_ids, bos), "table"
    differs = path.with_suffix(".differs")  # a table that failed its check: not derived and checked again
    if differs.exists() or not _writable(path.parent):  # else the check would be paid on every run
        return theirs(), "llguidance"
    derived = derive_table(encoder, n_vocab)
    reference = theirs()
    ours = None if derived is None else from_table(*derived, encoder, n_vocab, eos_ids, bos)
    if derived is None or not agree(ours, reference):
        with contextlib.suppress(OSError):
            write_atomically(differs, b"", make_parents=True)
        return reference, "llguidance"
    with contextlib.suppress(OSError):  # a read-only or full cache: the next run checks again, that is all
        _save(path, *derived)
    return ours, "checked"


def prepare(folder: Path, environ: Mapping[str, str] | None = None) -> str:
    """Check and store the token table of a model folder's tokenizer now, so that the first `extract` with
    it already builds from the table; build()'s answer. `gemmacli model export|pull|synth` call it (not
    through gemmacli.engine.grammar.TokenizerBuild, whose per-process cache would skip a tokenizer built
    before)."""
    import hashlib

    from gemmacli.engine.bpe import load_tokenizer
    from gemmacli.engine.grammar import tokenizer_size
    from gemmacli.models.store import ModelConfig

    config = ModelConfig.from_folder(folder)
    path = Path(folder) / "tokenizer.json"
    text = path.read_text(encoding="utf-8")
    encoder = load_tokenizer(path, cache=cache_home(environ) / "bpe")  # and stores its BPE table
    n_vocab = max(config.vocab_size, tokenizer_size(encoder))  # as TokenizerBuild sizes it
    _, how = build(text, hashlib.sha256(text.encode("utf-8")).hexdigest(), n_vocab,
                   list(config.eos_token_ids), encoder=encoder, bos=config.bos_token_id,
                   cache_dir=default_cache_dir(environ))
    return how
