"""Graph surgery on small hand-built graphs: the lm_head split keeps the numbers and the names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from gemmacli.errors import ModelError, UsageError
from gemmacli.models.export import check_architecture, save_graph, split_lm_head
from gemmacli.models.surgery import HIDDEN_OUTPUT

pytestmark = pytest.mark.torch  # every test here runs torch or transformers

HIDDEN, VOCAB = 8, 24


def _toy_graph(transposed_embedding: bool) -> tuple[onnx.ModelProto, np.ndarray]:
    """hidden states [b, s, H] -> Relu (stand-in for the final norm) -> tied lm_head -> logits [b, s, V]."""
    rng = np.random.default_rng(0)
    embedding = rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)
    nodes = [helper.make_node("Relu", ["states"], ["normed"])]
    initializers = [numpy_helper.from_array(embedding, "embedding")]
    if transposed_embedding:
        nodes.append(helper.make_node("Transpose", ["embedding"], ["embedding_t"], perm=[1, 0]))
        nodes.append(helper.make_node("MatMul", ["normed", "embedding_t"], ["logits"]))
    else:
        initializers.append(numpy_helper.from_array(embedding.T.copy(), "lm_head_weight"))
        nodes.append(helper.make_node("MatMul", ["normed", "lm_head_weight"], ["logits"]))
    nodes.append(helper.make_node("Identity", ["states"], ["present.0.key"]))
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("states", TensorProto.FLOAT, ["b", "s", HIDDEN])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "s", VOCAB]),
         helper.make_tensor_value_info("present.0.key", TensorProto.FLOAT, ["b", "s", HIDDEN])],
        initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), embedding


@pytest.mark.parametrize("transposed", [False, True])
def test_split_lm_head_keeps_the_logits(tmp_path: Path, transposed: bool) -> None:
    model, embedding = _toy_graph(transposed)
    states = np.random.default_rng(1).standard_normal((1, 5, HIDDEN)).astype(np.float32)
    expected = np.maximum(states, 0)[0, -1] @ embedding.T

    decoder, lm_head = split_lm_head(model)
    save_graph(decoder, tmp_path / "model.onnx")
    save_graph(lm_head, tmp_path / "lm_head.onnx")
    onnx.checker.check_model(str(tmp_path / "model.onnx"))
    decoder_session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in decoder_session.get_outputs()] == [HIDDEN_OUTPUT, "present.0.key"]
    hidden = decoder_session.run([HIDDEN_OUTPUT], {"states": states})[0]
    assert hidden.shape == (1, HIDDEN)
    head_session = ort.InferenceSession(str(tmp_path / "lm_head.onnx"), providers=["CPUExecutionProvider"])
    logits = head_session.run(None, {"hidden": hidden})[0]
    assert logits.shape == (1, VOCAB)
    np.testing.assert_allclose(logits[0], expected, rtol=1e-5, atol=1e-5)


def test_split_refuses_a_graph_without_a_logits_matmul() -> None:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["logits"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1])])
    with pytest.raises(ModelError, match="Relu"):
        split_lm_head(helper.make_model(graph))


@pytest.mark.parametrize(("config", "reason"), [
    ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, "llama"),
    ({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"]}, "multimodal"),
    ({}, "unknown"),
])
def test_unsupported_architectures(config: dict, reason: str) -> None:
    with pytest.raises(UsageError, match=reason):
        check_architecture(config)
    check_architecture({"model_type": "gemma3_text"})
