"""The lm_head's INT4/INT8 rows in numpy: a few logits without the 262k-row MatMul (Model.logits_for)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from gemmacli.errors import ModelError
from gemmacli.files import write_atomically
from gemmacli.models.store import sha256_file

LM_HEAD_FILE = "lm_head.onnx"


class LmHeadRows:
    """The lm_head's weight rows in numpy, so a few logits cost a few rows, not a 262144-row MatMul.

    With accuracy_level 4, onnxruntime's MatMulNBits quantizes the activation per block to int8
    (scale = max|x| / 127, round half to even) before the integer dot products; `int8_activations` makes
    this class do the same, so its logits equal the session's to float rounding. Which arithmetic the
    session really uses depends on the CPU's kernels: Model calibrates it once against the session.
    """

    def __init__(self, folder: Path, cache: Path | None = None) -> None:
        """`cache`: a folder where the lm_head's layout is kept under its graph's sha256 (read_layout)."""
        layout = read_layout(folder / LM_HEAD_FILE, cache)

        def array(role: str) -> np.ndarray:
            entry = layout["tensors"][role]
            if "array" in entry:
                return np.asarray(entry["array"])
            return np.memmap(folder / entry["file"], dtype=np.dtype(entry["dtype"]), mode="r",
                             offset=int(entry["offset"]), shape=tuple(entry["shape"]))

        self.op = layout["op"]
        self.int8_activations = False
        if self.op == "MatMul":
            self.rows = np.ascontiguousarray(np.asarray(array("weight"), dtype=np.float32).T)  # [V, H]
            return
        attrs = layout["attrs"]
        self.bits = attrs.get("bits", 4)
        if self.bits not in (4, 8):
            raise ModelError(f"{folder / LM_HEAD_FILE}: only 4- and 8-bit MatMulNBits lm_heads are supported")
        self.hidden, self.vocab, self.block = attrs["K"], attrs["N"], attrs["block_size"]
        self.blocks = -(-self.hidden // self.block)
        self.packed = array("weight").reshape(self.vocab, -1)  # [V, blocks * block / 2]
        self.scales = np.asarray(array("scales")).reshape(self.vocab, self.blocks)
        self.zero_points = (array("zero_points").reshape(self.vocab, -1)
                            if "zero_points" in layout["tensors"] else None)

    def _quantize_activation(self, hidden: np.ndarray) -> np.ndarray:
        padded = np.zeros(self.blocks * self.block, dtype=np.float32)
        padded[: self.hidden] = hidden
        blocks = padded.reshape(self.blocks, self.block)
        scale = np.abs(blocks).max(axis=1) / np.float32(127)
        inverse = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale != 0)
        quantized = np.rint(blocks * inverse[:, None])
        return (quantized * scale[:, None]).reshape(-1)[: self.hidden].astype(np.float32)

    def logits(self, hidden: np.ndarray, ids: np.ndarray) -> np.ndarray:
        if self.op == "MatMul":
            return self.rows[ids] @ hidden
        if self.int8_activations:
            hidden = self._quantize_activation(hidden)
        packed = np.asarray(self.packed[ids])
        if self.bits == 8:
            quants = packed.astype(np.float32)
        else:
            quants = np.empty((len(ids), packed.shape[1] * 2), dtype=np.float32)
            quants[:, 0::2] = packed & 0x0F
            quants[:, 1::2] = packed >> 4
        if self.zero_points is None:
            zeros = np.full((len(ids), self.blocks), 128.0 if self.bits == 8 else 8.0, dtype=np.float32)
        elif self.zero_points.dtype != np.uint8 or self.bits == 8:  # one zero point a block, unpacked
            zeros = np.asarray(self.zero_points[ids], dtype=np.float32)[:, : self.blocks]
        else:
            zp_packed = np.asarray(self.zero_points[ids])
            zeros = np.empty((len(ids), zp_packed.shape[1] * 2), dtype=np.float32)
            zeros[:, 0::2] = zp_packed & 0x0F
            zeros[:, 1::2] = zp_packed >> 4
            zeros = zeros[:, : self.blocks]
        scales = np.asarray(self.scales[ids], dtype=np.float32)
        weights = (quants.reshape(len(ids), self.blocks, self.block) - zeros[:, :, None]) * scales[:, :, None]
        weights = weights.reshape(len(ids), -1)[:, : self.hidden]
        return weights @ hidden.astype(np.float32)


def read_layout(path: Path, cache: Path | None = None) -> dict[str, Any]:
    """The lm_head node's kind, attributes and weight tensors (where in which file, or the array itself).

    Reading it needs the `onnx` package, whose import alone is ~0.6 s of a cold `extract`: with `cache`,
    the layout is kept there under the graph file's sha256 (small inline tensors as .npy beside it) and
    read back next time. A cache that cannot be read or written is passed over."""
    key = sha256_file(path) if cache is not None and path.is_file() else None
    if cache is not None and key is not None:
        try:
            layout = json.loads((cache / f"{key}.json").read_text(encoding="utf-8"))
            for role, entry in layout["tensors"].items():
                if "npy" in entry:
                    layout["tensors"][role] = {"array": np.load(cache / entry["npy"])}
            return dict(layout)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    layout = _layout(path)
    if cache is not None and key is not None:
        _store_layout(cache, key, layout)
    return layout


def _layout(path: Path) -> dict[str, Any]:
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path), load_external_data=False)
    node = next((n for n in proto.graph.node if n.op_type in ("MatMul", "MatMulNBits")), None)
    if node is None:
        raise ModelError(f"{path} has no MatMul or MatMulNBits lm_head node")
    initializers = {init.name: init for init in proto.graph.initializer}
    roles = ("weight",) if node.op_type == "MatMul" else ("weight", "scales", "zero_points")
    tensors: dict[str, dict[str, Any]] = {}
    for role, name in zip(roles, node.input[1:], strict=False):
        if not name:
            continue
        tensor = initializers[name]
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            tensors[role] = {"array": numpy_helper.to_array(tensor)}
            continue
        info = {e.key: e.value for e in tensor.external_data}
        tensors[role] = {"file": info["location"], "offset": int(info.get("offset", 0)),
                         "dtype": np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).str,
                         "shape": [int(d) for d in tensor.dims]}
    return {"op": node.op_type, "attrs": {a.name: a.i for a in node.attribute}, "tensors": tensors}


def _store_layout(cache: Path, key: str, layout: dict[str, Any]) -> None:
    """Inline arrays first, the JSON last (it says the rest is whole)."""
    stored: dict[str, Any] = {**layout, "tensors": {}}
    with contextlib.suppress(OSError):  # a read-only or full cache: the next run reads the layout again
        for role, entry in layout["tensors"].items():
            if "array" in entry:
                name, data = f"{key}.{role}.npy", io.BytesIO()
                np.save(data, entry["array"])
                write_atomically(cache / name, data.getvalue(), make_parents=True)
                entry = {"npy": name}
            stored["tensors"][role] = entry
        write_atomically(cache / f"{key}.json", json.dumps(stored).encode("utf-8"), make_parents=True)
