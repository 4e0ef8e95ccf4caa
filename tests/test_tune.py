"""`gemmacli tune` on the tiny random Gemma 3 GGUF (seconds): the loss falls, the folder is an ordinary model
that extract uses with the prompt it was trained on, the manifest says how it was made, an interrupted
run resumes to the very weights of an uninterrupted one, and the CLI's errors are the documented ones."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from gguf_fixture import write_tiny_gguf

from gemmacli.cli.core import raw_main
from gemmacli.env import Environment
from gemmacli.errors import ExitStatus, UsageError
from gemmacli.schema import load_schema, prepare_schema

pytestmark = pytest.mark.torch

SCHEMA = {"type": "object", "properties": {"sentiment": {"type": "string", "enum": ["negative", "positive"]}},
          "required": ["sentiment"], "additionalProperties": False}
WORDS = {"positive": ["good", "great", "fine", "nice"], "negative": ["bad", "awful", "poor", "sad"]}


def records(count: int, offset: int = 0) -> list[dict[str, Any]]:
    out = []
    for i in range(offset, offset + count):
        label = "positive" if i % 2 else "negative"
        word = WORDS[label][(i // 2) % 4]
        out.append({"id": f"r{i}", "text": f"the film {i} was {word}", "label": {"sentiment": label}})
    return out


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tune")
    return {"root": root, "gguf": write_tiny_gguf(root / "tiny.gguf"),
            "train": write_jsonl(root / "train.jsonl", records(16)),
            "dev": write_jsonl(root / "dev.jsonl", records(6, offset=100)),
            "schema": root / "schema.json"}


def run_tune(setup: dict[str, Path], name: str, **options: Any) -> dict[str, Any]:
    from gemmacli.jobs.tune import TuneHooks, TuneOptions, tune

    hooks = options.pop("hooks", TuneHooks())
    settings = {"data": setup["train"], "dev": setup["dev"], "base": str(setup["gguf"]),
                "out_dir": setup["root"] / "models", "epochs": 2.0, "batch_size": 4, "method": "full",
                "learning_rate": 1e-3, "threads": 1, **options}
    return tune(prepare_schema(load_schema(json.dumps(SCHEMA))), TuneOptions(name=name, **settings), hooks)


@pytest.fixture(scope="module")
def tuned(setup: dict[str, Path]) -> dict[str, Any]:
    return run_tune(setup, "tuned", epochs=4.0)


def test_a_short_tune_lowers_the_loss(tuned: dict[str, Any]) -> None:
    losses = tuned["tune"]["training"]["losses"]
    assert len(losses) == 16  # 4 epochs of 4 batches
    assert sum(losses[-4:]) < 0.9 * sum(losses[:4])  # random tiny weights: 5.9 -> 4.7 here


def test_the_manifest_records_how_the_model_was_made(tuned: dict[str, Any], setup: dict[str, Path]) -> None:
    from gemmacli.models import store

    record = tuned["tune"]
    assert tuned["kind"] == "tuned" and tuned["source"]["kind"] == "tune"
    assert record["base"]["gguf_sha256"] == store.sha256_file(setup["gguf"])
    assert record["data"]["sha256"] == store.sha256_file(setup["train"]) and record["data"]["records"] == 16
    assert record["dev"]["sha256"] == store.sha256_file(setup["dev"])
    assert record["schema"]["schema"] == SCHEMA
    recipe = record["hyper_parameters"]
    assert recipe["method"] == "full" and recipe["learning_rate"] == 1e-3
    assert set(record["scores"]) == {"auto", "fp32"}
    for scores in record["scores"].values():
        assert 0 <= scores["overall"] <= 1 and set(scores["fields"]) == {"sentiment"}
    assert record["training"]["examples_per_second"] > 0 and record["training"]["peak_rss_bytes"] > 0


def test_the_tuned_folder_extracts_with_the_prompt_it_learnt(tuned: dict[str, Any],
                                                             setup: dict[str, Path]) -> None:
    from gemmacli.engine.extractor import Extractor
    from gemmacli.engine.prompt import encode_prompt
    from gemmacli.jobs.evaluate import LabelledRecord
    from gemmacli.jobs.tune.data import training_sequence
    from gemmacli.models import store

    folder = setup["root"] / "models" / "tuned"
    config = store.ModelConfig.from_folder(folder)
    assert (config.kind, config.prompt_style, config.guide_level) == ("tuned", "document", 3)
    extractor = Extractor(SCHEMA, model=folder)
    text = "the film 7 was great"
    result = extractor.extract(text)
    assert result.data["sentiment"] in ("negative", "positive")
    model = extractor.model
    extract_ids = encode_prompt(model.tokenizer, model.config, SCHEMA, text, max_tokens=extractor.max_tokens,
                                examples=extractor.config.examples.for_text(text)).ids
    sequence = training_sequence(model.tokenizer, model.config, SCHEMA,
                                 LabelledRecord("x", text, {"sentiment": "positive"}), max_prompt_tokens=512)
    assert list(sequence.ids[: sequence.answer_start]) == extract_ids
    assert result.prompt_tokens == len(extract_ids)
    answer = model.tokenizer.decode(list(sequence.ids[sequence.answer_start:]))
    assert answer.startswith('{"sentiment":"positive"}')


@pytest.fixture(scope="module")
def whole(setup: dict[str, Path]) -> dict[str, Any]:
    return run_tune(setup, "whole", method="lora", learning_rate=1e-2, score_fp32=False)


@pytest.mark.parametrize("how", ["KeyboardInterrupt", "SIGTERM"])
def test_an_interrupted_tune_resumes_to_the_same_weights(setup: dict[str, Path], whole: dict[str, Any],
                                                         how: str) -> None:
    """Interrupted after step 3 (an exception from the caller, or SIGTERM, which is only noted and acted on
    between steps), then --resume: the same losses and byte-identical graphs as the uninterrupted run."""
    from gemmacli.errors import Terminated
    from gemmacli.jobs.tune import TuneHooks, work_folder

    def interrupt(status: Any) -> None:
        if status.step == 3:
            if how == "SIGTERM":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise KeyboardInterrupt

    name = f"resumed-{how}"
    with pytest.raises(Terminated if how == "SIGTERM" else KeyboardInterrupt):
        run_tune(setup, name, method="lora", learning_rate=1e-2, score_fp32=False,
                 hooks=TuneHooks(after_step=interrupt))
    destination = setup["root"] / "models" / name
    assert not destination.exists() and (work_folder(destination) / "checkpoint.pt").is_file()
    resumed = run_tune(setup, name, method="lora", learning_rate=1e-2, score_fp32=False, resume=True)
    assert not work_folder(destination).exists()
    assert resumed["tune"]["training"]["losses"] == whole["tune"]["training"]["losses"]
    for graph in ("model.onnx", "model.onnx.data", "lm_head.onnx.data"):
        if graph in whole["files"]:
            assert resumed["files"][graph]["sha256"] == whole["files"][graph]["sha256"], graph


def test_resume_without_a_checkpoint_and_an_existing_name_are_usage_errors(setup: dict[str, Path],
                                                                           tuned: dict[str, Any]) -> None:
    with pytest.raises(UsageError, match="nothing to resume"):
        run_tune(setup, "never-started", resume=True)
    with pytest.raises(UsageError, match="already exists"):
        run_tune(setup, "tuned")


def cli(args: list[str], environ: dict[str, str] | None = None) -> tuple[int, str, str]:
    stdout, stderr = io.BytesIO(), io.StringIO()
    env = Environment(stdout=stdout, stderr=stderr, environ=environ or {"NO_COLOR": "1"})
    code = raw_main(args, env)
    return int(code), stdout.getvalue().decode(), stderr.getvalue()


def test_cli_tune_then_model_info_and_list(setup: dict[str, Path], tmp_path: Path) -> None:
    setup["schema"].write_text(json.dumps(SCHEMA), encoding="utf-8")
    environ = {"NO_COLOR": "1", "GEMMACLI_MODELS": str(tmp_path)}
    code, out, err = cli(["tune", "--schema", str(setup["schema"]), "--data", str(setup["train"]),
                          "--dev", str(setup["dev"]), "--base", str(setup["gguf"]), "--name", "cli-tuned",
                          "--out-dir", str(tmp_path), "--epochs", "1", "--batch-size", "8",
                          "--no-fp32-score", "--threads", "1"], environ)
    assert code == ExitStatus.OK, err
    assert out == ""  # stdout is data only; tune has none
    assert "examples/s" in err and "dev overall" in err and "device: cpu" in err
    code, out, err = cli(["model", "info", "cli-tuned"], environ)
    info = json.loads(out)
    assert info["kind"] == "tuned" and info["tune"]["scores"]["auto"]["overall"] >= 0
    code, out, err = cli(["model", "list"], environ)
    assert "cli-tuned" in out and "tuned" in out
    text = tmp_path / "review.txt"
    text.write_text("the film 3 was nice", encoding="utf-8")
    code, out, err = cli(["extract", "--model", "cli-tuned", "--schema", str(setup["schema"]), str(text)],
                         environ)
    assert code == ExitStatus.OK and json.loads(out)["sentiment"] in ("negative", "positive")
    assert "tuned for another schema" not in err
    code, out, err = cli(["extract", "--model", "cli-tuned", "--schema", "name str", str(text)], environ)
    assert "tuned for another schema" in err
    from gemmacli.errors import ModelError
    from gemmacli.models import store

    with pytest.raises(ModelError):  # a tuned model is never picked without --model
        store.default_model(environ)


@pytest.mark.parametrize("extra, message", [
    (["--minutes", "1", "--epochs", "1"], "not allowed with"),
    (["--minutes", "0"], "above 0"),
])
def test_cli_usage_errors(setup: dict[str, Path], extra: list[str], message: str) -> None:
    code, _, err = cli(["tune", "--schema", json.dumps(SCHEMA), "--data", str(setup["train"]),
                        "--base", str(setup["gguf"]), "--name", "x", *extra])
    assert code == ExitStatus.USAGE and message in err


def test_a_label_the_schema_refuses_is_a_usage_error(setup: dict[str, Path], tmp_path: Path) -> None:
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "1", "text": "t", "label": {"sentiment": "meh"}}])
    code, _, err = cli(["tune", "--schema", json.dumps(SCHEMA), "--data", str(bad), "--base",
                        str(setup["gguf"]), "--name", "x", "--out-dir", str(tmp_path)])
    assert code == ExitStatus.USAGE and "'1'" in err and "does not validate" in err


def test_without_the_training_stack_tune_says_what_to_install(setup: dict[str, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    code, _, err = cli(["tune", "--schema", json.dumps(SCHEMA), "--data", str(setup["train"]),
                        "--base", str(setup["gguf"]), "--name", "x"])
    assert code == ExitStatus.USAGE and "pip install" in err and "gemmacli[tune]" in err


def test_the_answer_is_walked_with_extracts_grammar(setup: dict[str, Path], tuned: dict[str, Any]) -> None:
    """Forced tokens are fed (no loss); the label's token is a choice among the few the grammar allows;
    a label off the grammar's path falls back to plain tokens, each a choice over the whole vocabulary."""
    from gemmacli.jobs.evaluate import LabelledRecord
    from gemmacli.jobs.tune.data import training_sequence
    from gemmacli.jobs.tune.run import _answer_grammar
    from gemmacli.models import store

    folder = setup["root"] / "models" / "tuned"
    config = store.ModelConfig.from_folder(folder)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    schema = prepare_schema(load_schema(json.dumps(SCHEMA)))
    grammar = _answer_grammar(schema, config, tokenizer, folder / "tokenizer.json")
    record = LabelledRecord("x", "the film was good", {"sentiment": "positive"})
    walked = training_sequence(tokenizer, config, SCHEMA, record, max_prompt_tokens=512, grammar=grammar)
    plain = training_sequence(tokenizer, config, SCHEMA, record, max_prompt_tokens=512)
    assert walked.ids[: walked.answer_start] == plain.ids[: plain.answer_start]
    assert tokenizer.decode(list(walked.ids[walked.answer_start:])).startswith('{"sentiment":"positive"}')
    assert 1 <= len(walked.choices) < walked.answer_tokens  # the keys and brackets are forced
    for choice in walked.choices:
        assert choice.allowed is not None and walked.ids[choice.index] in choice.allowed
    assert all(choice.allowed is None for choice in plain.choices)
    assert len(plain.choices) == plain.answer_tokens
    off_path, choices = grammar.walk(tokenizer, '{"mood":"x"}', 1)
    assert tokenizer.decode(off_path).startswith('{"mood":"x"}')
    assert choices and all(c.allowed is None for c in choices)


def test_the_chunked_head_loss_equals_cross_entropy_over_full_logits() -> None:
    """head_cross_entropy never keeps the logits: its losses, gradients and top-1 flags are those of
    plain cross-entropy over the whole vocabulary (bfloat16 rounding of the gradient aside)."""
    import torch

    from gemmacli.jobs.tune import trainer

    torch.manual_seed(0)
    head = torch.randn(1000, 16).to(torch.bfloat16)
    hidden = torch.randn(600, 16, requires_grad=True)  # 3 chunks of HEAD_CHUNK rows
    targets = torch.randint(0, 1000, (600,))
    losses, right = trainer.head_cross_entropy(torch, hidden.to(torch.bfloat16), head, targets)
    losses.mean().backward()
    chunked = hidden.grad.clone()
    hidden.grad = None
    logits = torch.nn.functional.linear(hidden.to(torch.bfloat16), head).float()
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    expected.mean().backward()
    assert torch.allclose(losses, expected, atol=1e-4)
    assert torch.allclose(chunked, hidden.grad, atol=2e-4)
    assert torch.equal(right, logits.argmax(-1) == targets)
