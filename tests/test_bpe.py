"""Gemma's tokenizer from its cached BPE table (gemmacli.engine.bpe): the same ids as the `tokenizers` reading
of Gemma 3's published tokenizer.json on every shared dataset text and on texts made to be awkward, stored
only once checked, and never trusted when damaged."""

from __future__ import annotations

import json
import random
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from gemmacli.engine import bpe
from gemmacli.engine.bpe import GemmaTokenizer, load_tokenizer

SHARED = Path(__file__).resolve().parents[2] / "shared"
REFERENCE = SHARED / "reference" / "gemma-3-tokenizer" / "tokenizer.json"
AWKWARD = ["  two  spaces  ", "\n" * 45 + "x" + "\t" * 7, "▁▁ already ▁ marked", "<unused0><unused6241>",
           "<start_of_turn<end_of_turn>>", "<table></table><td>", "a<bos>b<eos>c<pad>", "\u00a0non-breaking",
           "e\u0301 composed é", "\ufeffBOM", "\U0010ffff\ue000", "日本語のテキスト、中文文本",
           "مرحبا بالعالم", "   \n   \n", "\r\n windows\r\n", "😀" * 20, "ab" * 1000]


@cache
def _reference() -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(REFERENCE))


@cache
def _table() -> bpe.BpeTable:
    table = bpe.table_from_json(json.loads(REFERENCE.read_text(encoding="utf-8")))
    assert table is not None, "Gemma 3's tokenizer.json is eligible"
    return table


def _dataset_texts() -> list[str]:
    texts = []
    for path in sorted((SHARED / "datasets").glob("*/*.jsonl")):
        with path.open(encoding="utf-8") as lines:
            texts += [json.loads(line)["text"] for line in lines if line.strip()]
    return texts


def test_every_shared_dataset_text_encodes_as_the_reference_does() -> None:
    texts = _dataset_texts()
    assert len(texts) > 10_000
    reference = [e.ids for e in _reference().encode_batch(texts, add_special_tokens=False)]
    ours = [_table().encode(text, add_special_tokens=False).ids for text in texts]
    differ = [text for text, a, b in zip(texts, ours, reference, strict=True) if a != b]
    assert not differ, f"{len(differ)} texts differ, e.g. {differ[0][:80]!r}"


def test_awkward_and_random_texts_encode_as_the_reference_does() -> None:
    rng = random.Random(7)
    alphabet = [*"ab ▁\n\t<>/tdunsed0123é😀日", "<unused3>", "<td>", "\n\n", "  "]
    randoms = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(2000)]
    for text in [*AWKWARD, *bpe.PROBES, *randoms]:
        for special in (False, True):
            assert _table().encode(text, special).ids == _reference().encode(
                text, add_special_tokens=special).ids, repr(text)


def test_decoding_is_the_references_on_every_shared_dataset_text_and_on_random_ids() -> None:
    texts = _dataset_texts()
    encoded = [e.ids for e in _reference().encode_batch(texts, add_special_tokens=True)]
    for skip in (True, False):
        reference = _reference().decode_batch(encoded, skip_special_tokens=skip)
        assert [_table().decode(ids, skip) for ids in encoded] == reference
    rng = random.Random(11)
    byte_ids = _table().byte_ids
    pool = [*byte_ids[0xC0:0xF8], *byte_ids[0x80:0xC0], *byte_ids[:0x80], *sorted(_table().special),
            *range(_table().vocab_size - 7000, _table().vocab_size), *range(100, 3000)]
    for _ in range(2000):  # byte runs that are not UTF-8, special and added tokens, unused ids
        ids = [rng.choice(pool) for _ in range(rng.randint(1, 12))]
        for skip in (True, False):
            assert _table().decode(ids, skip) == _reference().decode(ids, skip_special_tokens=skip), ids


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """(what a cache miss returns, the table it stored)."""
    folder = tmp_path_factory.mktemp("bpe")
    first = load_tokenizer(REFERENCE, cache=folder)
    [table] = folder.glob("*.npz")
    return first, table


def test_a_checked_table_is_stored_and_read_back_without_tokenizers(stored: tuple[Any, Path],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    first, table = stored
    assert not isinstance(first, GemmaTokenizer), "a cache miss reads the file with tokenizers"
    import tokenizers

    def refuse(*_: Any) -> Any:
        raise AssertionError("tokenizers was loaded")

    monkeypatch.setattr(tokenizers.Tokenizer, "from_file", refuse)
    second = load_tokenizer(REFERENCE, cache=table.parent)
    assert isinstance(second, GemmaTokenizer)
    text = "Call Ada Lovelace at +44 20 7946 0000\n\n<start_of_turn>"
    assert second.encode(text).ids == first.encode(text).ids
    assert second.get_vocab_size(with_added_tokens=True) == first.get_vocab_size(with_added_tokens=True)
    assert second.token_to_id("<start_of_turn>") == first.token_to_id("<start_of_turn>")
    monkeypatch.undo()
    ids = second.encode(text, add_special_tokens=False).ids
    assert second.decode(ids) == first.decode(ids), "decoding loads the file on first use"


@pytest.mark.parametrize("damage", ["truncated", "not a zip", "missing member"])
def test_a_damaged_table_is_not_read(stored: tuple[Any, Path], tmp_path: Path, damage: str) -> None:
    data = stored[1].read_bytes()
    path = tmp_path / stored[1].name
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif damage == "not a zip":
        path.write_bytes(b"junk")
    else:
        import numpy as np

        with np.load(stored[1]) as arrays:
            kept = {name: arrays[name] for name in arrays.files if name != "merge_keys"}
        np.savez(path, **kept)
    assert bpe._load(path) is None
    assert bpe._load(stored[1]) is not None


def test_a_damaged_table_is_rebuilt(stored: tuple[Any, Path], tmp_path: Path) -> None:
    (tmp_path / stored[1].name).write_bytes(b"junk")
    assert not isinstance(load_tokenizer(REFERENCE, cache=tmp_path), GemmaTokenizer)
    assert isinstance(load_tokenizer(REFERENCE, cache=tmp_path), GemmaTokenizer), "rewritten"


def test_the_tiny_test_models_tokenizer_is_built_as_gemmas(tiny_model_dir: Path) -> None:
    """So every test that extracts with a tiny model runs the table's encoder."""
    from tokenizers import Tokenizer

    path = tiny_model_dir / "tokenizer.json"
    table = bpe.table_from_json(json.loads(path.read_text(encoding="utf-8")))
    assert table is not None and bpe.agrees(table, Tokenizer.from_file(str(path)), [*AWKWARD, *bpe.PROBES])


@pytest.mark.parametrize("change", ["normalizer", "lstrip", "dropout", "post_processor"])
def test_a_tokenizer_built_otherwise_is_read_by_tokenizers(change: str) -> None:
    data = json.loads(REFERENCE.read_text(encoding="utf-8"))
    if change == "normalizer":
        data["normalizer"] = {"type": "NFKC"}
    elif change == "lstrip":
        data["added_tokens"][10]["lstrip"] = True
    elif change == "dropout":
        data["model"]["dropout"] = 0.1
    else:
        data["post_processor"] = {"type": "ByteLevel"}
    assert bpe.table_from_json(data) is None


def test_a_table_that_disagrees_is_not_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bpe, "agrees", lambda *_: False)
    assert not isinstance(load_tokenizer(REFERENCE, cache=tmp_path), GemmaTokenizer)
    assert not list(tmp_path.glob("*.npz"))
