"""Worked examples (--examples, --shots, bundled schemas/examples/NAME.jsonl) in the prompt head."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli import run_cli  # tests/cli.py

from gemmacli.engine.examples import ExampleSource, bundled_examples, compact_answer, load_examples
from gemmacli.engine.prompt import encode_prompt
from gemmacli.errors import UsageError
from gemmacli.models import store
from gemmacli.schema import load_schema

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": ["integer", "null"]}},
          "required": ["name", "age"], "additionalProperties": False}


def write_records(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_examples_load_in_order_as_compact_answers_in_schema_order(tmp_path: Path) -> None:
    path = write_records(tmp_path / "ex.jsonl", [
        {"id": 1, "text": "Ada, 36.", "label": {"age": 36, "name": "Ada"}},
        {"id": 2, "text": "Bob.", "label": {"name": "Bob", "age": None}},
        {"id": 3, "text": "Cy.", "label": {"name": "Cy", "age": None}},
    ])
    found = load_examples(ExampleSource(path), SCHEMA, shots=2)
    assert [e.text for e in found] == ["Ada, 36.", "Bob."]
    assert found[0].answer == '{"name":"Ada","age":36}'
    assert compact_answer({"age": None, "name": "é"}, SCHEMA) == '{"name":"é","age":null}'
    assert load_examples(ExampleSource(path), SCHEMA, shots=0) == ()


@pytest.mark.parametrize(("line", "message"), [
    ({"text": "x", "label": {"name": 1, "age": None}}, "does not validate"),
    ({"text": "x"}, "needs a string 'text' and a 'label'"),
    ("not json", "not a JSON object"),
])
def test_bad_example_records_are_usage_errors_with_the_line(tmp_path: Path, line: object,
                                                            message: str) -> None:
    path = tmp_path / "ex.jsonl"
    path.write_text((line if isinstance(line, str) else json.dumps(line)) + "\n", encoding="utf-8")
    with pytest.raises(UsageError) as caught:
        load_examples(ExampleSource(path), SCHEMA)
    assert message in caught.value.message and f"{path}:1" in caught.value.message


def test_examples_sit_in_the_cached_prompt_head(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The head (prefilled once per batch) holds the examples; only the text follows it."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    path = write_records(tmp_path / "ex.jsonl", [{"text": "Ada, 36.", "label": {"name": "Ada", "age": 36}}])
    examples = load_examples(ExampleSource(path), SCHEMA)
    for kind in ("base", "instruct"):
        config = store.ModelConfig(kind=kind, vocab_size=tokenizer.get_vocab_size())
        prompt = encode_prompt(tokenizer, config, SCHEMA, "Bob is 7.", examples=examples)
        head = tokenizer.decode(prompt.ids[: prompt.prefix_len], skip_special_tokens=False)
        assert 'Text: Ada, 36.\nJSON: {"name":"Ada","age":36}' in head and "Bob" not in head
        assert head.endswith("Text: ")


def test_bundled_schemas_bring_their_examples_and_none_turns_them_off(tiny_model_dir: Path,
                                                                     tmp_path: Path) -> None:
    assert bundled_examples(load_schema("contact")) is not None
    for name, path in [("contact", bundled_examples(load_schema("contact")))]:
        assert path is not None
        load_examples(ExampleSource(path), load_schema(name).schema, shots=100)  # every label validates
    environ = {"HOME": str(tmp_path), "NO_COLOR": "1"}
    argv = ["extract", "--schema", "contact", "-m", str(tiny_model_dir), "-v"]
    shown = run_cli(argv, b"Call Ada at 555-0100.", environ=environ)
    assert shown.status == 0 and "prompt: 2 worked example(s) from" in shown.stderr
    off = run_cli([*argv, "--examples", "none"], b"Call Ada at 555-0100.", environ=environ)
    assert off.status == 0 and "worked example" not in off.stderr


def test_an_examples_file_that_does_not_fit_the_schema_is_exit_2(tiny_model_dir: Path,
                                                                 tmp_path: Path) -> None:
    path = write_records(tmp_path / "ex.jsonl", [{"text": "x", "label": {"wrong": 1}}])
    result = run_cli(["extract", "--schema", json.dumps(SCHEMA), "-m", str(tiny_model_dir), "--examples",
                      str(path)], b"Ada", environ={"HOME": str(tmp_path), "NO_COLOR": "1"})
    assert result.status == 2 and "does not validate" in result.stderr
    missing = run_cli(["extract", "--schema", json.dumps(SCHEMA), "-m", str(tiny_model_dir), "--examples",
                       str(tmp_path / "nope.jsonl")], b"Ada",
                      environ={"HOME": str(tmp_path), "NO_COLOR": "1"})
    assert missing.status == 5 and "cannot read examples file" in missing.stderr


def test_similar_selection_picks_per_text_and_keeps_the_head_cacheable(tiny_model_dir: Path) -> None:
    """--select similar: the examples sharing the most rare words, the most similar next to the text; the
    head (instruction and guide) stays the same for every text, so a batch still prefills it once."""
    from tokenizers import Tokenizer

    from gemmacli.engine.examples import Examples
    from gemmacli.engine.prompt import Demonstration

    pool = tuple(Demonstration(t, "{}") for t in ["the cat sat", "a dog barked loudly", "dog food prices",
                                                    "weather is fine"])
    examples = Examples(pool, 2, "similar")
    assert [e.text for e in examples.for_text("my dog barked")] == ["dog food prices", "a dog barked loudly"]
    assert Examples(pool, 2, "fixed").for_text("my dog barked") == pool[:2]
    assert not Examples(pool[:2], 2, "similar").per_text  # a pool no larger than --shots: all, in the head
    tokenizer = Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
    config = store.ModelConfig(kind="base", vocab_size=tokenizer.get_vocab_size())
    heads = set()
    for text in ("my dog barked", "the cat is fine"):
        chosen = examples.for_text(text)
        prompt = encode_prompt(tokenizer, config, SCHEMA, text, examples=chosen, examples_in_head=False)
        heads.add(tuple(prompt.ids[: prompt.prefix_len]))
        body = tokenizer.decode(prompt.ids[prompt.prefix_len:], skip_special_tokens=False)
        assert body.startswith(f"Text: {chosen[0].text}") and f"Text: {text}\nJSON:" in body
    assert len(heads) == 1


def test_records_may_hold_unicode_line_separators(tmp_path: Path) -> None:
    """JSON allows a raw U+2028 inside a string (the shared sentiment data has some): one record, one line."""
    path = tmp_path / "ex.jsonl"
    path.write_text(json.dumps({"text": "a\u2028b", "label": {"name": "a", "age": None}},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    assert [e.text for e in load_examples(ExampleSource(path), SCHEMA)] == ["a\u2028b"]
