"""`gemmacli model import FILE.gguf`: a Gemma 3 GGUF file -> a gemmacli model folder, without torch.

Stages (one stderr line each, with its time):
  read       open the GGUF (memory-mapped), hash it, read its metadata as a Gemma3TextConfig
  tokenizer  tokenizer.json from the GGUF's own vocabulary (gemmacli.models.vocab)
  lm_head    the tied embedding de-quantized a slice at a time, INT4 (or fp32) -> lm_head.onnx
  decoder    every block de-quantized and re-quantized into the fused graph (gemmacli.models.builder);
             the embedding lookup reads the lm_head's INT4 bytes (one copy on disk)
  check      both graphs load in onnxruntime and one forward pass gives finite numbers
  write      gemmacli.json (kind: base or instruct), manifest.json (the GGUF's sha256 as the source)

Everything is written into a staging folder beside the destination and renamed at the end
(gemmacli.models.store.staging_folder): an interrupted import leaves nothing under the model's name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from gemmacli.errors import ModelError, UsageError
from gemmacli.models import builder, store
from gemmacli.models.export import Report, Stages, save_graph
from gemmacli.models.gguf_file import GEMMA_END_OF_TURN, GGUFModel
from gemmacli.models.vocab import tokenizer_json

BLOCK_SIZES = (32, 128)


@dataclass(frozen=True)
class ImportOptions:
    """What `model import` was asked for; `kind` None: read from the GGUF's name fields."""

    precision: str = "auto"
    block_size: int = 32
    block_size_8bit: int = 32  # builder.BuildOptions.block_size_8bit (128: faster, opt-in)
    accuracy_level: int = 4
    qgemm: bool = False  # builder.BuildOptions.qgemm (opt-in: bench/README.md, "Integer prefill")
    kind: str | None = None
    source: dict[str, Any] | None = None  # recorded as the manifest's source (default: the file)

    def build_options(self, context_length: int) -> builder.BuildOptions:
        return builder.BuildOptions(self.precision, self.block_size, self.accuracy_level, context_length,
                                    qgemm=self.qgemm, block_size_8bit=self.block_size_8bit)


def import_model(gguf_path: Path, destination: Path, *, name: str | None = None, force: bool = False,
                 options: ImportOptions | None = None, report: Report | None = None) -> dict[str, Any]:
    """Import atomically into `destination`; returns the manifest."""
    options = options or ImportOptions()
    _check_options(options)
    if not gguf_path.is_file():
        raise UsageError(f"{gguf_path}: no such file", hint="gemmacli model import PATH/TO/model.gguf")
    with store.staging_folder(destination, force=force) as staging:
        manifest = import_into(staging, gguf_path, name=name or destination.name, options=options,
                               report=report)
    return manifest


def _check_options(options: ImportOptions) -> None:
    if options.precision not in builder.PRECISIONS:
        raise UsageError(f"unknown precision {options.precision!r}; "
                         f"choose one of {', '.join(builder.PRECISIONS)}")
    for option in ("block_size", "block_size_8bit"):
        if getattr(options, option) not in BLOCK_SIZES:
            raise UsageError(f"{option} must be one of {', '.join(map(str, BLOCK_SIZES))}, "
                             f"not {getattr(options, option)}", option=option)
    if options.kind not in (None, "base", "instruct"):
        raise UsageError(f"kind must be base or instruct, not {options.kind!r}")
    if options.qgemm and options.precision == "fp32":  # fp32 weights have no int8 form to multiply
        raise UsageError("qgemm needs quantized weights, and precision fp32 has none",
                         hint="leave qgemm off, or choose precision auto, int4 or int8",
                         option=("qgemm", "precision"))


def import_into(folder: Path, gguf_path: Path, *, name: str, options: ImportOptions,
                report: Report | None = None) -> dict[str, Any]:
    """Write every file of the model folder into `folder` (an empty staging folder)."""
    stages = Stages(report)
    with stages.stage("read", gguf_path.name):
        model = GGUFModel.open(gguf_path)
        config = model.hf_config()
        sha256 = store.sha256_file(gguf_path)
    with stages.stage("tokenizer", f"{len(model.vocabulary().pieces)} pieces, merges rebuilt"):
        tokenizer = tokenizer_json(model.vocabulary())
    kind = options.kind or model.kind()
    model_config = gguf_model_config(model, config, tokenizer, kind)
    quantization = write_graphs(folder, model, config, tokenizer, model_config, options, stages)
    source = options.source or {"kind": "gguf", "path": str(gguf_path.resolve())}
    source = {**source, "file": gguf_path.name, "sha256": sha256,
              "gguf_name": model.field("general.name"), "gguf_file_type": model.field("general.file_type")}
    manifest = store.write_manifest(folder, name=name, source=source, quantization=quantization,
                                    extra={"exporter": "gemmacli GGUF import (direct graph builder)",
                                           "model_type": config["model_type"], "kind": kind})
    stages.done(f"imported {name} ({kind})")
    return manifest


def write_graphs(folder: Path, weights: builder.WeightSource, config: dict[str, Any],
                 tokenizer: dict[str, Any], model_config: store.ModelConfig, options: ImportOptions,
                 stages: Stages) -> dict[str, Any]:
    """Every file of a model folder but the manifest, from any weight source (a GGUF, or tuned weights:
    gemmacli.jobs.tune); checked by one forward pass. Returns the manifest's `quantization`."""
    build = options.build_options(int(config["max_position_embeddings"]))
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    with stages.stage("lm_head", f"{options.precision}, {config['vocab_size']} rows"):
        lm_head = builder.build_lm_head(weights, config, build)
        save_graph(lm_head, folder / "lm_head.onnx", size_threshold=0)  # every weight shareable
        head_weights = _quantized_names(lm_head)
        del lm_head
    with stages.stage("decoder", f"{config['num_hidden_layers']} blocks, fused"):
        shared = None
        if options.precision != "fp32" and not weights.has("output.weight"):
            on_disk = onnx.load(str(folder / "lm_head.onnx"), load_external_data=False)
            shared = builder.embedding_from_lm_head(on_disk, "lm_head.onnx.data")  # at the lm_head's block
        decoder = builder.build_decoder(weights, config, build, embedding=shared)
        save_graph(decoder, folder / "model.onnx")
        decoder_weights = _quantized_names(decoder)
        del decoder
    model_config.write(folder)
    with stages.stage("check", "onnxruntime loads both graphs; one forward pass"):
        _smoke_test(folder)
    return _quantization(options, decoder_weights, head_weights, shared is not None)


def _quantized_names(model: onnx.ModelProto) -> list[str]:
    props = {p.key: p.value for p in model.metadata_props}
    return [n for n in props.get("gemmacli.quantized", "").split("\n") if n]


def gguf_model_config(model: GGUFModel, config: dict[str, Any], tokenizer: dict[str, Any],
                  kind: str) -> store.ModelConfig:
    """gemmacli.json: eos is the GGUF's eos and Gemma's <end_of_turn>; the chat template is the GGUF's own
    (an instruction-tuned GGUF carries one) or Gemma 3's."""
    ids = tokenizer["model"]["vocab"]
    eos = {int(config["eos_token_id"])}
    if GEMMA_END_OF_TURN in ids:
        eos.add(int(ids[GEMMA_END_OF_TURN]))
    return store.ModelConfig(
        eos_token_ids=sorted(eos),
        bos_token_id=int(config["bos_token_id"]),
        pad_token_id=int(config["pad_token_id"] if config["pad_token_id"] is not None else 0),
        context_length=int(config["max_position_embeddings"]),
        vocab_size=int(config["vocab_size"]),
        hidden_size=int(config["hidden_size"]),
        chat_template=str(model.field("tokenizer.chat_template") or store.GEMMA3_CHAT_TEMPLATE),
        model_type=str(config["model_type"]),
        kind=kind,
        max_token_chars=store.longest_piece(ids),
    )


def _quantization(options: ImportOptions, decoder: list[str], head: list[str],
                  shared_embedding: bool) -> dict[str, Any]:
    if options.precision == "fp32":
        return {"bits": 32, "format": "fp32"}
    widths = sorted({int(name.rsplit(":", 1)[1]) for name in decoder + head})
    return {
        "bits": min(widths), "format": "+".join(f"int{w}" for w in widths), "precision": options.precision,
        "block_size": options.block_size, "block_size_8bit": options.block_size_8bit, "symmetric": False,
        "method": "gemmacli.models.quant (blockwise asymmetric, MatMulNBits layout) of the de-quantized GGUF",
        "accuracy_level": {"model.onnx": options.accuracy_level, "lm_head.onnx": options.accuracy_level},
        # the tensors listed as MatMulInteger:8 are int8 per column, their inputs int8 per row
        "qgemm": options.qgemm,
        "tensors": {"model.onnx": decoder, "lm_head.onnx": head},
        "embedding": ("GatherBlockQuantized over the lm_head's quantized bytes (lm_head.onnx.data)"
                      if shared_embedding else "fp32 Gather"),
    }


def _smoke_test(folder: Path) -> None:
    """Load the folder as extract will and run <bos>: a graph onnxruntime refuses fails the import here."""
    from gemmacli.engine.runtime import Model

    try:
        loaded = Model(folder, threads=None)
        cache = loaded.new_cache()
        hidden = loaded.forward(cache, [loaded.config.bos_token_id])
        logits = loaded.logits(hidden)
    except ModelError:
        raise
    except Exception as exc:  # onnxruntime's own exception types
        raise ModelError(f"the imported graphs do not run: {exc}") from exc
    if not (np.all(np.isfinite(hidden)) and np.all(np.isfinite(logits))):
        raise ModelError("the imported model computes non-finite values (a damaged or unsupported GGUF)")
