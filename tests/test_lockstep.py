"""Several documents decoded together (gemmacli.engine.lockstep, `extract --parallel N`): the batched run
equal row for row to single runs, and a batch's records byte-identical to one document at a time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gemmacli.engine.config import ExtractionConfig
from gemmacli.engine.lockstep import Lockstep
from gemmacli.jobs.batch import ExtractOptions, build_extractor, outcomes
from gemmacli.jobs.inputs import Source

SCHEMA = {"type": "object", "required": ["name", "mood", "tags"], "properties": {
    "name": {"type": "string", "maxLength": 40}, "mood": {"enum": ["happy", "sad", "neutral"]},
    "tags": {"type": "array", "maxItems": 4, "items": {"type": "string", "maxLength": 12}}}}
TEXTS = ["Alice Martin, 34, wrote from Paris on Monday. She is happy.",
         "Short one.",
         "The parcel never came and nobody answers the phone; " * 4,  # past the tiny model's window of 16
         "Bob", "Meh. It works, sometimes, I guess? " * 2, "Dear team, the invoice 42 is wrong.",
         "x", "Ticket: exports wipe the dashboards since the update; please roll it back today."]


@pytest.fixture(scope="module")
def model(request: pytest.FixtureRequest) -> Any:
    from gemmacli.engine.runtime import Model

    return Model.load(Path(request.getfixturevalue("tiny_model_dir")), threads=1)


@pytest.mark.parametrize("lengths", [(3, 9, 0), (30, 5, 17), (40, 40, 2)])  # the window is 16
def test_a_batched_step_equals_each_sequence_alone(model: Any, lengths: tuple[int, ...]) -> None:
    lockstep = Lockstep(model, len(lengths), rows=128)
    streams = [lockstep.stream(i) for i in range(len(lengths))]
    alone, caches = [], []
    for i, (stream, length) in enumerate(zip(streams, lengths, strict=True)):
        prompt = [100 + 7 * i + j for j in range(length)]
        single = model.new_cache()
        if prompt:
            model.forward(single, prompt)
        alone.append(model.forward(single, [55 + i]))
        cache = stream.new_cache()
        if prompt:
            model.forward(cache, prompt)  # the stream's row, run alone
        caches.append(cache)
    hidden = model.forward_batch(lockstep.buffers, [55 + i for i in range(len(lengths))],
                                 [c.length for c in caches])
    for i in range(len(lengths)):
        assert np.array_equal(hidden[i], alone[i])


def _records(tiny_model_dir: Path, streams: int, **config: Any) -> list[str]:
    options = ExtractOptions(SCHEMA, str(tiny_model_dir), ExtractionConfig(**{"max_tokens": 48, **config}),
                             streams=streams)
    sources = [Source(f"t{i}", "jsonl", None, text=text) for i, text in enumerate(TEXTS)]
    return [json.dumps(outcome.record, sort_keys=True)
            for _, outcome in outcomes(sources, options, build_extractor, 1)]


@pytest.mark.parametrize("config", [{}, {"choose": "likely"}, {"speculate": 4}, {"max_tokens": 24}])
def test_records_are_byte_identical_to_one_at_a_time(tiny_model_dir: Path, config: dict[str, Any]) -> None:
    """Plain, likelihood choices and speculation (forward_all runs in the rounds), and failures (a spent
    budget: the stream leaves early and the others go on)."""
    serial = _records(tiny_model_dir, 1, **config)
    assert _records(tiny_model_dir, 3, **config) == serial
    if config.get("max_tokens") == 24:
        assert any('"ok": false' in record for record in serial)


def test_extract_parallel_writes_the_same_records(tiny_model_dir: Path, tmp_path: Path) -> None:
    from cli import run_cli

    for i, text in enumerate(TEXTS[:5]):
        (tmp_path / f"doc{i}.txt").write_text(text)
    argv = ["extract", "--schema", json.dumps(SCHEMA), "-m", str(tiny_model_dir), "--max-tokens", "48",
            str(tmp_path)]
    plain = run_cli(argv)
    together = run_cli([*argv, "--parallel", "3"])
    assert plain.status == together.status == 0, together.stderr
    assert together.stdout == plain.stdout and plain.stdout.count(b"\n") == 5
    refused = run_cli([*argv, "--parallel", "2", "--jobs", "2"])
    assert refused.status == 2 and "--parallel" in refused.stderr


def test_a_failing_round_fails_its_requests_instead_of_hanging(model: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    lockstep = Lockstep(model, 2, rows=64)
    monkeypatch.setattr(lockstep, "_attached", lambda _request: 1 / 0)
    errors: list[BaseException] = []

    def step(slot: int) -> None:
        stream = lockstep.stream(slot)
        cache = stream.new_cache()
        try:
            stream.forward(cache, [5])
        except ZeroDivisionError as exc:
            errors.append(exc)
        finally:
            lockstep.leave(slot)

    for _ in range(2):
        lockstep.join()
    threads = [threading.Thread(target=step, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads) and len(errors) == 2
