"""`gemmacli schema show|check|list|dsl`, the bundled schemas with their examples, and shell completion."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
from cli import run_cli  # tests/cli.py

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = Path(__file__).resolve().parent / "examples"
#: The bundled schemas this issue owns (pii.json belongs to `gemmacli check`), each with an example input.
BUNDLED = ["contact", "entities", "invoice", "meeting", "routing", "sentiment", "ticket"]


def run(argv: list[str], *, stdout_isatty: bool = False) -> tuple[int, str, str]:
    result = run_cli(argv, stdout_isatty=stdout_isatty)
    return result.status, result.stdout.decode(), result.stderr


def test_list_names_every_bundled_schema_with_its_description() -> None:
    status, out, _ = run(["schema", "list"])
    assert status == 0
    listed = {line.split()[0]: line for line in out.splitlines()}
    assert set(BUNDLED) <= set(listed)
    assert "people, organisations, places and dates" in listed["entities"]
    status, out, _ = run(["schema", "list", "--json"])
    assert set(BUNDLED) <= set(json.loads(out))


@pytest.mark.parametrize("name", BUNDLED)
def test_each_bundled_schema_is_valid_enforceable_described_and_has_an_example(name: str) -> None:
    from gemmacli.schema import bundled_schemas, check_schema

    path = bundled_schemas()[name]
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    _, warnings = check_schema(schema, lenient=False)
    assert warnings == []
    assert schema.get("description") and schema.get("title")
    for field, spec in schema["properties"].items():
        assert spec.get("description"), f"{name}.{field} has no description"
    example = EXAMPLES / f"{name}.txt"
    assert example.read_text().strip(), f"no example input for {name}"
    status, _, err = run(["schema", "check", name])
    assert status == 0 and "ok" in err


def test_show_prints_the_json_schema_of_any_form() -> None:
    status, out, _ = run(["schema", "show", "invoice"])
    assert status == 0 and json.loads(out)["title"] == "invoice"
    status, out, _ = run(["schema", "show", "name, age int"])
    assert json.loads(out)["properties"]["age"] == {"type": "integer"}
    status, out, _ = run(["schema", "show", "contact"], stdout_isatty=True)
    assert out.startswith("{\n  ")


def test_show_verbose_says_which_reading_was_taken() -> None:
    _, _, err = run(["schema", "show", "contact", "-v"])
    assert "as the bundled schema" in err


def test_dsl_translates_and_without_text_explains_the_syntax() -> None:
    status, out, _ = run(["schema", "dsl", "tags [str], mood enum(a|b)"])
    assert status == 0 and json.loads(out)["properties"]["mood"]["enum"] == ["a", "b"]
    status, out, _ = run(["schema", "dsl"])
    assert status == 0 and "enum(a|b|c)" in out and "optional" in out


def test_check_refuses_an_invalid_schema_with_exit_3_and_a_pointer() -> None:
    status, _, err = run(["schema", "check", '{"type": "object", "properties": {"a": {"type": "strin"}}}'])
    assert status == 3 and "/properties/a" in err
    status, _, err = run(["schema", "dsl", "a innt"])
    assert status == 3 and "column 3" in err


def test_schema_without_an_action_prints_help_and_exit_2() -> None:
    status, _, err = run(["schema"])
    assert status == 2 and "show" in err and "dsl" in err


# ------------------------------------------------------------------------------------------ completion


def completion(shell: str) -> str:
    status, out, _ = run(["completion", shell])
    assert status == 0
    return out


def test_bash_completion_is_valid_bash_and_knows_commands_flags_and_schemas(tmp_path: Path) -> None:
    script = completion("bash")
    assert "complete -o filenames -o bashdefault -F _gemmacli gemmacli" in script
    assert "--input-jsonl" in script and "invoice" in script
    path = tmp_path / "gemmacli.bash"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)
    probe = (
        f"source {path}; COMP_WORDS=(gemmacli extract --schema inv); COMP_CWORD=3; _gemmacli; "
        'echo "${COMPREPLY[@]}"; COMP_WORDS=(gemmacli ex); COMP_CWORD=1; _gemmacli; echo "${COMPREPLY[@]}";'
        'COMP_WORDS=(gemmacli extract --schema invoice --wi); COMP_CWORD=4; _gemmacli; echo "${COMPREPLY[@]}"'
    )
    lines = subprocess.run(
        ["bash", "-c", probe], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert lines == ["invoice", "extract", "--with-meta"]


def test_zsh_completion_reuses_the_bash_function() -> None:
    script = completion("zsh")
    assert script.startswith("#compdef gemmacli") and "bashcompinit" in script and "_gemmacli()" in script


def test_fish_completion_describes_subcommands_and_flags(tmp_path: Path) -> None:
    script = completion("fish")
    assert "-a extract -d 'extract JSON matching a schema from text'" in script
    assert "-l errors -x -a 'strict replace ignore'" in script
    if shutil.which("fish"):
        path = tmp_path / "gemmacli.fish"
        path.write_text(script)
        subprocess.run(["fish", "--no-execute", str(path)], check=True)


def test_every_bundled_schema_runs_end_to_end_on_its_example(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each bundled schema with its example input, through the real CLI and the tiny model.

    The tiny model's weights are random, so a record may exhaust the small budget; every success must
    validate against its schema.
    """
    model = str(request.getfixturevalue("tiny_model_dir"))
    monkeypatch.chdir(tmp_path)
    outcomes = {}
    for name in BUNDLED:
        argv = [
            "extract",
            "--schema",
            name,
            str(EXAMPLES / f"{name}.txt"),
            "-m",
            model,
            "--max-tokens",
            "256",
            "--records",
        ]
        result = run_cli(argv)
        status, record = result.status, result.json()
        outcomes[name] = record["ok"]
        if record["ok"]:
            assert status == 0
            schema = json.loads((REPO / "schemas" / f"{name}.json").read_text())
            jsonschema.validate(record["data"], schema)
        else:
            assert status == 1 and "max-tokens" in record["error"]["message"], record
    assert any(outcomes.values()), outcomes  # the pipeline works for at least one; all validate
