"""Prompt heads' KV caches kept on disk, so that a new process skips the head's prefill.

A prompt's head (instruction, field guide, fixed worked examples) is the same for every document of a
schema. Within a process the Extractor prefills it once and copies its KV cache per document; a shell pipe
runs one document per process, so there the head's prefill was paid every time: 1.1 s of a 3.9 s cold
`gemmacli extract --schema contact` (a 386-token head with its two worked examples, prefilled while
llguidance builds its token table on the other core). HeadStore keeps the cache after that prefill under
${XDG_CACHE_HOME:-~/.cache}/gemmacli/heads, and the next process reads it back (~20 MB) instead.

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
import json
import os
import platform
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
#: Bumped when the way a head is prefilled changes (today: one forward run of all its tokens): entries made
#: the old way are then not read.
PREFILL_WAY = 1
#: Heads shorter than this are prefilled afresh: reading a file costs more than the run it saves.
MIN_HEAD_TOKENS = 64
_SUFFIX = ".kv"
MAGIC = b"gemmacli-head-kv-1\n"


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
    parts = [PREFILL_WAY, model.sha256, ort.__version__, threads or 0, os.cpu_count() or 0, _cpu(), layout]
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
            cache = _restore(model.new_cache(), path.read_bytes(), head)
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if cache is not None:
            with contextlib.suppress(OSError):
                os.utime(path)  # read recently: the last to be removed
        return cache

    def save(self, head: Sequence[int], cache: KVCache) -> None:
        """Keep the cache after the head's prefill; a cache folder that cannot be written is passed over."""
        if len(head) < MIN_HEAD_TOKENS:
            return
        with contextlib.suppress(OSError):
            write_atomically(self.path(head), _entry(cache, head), make_parents=True)
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


def _entry(cache: KVCache, head: Sequence[int]) -> bytes:
    """MAGIC, the header's length (8 bytes), the header (JSON: ids, each buffer's shape, the CRC), then each
    buffer's filled rows (a window layer's whole ring) in name order. One read and no copies but the last:
    numpy's .npz took 0.66 s to read 18 MB here."""
    rows = [_filled(cache, name) for name in sorted(cache.values)]
    crc = 0
    for block in rows:
        crc = zlib.crc32(block.data, crc)
    header = json.dumps({"ids": [int(i) for i in head], "shapes": [list(b.shape) for b in rows],
                         "crc": crc}).encode("utf-8")
    return b"".join([MAGIC, len(header).to_bytes(8, "little"), header, *(b.tobytes() for b in rows)])


def _filled(cache: KVCache, name: str) -> np.ndarray:
    buf = cache.values[name]
    return np.ascontiguousarray(buf[:, :, : cache.length] if name in cache.growable else buf)


def _restore(cache: KVCache, entry: bytes, head: Sequence[int]) -> KVCache | None:
    """`cache` (new, empty) filled from an entry, or None when the entry is not this head's or is damaged."""
    if not entry.startswith(MAGIC):
        return None
    start = len(MAGIC) + 8
    size = int.from_bytes(entry[len(MAGIC): start], "little")
    header = json.loads(entry[start: start + size])
    if header["ids"] != [int(i) for i in head]:
        return None
    length, offset, crc = len(head), start + size, 0
    cache.reserve(length)
    names = sorted(cache.values)
    if len(header["shapes"]) != len(names):
        return None
    for name, shape in zip(names, header["shapes"], strict=True):
        buf = cache.values[name]
        target = buf[:, :, :length] if name in cache.growable else buf
        if list(target.shape) != shape or offset + target.nbytes > len(entry):
            return None
        block = memoryview(entry)[offset: offset + target.nbytes]
        crc = zlib.crc32(block, crc)
        target[...] = np.frombuffer(block, dtype=buf.dtype).reshape(target.shape)
        offset += target.nbytes
    if crc != header["crc"] or offset != len(entry):
        return None
    cache.length = length
    return cache
