"""Prompt heads' KV caches kept on disk, so that a new process skips the head's prefill.

A prompt's head (instruction, field guide, fixed worked examples) is the same for every document of a
schema. Within a process the Extractor prefills it once and copies its KV cache per document; a shell pipe
runs one document per process, so there the head's prefill was paid every time: ~1.1 s of a 3.9 s cold
`gemmacli extract --schema contact` (its two worked examples make a head of ~900 tokens). HeadStore keeps
the cache after that prefill under ${XDG_CACHE_HOME:-~/.cache}/gemmacli/heads, and the next process reads it
back (~20 MB) instead.

Byte-identity: an entry is only read by a process that would have computed the same numbers. Its key
covers the decoder graph's hash, onnxruntime's version, the thread count, the CPU (its model name and
instruction-set flags: onnxruntime picks its kernels by them), the cache's layout and the head's token ids.
The entry repeats the ids and a CRC of its buffers: a damaged or colliding entry is passed over (the head is
prefilled again and the entry rewritten), never used. The folder is kept under HEAD_CACHE_BYTES by removing
the entries read least recently.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gemmacli.engine.kvcache import KVCache
from gemmacli.files import write_atomically
from gemmacli.models.store import cache_home

if TYPE_CHECKING:
    from gemmacli.engine.runtime import Model

#: Most bytes the folder keeps (an entry is ~20 KB per head token for Gemma 3 270M).
HEAD_CACHE_BYTES = 1 << 30
#: Heads shorter than this are prefilled afresh: reading a file costs more than the run it saves.
MIN_HEAD_TOKENS = 64
_SUFFIX = ".npz"


def head_store(model: Any, *, threads: int | None) -> HeadStore | None:
    """The on-disk head store for this model, or None where it does not apply: a model that is not a
    runtime.Model with in-place cache buffers (a lockstep stream, a test double), or one without a graph
    hash to key entries by."""
    from gemmacli.engine.runtime import Model

    if not isinstance(model, Model) or not model.shares_cache_buffers or not model.sha256:
        return None
    return HeadStore(cache_home() / "heads", _identity(model, threads))


def _identity(model: Model, threads: int | None) -> str:
    """What, besides the head's ids, decides the numbers in a head's KV cache."""
    import onnxruntime as ort

    empty = model.new_cache()
    layout = sorted((name, list(buf.shape), str(buf.dtype), name in empty.growable)
                    for name, buf in empty.values.items())
    parts = [model.sha256, ort.__version__, threads or 0, os.cpu_count() or 0, _cpu(), layout]
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()


def _cpu() -> str:
    """The CPU's model name and flags (Linux), else what platform knows: kernels are chosen by them."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
        wanted = {}
        for line in info:
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "flags") and key not in wanted:
                wanted[key] = value.strip()
            if len(wanted) == 2:
                break
        if wanted:
            return json.dumps(wanted, sort_keys=True)
    return f"{platform.machine()} {platform.processor()}"


class HeadStore:
    """Head KV caches of one model, as run in this process (`head_store` builds it)."""

    def __init__(self, folder: Path, identity: str, *, limit: int = HEAD_CACHE_BYTES) -> None:
        self.folder = folder
        self.identity = identity
        self.limit = limit

    def path(self, head: Sequence[int]) -> Path:
        digest = hashlib.sha256(self.identity.encode("ascii"))
        digest.update(np.asarray(head, dtype=np.int64).tobytes())
        return self.folder / (digest.hexdigest() + _SUFFIX)

    def load(self, model: Model, head: Sequence[int]) -> KVCache | None:
        """The head's cache as a prefill of it would leave it, or None (no entry, or one not to trust)."""
        if len(head) < MIN_HEAD_TOKENS:
            return None
        path = self.path(head)
        try:
            with np.load(path, allow_pickle=False) as entry:
                cache = _restore(model.new_cache(), dict(entry.items()), head)
        except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile):
            return None
        if cache is not None:
            with contextlib.suppress(OSError):
                os.utime(path)  # read recently: the last to be removed
        return cache

    def save(self, head: Sequence[int], cache: KVCache) -> None:
        """Keep the cache after the head's prefill; a cache folder that cannot be written is passed over."""
        if len(head) < MIN_HEAD_TOKENS:
            return
        arrays: dict[str, Any] = _arrays(cache, head)  # Any: savez types its keywords as allow_pickle's
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        with contextlib.suppress(OSError):
            write_atomically(self.path(head), buffer.getvalue(), make_parents=True)
            self._trim()

    def _trim(self) -> None:
        """Remove the entries read least recently until the folder holds at most `limit` bytes."""
        entries = []
        for path in self.folder.glob("*" + _SUFFIX):
            with contextlib.suppress(OSError):
                info = path.stat()
                entries.append((info.st_mtime, info.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.limit:
                break
            with contextlib.suppress(OSError):
                path.unlink()
                total -= size


def _arrays(cache: KVCache, head: Sequence[int]) -> dict[str, np.ndarray]:
    """The entry's arrays: each buffer's filled rows (a window layer's whole ring), the ids and a CRC."""
    arrays: dict[str, np.ndarray] = {}
    crc = 0
    for index, name in enumerate(sorted(cache.values)):
        buf = cache.values[name]
        rows = buf[:, :, : cache.length] if name in cache.growable else buf
        arrays[f"kv{index}"] = np.ascontiguousarray(rows)
        crc = zlib.crc32(arrays[f"kv{index}"].data, crc)
    arrays["ids"] = np.asarray(head, dtype=np.int64)
    arrays["crc"] = np.asarray([crc], dtype=np.uint32)
    return arrays


def _restore(cache: KVCache, arrays: dict[str, np.ndarray], head: Sequence[int]) -> KVCache | None:
    """`cache` (new, empty) filled from an entry, or None when the entry is not this head's or is damaged."""
    ids = arrays["ids"]
    if ids.shape != (len(head),) or not np.array_equal(ids, np.asarray(head, dtype=np.int64)):
        return None
    length = len(head)
    cache.reserve(length)
    crc = 0
    for index, name in enumerate(sorted(cache.values)):
        saved, buf = arrays[f"kv{index}"], cache.values[name]
        target = buf[:, :, :length] if name in cache.growable else buf
        if saved.shape != target.shape or saved.dtype != buf.dtype:
            return None
        crc = zlib.crc32(np.ascontiguousarray(saved).data, crc)
        target[...] = saved
    if int(arrays["crc"][0]) != crc:
        return None
    cache.length = length
    return cache
