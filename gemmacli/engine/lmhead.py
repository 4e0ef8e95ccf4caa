"""The lm_head session (hidden states -> logits over the vocabulary), made on a thread while the rest of the
model loads.

Its session is the slowest part of loading a model: onnxruntime prepacks the 262k x 640 weight for its
MatMulNBits kernel (0.4-0.6 s for Gemma 3 270M, measured here; without prepacking a run takes ~1 s instead of
11 ms). onnxruntime releases the GIL while it builds a session, so `LmHeadLoad` builds it on a thread from
the start of runtime.Model's constructor: the decoder's session, the tokenizer, the schema's grammar and the
prompt's prefill go on meanwhile, and the first logits wait only for what is left.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort


class LmHead:
    """hidden [n, H] -> logits [n, V]; one row through an IOBinding kept for the model's life."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self._logits_shape = _static_row_shape(session.get_outputs()[0].shape)
        input_shape = _static_row_shape(session.get_inputs()[0].shape)
        self._lock = threading.Lock()
        self._binding: Any = None
        if self._logits_shape is not None and input_shape is not None:
            self._input = np.zeros(input_shape, dtype=np.float32)
            self._binding = session.io_binding()
            self._binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(self._input))

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """One hidden state -> its logits [V]."""
        hidden_2d = np.asarray(hidden, dtype=np.float32).reshape(1, -1)
        if self._binding is None:  # the lm_head's shapes are not static: a plain run
            (logits,) = self.session.run(None, {self.input_name: hidden_2d})
            return np.asarray(logits, dtype=np.float32).reshape(-1)
        # The input bound once to a preallocated [1, H] array, the output rebound per call to a fresh array
        # that onnxruntime writes into (returned: the caller owns it).
        logits = np.empty(self._logits_shape, dtype=np.float32)
        with self._lock:
            self._input[...] = hidden_2d
            self._binding.bind_ortvalue_output(self.output_name, ort.OrtValue.ortvalue_from_numpy(logits))
            self.session.run_with_iobinding(self._binding)
        return logits.reshape(-1)

    def logits_rows(self, hidden: np.ndarray) -> np.ndarray:
        """Several hidden states [n, H] in one run -> [n, V]."""
        (logits,) = self.session.run(None, {self.input_name: np.asarray(hidden, dtype=np.float32)})
        return np.asarray(logits, dtype=np.float32)


class LmHeadLoad:
    """An LmHead being built on a thread; `result()` waits for it (and raises what building raised)."""

    def __init__(self, build: Callable[[], ort.InferenceSession]) -> None:
        self._build = build
        self._head: LmHead | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="gemmacli-lm-head", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._head = LmHead(self._build())
        except BaseException as exc:  # handed to the caller of result(), in its thread
            self._error = exc

    def result(self) -> LmHead:
        if self._head is None:
            self._thread.join()
            if self._error is not None:
                raise self._error
        assert self._head is not None
        return self._head


def _static_row_shape(shape: Any) -> tuple[int, int] | None:
    """(1, N) for a [batch, N] tensor with a fixed N, else None."""
    if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0:
        return (1, shape[1])
    return None
