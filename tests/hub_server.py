"""A small Hugging Face Hub look-alike on 127.0.0.1 for tests: real HTTP that the real huggingface_hub talks to.

It answers exactly what huggingface_hub 2.4 asks when ``HF_ENDPOINT`` points at it:

- ``GET /api/models/{repo}`` and ``/api/models/{repo}/revision/{rev}`` (``HfApi.model_info``; ``repo_info``);
- ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=..&expand=..`` (``list_repo_tree``, which
  ``snapshot_download`` calls once per commit);
- ``HEAD|GET /{repo}/resolve/{rev}/{path}`` (``hf_hub_download``: HEAD for the metadata, GET for the bytes).

Errors carry the ``X-Error-Code`` header the real hub sends (``RepoNotFound``, ``RevisionNotFound``,
``EntryNotFound``, ``GatedRepo``), which is what huggingface_hub turns into its exception classes. Every request is
logged (method, path, query, Authorization header) for assertions.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5", ".onnx")


def git_blob_oid(data: bytes) -> str:
    """The git blob id of ``data`` (what the hub reports as ``oid`` for a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def read_folder(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` as {posix relative path: bytes}."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@dataclass
class HubRepo:
    """One model repo: commits (sha -> files) and refs (branch or tag name -> sha).

    gated_token: when set, every request must carry ``Authorization: Bearer <gated_token>`` (401/403 otherwise).
    """

    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    gated_token: str | None = None

    def add_commit(self, files: dict[str, bytes] | Path, *refs: str) -> str:
        """Add a commit holding ``files`` (a dict or a folder), point ``refs`` at it, and return its sha."""
        content = read_folder(files) if isinstance(files, Path) else dict(files)
        digest = hashlib.sha1(f"commit {len(self.commits)}\n".encode())
        for path in sorted(content):
            digest.update(f"{path}\0{git_blob_oid(content[path])}\n".encode())
        sha = digest.hexdigest()
        self.commits[sha] = content
        for ref in refs:
            self.refs[ref] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        """The commit sha a branch, tag or full sha names, or None."""
        if revision in self.commits:
            return revision
        return self.refs.get(revision)


@dataclass(frozen=True)
class LoggedRequest:
    """One request the server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    authorization: str | None


class HubServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) serving ``repos``; use as a context manager.

    ``url`` is the value for ``HF_ENDPOINT``; ``requests`` lists every request received, in order.
    Set ``fail_status`` to answer every request with that HTTP status (e.g. 503) to test error mapping.
    """

    def __init__(self, repos: dict[str, HubRepo]) -> None:
        self.repos = repos
        self.requests: list[LoggedRequest] = []
        self.fail_status: int | None = None
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port (later connections are refused)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self, entry: LoggedRequest) -> None:
        with self._lock:
            self.requests.append(entry)

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def paths(self, method: str | None = None) -> list[str]:
        """Logged request paths (URL-decoded, without the query), optionally of one method only."""
        with self._lock:
            return [r.path for r in self.requests if method is None or r.method == method]

    def downloaded(self, repo_id: str) -> set[str]:
        """Files of ``repo_id`` whose bytes were fetched (GET on the resolve route)."""
        prefix = f"/{repo_id}/resolve/"
        return {p[len(prefix) :].split("/", 1)[1] for p in self.paths("GET") if p.startswith(prefix)}

    def touched(self, repo_id: str) -> set[str]:
        """Files of ``repo_id`` that were asked about at all (HEAD or GET on the resolve route)."""
        prefix = f"/{repo_id}/resolve/"
        return {p[len(prefix) :].split("/", 1)[1] for p in self.paths() if p.startswith(prefix)}


class HubError(Exception):
    """An error answer: status, X-Error-Code, message, and extra headers."""

    def __init__(self, status: int, code: str | None, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _make_handler(server: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_HubHandler):
        hub = server

    return Handler


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubServer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is ``hub.requests``."""

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    # -- routing ---------------------------------------------------------------------------------------------

    def _dispatch(self, *, head: bool) -> None:
        split = urlsplit(self.path)
        raw = split.path
        auth = self.headers.get("Authorization")
        self.hub.log(LoggedRequest(self.command, unquote(raw), parse_qs(split.query), auth))
        try:
            if self.hub.fail_status is not None:
                raise HubError(self.hub.fail_status, None, "server failure (test)")
            parts = [unquote(p) for p in raw.strip("/").split("/")]
            if parts[:2] == ["api", "models"]:
                self._api(parts[2:], parse_qs(split.query))
            elif len(parts) >= 5 and parts[2] == "resolve":
                self._resolve("/".join(parts[:2]), parts[3], "/".join(parts[4:]), head=head)
            else:
                raise HubError(404, None, f"no route for {raw}")
        except HubError as err:
            body = json.dumps({"error": err.message}).encode()
            headers = {"Content-Type": "application/json", **err.headers}
            if err.code:
                headers |= {"X-Error-Code": err.code, "X-Error-Message": err.message}
            self._send(err.status, body, headers, head=head)

    def _repo(self, repo_id: str) -> HubRepo:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "RepoNotFound", "Repository not found")
        if repo.gated_token is not None:
            auth = self.headers.get("Authorization")
            if auth != f"Bearer {repo.gated_token}":
                status = 401 if auth is None else 403
                raise HubError(status, "GatedRepo", f"Access to model {repo_id} is restricted.")
        return repo

    def _commit(self, repo_id: str, revision: str) -> tuple[HubRepo, str]:
        repo = self._repo(repo_id)
        sha = repo.resolve(revision)
        if sha is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo, sha

    def _api(self, rest: list[str], query: dict[str, list[str]]) -> None:
        """/api/models/{org}/{name}[/revision/{rev} | /tree/{rev}[/{path}]] (revision and path arrive %-quoted)."""
        if len(rest) < 2:
            raise HubError(404, "RepoNotFound", "Repository not found")
        repo_id, tail = "/".join(rest[:2]), rest[2:]
        if not tail or tail[0] == "revision":
            revision = "main" if not tail else "/".join(tail[1:])
            repo, sha = self._commit(repo_id, revision)
            self._json(200, model_info(repo_id, sha, repo.commits[sha], private=repo.gated_token is not None))
        elif tail[0] == "tree" and len(tail) >= 2:
            repo, sha = self._commit(repo_id, tail[1])
            recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
            entries = tree_entries(repo.commits[sha], "/".join(tail[2:]), recursive=recursive)
            if entries is None:
                raise HubError(404, "EntryNotFound", f"{'/'.join(tail[2:])} does not exist on {tail[1]}",
                               {"X-Repo-Commit": sha})
            self._json(200, entries)
        else:
            raise HubError(404, None, "no such API route")

    def _resolve(self, repo_id: str, revision: str, path: str, *, head: bool) -> None:
        repo, sha = self._commit(repo_id, revision)
        data = repo.commits[sha].get(path)
        if data is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {revision}", {"X-Repo-Commit": sha})
        headers = {"Content-Type": "application/octet-stream", "X-Repo-Commit": sha}
        if path.endswith(LFS_SUFFIXES):  # an LFS file: the hub names it by its sha256 in X-Linked-Etag
            sha256 = hashlib.sha256(data).hexdigest()
            headers |= {"ETag": f'"{sha256}"', "X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(data))}
        else:
            headers["ETag"] = f'"{git_blob_oid(data)}"'
        self._send(200, data, headers, head=head)

    # -- answers ---------------------------------------------------------------------------------------------

    def _json(self, status: int, payload: Any) -> None:
        self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json"}, head=False)

    def _send(self, status: int, body: bytes, headers: dict[str, str], *, head: bool) -> None:
        self.send_response(status, HTTPStatus(status).phrase)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


def model_info(repo_id: str, sha: str, files: dict[str, bytes], *, private: bool = False) -> dict[str, Any]:
    """The JSON of ``GET /api/models/{repo}/revision/{rev}`` (the fields huggingface_hub reads)."""
    library = "diffusers" if "model_index.json" in files else "transformers"
    return {
        "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
        "id": repo_id,
        "modelId": repo_id,
        "author": repo_id.split("/")[0],
        "sha": sha,
        "lastModified": "2026-01-01T00:00:00.000Z",
        "createdAt": "2025-01-01T00:00:00.000Z",
        "private": private,
        "gated": "manual" if private else False,
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [library],
        "library_name": library,
        "siblings": [{"rfilename": path} for path in sorted(files)],
    }


def tree_entries(files: dict[str, bytes], path: str, *, recursive: bool) -> list[dict[str, Any]] | None:
    """The JSON of the tree route: files (with lfs for weights) and folders under ``path``; None if absent."""
    prefix = f"{path.strip('/')}/" if path.strip("/") else ""
    if prefix and not any(p.startswith(prefix) for p in files):
        return None
    folders: set[str] = set()
    out: list[dict[str, Any]] = []
    for full in sorted(files):
        if not full.startswith(prefix):
            continue
        rest = full[len(prefix) :].split("/")
        depth = len(rest) if recursive else 1
        for i in range(1, min(depth, len(rest) - 1) + 1):
            folders.add(prefix + "/".join(rest[:i]))
        if len(rest) > 1 and not recursive:
            continue
        data = files[full]
        entry: dict[str, Any] = {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": full}
        if full.endswith(LFS_SUFFIXES):
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        out.append(entry)
    for folder in sorted(folders):
        oid = hashlib.sha1(folder.encode()).hexdigest()
        out.append({"type": "directory", "oid": oid, "size": 0, "path": folder})
    return sorted(out, key=lambda e: e["path"])
