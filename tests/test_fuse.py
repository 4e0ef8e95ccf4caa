"""gemmacli.models.fuse: the GroupQueryAttention rewrite must compute exactly what optimum's graph computes.

The reference is optimum's own fp32 export of the tiny synth checkpoint, split like the export pipeline
splits it (last-position hidden state out, no lm_head). Both graphs run the same token stream: a prefill,
a multi-token chunk (forced tokens) and single-token steps well past the 16-token sliding window.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import build_cached

from gemmacli.models import export
from gemmacli.models.fuse import FuseError, _rope_params, fuse_attention

pytestmark = pytest.mark.torch  # every test here runs torch or transformers

# tokens per call: a short prefill, a forced chunk, then decoding past the 16-token window; and a prefill
# longer than two windows followed by a chunk that crosses the window cache's eviction point
STREAMS = {"short-prefill": [7, 3] + [1] * 34, "long-prefill": [40, 1, 1, 5, 1, 9, 1, 1]}


@pytest.fixture(scope="session")
def optimum_dir(tiny_fp32_model_dir: Path) -> Path:
    """optimum's unmodified fp32 export of the tiny checkpoint (cached like the other fixtures)."""
    from optimum.exporters.onnx import main_export

    checkpoint = tiny_fp32_model_dir / "source-checkpoint"
    return build_cached("tiny-optimum-fp32", lambda folder: main_export(
        str(checkpoint), output=folder, task="text-generation-with-past", device="cpu"))


@pytest.fixture(scope="session")
def hf_config(tiny_fp32_model_dir: Path) -> dict:
    return json.loads((tiny_fp32_model_dir / "source-checkpoint" / "config.json").read_text())


def _split(optimum_dir: Path) -> onnx.ModelProto:
    decoder, _ = export.split_lm_head(onnx.load(str(optimum_dir / "model.onnx")))
    return decoder


class _Runner:
    """Feeds a decoder graph the way gemmacli.engine.runtime does: its own token count, present -> past."""

    def __init__(self, model: onnx.ModelProto | Path) -> None:
        source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.cache = {}
        for meta in self.session.get_inputs():
            if meta.name.startswith("past_key_values."):
                shape = [d if isinstance(d, int) else (1 if i == 0 else 0) for i, d in enumerate(meta.shape)]
                self.cache[meta.name] = np.zeros(shape, np.float32)
        self.length = 0

    def step(self, ids: list[int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        feeds = {"input_ids": np.array([ids], np.int64),
                 "attention_mask": np.ones((1, self.length + len(ids)), np.int64), **self.cache}
        results = dict(zip(self.outputs, self.session.run(None, feeds), strict=True))
        self.length += len(ids)
        presents = {k: v for k, v in results.items() if k.startswith("present.")}
        self.cache = {k.replace("present.", "past_key_values.", 1): v for k, v in presents.items()}
        hidden = next(v for k, v in results.items() if not k.startswith("present."))
        return hidden, presents


def _token_stream(vocab: int, steps: list[int]) -> list[list[int]]:
    rng = np.random.default_rng(7)
    return [[int(t) for t in rng.integers(4, vocab, n)] for n in steps]


def _full_layers(config: dict) -> list[int]:
    return [i for i, t in enumerate(config["layer_types"]) if t == "full_attention"]


def _assert_same_run(reference: _Runner, fused: _Runner, config: dict, *, windowed: bool,
                     steps: list[int]) -> None:
    """Hidden states agree at every call; full-history caches agree row for row."""
    full = _full_layers(config)
    window = config["sliding_window"]
    for ids in _token_stream(config["vocab_size"], steps):
        ref_hidden, ref_present = reference.step(ids)
        hidden, present = fused.step(ids)
        np.testing.assert_allclose(hidden, ref_hidden, atol=1e-4, rtol=1e-4)
        for name, value in present.items():
            layer = int(name.split(".")[1])
            if windowed and layer not in full:
                # rows [0, L) hold the L most recent positions (L >= min(T, window))
                assert value.shape[2] == window
                resident = min(reference.length, window)
                np.testing.assert_allclose(value[:, :, :resident], ref_present[name][:, :, -resident:],
                                           atol=1e-4, rtol=1e-4)
            else:
                np.testing.assert_allclose(value, ref_present[name], atol=1e-4, rtol=1e-4)
    assert reference.length > 2 * window


@pytest.mark.parametrize("steps", list(STREAMS.values()), ids=list(STREAMS))
@pytest.mark.parametrize(("window_cache", "other_fusions"), [(True, True), (False, True), (True, False)],
                         ids=["window-cache", "full-cache", "attention-only"])
def test_fused_graph_matches_optimum_graph(optimum_dir: Path, hf_config: dict, window_cache: bool,
                                           other_fusions: bool, steps: list[int]) -> None:
    fused = fuse_attention(_split(optimum_dir), hf_config, window_cache=window_cache,
                           other_fusions=other_fusions)
    _assert_same_run(_Runner(_split(optimum_dir)), _Runner(fused), hf_config, windowed=window_cache,
                     steps=steps)


def test_window_cache_with_slack_rows_matches(optimum_dir: Path, hf_config: dict) -> None:
    """A window cache larger than the window evicts in batches; the numbers must not change."""
    window = hf_config["sliding_window"]
    fused = fuse_attention(_split(optimum_dir), hf_config, window_cache_rows=2 * window)
    reference, runner = _Runner(_split(optimum_dir)), _Runner(fused)
    for ids in _token_stream(hf_config["vocab_size"], STREAMS["short-prefill"] + [1] * 20):
        np.testing.assert_allclose(runner.step(ids)[0], reference.step(ids)[0], atol=1e-4, rtol=1e-4)
    assert all(v.shape[2] == 2 * window for k, v in runner.cache.items()
               if int(k.split(".")[1]) not in _full_layers(hf_config))
    with pytest.raises(FuseError, match="below the sliding window"):
        fuse_attention(_split(optimum_dir), hf_config, window_cache_rows=window - 1)


def test_exported_model_is_fused_and_matches(tiny_fp32_model_dir: Path, optimum_dir: Path,
                                             hf_config: dict) -> None:
    """What `gemmacli model export` writes (fuse inside the pipeline) is the fused graph, and is right."""
    path = tiny_fp32_model_dir / "model.onnx"
    ops = [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
    assert ops.count("GroupQueryAttention") == hf_config["num_hidden_layers"]
    _assert_same_run(_Runner(_split(optimum_dir)), _Runner(path), hf_config, windowed=True,
                     steps=STREAMS["short-prefill"])


def test_rewrite_keeps_the_interface_and_drops_the_old_attention(optimum_dir: Path, hf_config: dict) -> None:
    before = _split(optimum_dir)
    inputs = [i.name for i in before.graph.input]
    outputs = [o.name for o in before.graph.output]
    fused = fuse_attention(_split(optimum_dir), hf_config)
    assert [i.name for i in fused.graph.input] == inputs
    assert [o.name for o in fused.graph.output] == outputs
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("GroupQueryAttention") == hf_config["num_hidden_layers"]
    assert "Softmax" not in ops and "Expand" not in ops
    layers = hf_config["num_hidden_layers"]
    # the other fusions: norms, residual adds, GELU, and q/k/v sharing one MatMul (gate/up stay apart,
    # as in the builder's graph)
    assert not {"Pow", "ReduceMean", "Tanh", "Sqrt"} & set(ops)
    assert ops.count("FastGelu") == layers
    assert ops.count("SkipSimplifiedLayerNormalization") == 2 * layers  # every norm after a residual add
    assert ops.count("MatMul") == 5 * layers  # qkv, o, gate, up, down
    assert len(fused.graph.node) < len(before.graph.node) / 5
    ort.InferenceSession(fused.SerializeToString(), providers=["CPUExecutionProvider"])  # loads
    gqa = [n for n in fused.graph.node if n.op_type == "GroupQueryAttention"]
    windows = [next(a.i for a in n.attribute if a.name == "local_window_size") for n in gqa]
    expected = [hf_config["sliding_window"] if t == "sliding_attention" else -1
                for t in hf_config["layer_types"]]
    assert windows == expected
    # sliding layers' caches have the static window size, full layers' stay dynamic
    dims = {i.name: i.type.tensor_type.shape.dim[2] for i in fused.graph.input if i.name.startswith("past")}
    for layer, kind in enumerate(hf_config["layer_types"]):
        dim = dims[f"past_key_values.{layer}.key"]
        assert (dim.dim_value == hf_config["sliding_window"]) == (kind == "sliding_attention")


def test_fusing_twice_is_refused(optimum_dir: Path, hf_config: dict) -> None:
    fused = fuse_attention(_split(optimum_dir), hf_config)
    with pytest.raises(FuseError, match="already fused"):
        fuse_attention(fused, hf_config)


def test_rope_settings_from_either_transformers_layout() -> None:
    v4 = {"rope_theta": 1e6, "rope_local_base_freq": 1e4,
          "rope_scaling": {"rope_type": "linear", "factor": 8.0}}
    v5 = {"rope_parameters": {"full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
                              "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}
    for config in (v4, v5):
        assert _rope_params(config, "full") == (1e6, 8.0)
        assert _rope_params(config, "sliding") == (1e4, 1.0)
    with pytest.raises(FuseError, match="yarn"):
        _rope_params({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "full")
