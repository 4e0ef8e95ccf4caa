"""Worked examples (few-shot demonstrations): labelled records shown to the model before the text.

A pretrained 270M model continues documents: shown two or three `Text: … / JSON: …` pairs in which absent
facts are null and values are copied from the text, it writes the next JSON the same way (the bundled
contact example: invented title, e-mail and phone without examples; exact, with nulls, with them).

Records are JSON Lines `{"id", "text", "label"}` (other field names by option), the format `eval` and
`tune` read. Every label must validate against the schema: a wrong demonstration teaches a wrong answer.
Answers are written as the grammar writes them (compact JSON, keys in the schema's order).

Bundled schemas may ship their own examples as `schemas/examples/NAME.jsonl`; they are used unless
`--examples` names others (or `none`).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemmacli.engine.prompt import Demonstration
from gemmacli.errors import UsageError
from gemmacli.files import read_json_lines
from gemmacli.schema import LoadedSchema, instance_validator, schemas_dir

SELECTIONS = ("fixed", "similar")
#: Records read from an examples file for `--select similar` (the pool every text picks its examples from).
POOL_LIMIT = 20000
_WORD = re.compile(r"\w+")

#: How many examples go into the prompt unless --shots says otherwise: enough to show nulls and copying,
#: few enough that the prompt head (prefilled once per batch) stays short. On the bundled contact example
#: the real base model got every field right with 2, and invented values with 1 or 3 (a small model is
#: that sensitive; `gemmacli eval` measures it per data set).
DEFAULT_SHOTS = 2
NONE = "none"


@dataclass(frozen=True)
class Examples:
    """The worked examples of a run: `fixed`, the first `shots` for every text (they sit in the prompt
    head, prefilled once per batch); `similar`, the `shots` of the pool that share the most rare words with
    the text (a cheap lexical choice: idf-weighted word overlap), chosen per text."""

    pool: tuple[Demonstration, ...] = ()
    shots: int = DEFAULT_SHOTS
    select: str = "fixed"
    idf: dict[str, float] = field(default_factory=dict, compare=False, repr=False)
    #: each pool example's words, found once here rather than for every text
    words: list[frozenset[str]] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.select not in SELECTIONS:
            raise UsageError(f"select must be one of {', '.join(SELECTIONS)}, not {self.select!r}",
                             option="select")
        if self.select == "similar" and not self.words:
            self.words.extend(frozenset(_words(example.text)) for example in self.pool)
            counts: Counter[str] = Counter(word for words in self.words for word in words)
            total = len(self.pool) + 1
            self.idf.update({w: math.log(total / (1 + n)) + 1.0 for w, n in counts.items()})

    @property
    def per_text(self) -> bool:
        return self.select == "similar" and len(self.pool) > self.shots

    def for_text(self, text: str) -> tuple[Demonstration, ...]:
        if not self.per_text:
            return self.pool[: self.shots]
        words = set(_words(text))
        scores = [sum(self.idf.get(w, 0.0) for w in words & known) for known in self.words]
        best = sorted(range(len(self.pool)), key=lambda i: (-scores[i], i))[: self.shots]
        return tuple(self.pool[i] for i in sorted(best, key=lambda i: scores[i]))  # most similar last


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


@dataclass(frozen=True)
class ExampleSource:
    """Where examples come from and which record fields hold what."""

    path: Path
    text_field: str = "text"
    label_field: str = "label"


def bundled_examples(loaded: LoadedSchema) -> Path | None:
    """schemas/examples/NAME.jsonl for a bundled schema NAME, if it ships one."""
    if loaded.source != "bundled" or loaded.path is None:
        return None
    path = schemas_dir() / "examples" / f"{loaded.path.stem}.jsonl"
    return path if path.is_file() else None


def resolve_source(option: str | None, loaded: LoadedSchema) -> Path | None:
    """--examples FILE | none | (not given: the bundled schema's own examples, if any)."""
    if option is None:
        return bundled_examples(loaded)
    if option == NONE:
        return None
    return Path(option).expanduser()


def load_examples(source: ExampleSource, schema: dict,
                  shots: int = DEFAULT_SHOTS) -> tuple[Demonstration, ...]:
    """The first `shots` records of the file as demonstrations; every label checked against the schema."""
    if shots < 0:
        raise UsageError(f"shots must be 0 or more, not {shots}", option="shots")
    records = _read_records(source.path)
    validator = instance_validator(schema)
    found: list[Demonstration] = []
    for number, record in records:
        if len(found) >= shots:
            break
        text, label = _fields(record, source, number)
        errors = list(validator.iter_errors(label))
        if errors:
            raise UsageError(f"{source.path}:{number}: the label does not validate against the schema: "
                             f"{errors[0].message}", hint="examples teach by copying: fix or drop the record")
        found.append(Demonstration(text, compact_answer(label, schema)))
    return tuple(found)


def compact_answer(label: Any, schema: dict) -> str:
    """The label as the grammar would write it: compact, keys in the schema's property order."""
    return json.dumps(_ordered(label, schema), ensure_ascii=False, separators=(",", ":"))


def _ordered(value: Any, schema: Any) -> Any:
    if isinstance(value, dict) and isinstance(schema, dict) and isinstance(schema.get("properties"), dict):
        order = list(schema["properties"])
        keys = sorted(value, key=lambda k: order.index(k) if k in order else len(order))
        return {k: _ordered(value[k], schema["properties"].get(k)) for k in keys}
    if isinstance(value, list) and isinstance(schema, dict):
        return [_ordered(v, schema.get("items")) for v in value]
    return value


def _read_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    return list(read_json_lines(path, "examples file"))


def _fields(record: dict[str, Any], source: ExampleSource, number: int) -> tuple[str, Any]:
    text = record.get(source.text_field)
    if not isinstance(text, str) or source.label_field not in record:
        raise UsageError(f"{source.path}:{number}: a record needs a string {source.text_field!r} and a "
                         f"{source.label_field!r}", hint="--text-field / --label-field name other fields")
    return text, record[source.label_field]


def describe(examples: Sequence[Demonstration], path: Path | None) -> str:
    return f"{len(examples)} worked example(s) from {path}" if examples and path else "no worked examples"
