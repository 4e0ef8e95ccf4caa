"""`gemmacli model export | list | info | verify | rm` and model resolution, through raw_main."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli import run_cli  # tests/cli.py

from gemmacli.errors import ExitStatus, ModelError
from gemmacli.models import store
from gemmacli.models.synth import CHECKPOINT_DIR


def run(argv: list[str], environ: dict[str, str]) -> tuple[ExitStatus, str, str]:
    result = run_cli(argv, environ=environ)
    return ExitStatus(result.status), result.stdout.decode(), result.stderr


@pytest.fixture
def models(tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, dict[str, str]]:
    """A private store holding a copy of the tiny INT4 model as `tiny`."""
    root = tmp_path / "store"
    shutil.copytree(tiny_model_dir, root / "tiny")
    return root, {"GEMMACLI_MODELS": str(root), "HOME": str(tmp_path), "NO_COLOR": "1"}


def test_list_info_verify_rm(models: tuple[Path, dict[str, str]]) -> None:
    root, environ = models
    status, out, _ = run(["model", "list"], environ)
    assert status == ExitStatus.OK
    name, _size, kind, _kind, folder = out.splitlines()[0].split("\t")
    assert (name, kind, folder) == ("tiny", "int4/b32", str(root / "tiny"))

    status, out, _ = run(["model", "info", "tiny"], environ)
    info = json.loads(out)
    assert info["quantization"]["bits"] == 4 and info["quantization"]["block_size"] == 32
    assert info["config"]["eos_token_ids"] == [1, 106]
    assert "model.onnx" in info["files"]

    status, out, err = run(["model", "verify", str(root / "tiny")], environ)  # a path works as NAME
    assert status == ExitStatus.OK and out == "" and "ok" in err

    status, _, err = run(["model", "rm", "tiny"], environ)
    assert status == ExitStatus.OK and not (root / "tiny").exists()
    status, _, err = run(["model", "info", "tiny"], environ)
    assert status == ExitStatus.MODEL and "gemmacli model" in err


@pytest.mark.parametrize("victim", ["model.onnx.data", "tokenizer.json"])
def test_verify_names_a_corrupted_file(models: tuple[Path, dict[str, str]], victim: str) -> None:
    root, environ = models
    path = root / "tiny" / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    status, _, err = run(["model", "verify", "tiny"], environ)
    assert status == ExitStatus.MODEL
    assert victim in err


def test_truncated_file_fails_at_load(models: tuple[Path, dict[str, str]]) -> None:
    from gemmacli.engine.runtime import Model

    root, _ = models
    path = root / "tiny" / "lm_head.onnx.data"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelError, match=r"lm_head\.onnx\.data"):
        Model.load(root / "tiny")


def test_missing_model_says_how_to_get_it(tmp_path: Path) -> None:
    environ = {"GEMMACLI_MODELS": str(tmp_path), "HOME": str(tmp_path), "NO_COLOR": "1"}
    status, _, err = run(["model", "info", "gemma-3-270m-it"], environ)
    assert status == ExitStatus.MODEL and "gemmacli model pull gemma-3-270m-it" in err
    status, _, err = run(["model", "verify", str(tmp_path / "nowhere")], environ)
    assert status == ExitStatus.MODEL and "nowhere" in err


def test_search_path_order(tmp_path: Path) -> None:
    environ = {"GEMMACLI_MODELS": f"{tmp_path / 'a'}:{tmp_path / 'b'}",
               "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    path = store.model_search_path(environ)
    assert path[:2] == [tmp_path / "a", tmp_path / "b"]
    assert path[-1] == tmp_path / "xdg" / "gemmacli" / "models"
    assert store.user_models_dir({"HOME": str(tmp_path)}) == tmp_path / ".cache" / "gemmacli" / "models"
    for folder in (tmp_path / "b" / "m", tmp_path / "xdg" / "gemmacli" / "models" / "m"):
        folder.mkdir(parents=True)
        (folder / "gemmacli.json").write_text("{}")
    assert store.resolve_model("m", environ) == tmp_path / "b" / "m"


def test_export_int4_block_128_from_a_checkpoint(tmp_path: Path, tiny_fp32_model_dir: Path) -> None:
    pytest.importorskip("optimum")
    environ = {"GEMMACLI_MODELS": str(tmp_path / "store"), "HOME": str(tmp_path), "NO_COLOR": "1"}
    source = str(tiny_fp32_model_dir / CHECKPOINT_DIR)
    status, out, err = run(["model", "export", source, "--name", "b128", "--block-size", "128"], environ)
    assert status == ExitStatus.OK, err
    folder = tmp_path / "store" / "b128"
    assert out.strip() == str(folder)
    for stage in ("check", "export", "split", "fuse", "quantize", "write"):
        assert f"  {stage}" in err
    # the token table of its tokenizer is checked now, so the first extract does not pay for it
    assert "token table of its tokenizer: checked and cached" in err
    assert len(list((tmp_path / ".cache" / "gemmacli" / "tokens").glob("*.npz"))) == 1
    manifest = store.verify_model(folder)
    assert manifest["quantization"]["block_size"] == 128
    assert manifest["source"] == {"kind": "local", "path": str(Path(source).resolve())}
    # tiny's hidden size (64) is below the block: the embedding stays a plain Gather (real Gemma: 640 = 5x128)
    assert manifest["quantization"]["embedding"] == "fp32 Gather"
    assert manifest["gemmacli_version"]
    from gemmacli.engine.runtime import Model

    model = Model.load(folder, threads=1)
    hidden = model.forward(model.new_cache(), [2, 300, 301, 302])
    every = np.arange(model.config.vocab_size)
    np.testing.assert_allclose(model.logits_for(hidden, every), model.logits(hidden), rtol=1e-5, atol=1e-5)
    # an existing name is refused, not overwritten
    status, _, err = run(["model", "export", source, "--name", "b128"], environ)
    assert status == ExitStatus.USAGE and "already exists" in err


def test_int4_embedding_shares_the_lm_head_bytes(tiny_model_dir: Path) -> None:
    import onnx

    decoder = onnx.load(str(tiny_model_dir / "model.onnx"), load_external_data=False)
    lookups = [n for n in decoder.graph.node if n.op_type == "GatherBlockQuantized"]
    assert len(lookups) == 1
    shared = {t.name: {e.key: e.value for e in t.external_data} for t in decoder.graph.initializer
              if t.name in lookups[0].input}
    assert {entry["location"] for entry in shared.values()} == {"lm_head.onnx.data"}
    assert not any(n.op_type == "MatMul" for n in decoder.graph.node), "every MatMul is INT4"
    assert {o.name for o in decoder.graph.output if not o.name.startswith("present")} == {"last_hidden_state"}


def test_unsupported_architecture_is_a_usage_error(tmp_path: Path) -> None:
    checkpoint = tmp_path / "llama"
    checkpoint.mkdir()
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}
    (checkpoint / "config.json").write_text(json.dumps(config))
    environ = {"GEMMACLI_MODELS": str(tmp_path / "store"), "HOME": str(tmp_path), "NO_COLOR": "1"}
    status, out, err = run(["model", "export", str(checkpoint), "--name", "x"], environ)
    assert status == ExitStatus.USAGE
    assert "llama" in err and "gemma3_text" in err
    assert out == ""
    assert not (tmp_path / "store" / "x").exists()
    assert not any((tmp_path / "store").iterdir()), "no temp folder left behind"


def test_list_on_an_empty_store_says_how_to_get_a_model(tmp_path: Path) -> None:
    environ = {"GEMMACLI_MODELS": str(tmp_path), "HOME": str(tmp_path), "NO_COLOR": "1"}
    status, out, err = run(["model", "list"], environ)
    assert status == ExitStatus.OK and out == "" and "gemmacli model pull" in err
