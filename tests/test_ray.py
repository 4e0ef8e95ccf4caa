"""`--ray [ADDRESS]`: the same records as `--jobs 2`, from Ray Data actors (issue #14).

One local Ray (2 CPUs) serves the whole module: starting Ray costs seconds. In-process runs reuse its
connection; subprocess runs connect to it by address, as a second driver would on a real cluster. The
cluster test starts its own head and worker node (`ray start --block`, stopped by the test, never by
`ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli import run_cli  # tests/cli.py
from test_cli_extract import BOUNDED, cli, notes, subprocess_env, write

from gemmacli.errors import ModelError
from gemmacli.jobs.ray_ship import manifest_digest, materialize, ship_model

ENV = {"NO_COLOR": "1"}


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a stray one
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def model(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("tiny_model_dir"))


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Six notes, an empty file (exit 1 record) and a latin-1 file (exit 5 record), and three JSONL rows."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.json").write_text(json.dumps(BOUNDED))
    notes(tmp_path / "in", 6)
    write(tmp_path / "in" / "note06.txt", "")
    write(tmp_path / "in" / "note07.txt", b"caf\xe9 au lait\n")
    rows = [{"id": f"T{i}", "body": text} for i, text in enumerate(["printer on fire", "love it", "meh"])]
    write(tmp_path / "t.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    return tmp_path


def extract_argv(model: str, *extra: str) -> list[str]:
    return ["extract", "--schema", "s.json", "in", "--input-jsonl", "t.jsonl", "--text-field", "body",
            "--id-field", "id", "-m", model, "-q", *extra]


# ------------------------------------------------------------------------------------- without Ray


def test_without_ray_the_flag_exits_2_with_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    for command in (["extract", "--schema", "a", "-", "--ray"],
                    ["eval", "--schema", "a", "--data", "d.jsonl", "--ray", "auto"],
                    ["check", "--schema", "a", "--policy", "p", ".", "--ray"]):
        result = run_cli(command, b"text", environ=ENV)
        assert result.status == 2 and "pip install 'gemmacli[ray]'" in result.stderr, result.stderr


def test_an_input_taken_for_the_address_is_a_usage_error(tmp_path: Path) -> None:
    write(tmp_path / "a.txt", "hello")
    result = run_cli(["extract", "--schema", "a", "--ray", str(tmp_path / "a.txt")], environ=ENV)
    assert result.status == 2 and "put --ray after the inputs" in result.stderr
    assert run_cli(["extract", "--schema", "a", "-", "--ray-cpus", "2"], b"x", environ=ENV).status == 2


def test_the_model_travels_as_a_tar_and_is_verified_against_its_manifest(
    model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GEMMACLI_RAY_MODELS", str(tmp_path / "unpacked"))
    fetched: list[bytes] = []
    shipped = ship_model(Path(model), put=lambda data: data)
    assert materialize(shipped, fetched.append) == Path(model) and fetched == []  # same folder here: used
    forced = ship_model(Path(model), put=lambda data: data, always_unpack=True)
    folder = materialize(forced, lambda blob: blob)
    assert folder.parent.name == manifest_digest(Path(model)) == forced.manifest_sha256
    assert manifest_digest(folder) == forced.manifest_sha256
    assert materialize(forced, lambda blob: pytest.fail("unpacked twice")) == folder  # once per node
    tampered = bytearray(forced.blob)
    with tarfile.open(fileobj=io.BytesIO(forced.blob)) as tar:
        tampered[tar.getmember("tokenizer.json").offset_data + 100] ^= 1  # one bit, same size
    monkeypatch.setenv("GEMMACLI_RAY_MODELS", str(tmp_path / "again"))
    with pytest.raises(ModelError, match="does not match its manifest"):
        materialize(forced, lambda blob: bytes(tampered))
    assert not any((tmp_path / "again").rglob("model.onnx"))  # nothing half-verified is published


# ---------------------------------------------------------------------------------------- with Ray


@pytest.mark.ray
def test_ray_gives_the_records_of_two_jobs_failures_order_and_parquet(
    model: str, workdir: Path, ray_address: str
) -> None:
    local = run_cli(extract_argv(model, "--jobs", "2", "-o", "local.jsonl"), environ=ENV)
    on_ray = run_cli(extract_argv(model, "--jobs", "2", "-o", "ray.jsonl", "--ray", ray_address), environ=ENV)
    assert local.status == on_ray.status == 5, on_ray.stderr  # an unreadable input is exit 5 in both
    assert (workdir / "ray.jsonl").read_bytes() == (workdir / "local.jsonl").read_bytes()
    records = [json.loads(line) for line in (workdir / "ray.jsonl").read_text().splitlines()]
    assert [r["source"] for r in records] == [*(f"in/note{i:02d}.txt" for i in range(8)), "T0", "T1", "T2"]
    assert [r["ok"] for r in records].count(False) == 2

    import pyarrow.parquet as pq

    run_cli(extract_argv(model, "--jobs", "2", "-o", "ray.parquet", "--ray", ray_address), environ=ENV)
    table = pq.read_table(workdir / "ray.parquet").to_pylist()
    assert [row["source"] for row in table] == [r["source"] for r in records]
    assert [json.loads(row["data"]) if row["ok"] else json.loads(row["error"]) for row in table] == [
        r["data"] if r["ok"] else r["error"] for r in records]


@pytest.mark.ray
def test_a_model_the_actors_cannot_load_stops_the_batch_with_exit_4(
    workdir: Path, ray_address: str, monkeypatch: pytest.MonkeyPatch, model: str
) -> None:
    import test_batch
    from ray import cloudpickle

    from gemmacli.cli import extract_cmd

    cloudpickle.register_pickle_by_value(test_batch)  # the actors cannot import tests/
    monkeypatch.setattr(extract_cmd, "EXTRACTOR_FACTORY", test_batch.broken_model_factory)
    result = run_cli(extract_argv(model, "--ray", ray_address, "--jobs", "2"), environ=ENV)
    assert result.status == 4 and "model 'nope' not found" in result.stderr and result.stdout == b""


def _stop_after_more_records(argv: list[str], out: Path, how: signal.Signals) -> int:
    """Start a driver, signal it once out holds a record more than before, return its exit status."""
    before = out.read_bytes().count(b"\n") if out.exists() else 0
    quiet = subprocess.DEVNULL
    driver = subprocess.Popen(argv, env=subprocess_env(), stdout=quiet, stderr=quiet)
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_bytes().count(b"\n") > before) and time.monotonic() < deadline:
        assert driver.poll() is None, "the driver ended before it could be stopped"
        time.sleep(0.02)
    driver.send_signal(how)
    return driver.wait(timeout=60)


@pytest.mark.ray
def test_a_terminated_or_killed_driver_loses_nothing_and_resume_finishes_the_records(
    model: str, workdir: Path, ray_address: str
) -> None:
    notes(workdir / "many", 40)
    base = ["extract", "--schema", "s.json", "many", "-m", model, "-q", "--jobs", "1", "-o", "out.jsonl"]
    assert run_cli([*base[:-1], "local.jsonl"], environ=ENV).status == 0
    expected = (workdir / "local.jsonl").read_bytes()
    out = workdir / "out.jsonl"
    argv = cli(*base, "--ray", ray_address)
    # SIGTERM: the same cleanup as Ctrl-C and exit 143 (ray.init's own handler would exit 15)
    assert _stop_after_more_records(argv, out, signal.SIGTERM) == 143
    assert _stop_after_more_records([*argv, "--resume"], out, signal.SIGKILL) == -signal.SIGKILL
    written = out.read_bytes()
    assert written.endswith(b"\n") and expected.startswith(written)  # whole records, a prefix, in order
    already = written.count(b"\n")
    assert 2 <= already < 40  # stopped mid-batch twice: records arrive a batch (4 sources) at a time
    resumed = run_cli([*base, "--ray", ray_address, "--resume", "-v"], environ=ENV)
    assert resumed.status == 0, resumed.stderr
    assert f"{already} of 40 already recorded" in resumed.stderr
    assert out.read_bytes() == expected  # every source once, in input order


@pytest.mark.ray
def test_check_and_eval_on_ray_agree_with_a_local_run(model: str, workdir: Path, ray_address: str) -> None:
    mood = BOUNDED["properties"]["mood"]
    schema = {"type": "object", "properties": {"kind": {"const": "doc"}, "mood": mood},
              "required": ["kind", "mood"], "additionalProperties": False}
    write(workdir / "c.json", json.dumps(schema))
    write(workdir / "p.json", json.dumps({"properties": {"kind": {"const": "doc"}}}))
    check = ["check", "--schema", "c.json", "--policy", "p.json", "in", "-m", model, "--no-cache",
             "--format", "jsonl", "--allow-errors"]
    local, on_ray = run_cli(check, environ=ENV), run_cli([*check, "--ray", ray_address], environ=ENV)
    assert on_ray.status == local.status and on_ray.stdout == local.stdout, on_ray.stderr
    data = workdir / "dev.jsonl"
    data.write_text("".join(json.dumps({"id": f"r{i}", "text": f"text {i}", "label": {"mood": "sad"}}) + "\n"
                            for i in range(4)))
    evaluate = ["eval", "--schema", "s.json", "--data", str(data), "-m", model, "-f", "json"]
    reports = [json.loads(run_cli(argv, environ=ENV).stdout)
               for argv in (evaluate, [*evaluate, "--ray", ray_address, "--jobs", "2"])]
    assert reports[0]["predictions"] == reports[1]["predictions"]
    assert reports[0]["overall"] == reports[1]["overall"]


@pytest.mark.ray
def test_extract_dataset_adds_the_records_a_local_run_writes(
    model: str, workdir: Path, ray_address: str
) -> None:
    import ray

    import gemmacli.ray

    rows = [json.loads(line) for line in (workdir / "t.jsonl").read_text().splitlines()]
    rows.append({"id": "T3", "body": ""})  # a failure: empty input
    ds = ray.data.from_items(rows)
    out = gemmacli.ray.extract_dataset(ds, "s.json", model=model, text_column="body", source_column="id",
                                       actors=2).take_all()
    write(workdir / "t.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    local = run_cli(["extract", "--schema", "s.json", "--input-jsonl", "t.jsonl", "--text-field", "body",
                     "--id-field", "id", "-m", model, "-q"], environ=ENV)
    assert sorted(row["record"] for row in out) == sorted(local.stdout.decode().splitlines())
    by_id = {row["id"]: row for row in out}
    assert by_id["T3"]["ok"] is False and "empty" in by_id["T3"]["error"] and by_id["T3"]["data"] is None
    assert json.loads(by_id["T0"]["data"]) == json.loads(by_id["T0"]["record"])["data"]
    assert by_id["T0"]["body"] == "printer on fire"  # the caller's columns stay


# ------------------------------------------------------------------------- a head and a worker node


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def two_node_cluster(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`ray start --head` plus `ray start --address` (one CPU each), as on two machines; each `--block`
    process owns its node's processes and takes them down when terminated."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    unpacked = tmp_path / "node-models"
    env = _cluster_env(GEMMACLI_RAY_MODELS=str(unpacked))
    ray_cli = str(Path(sys.executable).with_name("ray"))
    common = ["--num-cpus=1", "--block", "--disable-usage-stats"]

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen([ray_cli, "start", *args, *common], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)

    nodes = [start("--head", f"--port={port}", "--include-dashboard=false")]
    try:
        _wait_for_nodes(address, 1, nodes)
        nodes.append(start(f"--address={address}"))
        _wait_for_nodes(address, 2, nodes)
        yield address, unpacked
    finally:
        for node in reversed(nodes):
            os.killpg(node.pid, signal.SIGTERM)
            try:
                node.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)


def _cluster_env(**extra: str) -> dict[str, str]:
    """The environment of the nodes and drivers of the test cluster: Ray found only where told (ray.init
    may set RAY_ADDRESS), and no token authentication (Ray 2.59+ turns it on for local clusters, and the
    module's own Ray wrote its token where `ray start` would read it)."""
    env = subprocess_env(RAY_AUTH_MODE="disabled", **extra)
    env.pop("RAY_ADDRESS", None)
    return env


def _wait_for_nodes(address: str, count: int, nodes: list[subprocess.Popen], timeout: float = 90) -> None:
    probe = (f"import ray; ray.init(address={address!r}, log_to_driver=False); "
             "print(sum(1 for n in ray.nodes() if n['Alive']))")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert all(node.poll() is None for node in nodes), "a `ray start` process exited"
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                              env=_cluster_env())
        if done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise AssertionError(f"the Ray cluster at {address} did not reach {count} nodes")


@pytest.mark.ray
def test_a_head_and_a_worker_node_get_the_model_shipped_and_give_the_same_records(
    model: str, workdir: Path, two_node_cluster: tuple[str, Path]
) -> None:
    address, unpacked = two_node_cluster
    assert run_cli(extract_argv(model, "--jobs", "2", "-o", "local.jsonl"), environ=ENV).status == 5
    done = subprocess.run(cli(*extract_argv(model, "--jobs", "2", "-o", "ray.jsonl", "--ray", address,
                                            "--ray-ship", "always")),
                          env=_cluster_env(), capture_output=True, timeout=300)
    assert done.returncode == 5, done.stderr.decode()
    assert done.stdout == b""  # records went to -o; Ray printed nothing on stdout
    assert (workdir / "ray.jsonl").read_bytes() == (workdir / "local.jsonl").read_bytes()
    shipped = list(unpacked.glob("*/*/manifest.json"))  # unpacked and verified on the nodes
    assert [p.parent.parent.name for p in shipped] == [manifest_digest(Path(model))]


def test_parquet_inputs_and_records_match_json_lines(model: str, workdir: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (workdir / "t.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), workdir / "t.parquet")
    argv = ["extract", "--schema", "s.json", "--text-field", "body", "--id-field", "id", "-m", model, "-q"]
    from_jsonl = run_cli([*argv, "--input-jsonl", "t.jsonl"], environ=ENV)
    from_parquet = run_cli([*argv, "--input-jsonl", "t.parquet"], environ=ENV)
    assert from_parquet.status == 0 and from_parquet.stdout == from_jsonl.stdout
    unnamed = run_cli(["extract", "--schema", "s.json", "--text-field", "body", "-m", model,
                       "--input-jsonl", "t.parquet"], environ=ENV)
    assert [r["source"] for r in unnamed.records()] == ["t.parquet:1", "t.parquet:2", "t.parquet:3"]
    assert run_cli([*argv, "--input-jsonl", "t.parquet", "-o", "r.parquet"], environ=ENV).status == 0
    table = pq.read_table(workdir / "r.parquet").to_pylist()
    assert [(row["source"], json.loads(row["data"])) for row in table] == [
        (r["source"], r["data"]) for r in from_jsonl.records()]
    resumed = run_cli([*argv, "--input-jsonl", "t.parquet", "-o", "r.parquet", "--resume"], environ=ENV)
    assert resumed.status == 2 and "--resume needs a JSON Lines FILE" in resumed.stderr
