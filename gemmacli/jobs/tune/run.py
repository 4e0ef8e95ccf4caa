"""`gemmacli tune`, start to end: records -> sequences -> training -> an ordinary gemmacli model folder.

    tune(schema, options, hooks) -> manifest

The folder is written by the GGUF importer's own graph writer (gemmacli.models.importer.write_graphs) from
the tuned weights, at the import's precision (auto: each tensor at the width the base GGUF gave it), then
scored on the dev records by extract's own path (gemmacli.jobs.scoring_run), once as exported and once in
fp32, and only then moved under its name. Its gemmacli.json says it is `tuned` (never picked without
--model) and which prompt it learnt (style, field-guide level), so extract builds that prompt by itself.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemmacli.engine.config import ExtractionConfig
from gemmacli.engine.prompt import PROMPT_LEVELS, style_for
from gemmacli.errors import UsageError
from gemmacli.jobs import batch
from gemmacli.jobs.evaluate import LabelledFields, LabelledRecord, read_labelled
from gemmacli.jobs.progress import ProgressReporter
from gemmacli.jobs.scoring_run import evaluate_records
from gemmacli.jobs.tune.base import BaseModel, open_base
from gemmacli.jobs.tune.data import (
    AnswerGrammar,
    TrainingSequence,
    check_labels,
    training_sequence,
)
from gemmacli.jobs.tune.options import TuneOptions
from gemmacli.jobs.tune.trainer import CHECKPOINT, Reporter, Status, Trainer, require_torch
from gemmacli.models import store
from gemmacli.models.export import Stages
from gemmacli.models.importer import ImportOptions, write_graphs
from gemmacli.models.torch_gemma import TunedWeights, torch_model
from gemmacli.schema import PreparedSchema


@dataclass
class TuneHooks:
    """How a tune talks to its caller (the CLI: stderr lines; tests: nothing)."""

    report: Reporter = lambda event, status: None
    info: Callable[[str], None] = lambda message: None
    warn: Callable[[str], None] = lambda message: None
    eval_progress: Callable[[], ProgressReporter | None] = lambda: None
    after_step: Callable[[Status], None] | None = None  # tests: interrupt at a chosen step
    stage_report: Callable[[str], None] | None = None  # export stages, as `model import` prints them


def work_folder(destination: Path) -> Path:
    """Checkpoints live beside the model's folder-to-be, under a dot name (`model list` skips it)."""
    return destination.parent / f".tune-{destination.name}"


def tune(schema: PreparedSchema, options: TuneOptions, hooks: TuneHooks | None = None) -> dict[str, Any]:
    """Train, export, score; returns the new model's manifest."""
    hooks = hooks or TuneHooks()
    options = options.planned()
    torch = require_torch()
    torch.set_num_threads(options.threads or os.cpu_count() or 1)
    destination = (options.out_dir or store.default_store_dir()) / options.name
    if destination.exists() and not options.force:
        raise UsageError(f"{destination} already exists",
                         hint=f"gemmacli model rm {options.name}   # or pass --force to replace it")
    work = work_folder(destination)
    if options.resume and not (work / CHECKPOINT).is_file():
        raise UsageError(f"nothing to resume: no checkpoint in {work}", hint="run without --resume",
                         option="resume")
    base = open_base(options.base, store.cache_home() / "gguf")
    tuned_config = _tuned_config(base, options)
    tokenizer = base.tokenizer()
    train_records, dev_records = _records(schema.schema, options)
    shared = _shared_texts(train_records, dev_records)
    if shared:
        hooks.warn(f"{shared} of {len(dev_records)} dev text(s) also appear in {options.data}: "
                   "the dev scores flatter the model by that much")
    grammar = _answer_grammar(schema, tuned_config, tokenizer, base.tokenizer_path(work))
    encode = _encoder(tokenizer, tuned_config, schema.schema, options, grammar)
    train, dev = [encode(r) for r in train_records], [encode(r) for r in dev_records]
    hooks.info(f"tune {options.name}: {len(train)} training record(s), {len(dev)} dev, from {base.name} "
               f"({options.method}, {_length(options)}, batch {options.batch_size}, lr {options.lr:g}); "
               f"{sum(len(s.ids) for s in train) / max(1, len(train)):.0f} tokens a sequence")
    trainer = Trainer(torch_model(base.gguf, base.hf_config), train, dev, options,
                      pad_id=tuned_config.pad_token_id)
    hooks.info(f"device: {trainer.device}" + ("" if trainer.device == "cuda" else
                                              f" ({torch.get_num_threads()} threads; no GPU seen by torch)"))
    if options.resume:
        trainer.load(work / CHECKPOINT)
        hooks.info(f"resumed at step {trainer.status.step} ({trainer.status.seconds / 60:.1f} min trained)")
    status = trainer.run(work / CHECKPOINT, hooks.report, hooks.after_step)
    state, device = trainer.merged_state(), trainer.device
    del trainer
    gc.collect()
    weights = TunedWeights.from_state(base.gguf, state, int(base.hf_config["num_hidden_layers"]))
    record = _record(base, options, schema, status, device, len(train), len(dev))
    manifest = _export(destination, weights, base, tuned_config, schema, options, record, dev_records, hooks)
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def _tuned_config(base: BaseModel, options: TuneOptions) -> store.ModelConfig:
    """The base's config, marked tuned, declaring the prompt it is trained on."""
    return dataclasses.replace(base.model_config, kind="tuned", prompt_style=style_for(base.model_config),
                               guide_level=PROMPT_LEVELS.index(options.prompt))


def _records(schema: dict, options: TuneOptions) -> tuple[list[LabelledRecord], list[LabelledRecord]]:
    train = read_labelled(options.data, LabelledFields(), options.limit)
    if not train:
        raise UsageError(f"{options.data} holds no records", option="data")
    check_labels(train, schema, options.data)
    dev: list[LabelledRecord] = []
    if options.dev is not None:
        dev = read_labelled(options.dev, LabelledFields(), options.dev_limit)
        check_labels(dev, schema, options.dev)
    return train, dev


def _shared_texts(train: list[LabelledRecord], dev: list[LabelledRecord]) -> int:
    seen = {" ".join(r.text.split()).lower() for r in train}
    return sum(" ".join(r.text.split()).lower() in seen for r in dev)


def _encoder(tokenizer: Any, config: store.ModelConfig, schema: dict, options: TuneOptions,
             grammar: AnswerGrammar | None) -> Callable[[LabelledRecord], TrainingSequence]:
    def encode(record: LabelledRecord) -> TrainingSequence:
        return training_sequence(tokenizer, config, schema, record,
                                 max_prompt_tokens=options.max_prompt_tokens, grammar=grammar)

    return encode


def _answer_grammar(schema: PreparedSchema, config: store.ModelConfig, tokenizer: Any,
                    tokenizer_file: Path) -> AnswerGrammar:
    """The grammar extract decodes with, and llguidance's token table: which answer tokens are forced
    and which are choices (gemmacli.jobs.tune.data.AnswerGrammar)."""
    from gemmacli.engine.grammar import Mask, TokenizerBuild, compile_grammar

    build = TokenizerBuild(tokenizer_file, config.vocab_size, list(config.eos_token_ids), encoder=tokenizer,
                           bos=config.bos_token_id)
    build.start()
    mask = Mask(build.n_vocab, build.model_rows)
    return AnswerGrammar(compile_grammar(schema.enforced), build.result(), mask)


def _length(options: TuneOptions) -> str:
    return f"{options.minutes:g} min" if options.minutes is not None else f"{options.epochs:g} epoch(s)"


def _record(base: BaseModel, options: TuneOptions, schema: PreparedSchema, status: Status, device: str,
            train: int, dev: int) -> dict[str, Any]:
    """The manifest's `tune` entry: where the model came from and how it was made."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return {
        "base": {"name": base.name, "gguf_sha256": base.gguf_sha256},
        "data": {"path": str(options.data), "sha256": store.sha256_file(options.data), "records": train},
        "dev": ({"path": str(options.dev), "sha256": store.sha256_file(options.dev), "records": dev}
                if options.dev is not None else None),
        "schema": {"source": schema.source, "sha256": schema.sha256, "schema": schema.schema},
        "hyper_parameters": options.hyper_parameters(),
        "training": {"steps": status.step, "examples": status.examples,
                     "epochs": round(status.examples / max(1, train), 3),
                     "minutes": round(status.seconds / 60, 2),
                     "examples_per_second": round(status.examples_per_second, 2),
                     "final_loss": status.loss, "losses": status.losses, "dev_checks": status.dev,
                     "device": device, "peak_rss_bytes": peak},
    }


def _export(destination: Path, weights: TunedWeights, base: BaseModel, config: store.ModelConfig,
            schema: PreparedSchema, options: TuneOptions, record: dict[str, Any],
            dev: list[LabelledRecord], hooks: TuneHooks) -> dict[str, Any]:
    """Write the folder (staged), score it and its fp32 twin on dev, then the manifest, then rename."""
    stages = Stages(hooks.stage_report)
    import_options = ImportOptions(precision=options.precision)
    with store.staging_folder(destination, force=options.force) as staging:
        quantization = write_graphs(staging, weights, base.hf_config, base.tokenizer_json, config,
                                    import_options, stages)
        scores: dict[str, Any] = {}
        if dev:
            scores[options.precision] = _score(staging, schema, dev, hooks, f"{options.precision} model")
            if options.score_fp32 and options.precision != "fp32":
                scores["fp32"] = _score_fp32(staging.parent, weights, base, config, schema, dev, hooks)
        record["scores"] = scores
        source = {"kind": "tune", "base": base.name, "base_gguf_sha256": base.gguf_sha256}
        manifest = store.write_manifest(staging, name=options.name, source=source, quantization=quantization,
                                        extra={"exporter": "gemmacli tune (direct graph builder)",
                                               "model_type": base.hf_config["model_type"], "kind": "tuned",
                                               "tune": record})
    stages.done(f"tuned model {options.name} written to {destination}")
    return manifest


def _score_fp32(parent: Path, weights: TunedWeights, base: BaseModel, config: store.ModelConfig,
                schema: PreparedSchema, dev: list[LabelledRecord], hooks: TuneHooks) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=".tune-fp32-", dir=parent) as folder:
        write_graphs(Path(folder), weights, base.hf_config, base.tokenizer_json, config,
                     ImportOptions(precision="fp32"), Stages(hooks.stage_report))
        return _score(Path(folder), schema, dev, hooks, "fp32 model")


def _score(folder: Path, schema: PreparedSchema, dev: list[LabelledRecord], hooks: TuneHooks,
           label: str) -> dict[str, Any]:
    """Dev scores by extract's own path (grammar, greedy), as `gemmacli eval` reports them."""
    started = time.monotonic()
    hooks.info(f"scoring the {label} on {len(dev)} dev record(s)")
    options = batch.ExtractOptions(schema=schema, model=str(folder.resolve()), config=ExtractionConfig(),
                                   with_meta=True)
    report = evaluate_records(dev, options, progress=hooks.eval_progress())
    fields = {path: round(row["score"], 4) for path, row in report["fields"].items()}
    shown = " ".join(f"{k} {v:.3f}" for k, v in fields.items())
    hooks.info(f"{label}: overall {report['overall']:.3f} {shown} ({time.monotonic() - started:.0f} s)")
    scores = {"overall": round(report["overall"], 4), "fields": fields, "failures": report["failures"],
              "records": report["records"]}
    micro = _micro_f1(report["fields"].values())
    if micro is not None:
        scores["micro_f1"] = micro
    return scores


def _micro_f1(rows: Any) -> float | None:
    """Micro F1 over every list field's items together (entity sets: the usual NER figure); None when the
    schema has no list fields."""
    sets = [row for row in rows if row.get("kind") == "set"]
    if not sets:
        return None
    tp = sum(row["true_positives"] for row in sets)
    fp = sum(row["false_positives"] for row in sets)
    fn = sum(row["false_negatives"] for row in sets)
    return round(2 * tp / (2 * tp + fp + fn), 4) if tp + fp + fn else 1.0
