"""Extract labelled records and score them: `gemmacli eval`'s run, and `gemmacli tune`'s dev scores.

Kept apart from gemmacli.jobs.evaluate (pure scoring, no model) so the scorer stays importable without the
batch machinery; the extraction is extract's own (gemmacli.jobs.batch: the same prompt, grammar, workers).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gemmacli.jobs import batch
from gemmacli.jobs.evaluate import LabelledRecord, Scorer
from gemmacli.jobs.inputs import Source
from gemmacli.jobs.progress import ProgressReporter

if TYPE_CHECKING:
    from gemmacli.jobs.ray_data import RayOptions


def evaluate_records(records: Sequence[LabelledRecord], options: batch.ExtractOptions, *, jobs: int = 1,
                     progress: ProgressReporter | None = None, ray: RayOptions | None = None
                     ) -> dict[str, Any]:
    """Extract every record (as extract would; on Ray actors with `ray`) and score it against its label:
    the eval report."""
    sink = _Collect()
    started = time.monotonic()
    sources = [Source(r.id, "jsonl", None, text=r.text) for r in records]
    batch.run_batch(sources, options, sink, jobs=jobs, progress=progress, ray=ray)
    schema = options.schema if isinstance(options.schema, dict) else options.schema.schema
    return _report(records, sink.records, schema, time.monotonic() - started)


class _Collect:
    """A record sink that keeps the records (by source id) for scoring."""

    def __init__(self) -> None:
        self.records: dict[str, dict[str, Any]] = {}

    def write(self, record: dict[str, Any]) -> None:
        self.records[str(record["source"])] = record

    def close(self) -> None:
        return None



def _report(records: Sequence[Any], outcomes: dict[str, dict[str, Any]], schema: dict,
            elapsed: float) -> dict[str, Any]:
    scorer = Scorer(schema)
    failed = []
    seconds = []
    predictions = []
    for record in records:
        outcome = outcomes.get(record.id, {"ok": False, "error": {"message": "not extracted"}})
        if outcome.get("ok"):
            scorer.add(outcome["data"], record.label)
            seconds.append(outcome.get("meta", {}).get("seconds", 0.0))
        else:
            scorer.add(None, record.label, failed=True)
            failed.append({"id": record.id, "message": outcome["error"]["message"]})
        predictions.append({"id": record.id, "label": record.label, "predicted": outcome.get("data")})
    report = scorer.report()
    report["failed"] = failed
    report["predictions"] = predictions  # last: the record-by-record view, for reading the mistakes
    report["seconds"] = round(elapsed, 2)
    report["records_per_second"] = round(len(records) / elapsed, 3) if elapsed else None
    report["seconds_per_record"] = round(sum(seconds) / len(seconds), 3) if seconds else None
    return report
