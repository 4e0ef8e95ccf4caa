"""Labelled records -> the token sequences a tuned model learns from, and their batches.

A sequence is extract's own prompt (gemmacli.engine.prompt.encode_prompt, for the tuned model's config:
its style and its field-guide level) followed by the answer as the grammar writes it (compact JSON, keys
in the schema's order: gemmacli.engine.examples.compact_answer) and the end token. The loss is on the
answer only: the prompt is given, never learnt. One function builds the prompt for both, so what the model
is trained on is, token for token, what extract will show it (tests/test_tune.py checks it).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemmacli.engine.examples import compact_answer
from gemmacli.engine.prompt import encode_prompt, style_for
from gemmacli.errors import UsageError
from gemmacli.jobs.evaluate import LabelledRecord


@dataclass(frozen=True)
class TrainingSequence:
    """Prompt and answer ids; the loss covers ids[answer_start:]."""

    ids: tuple[int, ...]
    answer_start: int

    @property
    def answer_tokens(self) -> int:
        return len(self.ids) - self.answer_start


def end_token(model_config: Any) -> int:
    """The token that ends an answer: <end_of_turn> in a chat turn, <eos> in a document."""
    eos = list(getattr(model_config, "eos_token_ids", [1]))
    if style_for(model_config) == "chat" and 106 in eos:
        return 106
    return int(eos[0])


def training_sequence(tokenizer: Any, model_config: Any, schema: dict, record: LabelledRecord, *,
                      max_prompt_tokens: int) -> TrainingSequence:
    """One record as the model will meet it in extract; a long text is cut to `max_prompt_tokens`."""
    context = int(getattr(model_config, "context_length", 32768))
    prompt = encode_prompt(tokenizer, model_config, schema, record.text,
                           max_tokens=max(1, context - max_prompt_tokens), truncate=True)
    answer = compact_answer(record.label, schema)
    answer_ids = list(tokenizer.encode(answer, add_special_tokens=False).ids)
    return TrainingSequence((*prompt.ids, *answer_ids, end_token(model_config)), len(prompt.ids))


def check_labels(records: Sequence[LabelledRecord], schema: dict, path: Path) -> None:
    """Every label must validate: a model learns whatever it is shown, including a broken label."""
    import jsonschema
    from jsonschema.validators import validator_for

    validator = validator_for(schema, default=jsonschema.Draft202012Validator)(schema)
    for record in records:
        error = next(iter(validator.iter_errors(record.label)), None)
        if error is not None:
            raise UsageError(f"{path}: record {record.id!r}: the label does not validate against the "
                             f"schema: {error.message}",
                             hint="fix or drop the record: a tuned model copies its labels")


def data_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices in batches of similar length (little padding), in a shuffled order fixed by (seed, epoch):
    a resumed run meets exactly the batches an uninterrupted one would."""
    rng = random.Random(f"gemmacli-tune:{seed}:{epoch}")
    jitter = [rng.random() for _ in lengths]
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], jitter[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches
