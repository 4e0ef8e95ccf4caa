"""A Hugging Face `tokenizer.json` from a GGUF file's SentencePiece vocabulary (no sentencepiece, no hub).

llama.cpp stores a Gemma tokenizer as three parallel arrays (piece, score, type) plus special ids; it
keeps no merges. Gemma's SentencePiece model is BPE: it repeatedly joins the adjacent pair whose joined
piece scores highest. A `tokenizers` BPE model applies merges by rank instead, so the merges are rebuilt
here (every split of every piece into two pieces of the vocabulary), ranked by the joined piece's score,
the same derivation the reference tokenizer.json was made with. Two quirks of the GGUF copy are undone:

- user-defined pieces (runs of spaces, tabs and newlines, HTML tags) carry score -1000 in GGUF where
  SentencePiece had 0; with -1000 the whitespace merges would rank below ordinary words and a run of
  spaces would tokenize differently;
- runs of spaces are stored as spaces, where SentencePiece (and the normalizer below) use U+2581 (▁).

The result tokenizes exactly as Gemma 3's published tokenizer.json: tests/test_vocab.py compares the ids on
every text of the shared datasets and on hard cases.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SPACE = "\u2581"

#: GGUF token types (llama.cpp's LLAMA_TOKEN_TYPE_*)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

#: Gemma 3's named control tokens, marked special as in the published tokenizer (the <unusedN> are not).
GEMMA_SPECIAL_NAMES = frozenset({"<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>"})

_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


@dataclass(frozen=True)
class Vocabulary:
    """The tokenizer part of a GGUF file: pieces, scores and types by id, and the special ids."""

    pieces: Sequence[str]
    scores: Sequence[float]
    types: Sequence[int]
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int | None = None
    add_bos: bool = True

    def __post_init__(self) -> None:
        if not len(self.pieces) == len(self.scores) == len(self.types):
            raise ValueError("pieces, scores and types differ in length")


def tokenizer_json(vocab: Vocabulary) -> dict[str, Any]:
    """The tokenizer.json document (a dict to json.dump) for `vocab`."""
    pieces = [piece.replace(" ", SPACE) for piece in vocab.pieces]
    ids = {piece: i for i, piece in enumerate(pieces)}
    added = [i for i, kind in enumerate(vocab.types) if kind in (CONTROL, USER_DEFINED, UNKNOWN)]
    special = {vocab.bos_id, vocab.eos_id, vocab.unk_id}
    if vocab.pad_id is not None:
        special.add(vocab.pad_id)
    special |= {i for i in added if pieces[i] in GEMMA_SPECIAL_NAMES}
    bos = pieces[vocab.bos_id]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added_token(i, pieces[i], i in special) for i in added],
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                          "invert": False},
        "post_processor": _post_processor(bos, vocab.bos_id) if vocab.add_bos else None,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
        ]},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": pieces[vocab.unk_id],
            "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
            "byte_fallback": any(t == BYTE for t in vocab.types), "ignore_merges": False,
            "vocab": ids,
            "merges": merges(pieces, _sentencepiece_scores(vocab)),
        },
    }


def _sentencepiece_scores(vocab: Vocabulary) -> list[float]:
    """Scores as SentencePiece had them: user-defined pieces score 0 (GGUF writes -1000)."""
    return [0.0 if kind == USER_DEFINED else float(score)
            for score, kind in zip(vocab.scores, vocab.types, strict=True)]


def merges(pieces: Sequence[str], scores: Sequence[float]) -> list[list[str]]:
    """Every (left, right) whose concatenation is a piece, best joined score first.

    Ties are broken as the reference conversion breaks them: longer left piece first, then longer right
    piece, then the order in which the joined pieces and their splits were met (by id, then split ids).
    """
    ids = {piece: i for i, piece in enumerate(pieces)}
    found: list[tuple[float, int, int, int, str, str]] = []
    for merged, score in zip(pieces, scores, strict=True):
        if len(merged) < 2 or _BYTE_PIECE.match(merged):
            continue
        local = [(merged[:k], merged[k:]) for k in range(1, len(merged))
                 if merged[:k] in ids and merged[k:] in ids]
        local.sort(key=lambda pair: (ids[pair[0]], ids[pair[1]]))
        found.extend((score, len(left), len(right), len(found) + n, left, right)
                     for n, (left, right) in enumerate(local))
    found.sort(key=lambda m: (-m[0], -m[1], -m[2], m[3]))
    return [[left, right] for *_, left, right in found]


def _added_token(i: int, content: str, special: bool) -> dict[str, Any]:
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def _post_processor(bos: str, bos_id: int) -> dict[str, Any]:
    return {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
    }
