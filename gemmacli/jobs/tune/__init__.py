"""`gemmacli tune`: a task-specific model from labelled records, on the user's own CPU (or GPU).

    from gemmacli.jobs.tune import TuneOptions, tune
    manifest = tune(prepare_schema(load_schema("schema.json")), TuneOptions(name="intents", data=Path(...)))

Modules: options (TuneOptions), data (records -> extract's prompt + answer tokens, batches), base (the base
model's GGUF weights, tokenizer, config), trainer (the loop, checkpoints), run (the whole job: train,
export through the importer's graph writer, score on dev). torch, transformers and peft are imported only
when a tune runs (the `gemmacli[tune]` extra).
"""

from gemmacli.jobs.tune.options import TuneOptions
from gemmacli.jobs.tune.run import TuneHooks, tune, work_folder

__all__ = ["TuneHooks", "TuneOptions", "tune", "work_folder"]
