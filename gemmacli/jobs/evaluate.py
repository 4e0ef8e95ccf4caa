"""Scoring extractions against human labels, field by field (`gemmacli eval`).

Every field is scored at its JSON path (`customer.name`, `items[]`):
- scalars: exact match after normalising case, runs of whitespace and trailing punctuation (and 36 == 36.0);
  a null label is a value too: null against null is right;
- arrays of scalars (entity lists): micro set precision / recall / F1 over the normalised items (as sets:
  a repeated item counts once); arrays of objects the same, over each object's normalised canonical JSON;
- objects: field by field, down the tree.
A value where the label is null (or an item where the label list is empty) is a *hallucination*, counted
apart from plain mistakes: a model that invents is worse than one that misses. An extraction that failed
scores every field of its record as wrong. Enum fields keep their most frequent confusions.
The overall score is the mean of the field scores (accuracy for scalars, F1 for lists).
"""

from __future__ import annotations

import json
import string
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gemmacli.errors import UsageError
from gemmacli.files import read_json_lines

_TRAILING = string.punctuation.replace(")", "").replace("]", "").replace("%", "") + " "
_MISSING = object()  # the prediction of a failed extraction: equal to nothing


@dataclass
class FieldScore:
    """Counts for one JSON path; `kind` is "scalar" or "set"."""

    path: str
    kind: str
    correct: int = 0
    total: int = 0
    true_positives: int = 0
    false_positives: int = 0
    false_negatives: int = 0
    hallucinated: int = 0
    missed: int = 0
    confusions: Counter[tuple[str, str]] = field(default_factory=Counter)

    @property
    def score(self) -> float:
        if self.kind == "scalar":
            return self.correct / self.total if self.total else 0.0
        return self.f1

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 1.0

    @property
    def recall(self) -> float:
        wanted = self.true_positives + self.false_negatives
        return self.true_positives / wanted if wanted else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        if self.true_positives + self.false_positives + self.false_negatives == 0:
            return 1.0
        return 2 * p * r / (p + r) if p + r else 0.0

    def as_dict(self, top: int = 5) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "score": round(self.score, 4),
                               "hallucinated": self.hallucinated, "missed": self.missed}
        if self.kind == "scalar":
            out |= {"correct": self.correct, "total": self.total}
        else:
            out |= {"precision": round(self.precision, 4), "recall": round(self.recall, 4),
                    "f1": round(self.f1, 4), "true_positives": self.true_positives,
                    "false_positives": self.false_positives, "false_negatives": self.false_negatives}
        if self.confusions:
            out["confusions"] = [{"label": a, "predicted": b, "count": n}
                                 for (a, b), n in self.confusions.most_common(top)]
        return out


def normalise(value: Any) -> Any:
    """What two values must share to count as equal: strings casefolded, whitespace runs collapsed,
    trailing punctuation dropped; numbers as floats (booleans apart); lists and objects item by item."""
    if isinstance(value, str):
        return " ".join(value.casefold().split()).rstrip(_TRAILING)
    if isinstance(value, bool):
        return ("bool", value)  # True == 1.0 in Python; not here
    if value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    return value


def _key(value: Any) -> str:
    return json.dumps(normalise(value), sort_keys=True, ensure_ascii=False)


class Scorer:
    """Accumulates FieldScores over (prediction, label) pairs of one schema."""

    def __init__(self, schema: dict) -> None:
        self.schema = schema
        self.fields: dict[str, FieldScore] = {}
        self.records = 0
        self.failures = 0

    def add(self, prediction: Any, label: Any, *, failed: bool = False) -> None:
        """One record; `failed`: the extraction failed, so every labelled field counts as wrong."""
        self.records += 1
        self.failures += failed
        self._score("", _MISSING if failed else prediction, label, self.schema)

    def _field(self, path: str, kind: str) -> FieldScore:
        return self.fields.setdefault(path or "(value)", FieldScore(path or "(value)", kind))

    def _score(self, path: str, prediction: Any, label: Any, schema: Any) -> None:
        node = schema if isinstance(schema, dict) else {}
        if isinstance(label, dict):
            found = node.get("properties")
            props: dict[str, Any] = found if isinstance(found, dict) else {}
            predicted = prediction if isinstance(prediction, dict) else {}
            for key in label:  # what the label names; a key it leaves out is not labelled
                sub = _MISSING if prediction is _MISSING else predicted.get(key)
                self._score(f"{path}.{key}" if path else key, sub, label.get(key), props.get(key))
        elif isinstance(label, list):
            self._score_set(f"{path}[]", prediction, label)
        else:
            self._score_scalar(path, prediction, label, node)

    def _score_scalar(self, path: str, prediction: Any, label: Any, node: dict) -> None:
        score = self._field(path, "scalar")
        score.total += 1
        if prediction is not _MISSING and normalise(prediction) == normalise(label):
            score.correct += 1
            return
        if label is None and prediction not in (None, _MISSING):
            score.hallucinated += 1
        elif label is not None and prediction is None:
            score.missed += 1
        if "enum" in node:  # which label is taken for which: the table a routing schema needs
            shown = "(failed)" if prediction is _MISSING else json.dumps(prediction, ensure_ascii=False)
            score.confusions[(json.dumps(label, ensure_ascii=False), shown)] += 1

    def _score_set(self, path: str, prediction: Any, label: list[Any]) -> None:
        score = self._field(path, "set")
        wanted = {_key(v) for v in label}  # sets: a name listed twice is still one name
        found = {_key(v) for v in prediction} if isinstance(prediction, list) else set()
        hits = len(wanted & found)
        score.true_positives += hits
        score.false_positives += len(found) - hits
        score.false_negatives += len(wanted) - hits
        if not label:
            score.hallucinated += len(found)
        elif not found:
            score.missed += len(wanted)

    @property
    def overall(self) -> float:
        scores = [f.score for f in self.fields.values()]
        return sum(scores) / len(scores) if scores else 0.0

    def report(self) -> dict[str, Any]:
        return {"records": self.records, "failures": self.failures, "overall": round(self.overall, 4),
                "fields": {path: f.as_dict() for path, f in self.fields.items()}}


# ---------------------------------------------------------------------------------------- labelled data


@dataclass(frozen=True)
class LabelledRecord:
    id: str
    text: str
    label: Any


@dataclass(frozen=True)
class LabelledFields:
    """Which fields of a labelled JSON Lines record hold the id, the text and the label."""

    text: str = "text"
    label: str = "label"
    id: str = "id"


def read_labelled(path: Path, fields: LabelledFields = LabelledFields(),
                  limit: int | None = None) -> list[LabelledRecord]:
    """The records of a labelled JSON Lines file (the first `limit`); UsageError naming a bad line."""
    return list(_records(read_json_lines(path, "labelled data"), path, fields, limit))


def _records(lines: Iterable[tuple[int, dict[str, Any]]], path: Path, fields: LabelledFields,
             limit: int | None) -> Iterator[LabelledRecord]:
    seen: set[str] = set()
    for number, record in lines:
        if limit is not None and len(seen) >= limit:
            return
        if not isinstance(record.get(fields.text), str) \
                or fields.label not in record:
            raise UsageError(f"{path}:{number}: a record needs a string {fields.text!r} and a "
                             f"{fields.label!r}",
                             hint="--text-field / --label-field / --id-field name other fields")
        ident = str(record.get(fields.id, f"line {number}"))
        if ident in seen:
            raise UsageError(f"{path}:{number}: id {ident!r} appears twice")
        seen.add(ident)
        yield LabelledRecord(ident, record[fields.text], record[fields.label])

