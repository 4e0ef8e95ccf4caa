"""ONNX graph surgery shared by `model export` and `model pull`: the lm_head cut out of a full-logits graph
(the decoder then returns the last position's hidden state), and the tied embedding's lookup pointed at
the lm_head's quantized bytes (one copy of the table on disk and in memory).
"""

from __future__ import annotations

from typing import Any

from gemmacli.errors import ModelError

HIDDEN_OUTPUT = "last_hidden_state"  # decoder output: [batch, hidden], the last new position
LM_HEAD_INPUT = "hidden"
LM_HEAD_OUTPUT = "logits"
LOGITS_OUTPUT = "logits"  # optimum's (and onnx-community's) full-sequence logits output
MS_DOMAIN = "com.microsoft"


def _producers(graph: Any) -> dict[str, Any]:
    return {output: node for node in graph.node for output in node.output}


def _consumers(graph: Any, name: str) -> list[Any]:
    return [node for node in graph.node if name in node.input]


def split_lm_head(model: Any) -> tuple[Any, Any]:
    """Cut the lm_head out of a graph that outputs full-sequence `logits`.

    Returns (decoder, lm_head): the decoder's `logits` output is replaced by `last_hidden_state` [batch, H]
    (the lm_head's input, sliced to the last position); lm_head maps `hidden` [batch, H] to
    `logits` [batch, V] with the same node (MatMul or MatMulNBits) and its weights.
    """
    import onnx
    from onnx import TensorProto, helper

    graph = model.graph
    head = _producers(graph).get(LOGITS_OUTPUT)
    if head is None or head.op_type not in ("MatMul", "MatMulNBits"):
        found = head.op_type if head is not None else "nothing"
        raise ModelError(f"unexpected graph: output {LOGITS_OUTPUT!r} is produced by {found}, not a MatMul")
    hidden_in = head.input[0]
    _fold_transposed_weight(graph, head)
    initializers = {init.name: init for init in graph.initializer}
    weight_names = [name for name in head.input[1:] if name]
    missing = [name for name in weight_names if name not in initializers]
    if missing:
        raise ModelError(f"unexpected graph: lm_head weights {missing} are not initializers")

    hidden_size = _hidden_size(head, initializers)
    graph.node.remove(head)
    lm_head_inits = []
    for name in weight_names:
        init = initializers[name]
        if not _consumers(graph, name):
            graph.initializer.remove(init)
        lm_head_inits.append(init)
    out_info = next(o for o in graph.output if o.name == LOGITS_OUTPUT)
    vocab_dim = out_info.type.tensor_type.shape.dim[-1]
    vocab_size = vocab_dim.dim_value or None
    graph.output.remove(out_info)

    # last position of [batch, seq, H] -> [batch, H]
    graph.initializer.extend([
        onnx.numpy_helper.from_array(_i64([-1]), "gemmacli_last_start"),
        onnx.numpy_helper.from_array(_i64([2**62]), "gemmacli_last_end"),
        onnx.numpy_helper.from_array(_i64([1]), "gemmacli_seq_axis"),
    ])
    graph.node.extend([
        helper.make_node("Slice",
                         [hidden_in, "gemmacli_last_start", "gemmacli_last_end", "gemmacli_seq_axis"],
                         ["gemmacli_last_position"], name="gemmacli/last_position"),
        helper.make_node("Squeeze", ["gemmacli_last_position", "gemmacli_seq_axis"], [HIDDEN_OUTPUT],
                         name="gemmacli/squeeze_last_position"),
    ])
    graph.output.insert(0, helper.make_tensor_value_info(HIDDEN_OUTPUT, TensorProto.FLOAT,
                                                         ["batch_size", hidden_size]))

    lm_node = helper.make_node(head.op_type, [LM_HEAD_INPUT, *head.input[1:]], [LM_HEAD_OUTPUT],
                               name="lm_head", domain=head.domain)
    lm_node.attribute.extend(head.attribute)
    lm_graph = helper.make_graph(
        [lm_node], "gemmacli_lm_head",
        [helper.make_tensor_value_info(LM_HEAD_INPUT, TensorProto.FLOAT, ["batch_size", hidden_size])],
        [helper.make_tensor_value_info(LM_HEAD_OUTPUT, TensorProto.FLOAT, ["batch_size", vocab_size])],
        initializer=[_copy_tensor(init) for init in lm_head_inits],
    )
    lm_head = helper.make_model(lm_graph, opset_imports=list(model.opset_import),
                                producer_name="gemmacli", ir_version=model.ir_version)
    return model, lm_head  # the new nodes were appended after their inputs: still topologically sorted


def _fold_transposed_weight(graph: Any, head: Any) -> None:
    """A tied lm_head written as MatMul(h, Transpose(embedding)) gets its own transposed initializer."""
    from onnx import numpy_helper

    if head.op_type != "MatMul":
        return
    transpose = _producers(graph).get(head.input[1])
    initializers = {init.name: init for init in graph.initializer}
    if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in initializers:
        return
    weight = numpy_helper.to_array(initializers[transpose.input[0]]).T.copy()
    name = "gemmacli_lm_head_weight"
    graph.initializer.append(numpy_helper.from_array(weight, name))
    head.input[1] = name
    if not _consumers(graph, transpose.output[0]):
        graph.node.remove(transpose)


def _copy_tensor(tensor: Any) -> Any:
    import onnx

    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    return copy


def _i64(values: list[int]) -> Any:
    import numpy as np

    return np.asarray(values, dtype=np.int64)


def _hidden_size(head: Any, initializers: dict[str, Any]) -> int:
    """Hidden size: from the lm_head weight (MatMul [H, V]) or MatMulNBits' K attribute."""
    if head.op_type == "MatMulNBits":
        return next(a.i for a in head.attribute if a.name == "K")
    return int(initializers[head.input[1]].dims[0])



def share_embedding_with_lm_head(decoder: Any, lm_head_on_disk: Any, *, data_file: str,
                                 block_size: int) -> str | None:
    """Replace the tied embedding's Gather with GatherBlockQuantized over the lm_head's quantized bytes.

    `lm_head_on_disk` is the saved lm_head.onnx (loaded without its data), whose MatMulNBits weights live in
    `data_file`: the decoder's new initializers point at the same bytes
    (gemmacli.models.builder.embedding_from_lm_head). Returns the replaced embedding's name, or None.
    """
    from onnx import helper

    from gemmacli.models.builder import embedding_from_lm_head

    shared = embedding_from_lm_head(lm_head_on_disk, data_file, block_size)
    if shared is None:
        return None
    vocab, packed_width = (int(d) for d in shared.tensors[0].dims)
    hidden = packed_width * 8 // shared.bits
    graph = decoder.graph
    initializers = {init.name: init for init in graph.initializer}
    gather = next((n for n in graph.node if n.op_type == "Gather" and n.input[0] in initializers
                   and list(initializers[n.input[0]].dims) == [vocab, hidden]), None)
    if gather is None:
        return None
    embedding = gather.input[0]
    replacement = helper.make_node(
        "GatherBlockQuantized",
        [shared.tensors[0].name, gather.input[1], *(t.name for t in shared.tensors[1:])],
        list(gather.output), name="gemmacli/embedding", domain=MS_DOMAIN,
        gather_axis=0, quantize_axis=1, block_size=block_size, bits=shared.bits)
    index = list(graph.node).index(gather)
    graph.node.remove(gather)
    graph.node.insert(index, replacement)
    if not _consumers(graph, embedding):
        graph.initializer.remove(initializers[embedding])
    graph.initializer.extend(shared.tensors)
    if not any(o.domain == MS_DOMAIN for o in decoder.opset_import):
        decoder.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return embedding
