"""Gemma's tokenizer without the second it takes to load: its BPE table read from a checked cache.

`tokenizers.Tokenizer.from_file` spends 1.1 s (measured here) on Gemma 3's tokenizer.json, 0.9 s of it
building its 514,906 merges, and holds the GIL all along: a third of a cold one-line `gemmacli extract`.
The file's algorithm is simple enough to run from a compact table instead:

1. split the text at added tokens (`<start_of_turn>`, `\\n\\n`, `<table>`, `<unused12>`...), leftmost and
   longest first, as written (Gemma's are all `normalized: false`, none strips or needs a whole word);
2. in every other piece, spaces become "▁" (the normalizer; the pre-tokenizer then splits on spaces, which
   are gone, so a piece is one word);
3. BPE over the word's characters: the adjacent pair of lowest merge rank is merged, the leftmost of equal
   ranks first, until no pair merges; a character outside the vocabulary is its UTF-8 bytes' `<0xNN>`
   tokens.

The table (characters, merges, added tokens) is kept under ${XDG_CACHE_HOME:-~/.cache}/gemmacli/bpe, keyed
by the tokenizer file's sha256 and this module's format. It is written only after it has encoded probe
texts exactly as the file read by `tokenizers` does (tests/test_bpe.py compares every shared dataset text
with the reference tokenizer too); decoding ("▁" a space, <0xNN> runs their UTF-8 bytes) likewise. A file
built otherwise, a cache miss and anything else (the vocabulary as a dict, added tokens' flags) go to
`tokenizers` itself, loaded when first needed.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import json
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gemmacli.files import write_atomically
from gemmacli.models.store import cache_home, sha256_file

#: Bumped when the table's layout or the encoding it describes changes: old tables are then not read.
FORMAT = 2
_SHIFT = 20  # a merge's pair key: left << 20 | right (ids below 2**20); its value: rank << 20 | new id
_MASK = (1 << _SHIFT) - 1
_SEPARATOR = "\x00"  # between the stored strings (a vocabulary holding it is not eligible)
#: Texts a table must encode as `tokenizers` does before it is stored.
PROBES = ("", " ", "  leading and trailing  ", "Zürich café ☃ 😀 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u2581x", "a\n\nb\n\n\n\tc\t\td",
          '{"name":"Ada","age":36,"tags":["x","y"]}', "<start_of_turn>user\nHi<end_of_turn>\n<bos>",
          "<table><tr><td>1</td></tr></table> <unused12> [multimodal] <mask>", "-0.5e+10 1,234.56 $99",
          "Call Ada Lovelace at +44 20 7946 0000", "ﷺ \U0001F9D1\u200D\U0001F4BB \x00\x01\x7f",
          "İstanbul ǅ ß",
          "          ten spaces", "x" * 300 + " " + "ab" * 200)


@dataclass(frozen=True)
class Encoded:
    """What `tokenizers.Encoding` gives that gemmacli reads: the ids."""

    ids: list[int]


class BpeTable:
    """What gemmacli needs of a Gemma tokenizer.json: encoding and decoding (see the module docstring)."""

    def __init__(self, chars: dict[str, int], merges: dict[int, int], added: dict[str, int],
                 byte_ids: list[int], bos: int | None, pieces: list[str], special: frozenset[int]) -> None:
        self.chars = chars  # single characters in the vocabulary -> id
        self.merges = merges  # left << 20 | right -> rank << 20 | merged id
        self.added = added  # added token text -> id
        self.byte_ids = byte_ids  # <0xNN> ids, by byte
        self.bos = bos  # prepended with add_special_tokens (the post-processor), if any
        self.pieces = pieces  # every token's text, by id ("" for an id the file does not use)
        self.special = special  # added tokens flagged special: left out by decode
        self.vocab_size = len(pieces)
        self._byte_of = {i: b for b, i in enumerate(byte_ids)}
        self._added_at = _added_pattern(added)
        self._added_lengths = sorted({len(t) for t in added}, reverse=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> Encoded:
        ids = [self.bos] if add_special_tokens and self.bos is not None else []
        start = 0
        for found in self._added_at.finditer(text):
            at = found.start()
            if at < start:
                continue
            length = self._longest_added(text, at)
            if not length:
                continue
            ids += self._word(text[start:at])
            ids.append(self.added[text[at: at + length]])
            start = at + length
        ids += self._word(text[start:])
        return Encoded(ids)

    def _longest_added(self, text: str, at: int) -> int:
        for length in self._added_lengths:
            if text[at: at + length] in self.added:
                return length
        return 0

    def _word(self, piece: str) -> list[int]:
        """BPE over one piece between added tokens (its spaces made "▁")."""
        if not piece:
            return []
        ids: list[int] = []
        chars, byte_ids = self.chars, self.byte_ids
        for ch in piece.replace(" ", "\u2581"):
            found = chars.get(ch)
            if found is None:
                ids.extend(byte_ids[b] for b in ch.encode("utf-8"))
            else:
                ids.append(found)
        return _merge(ids, self.merges)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of `ids` as the file's decoder makes it: "▁" is a space, runs of <0xNN> tokens are
        their bytes in UTF-8 (a run that is not valid UTF-8 is one U+FFFD per byte), special tokens are
        left out unless asked for."""
        out: list[str] = []
        run = bytearray()
        for i in ids:
            if skip_special_tokens and i in self.special:
                continue
            byte = self._byte_of.get(i)
            if byte is not None:
                run.append(byte)
                continue
            if run:
                out.append(_utf8_or_replacements(run))
                run.clear()
            out.append(self.pieces[i].replace("\u2581", " "))
        if run:
            out.append(_utf8_or_replacements(run))
        return "".join(out)


def _utf8_or_replacements(run: bytearray) -> str:
    try:
        return run.decode("utf-8")
    except UnicodeDecodeError:
        return "\ufffd" * len(run)


def _merge(ids: list[int], merges: dict[int, int]) -> list[int]:
    """Apply merges as tokenizers' BPE does: lowest rank first, then leftmost; a stale pair is skipped."""
    count = len(ids)
    if count < 2:
        return ids
    after = list(range(1, count + 1))
    after[-1] = -1
    before = list(range(-1, count - 1))
    heap = []
    for pos in range(count - 1):
        merged = merges.get(ids[pos] << _SHIFT | ids[pos + 1])
        if merged is not None:
            heap.append((merged >> _SHIFT, pos, merged & _MASK))
    heapq.heapify(heap)
    push, pop = heapq.heappush, heapq.heappop
    while heap:
        _, pos, new = pop(heap)
        right = after[pos]
        if ids[pos] < 0 or right < 0:
            continue
        merged = merges.get(ids[pos] << _SHIFT | ids[right])
        if merged is None or merged & _MASK != new:
            continue
        ids[pos], ids[right] = new, -1
        nxt = after[right]
        after[pos] = nxt
        if nxt >= 0:
            before[nxt] = pos
            merged = merges.get(new << _SHIFT | ids[nxt])
            if merged is not None:
                push(heap, (merged >> _SHIFT, pos, merged & _MASK))
        prev = before[pos]
        if prev >= 0:
            merged = merges.get(ids[prev] << _SHIFT | new)
            if merged is not None:
                push(heap, (merged >> _SHIFT, prev, merged & _MASK))
    return [i for i in ids if i >= 0]


def _added_pattern(added: dict[str, int]) -> re.Pattern[str]:
    """Where an added token may start: its first characters (the longest match is then looked up)."""
    firsts = sorted({token[0] for token in added if token})
    return re.compile("[" + "".join(re.escape(c) for c in firsts) + "]" if firsts else "(?!)")


# ------------------------------------------------------------------------------------------ the table


def table_from_json(data: dict[str, Any]) -> BpeTable | None:
    """The table of a parsed tokenizer.json built as Gemma's is, else None (then tokenizers encodes)."""
    if not _built_as_gemmas(data):
        return None
    model = data["model"]
    vocab: dict[str, int] = model.get("vocab") or {}
    added = {t["content"]: int(t["id"]) for t in data.get("added_tokens") or []}
    byte_ids = [vocab.get(f"<0x{b:02X}>") for b in range(256)]
    bos = _bos(data.get("post_processor"), {**vocab, **added})
    every = (*vocab.values(), *added.values())
    if None in byte_ids or bos is False or any(_SEPARATOR in t for t in (*vocab, *added)) \
            or max(every, default=0) > _MASK:
        return None
    chars = {t: i for t, i in vocab.items() if len(t) == 1}
    special = frozenset(int(t["id"]) for t in data.get("added_tokens") or [] if t.get("special"))
    return BpeTable(chars, _merges(model.get("merges") or [], vocab), added,
                    [int(i) for i in byte_ids if i is not None], bos if isinstance(bos, int) else None,
                    _pieces([*vocab.items(), *added.items()]), special)


def _pieces(tokens: list[tuple[str, int]]) -> list[str]:
    """Every token's text by id ("" for an id no token has)."""
    pieces = [""] * (max(i for _, i in tokens) + 1)
    for text, i in tokens:
        pieces[i] = text
    return pieces


def _built_as_gemmas(data: dict[str, Any]) -> bool:
    """Gemma's normalizer and pre-tokenizer, a plain BPE with byte fallback, added tokens matched as
    written: what BpeTable.encode does, and nothing it does not."""
    model = data.get("model") or {}
    plain_bpe = (model.get("type") == "BPE" and model.get("byte_fallback") is True
                 and model.get("dropout") is None and not model.get("continuing_subword_prefix")
                 and not model.get("end_of_word_suffix") and not model.get("ignore_merges"))
    as_written = all(not (t.get("normalized") or t.get("lstrip") or t.get("rstrip") or t.get("single_word"))
                     for t in data.get("added_tokens") or [])
    return (plain_bpe and as_written and _is_gemma_normalizer(data.get("normalizer"))
            and _is_space_split(data.get("pre_tokenizer")))


def _merges(pairs: list[Any], vocab: dict[str, int]) -> dict[int, int]:
    """left << 20 | right -> rank << 20 | merged id, from the file's merges (pairs, or "a b" strings)."""
    merges = {}
    for rank, pair in enumerate(pairs):
        left, right = pair if isinstance(pair, list) else pair.split(" ", 1)
        merges[vocab[left] << _SHIFT | vocab[right]] = rank << _SHIFT | vocab[left + right]
    return merges


def _is_gemma_normalizer(normalizer: Any) -> bool:
    return normalizer == {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}


def _is_space_split(pre_tokenizer: Any) -> bool:
    """No pre-tokenizer, or a split on spaces, which the normalizer has already replaced."""
    return pre_tokenizer is None or (isinstance(pre_tokenizer, dict) and pre_tokenizer.get("type") == "Split"
                                     and pre_tokenizer.get("pattern") == {"String": " "})


def _bos(post: Any, ids: dict[str, int]) -> int | bool | None:
    """The id the post-processor puts first (None: it adds nothing), or False for one not understood."""
    if post is None:
        return None
    if not isinstance(post, dict) or post.get("type") != "TemplateProcessing":
        return False
    single = post.get("single") or []
    if len(single) == 1 and single[0].get("Sequence", {}).get("id") == "A":
        return None
    if len(single) == 2 and "SpecialToken" in single[0] and single[1].get("Sequence", {}).get("id") == "A":
        name = single[0]["SpecialToken"].get("id")
        special = (post.get("special_tokens") or {}).get(name) or {}
        return int(special["ids"][0]) if special.get("ids") == [ids.get(name)] else False
    return False


def _save(path: Path, table: BpeTable) -> None:
    keys = np.fromiter(table.merges.keys(), dtype=np.int64, count=len(table.merges))
    values = np.fromiter(table.merges.values(), dtype=np.int64, count=len(table.merges))
    arrays = {
        "merge_keys": keys, "merge_values": values,
        "chars": np.frombuffer(_SEPARATOR.join(table.chars).encode("utf-8"), dtype=np.uint8),
        "char_ids": np.fromiter(table.chars.values(), dtype=np.int64, count=len(table.chars)),
        "added": np.frombuffer(_SEPARATOR.join(table.added).encode("utf-8"), dtype=np.uint8),
        "added_ids": np.fromiter(table.added.values(), dtype=np.int64, count=len(table.added)),
        "byte_ids": np.asarray(table.byte_ids, dtype=np.int64),
        "pieces": np.frombuffer(_SEPARATOR.join(table.pieces).encode("utf-8"), dtype=np.uint8),
        "special": np.asarray(sorted(table.special), dtype=np.int64),
        "scalars": np.asarray([-1 if table.bos is None else table.bos], dtype=np.int64),
    }
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # savez types its keywords as allow_pickle's
    write_atomically(path, buffer.getvalue(), make_parents=True)


def _load(path: Path) -> BpeTable | None:
    """The stored table, or None when it is missing or not whole (then it is built and checked again)."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        chars = arrays["chars"].tobytes().decode("utf-8").split(_SEPARATOR)
        added = arrays["added"].tobytes().decode("utf-8").split(_SEPARATOR)
        char_ids, added_ids = arrays["char_ids"].tolist(), arrays["added_ids"].tolist()
        pieces = arrays["pieces"].tobytes().decode("utf-8").split(_SEPARATOR)
        (bos,) = arrays["scalars"].tolist()
        if len(chars) != len(char_ids) or len(added) != len(added_ids) or arrays["byte_ids"].shape != (256,):
            return None
        merges = zip(arrays["merge_keys"].tolist(), arrays["merge_values"].tolist(), strict=True)
        return BpeTable(dict(zip(chars, char_ids, strict=True)), dict(merges),
                        dict(zip(added, added_ids, strict=True)), arrays["byte_ids"].tolist(),
                        None if bos < 0 else bos, pieces, frozenset(arrays["special"].tolist()))
    except (OSError, ValueError, KeyError, EOFError, UnicodeDecodeError, zipfile.BadZipFile):
        return None


def agrees(table: BpeTable, tokenizer: Any, texts: Sequence[str] = PROBES) -> bool:
    """The table encodes `texts` as `tokenizer` (a tokenizers.Tokenizer) does, with and without its
    special tokens, and decodes those ids, and every single id, as it does."""
    for text in texts:
        for special in (False, True):
            ids = tokenizer.encode(text, add_special_tokens=special).ids
            if table.encode(text, special).ids != ids or any(
                    table.decode(ids, skip) != tokenizer.decode(ids, skip_special_tokens=skip)
                    for skip in (False, True)):
                return False
    return table.vocab_size == tokenizer.get_vocab_size(with_added_tokens=True) and all(
        table.decode([i], False) == tokenizer.decode([i], skip_special_tokens=False)
        for i in range(table.vocab_size))


# ------------------------------------------------------------------------------------ the tokenizer


class GemmaTokenizer:
    """A Gemma tokenizer.json: `encode` and `decode` from its table; anything else from `tokenizers`, loaded
    on first use (the vocabulary, read when llguidance's token table is first built)."""

    def __init__(self, path: Path, table: BpeTable) -> None:
        self.path = path
        self.table = table
        self._full: Any = None

    def encode(self, text: str, add_special_tokens: bool = True) -> Encoded:
        return self.table.encode(text, add_special_tokens)

    def get_vocab_size(self, with_added_tokens: bool = True) -> int:
        return self.table.vocab_size if with_added_tokens else int(self.full.get_vocab_size(False))

    def token_to_id(self, token: str) -> int | None:
        found = self.table.added.get(token)
        return found if found is not None else self.full.token_to_id(token)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.table.decode(ids, skip_special_tokens)

    def get_vocab(self, with_added_tokens: bool = True) -> dict[str, int]:
        return dict(self.full.get_vocab(with_added_tokens=with_added_tokens))

    def get_added_tokens_decoder(self) -> dict[int, Any]:
        return dict(self.full.get_added_tokens_decoder())

    @property
    def full(self) -> Any:
        """The file read by `tokenizers` (loaded on first use)."""
        if self._full is None:
            from tokenizers import Tokenizer

            self._full = Tokenizer.from_file(str(self.path))
        return self._full

    def __getattr__(self, name: str) -> Any:  # the rest of tokenizers.Tokenizer's interface
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.full, name)


def load_tokenizer(path: Path, *, cache: Path | None = None) -> Any:
    """A GemmaTokenizer from the cached table of this file, else a `tokenizers.Tokenizer` (which, for a
    file built as Gemma's, first derives, checks and stores the table, so the next process is fast)."""
    from tokenizers import Tokenizer

    folder = cache if cache is not None else cache_home() / "bpe"
    table_path = folder / f"{sha256_file(path)[:32]}-v{FORMAT}.npz"  # hashed in blocks: no 16 MB copy
    table = _load(table_path)
    if table is not None:
        return GemmaTokenizer(path, table)
    data = path.read_bytes()
    tokenizer = Tokenizer.from_str(data.decode("utf-8"))
    with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
        table = table_from_json(json.loads(data))
    if table is not None and agrees(table, tokenizer):
        with contextlib.suppress(OSError):  # a read-only or full cache: the next run builds it again
            _save(table_path, table)
    return tokenizer
