"""Blockwise asymmetric 4- and 8-bit weights in the layout of onnxruntime's MatMulNBits and
GatherBlockQuantized, in numpy (no torch, no onnx_ir).

A weight W [N, K] (N outputs, K inputs: a Linear weight as llama.cpp and torch store it) is cut into blocks
of `block_size` along K. Each block gets a float scale and an integer zero point by onnxruntime's rule (the
block's range widened to include 0, 2^bits - 1 steps, zero point rounded), over the range factor that
gives the block the least squared error. Layout for 4 bits: B uint8 [N, K/block, block/2] (two values a
byte, the first in the low nibble), zero points uint8 [N * ceil((K/block)/2)] (two blocks a byte, low
nibble first); for 8 bits: B uint8 [N, K/block, block], zero points uint8 [N * K/block]. Scales float32
[N * K/block].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class QuantizedWeight:
    """One quantized weight, ready to become MatMulNBits initializers."""

    packed: np.ndarray       # uint8 [N, blocks, block * bits / 8]
    scales: np.ndarray       # float32 [N * blocks]
    zero_points: np.ndarray  # uint8 [N * ceil(blocks * bits / 8)]
    rows: int                # N
    columns: int             # K
    block_size: int
    bits: int = 4

    @property
    def blocks(self) -> int:
        return self.columns // self.block_size


#: Shrink factors of a block's range tried by `quantize`: clipping the extremes of a block a little often
#: lowers its total squared error (the many small weights get finer steps); the best factor per block wins.
RANGE_FACTORS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7)


def quantize(weight: np.ndarray, block_size: int, bits: int = 4, *, search: bool = True) -> QuantizedWeight:
    """Quantize `weight` [N, K] (K a multiple of block_size) along K to 4 or 8 bits.

    `search`: per block, the range factor of RANGE_FACTORS with the least squared error (else the plain
    min/max range, as onnxruntime's quantizer does).
    """
    rows, columns = weight.shape
    if columns % block_size:
        raise ValueError(f"{columns} columns are not a whole number of {block_size}-blocks")
    blocks = columns // block_size
    values = weight.reshape(rows, blocks, block_size).astype(np.float32, copy=False)
    low = np.minimum(values.min(axis=2), 0.0)
    high = np.maximum(values.max(axis=2), 0.0)
    if bits not in (4, 8):
        raise ValueError(f"{bits}-bit weights are not supported (4 or 8)")
    levels = (1 << bits) - 1
    best = _quantize_range(values, low, high, levels)
    if search:
        best_error = _squared_error(values, *best)
        for factor in RANGE_FACTORS[1:]:
            trial = _quantize_range(values, low * factor, high * factor, levels)
            error = _squared_error(values, *trial)
            better = error < best_error
            best_error = np.where(better, error, best_error)
            best = tuple(np.where(better[:, :, None] if part.ndim == 3 else better, t, part)  # type: ignore[assignment]
                         for part, t in zip(best, trial, strict=True))
    q, scale, zero_point = best
    if bits == 8:
        return QuantizedWeight(q, scale.reshape(-1), zero_point.reshape(-1), rows, columns, block_size, 8)
    packed = (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).astype(np.uint8)
    return QuantizedWeight(packed, scale.reshape(-1), _pack_zero_points(zero_point), rows, columns,
                           block_size, 4)


def _quantize_range(values: np.ndarray, low: np.ndarray, high: np.ndarray,
                    levels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q uint8 [N, blocks, block], scale float32 [N, blocks], zero point uint8 [N, blocks]) for a range
    (onnxruntime's rule: `levels` steps over [low, high], the zero point rounded into 0..levels)."""
    scale = ((high - low) / np.float32(levels)).astype(np.float32)
    safe = np.where(scale == 0, np.float32(1), scale)
    zero = np.where(scale == 0, 0.0, -low / safe)
    zero_point = np.clip(np.rint(zero), 0, levels).astype(np.uint8)
    inverse = np.where(scale == 0, np.float32(0), np.float32(1) / safe).astype(np.float32)
    q = np.rint(values * inverse[:, :, None] + zero_point[:, :, None].astype(np.float32))
    return np.clip(q, 0, levels).astype(np.uint8), scale, zero_point


def _squared_error(values: np.ndarray, q: np.ndarray, scale: np.ndarray,
                   zero_point: np.ndarray) -> np.ndarray:
    restored = (q.astype(np.float32) - zero_point[:, :, None]) * scale[:, :, None]
    return np.square(restored - values).sum(axis=2)


def _pack_zero_points(zero_point: np.ndarray) -> np.ndarray:
    rows, blocks = zero_point.shape
    if blocks % 2:
        zero_point = np.concatenate([zero_point, np.zeros((rows, 1), dtype=np.uint8)], axis=1)
    return (zero_point[:, 0::2] | (zero_point[:, 1::2] << 4)).astype(np.uint8).reshape(-1)


def dequantize(weight: QuantizedWeight) -> np.ndarray:
    """The float32 [N, K] that MatMulNBits computes with (for tests and error measurements)."""
    zp = weight.zero_points.reshape(weight.rows, -1)
    if weight.bits == 8:
        q = weight.packed.astype(np.float32)
        zeros = zp.astype(np.float32)
    else:
        q = np.empty((weight.rows, weight.blocks, weight.block_size), dtype=np.float32)
        q[:, :, 0::2] = weight.packed & 0x0F
        q[:, :, 1::2] = weight.packed >> 4
        zeros = np.stack([zp & 0x0F, zp >> 4], axis=2).reshape(weight.rows, -1)[:, : weight.blocks]
    scales = weight.scales.reshape(weight.rows, weight.blocks)
    return ((q - zeros[:, :, None]) * scales[:, :, None]).reshape(weight.rows, weight.columns)


def concat_rows(parts: list[QuantizedWeight]) -> QuantizedWeight:
    """Row slices quantized one by one (the embedding, a slice at a time) -> one weight."""
    first = parts[0]
    return QuantizedWeight(np.concatenate([p.packed for p in parts]),
                           np.concatenate([p.scales for p in parts]),
                           np.concatenate([p.zero_points for p in parts]), sum(p.rows for p in parts),
                           first.columns, first.block_size, first.bits)
