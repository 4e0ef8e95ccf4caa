"""A minimal Hugging Face Hub on 127.0.0.1, enough for huggingface_hub's snapshot_download.

Serves repos from folders in the Hub's URL layout:
  GET       /api/models/{repo}/revision/{revision}   -> {"id", "sha", "siblings": [{"rfilename"}], ...}
  HEAD/GET  /{repo}/resolve/{revision}/{path}         -> bytes, with ETag, X-Repo-Commit, Content-Length
Unknown repos and files answer 404 with the X-Error-Code the real Hub sends.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class HubRepo:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        self.files = {p.relative_to(folder).as_posix(): p for p in files}
        digest = hashlib.sha1()
        for name, path in self.files.items():
            digest.update(name.encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        self.commit = digest.hexdigest()  # a 40-hex "commit" that changes when the content does
        self.etags = {name: hashlib.sha256(path.read_bytes()).hexdigest()
                      for name, path in self.files.items()}


class _Handler(BaseHTTPRequestHandler):
    server: _HubServer

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        self.server.requests.append(self.path)

    def _not_found(self, code: str) -> None:
        self.send_response(404)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Type", "application/json")
        body = json.dumps({"error": code}).encode()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _route(self) -> None:
        path = unquote(urlsplit(self.path).path)
        if path.startswith("/api/models/") and "/revision/" in path:
            repo_id, revision = path[len("/api/models/"):].split("/revision/", 1)
            repo = self.server.repos.get(repo_id)
            if repo is None:
                return self._not_found("RepoNotFound")
            if revision not in ("main", repo.commit):
                return self._not_found("RevisionNotFound")
            return self._send_json({
                "id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False, "disabled": False,
                "gated": False, "tags": ["onnx"], "library_name": "transformers.js",
                "siblings": [{"rfilename": name} for name in repo.files],
            })
        if "/resolve/" in path:
            repo_id, rest = path.lstrip("/").split("/resolve/", 1)
            revision, _, filename = rest.partition("/")
            repo = self.server.repos.get(repo_id)
            if repo is None:
                return self._not_found("RepoNotFound")
            if revision not in ("main", repo.commit):
                return self._not_found("RevisionNotFound")
            if filename not in repo.files:
                return self._not_found("EntryNotFound")
            data = repo.files[filename].read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", f'"{repo.etags[filename]}"')
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(data)
            return None
        return self._not_found("EntryNotFound")

    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()


class _HubServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, repos: dict[str, HubRepo]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.repos = repos
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


@contextmanager
def serve_hub(repos: dict[str, Path]) -> Iterator[_HubServer]:
    """Run the fake Hub in a thread for the duration of the block; yields the server (use .url)."""
    server = _HubServer({repo_id: HubRepo(folder) for repo_id, folder in repos.items()})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def build_hub_layout(checkpoint: Path, out: Path) -> Path:
    """A synthetic `onnx-community/...-ONNX` repo: optimum graph with full logits, every MatMul int4
    (the lm_head too, with int8 compute as the prebuilt graph may have), as onnx/model_q4.onnx + _data."""
    import shutil

    import onnx

    from gemmacli.models.export import quantize_int4, run_optimum

    work = out / "_optimum"
    run_optimum(str(checkpoint), work, verbose=False)
    graph = onnx.load(str(work / "model.onnx"), load_external_data=True)
    graph, _ = quantize_int4(graph, block_size=32, accuracy_level=4)
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    onnx.save_model(graph, str(out / "onnx" / "model_q4.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model_q4.onnx_data", size_threshold=1024)
    for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        if (work / name).is_file():
            shutil.copyfile(work / name, out / name)
    (out / "README.md").write_text("synthetic test repo\n", encoding="utf-8")
    shutil.rmtree(work)
    return out
