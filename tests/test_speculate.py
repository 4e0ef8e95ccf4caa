"""Prompt-lookup speculation (gemmacli.engine.speculate): the drafter, the runtime's rewind through window
eviction, and decoding with speculation byte-identical to plain greedy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_decoder import FIVE, GOLDEN_CASES, TEXT, golden_run

from gemmacli.engine.extractor import Extractor
from gemmacli.engine.speculate import Drafter

SPAN_TEXT = ("Ticket from Dr. Margaret Hamilton-Okonkwo at Northwind Traders in Saint-Jean-de-Luz: the "
             "invoice INV-2024-0042 was charged twice; please refund the duplicate charge.")
COPY_SCHEMA = {"type": "object", "required": ["who", "company", "city", "invoice"], "properties": {
    "who": {"type": "string", "maxLength": 60}, "company": {"type": "string", "maxLength": 60},
    "city": {"type": "string", "maxLength": 60}, "invoice": {"type": "string", "maxLength": 30}}}


@pytest.fixture(scope="module")
def model(request: pytest.FixtureRequest) -> Any:
    from gemmacli.engine.runtime import Model

    return Model.load(Path(request.getfixturevalue("tiny_model_dir")), threads=1)


def test_drafter_proposes_what_followed_the_longest_suffix_and_never_its_own_position() -> None:
    drafter = Drafter([5, 6, 7, 8, 9, 1, 6, 7, 3], most=3, ngram_max=3, ngram_min=2)
    assert drafter.propose() == []  # (7, 3) and (3,) alone: no earlier occurrence of two tokens
    drafter.extend([1, 6, 7])
    assert drafter.propose() == [3, 1, 6]  # "1 6 7" last ended before 3
    drafter.extend([8])
    assert drafter.propose() == [9, 1, 6]  # "6 7 8" only at the start
    assert Drafter([4, 4], ngram_min=2).propose() == []


def test_drafter_catches_up_with_the_output() -> None:
    drafter = Drafter([1, 2, 3, 4], most=2)
    drafter.sync([9, 1, 2])
    assert drafter.propose() == [3, 4]
    drafter.sync([9, 1, 2])  # nothing new
    assert drafter.history == [1, 2, 3, 4, 9, 1, 2]


@pytest.mark.parametrize("base", [5, 14, 40])  # the tiny model's window is 16: before, at and past it
@pytest.mark.parametrize("keep", [0, 1, 3, 5])
def test_rewind_after_forward_all_continues_like_the_cache_never_had_the_rest(model: Any, base: int,
                                                                              keep: int) -> None:
    ids = list(range(100, 150))
    cache = model.new_cache()
    model.forward(cache, ids[:base])
    assert model.can_rewind(cache, 5)
    rows = model.forward_all(cache, ids[base:base + 5])
    assert rows.shape == (5, model.config.hidden_size)
    model.rewind(cache, base + keep)
    assert cache.length == base + keep
    model.forward(cache, [7])
    got = model.forward(cache, [8, 9])
    plain = model.new_cache()
    model.forward(plain, ids[:base])
    if keep:
        model.forward(plain, ids[base:base + keep])
    model.forward(plain, [7])
    np.testing.assert_allclose(got, model.forward(plain, [8, 9]), atol=1e-4)
    with pytest.raises(ValueError):
        model.rewind(cache, base - 1)  # only back to where the last forward_all started


def test_forward_all_rows_are_the_prefill_and_logits_rows_the_lm_head(model: Any) -> None:
    ids = list(range(200, 230))
    cache = model.new_cache()
    rows = model.forward_all(cache, ids)
    np.testing.assert_array_equal(rows[-1], model.forward(model.new_cache(), ids))
    batched = model.logits_rows(rows[:4])
    for i in range(4):
        np.testing.assert_array_equal(batched[i], model.logits(rows[i]))


GOLDEN_KEYS = ("text", "tokens", "generated_tokens", "forced_tokens", "small_heads", "full_heads",
               "allowed_sizes", "repeats", "failed")


#: Leaning's +1e4 bonus leaves the leaned tokens 1e-3 apart at most (float32's step at 1e4): a tie that the
#: grouping of positions into runs can flip (a position run with others is not bit-equal to one run alone).
FLOAT_TIES = {"loop_open_object"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason="float tie, see FLOAT_TIES"))
                                  if n in FLOAT_TIES else n for n in sorted(GOLDEN_CASES)])
def test_speculation_writes_what_plain_greedy_writes_on_every_golden_case(
        model: Any, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = golden_run(model, name, monkeypatch)
    fast = golden_run(model, name, monkeypatch, speculate=8)
    assert {k: fast.get(k) for k in GOLDEN_KEYS} == {k: plain.get(k) for k in GOLDEN_KEYS}


class Copying:
    """The tiny model made to write a given JSON text (`script`), as a model that copies spans of its input
    does: the token that continues the script's text longest gets a large bonus. It keeps the sequence it
    was fed (rewinds included) to know which position a hidden state is."""

    def __init__(self, model: Any, script: str) -> None:
        self.model, self.script = model, script
        self.seq: list[int] = []
        self.position: dict[bytes, int] = {}
        vocab = model.tokenizer.get_vocab()
        self.pieces = {piece.replace("\u2581", " "): i for piece, i in vocab.items()}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def _fed(self, cache: Any, ids: Any, rows: np.ndarray) -> None:
        start = cache.length - len(ids)
        self.seq[start:] = [int(t) for t in ids]
        for offset, row in zip(range(len(ids) - len(rows), len(ids)), rows, strict=True):
            self.position[row.tobytes()] = start + offset

    def forward(self, cache: Any, ids: Any) -> np.ndarray:
        hidden = self.model.forward(cache, ids)
        self._fed(cache, ids, hidden.reshape(1, -1))
        return hidden

    def forward_all(self, cache: Any, ids: Any) -> np.ndarray:
        rows = self.model.forward_all(cache, ids)
        self._fed(cache, ids, rows)
        return rows

    def _next(self, hidden: np.ndarray) -> int | None:
        at = self.position[np.asarray(hidden, dtype=np.float32).tobytes()]
        decode = self.model.tokenizer.decode
        written = next((text for start in range(max(0, at - 200), at + 1)
                        if (text := decode(self.seq[start:at + 1])).startswith("{")
                        and self.script.startswith(text)), None)  # the output so far: the longest such
        rest = self.script[len(written):] if written is not None else ""
        found = [self.pieces[rest[:n]] for n in range(min(len(rest), 16), 0, -1) if rest[:n] in self.pieces]
        return found[0] if found else None

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        out = np.array(self.model.logits(hidden), dtype=np.float32)
        if (token := self._next(hidden)) is not None and token < out.size:
            out[token] += 100.0
        return out

    def logits_for(self, hidden: np.ndarray, ids: np.ndarray) -> np.ndarray:
        out = np.array(self.model.logits_for(hidden, ids), dtype=np.float32)
        out[ids == self._next(hidden)] += 100.0
        return out


SCRIPT = ('{"who":"Dr. Margaret Hamilton-Okonkwo","company":"Northwind Traders","city":"Saint-Jean-de-Luz",'
          '"invoice":"INV-2024-0042"}')


@pytest.mark.parametrize(("schema", "text", "spans"), [(COPY_SCHEMA, SPAN_TEXT, "all"),
                                                        (COPY_SCHEMA, SPAN_TEXT, "none"),
                                                        (FIVE, TEXT, "annotated")])
def test_speculation_on_a_copying_model_accepts_drafts_and_writes_the_same_bytes(
        model: Any, schema: dict[str, Any], text: str, spans: str) -> None:
    results = {}
    for speculate in (0, 8):
        extractor = Extractor(schema, model=Copying(model, SCRIPT), spans=spans, max_tokens=200)
        extractor.options.speculate = speculate
        results[speculate] = extractor.extract(text)
    plain, fast = results[0], results[8]
    assert fast.text == plain.text
    assert (fast.generated_tokens, fast.forced_tokens) == (plain.generated_tokens, plain.forced_tokens)
    if schema is COPY_SCHEMA:
        assert fast.text == SCRIPT or spans != "all"  # spans of the text: the bonus always finds its piece
        assert fast.model_calls < plain.model_calls, (fast.model_calls, plain.model_calls, fast.text)


def test_grouped_only_makes_lone_tokens_bit_equal_to_a_prefill_inside_the_window(
        tiny_model_dir: Path) -> None:
    """Model(grouped_only=True) never runs one token alone (it runs it twice and takes one back), so inside
    the sliding window (16 on the tiny model) every position's hidden state is the prefill's, bit for bit."""
    from gemmacli.engine.runtime import Model

    grouped = Model.load(tiny_model_dir, threads=1, grouped_only=True)
    ids = list(range(300, 314))
    prefill = grouped.forward_all(grouped.new_cache(), ids)
    cache = grouped.new_cache()
    grouped.forward(cache, ids[:4])
    for i in range(4, len(ids)):
        np.testing.assert_array_equal(grouped.forward(cache, [ids[i]]), prefill[i])
    assert cache.length == len(ids)


def test_cli_speculate_flag_writes_what_plain_greedy_writes(tiny_model_dir: Path) -> None:
    """`gemmacli extract --speculate 8` on the tiny model: same bytes as without; a negative N is refused."""
    from cli import run_cli

    text = (Path(__file__).resolve().parent / "examples" / "contact.txt").read_bytes()
    argv = ["extract", "--schema", "contact", "-m", str(tiny_model_dir), "--spans", "all"]
    plain, fast = run_cli(argv, text), run_cli([*argv, "--speculate", "8"], text)
    assert plain.status == 0 and fast.status == 0, (plain.stderr, fast.stderr)
    assert fast.stdout == plain.stdout
    assert run_cli([*argv, "--speculate", "-1"], text).status == 2
