"""gemmacli.engine.runtime.Model against transformers and against itself (INT4 row gather, one-pass
prefill)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gemmacli.engine.runtime import Model
from gemmacli.errors import ModelError
from gemmacli.models.synth import CHECKPOINT_DIR

PROMPT = 'Invoice total: 42 EUR, due {"date": "2024-05-01"}'
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def fp32_model(tiny_fp32_model_dir: Path) -> Model:
    return Model.load(tiny_fp32_model_dir, threads=1)


@pytest.fixture(scope="module")
def int4_model(tiny_model_dir: Path) -> Model:
    return Model.load(tiny_model_dir, threads=1)


@pytest.mark.torch
def test_greedy_matches_transformers_beyond_the_sliding_window(fp32_model: Model,
                                                                tiny_fp32_model_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    checkpoint = tiny_fp32_model_dir / CHECKPOINT_DIR
    reference = AutoModelForCausalLM.from_pretrained(checkpoint, attn_implementation="eager").eval()
    prompt_ids = fp32_model.tokenizer.encode(PROMPT).ids
    assert prompt_ids[0] == fp32_model.config.bos_token_id
    window = reference.config.sliding_window
    assert len(prompt_ids) + NEW_TOKENS > window + 8, "the test must cross the sliding window"

    with torch.no_grad():
        expected = reference.generate(torch.tensor([prompt_ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                                      eos_token_id=None, pad_token_id=0)[0, len(prompt_ids):].tolist()
    ours = fp32_model.generate_greedy(prompt_ids, NEW_TOKENS, stop_ids=[])
    assert ours == expected
    assert len(set(ours)) > 1, "random weights should not produce one repeated token"


@pytest.mark.torch
def test_hidden_state_matches_transformers(fp32_model: Model, tiny_fp32_model_dir: Path) -> None:
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tiny_fp32_model_dir / CHECKPOINT_DIR,
                                                     attn_implementation="eager").eval()
    prompt_ids = fp32_model.tokenizer.encode(PROMPT * 2).ids
    with torch.no_grad():
        expected = reference.model(torch.tensor([prompt_ids])).last_hidden_state[0, -1].numpy()
    hidden = fp32_model.forward(fp32_model.new_cache(), prompt_ids)
    assert hidden.shape == (fp32_model.config.hidden_size,)
    assert hidden.dtype == np.float32
    np.testing.assert_allclose(hidden, expected, atol=1e-4)


@pytest.mark.parametrize("model_name", ["fp32_model", "int4_model"])
def test_one_pass_equals_token_by_token(model_name: str, request: pytest.FixtureRequest) -> None:
    model: Model = request.getfixturevalue(model_name)
    ids = model.tokenizer.encode(PROMPT).ids
    whole = model.new_cache()
    hidden_whole = model.forward(whole, ids)
    stepwise = model.new_cache()
    model.forward(stepwise, ids[:5])
    hidden_steps = model.forward(stepwise, ids[5:9])
    for token in ids[9:]:
        hidden_steps = model.forward(stepwise, [token])
    assert whole.length == stepwise.length == len(ids)
    tolerance = 1e-4 if model_name == "fp32_model" else 5e-2  # int8 activations in the INT4 decoder
    np.testing.assert_allclose(hidden_steps, hidden_whole, atol=tolerance)
    assert int(np.argmax(model.logits(hidden_steps))) == int(np.argmax(model.logits(hidden_whole)))


@pytest.mark.parametrize("model_name", ["fp32_model", "int4_model"])
def test_logits_for_equals_full_logits(model_name: str, request: pytest.FixtureRequest) -> None:
    model: Model = request.getfixturevalue(model_name)
    hidden = model.forward(model.new_cache(), model.tokenizer.encode(PROMPT).ids)
    full = model.logits(hidden)
    assert full.shape == (model.config.vocab_size,)
    every = np.arange(model.config.vocab_size)
    np.testing.assert_allclose(model.logits_for(hidden, every), full, rtol=1e-5, atol=1e-5)
    some = np.array([model.config.eos_token_ids[0], 5, model.config.vocab_size - 1, 200])
    chosen = model.logits_for(hidden, some)
    assert chosen.dtype == np.float32 and chosen.shape == (4,)
    np.testing.assert_allclose(chosen, full[some], rtol=1e-5, atol=1e-5)


def test_cache_copy_is_a_snapshot(int4_model: Model) -> None:
    ids = int4_model.tokenizer.encode(PROMPT).ids
    cache = int4_model.new_cache()
    int4_model.forward(cache, ids)
    snapshot = cache.copy()
    first = int4_model.forward(cache, [10])
    again = int4_model.forward(snapshot, [10])
    assert cache.length == snapshot.length == len(ids) + 1
    np.testing.assert_array_equal(first, again)


def test_int4_greedy_agrees_with_itself(int4_model: Model, tiny_model_dir: Path) -> None:
    """Deterministic: a second session on the same folder produces the same tokens."""
    ids = int4_model.tokenizer.encode(PROMPT).ids
    other = Model.load(tiny_model_dir, threads=1)
    assert int4_model.generate_greedy(ids, 12, stop_ids=[]) == other.generate_greedy(ids, 12, stop_ids=[])


def test_config_and_manifest(int4_model: Model) -> None:
    assert int4_model.config.eos_token_ids == [1, 106]
    assert int4_model.config.bos_token_id == 2 and int4_model.config.pad_token_id == 0
    assert int4_model.manifest["quantization"]["bits"] == 4
    assert len(int4_model.sha256) == 64


def test_missing_model_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as caught:
        Model.load("no-such-model", environ={"GEMMACLI_MODELS": str(tmp_path), "HOME": str(tmp_path)})
    assert "gemmacli model" in (caught.value.hint or "")


def test_graph_and_lm_head_layouts_are_read_back_from_the_cache(tiny_model_dir: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The second load reads what the first one kept, without the onnx package (its import is ~0.6 s of a
    cold extract), and gets the same graph, layout and logits."""
    from gemmacli.engine import lmrows, sessions

    cache = tmp_path / "graphs"
    graph = sessions.read_decoder_graph(tiny_model_dir / "model.onnx", cache)
    rows = lmrows.LmHeadRows(tiny_model_dir, cache)

    def refuse(*_args: object) -> None:
        raise AssertionError("read again instead of from the cache")

    monkeypatch.setattr(sessions, "_edited_graph", refuse)
    monkeypatch.setattr(lmrows, "_layout", refuse)
    assert sessions.read_decoder_graph(tiny_model_dir / "model.onnx", cache) == graph
    again = lmrows.LmHeadRows(tiny_model_dir, cache)
    hidden = np.random.default_rng(0).standard_normal(again.hidden if again.op != "MatMul" else
                                                      rows.rows.shape[1]).astype(np.float32)
    ids = np.arange(0, 50, 7)
    assert np.array_equal(again.logits(hidden, ids), rows.logits(hidden, ids))
    import hashlib

    key = hashlib.sha256((tiny_model_dir / "model.onnx").read_bytes()).hexdigest()
    (cache / f"{key}.json").write_text("{not json")  # a broken entry is read afresh, and kept again
    monkeypatch.undo()
    assert sessions.read_decoder_graph(tiny_model_dir / "model.onnx", cache) == graph
    assert (cache / f"{key}.json").read_text().startswith("{\"shared_kv\"")


def test_the_lm_head_loads_on_a_thread_and_its_failure_reaches_the_caller(tiny_model_dir: Path,
                                                                           tmp_path: Path) -> None:
    """The lm_head's session is built while the rest loads (gemmacli.engine.lmhead); a broken one is a
    ModelError where its logits are first asked for, as a broken decoder is at load."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    model = Model.load(folder, threads=1)
    hidden = model.forward(model.new_cache(), [2, 10, 11])
    reference = Model.load(tiny_model_dir, threads=1)
    assert np.array_equal(model.logits(hidden), reference.logits(hidden))
    assert np.array_equal(model.logits_rows(np.stack([hidden, hidden])), np.stack([model.logits(hidden)] * 2))

    (folder / "manifest.json").unlink()  # no size check before the sessions
    (folder / "lm_head.onnx").write_bytes(b"not an onnx graph")
    broken = Model.load(folder, threads=1)
    with pytest.raises(ModelError, match=r"lm_head\.onnx"):
        broken.logits(broken.forward(broken.new_cache(), [2, 10, 11]))
