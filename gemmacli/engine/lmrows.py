"""The lm_head's INT4/INT8 rows in numpy: a few logits without the 262k-row MatMul (Model.logits_for)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gemmacli.errors import ModelError

LM_HEAD_FILE = "lm_head.onnx"


class LmHeadRows:
    """The lm_head's weight rows in numpy, so a few logits cost a few rows, not a 262144-row MatMul.

    With accuracy_level 4, onnxruntime's MatMulNBits quantizes the activation per block to int8
    (scale = max|x| / 127, round half to even) before the integer dot products; `int8_activations` makes
    this class do the same, so its logits equal the session's to float rounding. Which arithmetic the
    session really uses depends on the CPU's kernels: Model calibrates it once against the session.
    """

    def __init__(self, folder: Path) -> None:
        import onnx
        from onnx import numpy_helper

        path = folder / LM_HEAD_FILE
        proto = onnx.load(str(path), load_external_data=False)
        node = next((n for n in proto.graph.node if n.op_type in ("MatMul", "MatMulNBits")), None)
        if node is None:
            raise ModelError(f"{path} has no MatMul or MatMulNBits lm_head node")
        tensors = {init.name: init for init in proto.graph.initializer}

        def array(name: str) -> np.ndarray:
            tensor = tensors[name]
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                return numpy_helper.to_array(tensor)
            info = {e.key: e.value for e in tensor.external_data}
            dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
            shape = tuple(tensor.dims)
            return np.memmap(folder / info["location"], dtype=dtype, mode="r",
                             offset=int(info.get("offset", 0)), shape=shape)

        self.op = node.op_type
        self.int8_activations = False
        if self.op == "MatMul":
            self.rows = np.ascontiguousarray(np.asarray(array(node.input[1]), dtype=np.float32).T)  # [V, H]
            return
        attrs = {a.name: a.i for a in node.attribute}
        self.bits = attrs.get("bits", 4)
        if self.bits not in (4, 8):
            raise ModelError(f"{path}: only 4- and 8-bit MatMulNBits lm_heads are supported")
        self.hidden, self.vocab, self.block = attrs["K"], attrs["N"], attrs["block_size"]
        self.blocks = -(-self.hidden // self.block)
        self.packed = array(node.input[1]).reshape(self.vocab, -1)  # [V, blocks * block / 2]
        self.scales = np.asarray(array(node.input[2])).reshape(self.vocab, self.blocks)
        self.zero_points = (array(node.input[3]).reshape(self.vocab, -1)
                            if len(node.input) > 3 and node.input[3] else None)

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
