"""Seconds a training step of `gemmacli tune` on the real model: LoRA and full, batch 16 and 32.

    flock /tmp/gemmacli-heavy.lock python bench/bench_tune_steps.py banking77

400 train records of the set, 6 steps each, examples/s from the median of the last 4 (the table in
bench/README.md, "Tuning").
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from gemmacli.jobs.tune.base import open_base
from gemmacli.jobs.tune.data import epoch_batches
from gemmacli.jobs.tune.options import TuneOptions
from gemmacli.jobs.tune.run import _answer_grammar, _encoder, _records, _tuned_config
from gemmacli.jobs.tune.trainer import Trainer
from gemmacli.models import store
from gemmacli.models.torch_gemma import torch_model
from gemmacli.schema import load_schema, prepare_schema

DATASETS = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"


def main(name: str) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    folder = DATASETS / name
    schema = prepare_schema(load_schema(str(folder / "schema.json")))
    base = open_base(None, store.cache_home() / "gguf")
    tokenizer = base.tokenizer()
    for method, batch_size in (("lora", 16), ("full", 16), ("lora", 32)):
        options = TuneOptions(name="steps", data=folder / "train.jsonl", method=method, batch_size=batch_size,
                              epochs=1.0, limit=400)
        config = _tuned_config(base, options)
        records, _ = _records(schema.schema, options)
        grammar = _answer_grammar(schema, config, tokenizer, base.tokenizer_path(Path("bench/out/tune")))
        sequences = [_encoder(tokenizer, config, schema.schema, options, grammar)(r) for r in records]
        trainer = Trainer(torch_model(base.gguf, base.hf_config), sequences, [], options, pad_id=0)
        times = []
        for batch in epoch_batches([len(s.ids) for s in sequences], batch_size, 0, 0)[:6]:
            started = time.monotonic()
            trainer._step(batch)
            times.append(time.monotonic() - started)
        median = sorted(times[2:])[len(times[2:]) // 2]
        print(json.dumps({"set": name, "method": method, "batch": batch_size,
                          "step_s": [round(t, 2) for t in times],
                          "examples_per_s": round(batch_size / median, 2)}), flush=True)
        del trainer


if __name__ == "__main__":
    main(sys.argv[1])
