"""Model runtime: one onnxruntime session for the decoder graph, one for the lm_head.

What the decoder relies on (gemmacli.engine.decoder.DecoderModel is its typed form):

A model folder holds (see gemmacli/models/store.py and onnx_models/README.md):
  model.onnx (+ model.onnx.data)   decoder graph: token ids + KV cache in, final-normed hidden state of the
                                   LAST new position out (no lm_head inside), plus the new KV cache.
  lm_head.onnx (+ .data)           hidden [1, H] -> logits [1, V] (INT4 MatMulNBits of the tied embedding).
  tokenizer.json, gemmacli.json (ModelConfig fields), manifest.json (hashes, source, quantization).

class Model:
    config: ModelConfig
    tokenizer: tokenizers.Tokenizer
    folder: Path
    manifest: dict

    @classmethod
    def load(cls, ref: str | Path, *, threads: int | None = None) -> Model
        ref is a model name (resolved by gemmacli.models.store.resolve_model) or a folder path.
        Raises gemmacli.errors.ModelError (exit 4) for missing/broken models.

    def new_cache(self) -> KVCache            empty cache for one sequence
    def forward(self, cache: KVCache, token_ids: Sequence[int]) -> np.ndarray
        Feed 1..n new tokens in ONE session run (prefill and forced tokens alike); advances `cache`
        in place; returns the final hidden state of the last new position, float32 shape [H].
    def logits(self, hidden: np.ndarray) -> np.ndarray
        Full lm_head: float32 [V].
    def logits_for(self, hidden: np.ndarray, token_ids: np.ndarray) -> np.ndarray
        Logits of only `token_ids` (int array), float32 [len(token_ids)], equal (to float rounding)
        to logits(hidden)[token_ids]; cheap when the set is small (gathers INT4 rows).

KVCache.length -> int is the number of tokens already in the cache.

Speculation (gemmacli.engine.speculate) also uses: forward_all(cache, ids) -> [n, H] (every new position's
hidden state: the graph's last-position Slice gets an all-positions output in memory, so model folders need
no change), can_rewind(cache, adding), rewind(cache, length) (back to where the last forward_all started;
window rows it evicted are put back) and logits_rows(hidden [n, H]) -> [n, V] (one lm_head run).

Also: load(..., spin=False, environ=None) (spin: let onnxruntime's idle threads
spin; off by default), Model.generate_greedy (tests, benchmarks), Model.name, Model.sha256,
KVCache.copy() (a snapshot owning its buffers: forward writes a GroupQueryAttention graph's cache in place).

The runtime knows nothing about the attention inside the graph: it reads the input and output names from
the session (input_ids, attention_mask, optional position_ids, past_key_values.* <-> present.*). With a
GroupQueryAttention graph the cache is one preallocated buffer per past input, bound as past AND present
through an IOBinding that the cache keeps across steps (no per-step cache copies, and per step only the
new ids, the mask and the output arrays are bound); other graphs get their cache back as OrtValues, fed
straight back without copies through numpy. The arrays forward and logits return are fresh each call
(onnxruntime writes into them): callers own them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from gemmacli.engine.bpe import load_tokenizer
from gemmacli.engine.kvcache import KVCache as KVCache  # re-exported: the runtime's cache type
from gemmacli.engine.kvcache import _CacheBinding
from gemmacli.engine.lmhead import LmHeadLoad, _static_row_shape
from gemmacli.engine.lmrows import LmHeadRows as _LmHeadRows
from gemmacli.engine.sessions import PROCESS_POOL_ENV as PROCESS_POOL_ENV  # re-exported: bench, cli
from gemmacli.engine.sessions import _session, read_decoder_graph
from gemmacli.engine.sessions import _use_global_pool as _use_global_pool  # re-exported: bench_decode
from gemmacli.errors import ModelError
from gemmacli.models import store
from gemmacli.models.store import ModelConfig

__all__ = ["KVCache", "Model", "ModelConfig"]

DECODER_FILE = "model.onnx"
LM_HEAD_FILE = "lm_head.onnx"
TOKENIZER_FILE = "tokenizer.json"
PAST_PREFIX = "past_key_values"
PRESENT_PREFIX = "present"

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
                "tensor(int32)": np.int32}


class Model:
    """A loaded model folder: tokenizer, config, the decoder session and the lm_head session."""

    def __init__(self, folder: Path, *, threads: int | None = None, spin: bool = False,
                 grouped_only: bool = False) -> None:
        self.folder = folder
        #: forward runs a lone token as two (see forward), where the graph allows it.
        self.grouped_only = grouped_only
        self.name = folder.name
        self.manifest: dict[str, Any] = (store.read_manifest(folder)
                                         if (folder / store.MANIFEST).is_file() else {})
        if self.manifest:
            store.check_sizes(folder, self.manifest)
        self.config = ModelConfig.from_folder(folder)
        self.threads = threads
        _use_global_pool(threads)  # the process's pool settled before two threads make sessions
        lm_head_file = folder / LM_HEAD_FILE
        #: the lm_head's session, built on a thread meanwhile (gemmacli.engine.lmhead)
        self._lm_load = LmHeadLoad(lambda: _session(lm_head_file, threads, spin=spin))
        self.tokenizer = _load_tokenizer(folder / TOKENIZER_FILE)
        # Idle-thread spinning off by default: the decoder's spinning threads slowed the lm_head run that
        # follows each step (measured here: 72 -> 38-57 ms per token on 2 busy cores).
        graph = read_decoder_graph(folder / DECODER_FILE, cache=store.cache_home() / "graphs")
        self._shared_kv, self._window = graph.shared_kv, graph.window
        #: The [batch, seq, H] tensor the graph cuts its last position from, exposed as an extra output so
        #: that forward_all can return every position (speculation verifies several tokens in one run).
        self._all_hidden = graph.all_hidden
        self._decoder = _session(folder / DECODER_FILE, threads, spin=spin, graph=graph.edited)
        self._inputs = {i.name: i for i in self._decoder.get_inputs()}
        outputs = [o.name for o in self._decoder.get_outputs() if o.name != self._all_hidden]
        self._present_outputs = [name for name in outputs if name.startswith(PRESENT_PREFIX)]
        hidden = [name for name in outputs if not name.startswith(PRESENT_PREFIX)]
        if len(hidden) != 1 or "input_ids" not in self._inputs:
            raise ModelError(f"{folder / DECODER_FILE} is not a gemmacli decoder graph "
                             f"(outputs {outputs}); was it exported by gemmacli?",
                             hint=f"gemmacli model export SOURCE --name {folder.name}")
        self._hidden_output = hidden[0]
        self._output_names = [self._hidden_output, *self._present_outputs]
        self._past_for_present = {name: PAST_PREFIX + name[len(PRESENT_PREFIX):]
                                  for name in self._present_outputs}
        missing = [p for p in self._past_for_present.values() if p not in self._inputs]
        if missing:
            raise ModelError(f"{folder / DECODER_FILE}: no cache inputs for {missing}")
        self._has_mask = "attention_mask" in self._inputs
        self._has_positions = "position_ids" in self._inputs
        self._ones = np.ones(4096, dtype=np.int64)
        hidden_meta = next(o for o in self._decoder.get_outputs() if o.name == self._hidden_output)
        self._hidden_shape = _static_row_shape(hidden_meta.shape)
        self._rows: _LmHeadRows | None = None
        # forward_batch's binding, with the buffers it binds (a run with others binds afresh)
        self._batch_binding: tuple[dict[str, np.ndarray], Any] | None = None

    @classmethod
    def load(cls, ref: str | Path, *, threads: int | None = None, spin: bool = False,
             environ: Mapping[str, str] | None = None, grouped_only: bool = False) -> Model:
        return cls(store.resolve_model(ref, environ), threads=threads, spin=spin, grouped_only=grouped_only)

    @property
    def shares_cache_buffers(self) -> bool:
        """True for a GroupQueryAttention graph: a KVCache's values are numpy buffers written in place."""
        return self._shared_kv

    @property
    def sha256(self) -> str:
        """The decoder graph's hash from the manifest ('' without one): identifies the weights in records."""
        return str(self.manifest.get("files", {}).get(DECODER_FILE, {}).get("sha256", ""))

    # -------------------------------------------------------------------------------------- running

    def new_cache(self) -> KVCache:
        values: dict[str, Any] = {}
        growable = set()
        for name in self._past_for_present.values():
            meta = self._inputs[name]
            static_rows = isinstance(meta.shape[2], int)
            shape = [d if isinstance(d, int) else (1 if i == 0 else 0) for i, d in enumerate(meta.shape)]
            if self._shared_kv and not static_rows:
                shape[2] = 256
                growable.add(name)
            buf = np.zeros(shape, dtype=_NUMPY_TYPES.get(meta.type, np.float32))
            values[name] = buf if self._shared_kv else ort.OrtValue.ortvalue_from_numpy(buf)
        return KVCache(values, 0, frozenset(growable))

    def forward(self, cache: KVCache, token_ids: Sequence[int]) -> np.ndarray:
        count = len(token_ids)
        if count == 0:
            raise ValueError("forward needs at least one token")
        if count == 1 and self.grouped_only and self.can_rewind(cache, 2):
            # Never a run of one token: onnxruntime's one-token attention path sums in another order than
            # its path for several tokens, whose rows mostly agree however the tokens are grouped (not
            # always: bench/README.md). A second, throwaway token makes greedy choices depend less on the
            # grouping (forced tokens batched or not, speculation), for ~30% of a lone decode step.
            hidden = self.forward_all(cache, [token_ids[0], token_ids[0]])[0]
            self.rewind(cache, cache.length - 1)
            cache.undo = None
            return hidden
        past = cache.length
        try:
            if self._shared_kv:
                hidden = self._forward_shared(cache, token_ids, count)
            else:
                ids = np.asarray(token_ids, dtype=np.int64).reshape(1, count)
                hidden = self._forward_copying(cache, ids, self._mask(past + count))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{self.folder / DECODER_FILE} failed to run: {exc}") from exc
        cache.length = past + count
        cache.undo = None
        return np.asarray(hidden, dtype=np.float32).reshape(-1)

    def forward_all(self, cache: KVCache, token_ids: Sequence[int]) -> np.ndarray:
        """Like forward, but the hidden state of EVERY new position, float32 [n, H]: a speculative run
        verifies all its draft tokens at once. Row i is what forward would have returned after token i had
        the same tokens been fed in the same run. Only where `can_rewind` allows it."""
        count = len(token_ids)
        if count == 0:
            raise ValueError("forward needs at least one token")
        if self._all_hidden is None:
            raise ModelError(f"{self.folder / DECODER_FILE} does not give every position's hidden state")
        evicted = {}  # the window rows this run pushes out (the oldest), kept for a rewind
        for name, buf in cache.values.items():
            if name not in cache.growable:
                rows = buf.shape[2]
                gone = max(0, cache.length + count - rows) - max(0, cache.length - rows)
                if gone:
                    evicted[name] = buf[:, :, :gone].copy()
        undo = (cache.length, evicted)
        try:
            hidden = self._forward_shared(cache, token_ids, count, wide=True)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{self.folder / DECODER_FILE} failed to run: {exc}") from exc
        cache.length += count
        cache.undo = undo
        return hidden.reshape(count, -1)

    def can_rewind(self, cache: KVCache, adding: int) -> bool:
        """Whether `adding` tokens may be fed with forward_all and then partly taken back with `rewind`.

        Only a shared-buffer (GroupQueryAttention) cache: the next run overwrites the rows past its length.
        A window layer's fixed buffer holds the latest positions in rows [0, n) and, once full, evicts its
        oldest rows one a token (when its rows are the window); forward_all keeps the rows it evicts, so
        rewind can put them back. A buffer with more rows than the window evicts in chunks (fuse.py's
        window_cache_rows): there a run that would fill it is refused (speculation then feeds plainly)."""
        if self._all_hidden is None or not self._shared_kv:
            return False
        fixed = [buf.shape[2] for name, buf in cache.values.items() if name not in cache.growable]
        return all(rows == self._window for rows in fixed) or cache.length + adding <= min(fixed)

    def rewind(self, cache: KVCache, length: int) -> None:
        """Forget the cache's tokens past `length` (draft tokens that were not accepted): back at most to
        where the last forward_all started."""
        before, evicted = cache.undo if cache.undo is not None else (cache.length, {})
        if not before <= length <= cache.length:
            raise ValueError(f"cannot rewind a cache of {cache.length} tokens to {length}")
        for name, old in evicted.items():  # window rows: the evicted ones needed again, then the kept ones
            buf = cache.values[name]
            rows = buf.shape[2]
            start_now, start_then = max(0, cache.length - rows), max(0, length - rows)
            if start_then < start_now:
                shift, kept = start_now - start_then, length - start_now
                _move_rows(buf, 0, shift, kept)
                buf[:, :, :shift] = old[:, :, old.shape[2] - shift:]
        cache.length = length
        cache.undo = (length, {})

    def logits_rows(self, hidden: np.ndarray) -> np.ndarray:
        """The full lm_head over several hidden states [n, H] in one run: float32 [n, V], row for row equal to
        `logits` (the same kernel; checked in tests), for the cost of little more than one row."""
        return self._lm_load.result().logits_rows(hidden)

    def _forward_shared(self, cache: KVCache, token_ids: Sequence[int], count: int, *,
                        wide: bool = False) -> np.ndarray:
        """IOBinding with past and present bound to one buffer: GroupQueryAttention appends in place.

        The cache's binding is reused across steps (see _CacheBinding), the attention mask is a view of
        one preallocated array of ones, and the hidden state is written straight into the array returned.
        """
        total = cache.length + count
        cache.reserve(total)
        bound = cache.bound
        if bound is None:
            bound = cache.bound = _CacheBinding(self._decoder, cache, self._past_for_present)
        if wide:
            if bound.wide is None:
                bound.wide = _CacheBinding(self._decoder, cache, self._past_for_present)
            return self._run_wide(bound.wide, cache, token_ids, count, total)
        binding = bound.binding
        if count == 1:
            bound.one_id[0, 0] = token_ids[0]
            if not bound.one_id_bound:
                binding.bind_ortvalue_input("input_ids", bound.one_id_value)
                bound.one_id_bound = True
        else:
            ids = np.asarray(token_ids, dtype=np.int64).reshape(1, count)
            binding.bind_ortvalue_input("input_ids", ort.OrtValue.ortvalue_from_numpy(ids))
            bound.one_id_bound = False
        if self._has_mask:
            binding.bind_ortvalue_input("attention_mask", ort.OrtValue.ortvalue_from_numpy(self._mask(total)))
        if self._has_positions:
            positions = np.arange(cache.length, total, dtype=np.int64).reshape(1, -1)
            binding.bind_ortvalue_input("position_ids", ort.OrtValue.ortvalue_from_numpy(positions))
        if self._hidden_shape is None:  # hidden output of unknown shape: onnxruntime allocates it
            binding.bind_output(self._hidden_output, "cpu")  # bound after the presents: the last output
            self._decoder.run_with_iobinding(binding)
            return binding.get_outputs()[len(self._present_outputs)].numpy()
        hidden = np.empty(self._hidden_shape, dtype=np.float32)
        binding.bind_ortvalue_output(self._hidden_output, ort.OrtValue.ortvalue_from_numpy(hidden))
        self._decoder.run_with_iobinding(binding)
        return hidden

    def _run_wide(self, bound: _CacheBinding, cache: KVCache, token_ids: Sequence[int], count: int,
                  total: int) -> np.ndarray:
        """forward_all's run: its own binding (every position's hidden state bound as the output)."""
        binding = bound.binding
        ids = np.asarray(token_ids, dtype=np.int64).reshape(1, count)
        binding.bind_ortvalue_input("input_ids", ort.OrtValue.ortvalue_from_numpy(ids))
        if self._has_mask:
            binding.bind_ortvalue_input("attention_mask", ort.OrtValue.ortvalue_from_numpy(self._mask(total)))
        if self._has_positions:
            positions = np.arange(cache.length, total, dtype=np.int64).reshape(1, -1)
            binding.bind_ortvalue_input("position_ids", ort.OrtValue.ortvalue_from_numpy(positions))
        hidden = np.empty((1, count, int(self.config.hidden_size)), dtype=np.float32)
        assert self._all_hidden is not None
        binding.bind_ortvalue_output(self._all_hidden, ort.OrtValue.ortvalue_from_numpy(hidden))
        self._decoder.run_with_iobinding(binding)
        return hidden

    def _mask(self, total: int) -> np.ndarray:
        """attention_mask [1, total] of ones: a view of one preallocated array (the graph only reads it)."""
        if self._ones.shape[0] < total:
            self._ones = np.ones(max(total, 2 * self._ones.shape[0]), dtype=np.int64)
        return self._ones[:total].reshape(1, total)

    def _forward_copying(self, cache: KVCache, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Graphs without GroupQueryAttention (a Concat-attention graph's present is past + new)."""
        feeds = dict(cache.values)
        feeds["input_ids"] = _ortvalue(ids, self._inputs["input_ids"])
        if self._has_mask:
            feeds["attention_mask"] = _ortvalue(mask, self._inputs["attention_mask"])
        if self._has_positions:
            positions = np.arange(cache.length, cache.length + ids.shape[1], dtype=np.int64).reshape(1, -1)
            feeds["position_ids"] = _ortvalue(positions, self._inputs["position_ids"])
        results = self._decoder.run_with_ort_values(self._output_names, feeds)
        cache.values = {self._past_for_present[name]: value
                        for name, value in zip(self._present_outputs, results[1:], strict=True)}
        return results[0].numpy()

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        return self._lm_load.result().logits(hidden)

    def logits_for(self, hidden: np.ndarray, token_ids: np.ndarray) -> np.ndarray:
        if self._rows is None:
            self._rows = self._calibrated_rows()
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        return np.asarray(self._rows.logits(np.asarray(hidden, dtype=np.float32).reshape(-1), ids),
                          dtype=np.float32)

    def _calibrated_rows(self) -> _LmHeadRows:
        """Match logits_for's arithmetic to the session's: one full lm_head run on a fixed probe."""
        rows = _LmHeadRows(self.folder, cache=store.cache_home() / "graphs")
        if rows.op != "MatMulNBits":
            return rows
        probe = np.random.default_rng(0).standard_normal(rows.hidden).astype(np.float32) * 3
        sample = np.linspace(0, rows.vocab - 1, 256).astype(np.int64)
        expected = self.logits(probe)[sample]
        errors = {}
        for int8 in (False, True):
            rows.int8_activations = int8
            errors[int8] = float(np.abs(rows.logits(probe, sample) - expected).max())
        rows.int8_activations = errors[True] < errors[False]
        return rows

    # --------------------------------------------------------------- several sequences in one run

    def batch_buffers(self, sequences: int, rows: int) -> tuple[dict[str, np.ndarray], frozenset[str]]:
        """KV buffers for `sequences` sequences side by side ([sequences, heads, rows, dim] per past input;
        window layers keep their own row count), and the names of those that are not windows. Sequence i's
        KVCache is a view of row i of each (`KVCache(values={n: b[i:i+1]}, …)`): forward and forward_all
        run it alone, forward_batch runs every sequence at once. Only GroupQueryAttention graphs."""
        if not self._shared_kv:
            raise ModelError(f"{self.folder / DECODER_FILE} cannot decode several sequences in one run "
                             "(no GroupQueryAttention)")
        template = self.new_cache()
        buffers = {}
        for name, buf in template.values.items():
            height = rows if name in template.growable else buf.shape[2]
            buffers[name] = np.zeros((sequences, buf.shape[1], height, buf.shape[3]), dtype=buf.dtype)
        return buffers, template.growable

    def forward_batch(self, buffers: dict[str, np.ndarray], token_ids: Sequence[int],
                      lengths: Sequence[int]) -> np.ndarray:
        """One new token for every sequence of `buffers` (batch_buffers), each after its own `lengths[i]`
        tokens, in one run: hidden states [sequences, H], row i equal to what forward(cache_i, [token])
        returns (the same kernels, row by row; checked in tests). Each sequence's new row is written at its
        own position; the caller advances the lengths it keeps."""
        count = len(token_ids)
        if self._batch_binding is None or self._batch_binding[0] is not buffers:
            binding = self._decoder.io_binding()
            for present, past in self._past_for_present.items():
                value = ort.OrtValue.ortvalue_from_numpy(buffers[past])
                binding.bind_ortvalue_input(past, value)
                binding.bind_ortvalue_output(present, value)
            self._batch_binding = (buffers, binding)
        binding = self._batch_binding[1]
        mask = (np.arange(max(lengths) + 1) <= np.asarray(lengths)[:, None]).astype(np.int64)
        binding.bind_cpu_input("input_ids", np.asarray(token_ids, dtype=np.int64).reshape(count, 1))
        if self._has_mask:
            binding.bind_cpu_input("attention_mask", mask)
        if self._has_positions:
            binding.bind_cpu_input("position_ids", np.asarray(lengths, dtype=np.int64).reshape(count, 1))
        hidden = np.empty((count, int(self.config.hidden_size)), dtype=np.float32)
        binding.bind_ortvalue_output(self._hidden_output, ort.OrtValue.ortvalue_from_numpy(hidden))
        try:
            self._decoder.run_with_iobinding(binding)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"{self.folder / DECODER_FILE} failed to run: {exc}") from exc
        return hidden

    @property
    def window(self) -> int | None:
        """Rows of a window layer's cache buffer (its attention window), None without window layers."""
        return self._window if self._window >= 0 else None

    def generate_greedy(self, prompt_ids: Sequence[int], max_new_tokens: int,
                        stop_ids: Sequence[int] | None = None) -> list[int]:
        """Plain greedy decoding (no grammar): tests compare it with transformers, benchmarks time it."""
        stops = set(self.config.eos_token_ids if stop_ids is None else stop_ids)
        cache = self.new_cache()
        hidden = self.forward(cache, list(prompt_ids))
        generated: list[int] = []
        for _ in range(max_new_tokens):
            token = int(np.argmax(self.logits(hidden)))
            generated.append(token)
            if token in stops:
                break
            hidden = self.forward(cache, [token])
        return generated


def _move_rows(buf: np.ndarray, src: int, dst: int, count: int) -> None:
    """buf[:, :, dst:dst+count] = buf[:, :, src:src+count] in one pass (the ranges overlap; numpy would copy
    them twice). A cache buffer is [1, heads, rows, dim]: with one head its rows are one contiguous block."""
    if count <= 0:
        return
    if buf.shape[0] == 1 and buf.shape[1] == 1 and buf.flags.c_contiguous:
        row = buf.shape[3] * buf.itemsize
        ctypes.memmove(buf.ctypes.data + dst * row, buf.ctypes.data + src * row, count * row)
    else:
        buf[:, :, dst:dst + count] = buf[:, :, src:src + count].copy()


def _ortvalue(array: np.ndarray, meta: Any) -> ort.OrtValue:
    wanted = _NUMPY_TYPES.get(meta.type)
    if wanted is not None and array.dtype != wanted:
        array = array.astype(wanted)
    return ort.OrtValue.ortvalue_from_numpy(array)


def _load_tokenizer(path: Path) -> Tokenizer:
    """The model's tokenizer: Gemma's from its cached BPE table (gemmacli.engine.bpe: 0.2 s instead of
    1.1 s), any other read by `tokenizers`."""
    try:
        return cast(Tokenizer, load_tokenizer(path))
    except FileNotFoundError as exc:
        raise ModelError(f"{path} is missing", hint=f"gemmacli model verify {path.parent}") from exc
    except Exception as exc:
        raise ModelError(f"{path} is not a valid tokenizer: {exc}",
                         hint=f"gemmacli model verify {path.parent}") from exc
