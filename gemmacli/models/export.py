"""Hugging Face Gemma 3 checkpoint -> gemmacli model folder (optimum export, lm_head split, fusion, INT4).

Stages (one stderr line each, with its time):
  check      the checkpoint is a text-only Gemma 3 (anything else: UsageError, exit 2)
  export     optimum, task text-generation-with-past (optimum stays the exporter)
  split      the decoder graph returns the final-normed hidden state of the last position only; the
             lm_head MatMul moves into its own lm_head.onnx (no [seq, 262144] logits on prefill)
  fuse       gemmacli.models.fuse.fuse_attention (attention rewrite; keeps input/output names)
  quantize   int4: MatMulNBits on every MatMul (the lm_head too), block 32|128, accuracy_level 4 by
             default (int8 activations: 1.5-2x faster here than fp32 compute). Model.logits_for mirrors
             the lm_head's arithmetic in numpy, so it equals Model.logits to float rounding either way.
             The tied embedding lookup becomes a GatherBlockQuantized that reads the lm_head's int4 bytes
             in lm_head.onnx.data (one copy on disk).
  write      model.onnx(.data), lm_head.onnx(.data), tokenizer.json, gemmacli.json, manifest.json

Everything is built in a temp folder beside the destination and renamed at the end.
Needs the `export` extra (optimum, transformers, torch, onnx).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gemmacli.errors import ModelError, UsageError
from gemmacli.models import store
from gemmacli.models.surgery import (  # re-exported: pull and the tests use them from here
    share_embedding_with_lm_head,
    split_lm_head,
)

SUPPORTED_MODEL_TYPES = ("gemma3_text",)
PRECISIONS = ("int4", "fp32")
BLOCK_SIZES = (32, 128)
DEFAULT_BLOCK_SIZE = 32
DEFAULT_ACCURACY_LEVEL = 4
GEMMA_EOS_IDS = (1, 106)

Report = Callable[[str], None]


class Stages:
    """Prints one line per finished stage with its wall time (progress goes to stderr only)."""

    def __init__(self, report: Report | None) -> None:
        self.report = report or (lambda _message: None)
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        start = time.perf_counter()
        yield
        elapsed = time.perf_counter() - start
        self.report(f"  {name:<9} {elapsed:6.1f} s  {detail}".rstrip())

    def done(self, message: str) -> None:
        self.report(f"{message} in {time.perf_counter() - self.started:.1f} s")


# ------------------------------------------------------------------------------------------ checking


def load_hf_config(source: str) -> dict[str, Any]:
    """config.json of a local folder or a Hub id, as a dict (the Hub is only reached for an id)."""
    local = Path(source).expanduser()
    if local.is_dir():
        path = local / "config.json"
        if not path.is_file():
            raise UsageError(f"{local} has no config.json: not a Hugging Face checkpoint folder")
        return json.loads(path.read_text(encoding="utf-8"))
    if local.exists():
        raise UsageError(f"{local} is a file; SOURCE must be a checkpoint folder or a Hugging Face id")
    require_export_tools()
    from transformers import AutoConfig

    try:  # a Hub id downloaded before needs no network at all
        return AutoConfig.from_pretrained(source, local_files_only=True).to_dict()
    except (OSError, ValueError):
        pass
    _require_hub(source)
    try:
        return AutoConfig.from_pretrained(source).to_dict()
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read the checkpoint {source!r}: {_first_line(exc)}",
                         hint="check the id, your network, or pass a local checkpoint folder") from exc


def _require_hub(source: str) -> None:
    """ModelError (4) at once, in one line, when the Hub cannot be reached: without this the hub client
    retried for ~26 s and printed every retry's traceback before failing."""
    import os
    import socket
    from urllib.parse import urlparse

    offline = any(os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
                  for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    proxied = any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    reason = "offline mode is on (HF_HUB_OFFLINE)" if offline else None
    if reason is None and not proxied:
        try:
            port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
            socket.create_connection((endpoint.hostname or "huggingface.co", port), timeout=5).close()
        except OSError as exc:
            reason = f"{endpoint.hostname} cannot be reached ({exc.strerror or exc})"
    if reason is not None:
        raise ModelError(f"cannot fetch {source!r} from the Hugging Face Hub: {reason}",
                         hint="export a local checkpoint folder instead (gemmacli model export ./FOLDER "
                              "--name NAME), or `gemmacli model synth` for a random-weight model")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip() or type(exc).__name__).splitlines()[0]


def require_export_tools() -> None:
    """Exporting needs the `export` extra; say how to get it instead of failing on an import deep inside."""
    missing = []
    for module in ("torch", "transformers", "optimum.exporters.onnx", "onnx"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module.split(".")[0])
    if missing:
        raise UsageError(f"exporting needs {', '.join(missing)}, which this installation lacks",
                         hint="pip install 'gemmacli[export]'   # in a checkout: pip install -e '.[export]'")


def check_architecture(config: dict[str, Any]) -> None:
    model_type = config.get("model_type")
    if model_type in SUPPORTED_MODEL_TYPES:
        return
    if model_type == "gemma3":
        reason = ("it is the multimodal Gemma 3 (model_type gemma3); gemmacli runs the text-only "
                  "Gemma3ForCausalLM (model_type gemma3_text), such as google/gemma-3-270m(-it)")
    else:
        reason = (f"its architecture is {model_type or 'unknown'} "
                  f"({', '.join(config.get('architectures') or []) or 'no architectures listed'}); "
                  f"gemmacli runs Gemma 3 text models (model_type {', '.join(SUPPORTED_MODEL_TYPES)})")
    raise UsageError(f"cannot export this checkpoint: {reason}")


# ------------------------------------------------------------------------------------------ quantizing


#: Asymmetric int4 (a zero point per block: less rounding error than the builder's symmetric default).
#: Measured A/B on the 270m (bench/bench_decode.py --candidate): symmetric decodes no faster (6.46 vs 6.45 ms
#: at 64 tokens, 8.76 vs 8.78 at 2048), so the more accurate form stays. The embedding sharing handles both.
SYMMETRIC = False


def quantize_int4(model: Any, *, block_size: int, accuracy_level: int | None,
                  symmetric: bool = SYMMETRIC) -> tuple[Any, list[str]]:
    """Every MatMul with a constant weight -> MatMulNBits (int4; asymmetric unless symmetric=True).

    Returns (model, the quantized MatMul nodes' names): names like /model/layers.0/mlp/up_proj/MatMul say
    which weights they are, unlike optimum's anonymous initializer names.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    initializers = {init.name for init in model.graph.initializer}
    weights = [node.name or node.input[1] for node in model.graph.node
               if node.op_type == "MatMul" and node.input[1] in initializers]
    quantizer = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=symmetric,
                                     accuracy_level=accuracy_level)
    with _quiet_logging():
        quantizer.process()
    return quantizer.model.model, weights


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


# --------------------------------------------------------------------------------------------- export


def run_optimum(source: str, out_dir: Path, verbose: bool) -> None:
    from optimum.exporters.onnx import main_export

    with contextlib.ExitStack() as stack:
        # stdout carries data only: the exporter's prints and warnings go to stderr, or nowhere.
        stack.enter_context(contextlib.redirect_stdout(sys.stderr))
        if not verbose:
            stack.enter_context(warnings.catch_warnings())
            warnings.simplefilter("ignore")
            stack.enter_context(_quiet_logging())
            _silence_library_loggers()
        main_export(source, output=out_dir, task="text-generation-with-past", device="cpu",
                    do_validation=False, library_name="transformers")


def _silence_library_loggers() -> None:
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
    import logging

    for name in ("optimum", "transformers", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.ERROR)


def save_graph(model: Any, path: Path, size_threshold: int = 1024) -> None:
    """External data always (lm_head's bytes are shared by the decoder's embedding lookup); tensors below
    `size_threshold` bytes stay inside the graph file."""
    import onnx

    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=size_threshold)


def _longest_piece(tokenizer_json: Path) -> int:
    """ModelConfig.max_token_chars of a tokenizer.json (0 when it has no plain vocabulary to read)."""
    try:
        vocab = json.loads(tokenizer_json.read_text(encoding="utf-8"))["model"]["vocab"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return store.longest_piece(vocab if isinstance(vocab, dict) else [])


def kind_of_source(source: str, source_info: dict[str, Any] | None = None) -> str:
    """"random" for synthesized weights; "instruct" when the checkpoint's name says so (-it, instruct, chat);
    else "base" (Gemma's pretrained checkpoints carry a chat template too, so that is no sign)."""
    if (source_info or {}).get("kind") == "synthetic":
        return "random"
    from gemmacli.models.gguf_file import INSTRUCT_MARK

    name = Path(source.rstrip("/")).name.lower()
    return "instruct" if INSTRUCT_MARK.search(name) else "base"


def model_config_for(hf_config: dict[str, Any], exported: Path, kind: str = "base") -> store.ModelConfig:
    eos = set(GEMMA_EOS_IDS)
    for config_name in ("generation_config.json", "config.json"):
        path = exported / config_name
        if path.is_file():
            value = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
            eos.update(value if isinstance(value, list) else [value] if isinstance(value, int) else [])
    template = store.GEMMA3_CHAT_TEMPLATE
    jinja = exported / "chat_template.jinja"
    tokenizer_config = exported / "tokenizer_config.json"
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    elif tokenizer_config.is_file():
        template = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("chat_template") or template
    return store.ModelConfig(
        eos_token_ids=sorted(eos),
        bos_token_id=int(hf_config.get("bos_token_id") or 2),
        pad_token_id=int(hf_config.get("pad_token_id") or 0),
        context_length=int(hf_config.get("max_position_embeddings") or 32768),
        vocab_size=int(hf_config["vocab_size"]),
        hidden_size=int(hf_config["hidden_size"]),
        chat_template=template,
        model_type=str(hf_config.get("model_type")),
        kind=kind,
        max_token_chars=_longest_piece(exported / "tokenizer.json"),
    )


def export_into(folder: Path, source: str, *, name: str, precision: str = "int4",
                block_size: int = DEFAULT_BLOCK_SIZE, accuracy_level: int = DEFAULT_ACCURACY_LEVEL,
                report: Report | None = None, verbose: bool = False,
                source_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Export `source` into an existing (staging) folder and write its manifest. Returns the manifest."""
    import onnx

    from gemmacli.models.fuse import fuse_attention

    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if block_size not in BLOCK_SIZES:
        raise UsageError(f"block size must be one of {', '.join(map(str, BLOCK_SIZES))}, not {block_size}")
    stages = Stages(report)
    with stages.stage("check", (source_info or {}).get("kind", source)):
        hf_config = load_hf_config(source)
        check_architecture(hf_config)
        require_export_tools()
    work = folder / "_optimum"
    try:
        with stages.stage("export", "optimum, text-generation-with-past"):
            try:
                run_optimum(source, work, verbose)
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:  # the exporter's own errors: a broken or unusual checkpoint
                raise ModelError(f"optimum could not export {source}: {_first_line(exc)}",
                                 hint="run again with --debug for the full traceback") from exc
        with stages.stage("split", "last-position hidden state out; lm_head.onnx apart"):
            graph_path = work / "model.onnx"
            decoder = onnx.load(str(graph_path), load_external_data=True)
            decoder, lm_head = split_lm_head(decoder)
        with stages.stage("fuse", "gemmacli.models.fuse.fuse_attention"):
            decoder = fuse_attention(decoder, hf_config)
        quantization: dict[str, Any] = {"bits": 32, "format": "fp32"}
        if precision == "int4":
            with stages.stage("quantize", f"int4 MatMulNBits, block {block_size}"):
                decoder, decoder_weights = quantize_int4(decoder, block_size=block_size,
                                                         accuracy_level=accuracy_level)
                lm_head, head_weights = quantize_int4(lm_head, block_size=block_size,
                                                      accuracy_level=accuracy_level)
        with stages.stage("write", "model.onnx, lm_head.onnx, tokenizer.json, gemmacli.json"):
            save_graph(lm_head, folder / "lm_head.onnx")
            embedding = None
            if precision == "int4":
                on_disk = onnx.load(str(folder / "lm_head.onnx"), load_external_data=False)
                embedding = share_embedding_with_lm_head(decoder, on_disk, data_file="lm_head.onnx.data",
                                                         block_size=block_size)
                quantization = {
                    "bits": 4, "format": "int4", "block_size": block_size, "symmetric": SYMMETRIC,
                    "method": "onnxruntime MatMulNBitsQuantizer",
                    "accuracy_level": {"model.onnx": accuracy_level, "lm_head.onnx": accuracy_level},
                    "tensors": {"model.onnx": decoder_weights, "lm_head.onnx": head_weights},
                    "embedding": ("GatherBlockQuantized over the lm_head's int4 bytes (lm_head.onnx.data)"
                                  if embedding else "fp32 Gather"),
                }
            save_graph(decoder, folder / "model.onnx")
            tokenizer = work / "tokenizer.json"
            if not tokenizer.is_file():
                raise ModelError(f"{source} has no fast tokenizer (tokenizer.json) and none could be built")
            shutil.copyfile(tokenizer, folder / "tokenizer.json")
            model_config_for(hf_config, work, kind_of_source(source, source_info)).write(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    info = source_info or ({"kind": "local", "path": str(Path(source).expanduser().resolve())}
                           if Path(source).expanduser().is_dir() else {"kind": "huggingface", "id": source})
    manifest = store.write_manifest(folder, name=name, source=info, quantization=quantization,
                                    extra={"exporter": "optimum text-generation-with-past",
                                           "model_type": hf_config.get("model_type")})
    stages.done(f"exported {name}")
    return manifest


def export_model(source: str, destination: Path, *, force: bool = False, **options: Any) -> Path:
    """Export into `destination` atomically (temp folder beside it, renamed at the end)."""
    with store.staging_folder(destination, force=force) as staging:
        export_into(staging, source, name=options.pop("name", destination.name), **options)
    return destination
