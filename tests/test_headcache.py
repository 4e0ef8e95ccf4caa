"""Prompt heads' KV caches on disk (gemmacli.engine.headcache): a new process reads the head's cache instead
of prefilling it, writes what a prefill would have written, and never trusts an entry it cannot check."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gemmacli.engine import headcache
from gemmacli.engine.extractor import Extractor
from gemmacli.engine.headcache import HeadStore, head_store

SCHEMA = {"type": "object", "required": ["name", "city"], "properties": {
    "name": {"type": "string", "maxLength": 24}, "city": {"type": ["string", "null"], "maxLength": 24}}}
TEXT = "Alice Martin, 34, wrote from Paris on Monday about her invoice."


@pytest.fixture(scope="module")
def model(request: pytest.FixtureRequest) -> Any:
    from gemmacli.engine.runtime import Model

    return Model.load(Path(request.getfixturevalue("tiny_model_dir")), threads=1)


@pytest.fixture(autouse=True)
def _short_heads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny model's heads are short: keep every one of them."""
    monkeypatch.setattr(headcache, "MIN_HEAD_TOKENS", 1)


@pytest.fixture
def store(model: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> HeadStore:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    found = head_store(model, threads=1)
    assert found is not None and found.folder == tmp_path / "gemmacli" / "heads"
    return found


def _entries(store: HeadStore) -> list[Path]:
    return sorted(store.folder.glob("*.kv"))


def _counting_forwards(model: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch model.forward to record how many tokens each run fed."""
    runs: list[int] = []
    forward = model.forward

    def counted(cache: Any, ids: Any) -> Any:
        runs.append(len(ids))
        return forward(cache, ids)

    monkeypatch.setattr(model, "forward", counted)
    return runs


def test_a_new_extractor_reads_the_head_from_disk_and_writes_the_same(
        model: Any, store: HeadStore, monkeypatch: pytest.MonkeyPatch) -> None:
    first = Extractor(SCHEMA, model=model, max_tokens=60).extract(TEXT)
    [entry] = _entries(store)
    runs = _counting_forwards(model, monkeypatch)
    second = Extractor(SCHEMA, model=model, max_tokens=60).extract(TEXT)
    assert second.text == first.text
    assert runs[0] == second.prompt_tokens - len(_head(entry)), "only the text was prefilled"
    assert first.model_calls == second.model_calls + 1


def _head(entry: Path) -> list[int]:
    data = entry.read_bytes()
    start = len(headcache.MAGIC) + 8
    size = int.from_bytes(data[len(headcache.MAGIC): start], "little")
    return [int(i) for i in json.loads(data[start: start + size])["ids"]]


def test_a_read_cache_is_bit_equal_to_a_prefill(model: Any, store: HeadStore) -> None:
    head = model.tokenizer.encode("Extract the fields of this text as JSON. " * 3).ids
    cache = model.new_cache()
    model.forward(cache, head)
    store.save(head, cache)
    read = store.load(model, head)
    assert read is not None and read.length == cache.length == len(head)
    for name, buf in cache.values.items():
        assert read.values[name].shape == buf.shape
        assert np.array_equal(read.values[name], buf)
    assert store.load(model, head[:-1]) is None, "another head has no entry"


@pytest.mark.parametrize("damage", ["truncated", "flipped", "other ids", "not a zip"])
def test_a_damaged_entry_is_passed_over_and_rewritten(model: Any, store: HeadStore, damage: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    expected = Extractor(SCHEMA, model=model, max_tokens=60).extract(TEXT).text
    [entry] = _entries(store)
    data = entry.read_bytes()
    if damage == "truncated":
        entry.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":  # a byte of the last buffer: the CRC no longer matches
        entry.write_bytes(data[:-5] + bytes([data[-5] ^ 0xFF]) + data[-4:])
    elif damage == "other ids":  # a valid entry, but of another head
        head = _head(entry)
        cache = model.new_cache()
        model.forward(cache, [*head[:-1], head[-1] + 1])
        entry.write_bytes(headcache._entry(cache, [*head[:-1], head[-1] + 1]))
    else:
        entry.write_bytes(b"not an entry")
    runs = _counting_forwards(model, monkeypatch)
    assert Extractor(SCHEMA, model=model, max_tokens=60).extract(TEXT).text == expected
    assert len(runs) >= 2 and runs[0] == len(_head(entry)), "the head was prefilled again"
    assert store.load(model, _head(entry)) is not None, "and its entry rewritten"


def test_entries_are_keyed_by_what_decides_their_numbers(model: Any, store: HeadStore) -> None:
    other_threads = head_store(model, threads=2)
    assert other_threads is not None and other_threads.identity != store.identity
    assert store.path([2, 5, 7]) != store.path([2, 5, 8])
    assert head_store(object(), threads=1) is None, "only a runtime Model's caches are kept"


def test_the_folder_keeps_the_entries_read_last_within_its_limit(model: Any, store: HeadStore) -> None:
    heads = [model.tokenizer.encode(f"Head number {i}: extract every field.").ids for i in range(3)]
    for head in heads:
        cache = model.new_cache()
        model.forward(cache, head)
        store.save(head, cache)
    sizes = [path.stat().st_size for path in _entries(store)]
    assert len(sizes) == 3
    store.load(model, heads[0])  # read: now the most recent
    older = store.path(heads[1])
    os.utime(older, (1, 1))
    limited = HeadStore(store.folder, store.identity, limit=sum(sizes) - 1)
    cache = model.new_cache()
    model.forward(cache, heads[2])
    limited.save(heads[2], cache)
    assert not older.exists() and store.path(heads[0]).exists() and store.path(heads[2]).exists()


def test_an_unwritable_cache_folder_changes_nothing(model: Any, store: HeadStore, tmp_path: Path) -> None:
    store.folder.parent.mkdir(parents=True, exist_ok=True)
    store.folder.write_text("a file where the folder should be")
    expected = Extractor(SCHEMA, model=model, max_tokens=60, prefix_cache=False).extract(TEXT).text
    assert Extractor(SCHEMA, model=model, max_tokens=60).extract(TEXT).text == expected


def test_prefix_cache_off_keeps_nothing(model: Any, store: HeadStore) -> None:
    Extractor(SCHEMA, model=model, max_tokens=60, prefix_cache=False).extract(TEXT)
    assert not store.folder.exists()
