"""Graph rewrites applied after optimum's export and before INT4 quantization.

CONTRACT: fuse_attention(model: onnx.ModelProto, config: dict) -> onnx.ModelProto
    `config` is the HF config.json as a dict. Must keep the graph's input and output names and their
    meaning unchanged, so gemmacli.runtime needs no knowledge of which attention the graph uses.
    Until the rewrite lands this returns the model unchanged.
"""

from __future__ import annotations

from typing import Any


def fuse_attention(model: Any, config: dict) -> Any:
    return model
