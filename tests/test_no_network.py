"""`gemmacli extract` opens no network socket, in the main process or its `--jobs` workers.

Three independent proofs, strongest last:
1. a `sitecustomize` audit hook, inherited by every Python process of the run (workers too), logs and
   refuses any socket creation, connect, bind or name lookup made from Python;
2. the whole run inside an empty network namespace (`unshare -n`, when permitted) still succeeds;
3. `strace -f` of the run (when available) shows no socket() call at all, so not even native code
   (onnxruntime, tokenizers, llguidance) tried.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent / "examples"
SCHEMA = json.dumps(
    {
        "type": "object",
        "properties": {"mood": {"enum": ["happy", "sad"]}, "urgent": {"type": "boolean"}},
        "required": ["mood", "urgent"],
        "additionalProperties": False,
    }
)

HOOK = """
import os, sys

_LOG = os.environ["GEMMACLI_NET_LOG"]
_EVENTS = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
           "socket.gethostbyaddr", "socket.sendto", "http.client.connect", "urllib.Request"}

def _refuse_network(event, args):
    if event in _EVENTS:
        with open(_LOG, "a") as log:
            log.write(f"{os.getpid()} {event} {args!r}\\n")
        raise OSError(f"network access refused by the test: {event}")

sys.addaudithook(_refuse_network)
"""


@pytest.fixture
def setup(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, object]:
    model = str(request.getfixturevalue("tiny_model_dir"))
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ["routing", "ticket", "sentiment"]:
        shutil.copy(EXAMPLES / f"{name}.txt", inputs / f"{name}.txt")
    log = tmp_path / "network.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=str(hook_dir), GEMMACLI_NET_LOG=str(log))
    argv = [
        sys.executable,
        "-m",
        "gemmacli",
        "extract",
        "--schema",
        SCHEMA,
        str(inputs),
        "-m",
        model,
        "--jobs",
        "2",
        "-q",
    ]
    return {"env": env, "log": log, "argv": argv}


def test_the_audit_hook_catches_a_connection_attempt(setup: dict) -> None:
    probe = "import socket\ntry:\n    socket.create_connection(('127.0.0.1', 9))\nexcept OSError:\n    pass\n"
    subprocess.run([sys.executable, "-c", probe], env=setup["env"], check=True, timeout=60)
    assert "socket" in setup["log"].read_text()


def test_extract_opens_no_socket_in_any_process(setup: dict) -> None:
    done = subprocess.run(setup["argv"], env=setup["env"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 3 and all(json.loads(x)["ok"] for x in done.stdout.splitlines())
    assert not setup["log"].exists(), setup["log"].read_text()


def _can(*argv: str) -> bool:
    try:
        return subprocess.run([*argv, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not shutil.which("unshare") or not _can("unshare", "-n"), reason="no network namespaces")
def test_extract_succeeds_with_no_network_at_all(setup: dict) -> None:
    done = subprocess.run(
        ["unshare", "-n", *setup["argv"]], env=setup["env"], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.skipif(
    not shutil.which("strace") or not _can("strace", "-f", "-o", os.devnull),
    reason="strace not available or not permitted",
)
def test_no_socket_syscall_even_from_native_code(setup: dict, tmp_path: Path) -> None:
    trace = tmp_path / "strace.log"
    probe = [
        "strace",
        "-f",
        "-qq",
        "-e",
        "trace=socket",
        "-o",
        str(trace),
        sys.executable,
        "-c",
        "import socket; socket.socket().close()",
    ]
    subprocess.run(probe, check=True, capture_output=True, timeout=60)
    assert "socket(" in trace.read_text()  # the tracer sees sockets when there are some
    argv = ["strace", "-f", "-qq", "-e", "trace=socket,connect,socketpair", "-o", str(trace), *setup["argv"]]
    done = subprocess.run(argv, env=setup["env"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    calls = [line for line in trace.read_text().splitlines() if "socket" in line or "connect(" in line]
    assert calls == []
