"""Labelled records -> the token sequences a tuned model learns from, and their batches.

A sequence is extract's own prompt (gemmacli.engine.prompt.encode_prompt, for the tuned model's config:
its style and its field-guide level) followed by the answer as the grammar writes it (compact JSON, keys
in the schema's order: gemmacli.engine.examples.compact_answer) and the end token. The loss is on the
answer only: the prompt is given, never learnt. One function builds the prompt for both, so what the model
is trained on is, token for token, what extract will show it (tests/test_tune.py checks it).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gemmacli.engine.examples import compact_answer
from gemmacli.engine.prompt import encode_prompt, special_token_id, style_for
from gemmacli.errors import UsageError
from gemmacli.jobs.evaluate import LabelledRecord
from gemmacli.schema import instance_validator

#: An allowed set up to this size is scored over its own rows (a softmax over the choices the grammar
#: leaves); a larger one (free text) over the whole vocabulary.
SMALL_CHOICE = 4096


@dataclass(frozen=True)
class Choice:
    """A token the model must choose (the grammar allows more than one): ids[index], among `allowed`
    (None: the whole vocabulary)."""

    index: int
    allowed: tuple[int, ...] | None


@dataclass(frozen=True)
class TrainingSequence:
    """Prompt and answer ids, and the answer positions where the model chooses (the loss covers only
    those: tokens the grammar forces are fed, never predicted, in extract as here)."""

    ids: tuple[int, ...]
    answer_start: int
    choices: tuple[Choice, ...]

    @property
    def answer_tokens(self) -> int:
        return len(self.ids) - self.answer_start


def end_token(tokenizer: Any, model_config: Any) -> int:
    """The token that ends an answer: <end_of_turn> in a chat turn (the one the prompt's turns use), <eos>
    in a document."""
    eos = list(getattr(model_config, "eos_token_ids", [1]))
    end_of_turn = special_token_id(tokenizer, "<end_of_turn>", 106)
    if style_for(model_config) == "chat" and end_of_turn in eos:
        return end_of_turn
    return int(eos[0])


@dataclass
class AnswerGrammar:
    """The schema's grammar and llguidance's token table: what extract's decoder walks the answer with."""

    grammar: Any  # gemmacli.engine.grammar.Grammar
    lltokenizer: Any
    mask: Any  # gemmacli.engine.grammar.Mask

    def walk(self, encoder: Any, answer: str, end: int) -> tuple[list[int], list[Choice]]:
        """The answer's tokens as extract's decoder would meet them: the grammar's forced tokens as it
        forces them, the rest as the tokenizer spells the remaining text; a Choice wherever the grammar
        leaves the model more than one token. Off the grammar's path (a label it would not write), the
        rest is the plain tokenization, every token a choice over the whole vocabulary."""
        from gemmacli.engine.grammar import new_matcher

        matcher = new_matcher(self.lltokenizer, self.grammar)
        target, done = answer.encode("utf-8"), b""
        ids: list[int] = []
        choices: list[Choice] = []
        while len(done) < len(target):
            forced = list(matcher.compute_ff_tokens())
            if forced and target.startswith(done + self.lltokenizer.decode_bytes(forced)):
                matcher.consume_tokens(forced)
                ids += forced
                done += self.lltokenizer.decode_bytes(forced)
                continue
            token = _next_token(encoder, target[len(done):])
            if forced or token is None or matcher.validate_tokens([token]) != 1:
                rest = target[len(done):].decode("utf-8", errors="replace")
                tail = [*encoder.encode(rest, add_special_tokens=False).ids, end]
                return [*ids, *tail], [*choices, *(Choice(len(ids) + i, None) for i in range(len(tail)))]
            choices.append(Choice(len(ids), self._allowed(matcher)))
            matcher.consume_token(token)
            ids.append(token)
            done += self.lltokenizer.decode_bytes([token])
        if not matcher.is_stopped() and matcher.validate_tokens([end]) == 1:
            allowed = self._allowed(matcher)
            if allowed is None or len(allowed) > 1:
                choices.append(Choice(len(ids), allowed))
            ids.append(end)
        return ids, choices

    def _allowed(self, matcher: Any) -> tuple[int, ...] | None:
        self.mask.fill(matcher)
        if self.mask.count() > SMALL_CHOICE:
            return None
        return tuple(int(t) for t in self.mask.allowed())


def _next_token(encoder: Any, rest: bytes) -> int | None:
    try:
        text = rest.decode("utf-8")
    except UnicodeDecodeError:
        return None
    ids = encoder.encode(text, add_special_tokens=False).ids
    return int(ids[0]) if ids else None


def training_sequence(tokenizer: Any, model_config: Any, schema: dict, record: LabelledRecord, *,
                      max_prompt_tokens: int, grammar: AnswerGrammar | None = None) -> TrainingSequence:
    """One record as the model will meet it in extract; a long text is cut to `max_prompt_tokens`.
    Without `grammar`, every answer token (and the end) is a choice over the whole vocabulary."""
    context = int(getattr(model_config, "context_length", 32768))
    prompt = encode_prompt(tokenizer, model_config, schema, record.text,
                           max_tokens=max(1, context - max_prompt_tokens), truncate=True)
    answer, end = compact_answer(record.label, schema), end_token(tokenizer, model_config)
    if grammar is not None:
        answer_ids, choices = grammar.walk(tokenizer, answer, end)
    else:
        answer_ids = [*tokenizer.encode(answer, add_special_tokens=False).ids, end]
        choices = [Choice(i, None) for i in range(len(answer_ids))]
    start = len(prompt.ids)
    return TrainingSequence((*prompt.ids, *answer_ids), start,
                            tuple(Choice(start + c.index, c.allowed) for c in choices))


def check_labels(records: Sequence[LabelledRecord], schema: dict, path: Path) -> None:
    """Every label must validate: a model learns whatever it is shown, including a broken label."""
    validator = instance_validator(schema)
    for record in records:
        error = next(iter(validator.iter_errors(record.label)), None)
        if error is not None:
            raise UsageError(f"{path}: record {record.id!r}: the label does not validate against the "
                             f"schema: {error.message}",
                             hint="fix or drop the record: a tuned model copies its labels")


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Indices in batches of similar length (little padding), in a shuffled order fixed by (seed, epoch):
    a resumed run meets exactly the batches an uninterrupted one would."""
    rng = random.Random(f"gemmacli-tune:{seed}:{epoch}")
    jitter = [rng.random() for _ in lengths]
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], jitter[i]))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches
