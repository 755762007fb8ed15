"""A small Hugging Face Hub-compatible HTTP server for offline tests.

It implements the part of the Hub's HTTP API that the real ``huggingface_hub`` client (2.x, with
``HF_HUB_DISABLE_XET=1``), ``datasets`` and ``transformers``/``peft`` call: repo creation and info,
pre-upload, the git-LFS batch API with "basic" PUT uploads, ndjson commits (with ``parentCommit``
checks), tree / paths-info listings, commit history, refs, branches, tags, ``validate-yaml`` and
file resolution (HEAD/GET with ``X-Repo-Commit``, ``ETag``, ``Range``). Storage is in memory.

Only the Python standard library is used (the server must not import ``huggingface_hub``: the
client reads ``HF_ENDPOINT`` at import time, so the server has to be up before it is imported).

Test helpers:

- ``server.fail_next(n, status=500, path_contains="/commit/")`` answers the next ``n`` matching
  requests with ``status``; ``server.set_down(True)`` answers everything with 503 (or, with
  ``status=None``, drops the connection without an answer) until ``set_down(False)``.
- ``server.requests`` is the log of every request (method, path, headers, body, status);
  ``server.authorization_headers()`` lists the ``Authorization`` headers received and
  ``server.find_in_requests(secret)`` tells where a string appeared outside that header.
- ``HubServer(token=..., require_token=True)`` only accepts that token (401 otherwise).
- ``server.list_files / read_file / commit_ids / head`` inspect the stored repos directly.
- ``server.strict = True`` (or ``HubServer(strict=True)``) answers only what the Hub's documented
  endpoints must answer, like a minimal self-hosted Hub: no optional metadata (``model_info``
  ignores ``blobs=true``/``files_metadata``: siblings carry only ``rfilename``; no ``cardData``,
  ``tags``, ``usedStorage``; tree and paths-info ignore ``expand``: no ``lastCommit``) and no Xet
  (there is none in either mode: clients need ``HF_HUB_DISABLE_XET=1``). What it keeps is what
  the clients cannot work without: ``sha`` and ``siblings`` of repo info, tree entries (``oid``,
  ``size``, ``lfs``), pre-upload modes with the ``oid`` of files already there (what
  ``create_commit`` compares to leave unchanged files out), and the resolve headers.

Usage::

    server = HubServer().start()
    os.environ["HF_ENDPOINT"] = server.url   # before importing huggingface_hub
    ...
    server.stop()
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["HubServer", "RequestRecord"]

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/", "kernel": "kernels/"}
# Extensions the Hub's default .gitattributes stores in LFS (subset).
LFS_EXTENSIONS = (
    ".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gguf", ".gz", ".h5", ".joblib", ".jpeg", ".jpg",
    ".lz4", ".mlmodel", ".model", ".msgpack", ".npy", ".npz", ".onnx", ".ot", ".parquet", ".pb", ".pickle",
    ".pkl", ".png", ".pt", ".pth", ".rar", ".safetensors", ".tar", ".tflite", ".tgz", ".wasm", ".xz",
    ".zip", ".zst",
)
GITATTRIBUTES = "".join(f"*{ext} filter=lfs diff=lfs merge=lfs -text\n" for ext in LFS_EXTENSIONS).encode()
MAX_LOGGED_BODY = 1 << 20
_OID_RE = re.compile(r"^[0-9a-f]{40}$")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_oid(data: bytes) -> str:
    """git's object id of a blob (what the Hub reports as a regular file's ``oid``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None,
                 extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.extra = extra or {}


@dataclass
class _Blob:
    data: bytes
    lfs: bool
    sha256: str
    size: int
    git_oid: str  # sha1 of the blob (regular) or of the LFS pointer file (lfs)
    pointer_size: int | None = None

    @classmethod
    def make(cls, data: bytes, lfs: bool) -> "_Blob":
        sha = hashlib.sha256(data).hexdigest()
        if lfs:
            pointer = lfs_pointer(sha, len(data))
            return cls(data, True, sha, len(data), git_blob_oid(pointer), len(pointer))
        return cls(data, False, sha, len(data), git_blob_oid(data))

    def tree_entry(self, path: str) -> dict:
        entry = {"type": "file", "oid": self.git_oid, "size": self.size, "path": path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return entry


@dataclass
class _Commit:
    oid: str
    parent: str | None
    files: dict  # path -> _Blob (a full snapshot)
    title: str
    message: str
    date: str
    author: str


@dataclass
class _Repo:
    type: str
    id: str
    private: bool
    created_at: str
    commits: dict = field(default_factory=dict)  # oid -> _Commit
    branches: dict = field(default_factory=dict)  # name -> oid ("refs/pr/N" for pull requests)
    tags: dict = field(default_factory=dict)  # name -> oid
    n_prs: int = 0


@dataclass
class RequestRecord:
    method: str
    path: str  # raw path with query string, as sent
    headers: dict
    body: bytes | None  # None when larger than MAX_LOGGED_BODY
    status: int = 0
    injected: bool = False  # answered by fail_next / set_down

    @property
    def authorization(self) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == "authorization":
                return value
        return None


@dataclass
class _Fault:
    remaining: int
    status: int | None
    path_contains: str | None
    method: str | None
    message: str
    body_contains: bytes | None = None


class HubServer:
    """In-memory Hub on 127.0.0.1. ``url`` is the value for ``HF_ENDPOINT``."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        user: str = "tester",
        orgs: tuple[str, ...] = ("slice-org",),
        token: str | None = None,
        require_token: bool = False,
        lfs_threshold: int = 10 * 1024 * 1024,
        strict: bool = False,
    ):
        self.user, self.orgs = user, tuple(orgs)
        self.token = token  # if set, only this bearer token is valid
        self.require_token = require_token  # if True, every request but validate-yaml needs a valid token
        self.lfs_threshold = lfs_threshold
        self.strict = strict  # answer only what the documented endpoints must answer (see the module doc)
        self.requests: list[RequestRecord] = []
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lfs: dict[str, bytes] = {}  # sha256 -> content
        self._pending_uploads: dict[str, tuple[str, int]] = {}  # nonce -> (sha256, size)
        self._faults: list[_Fault] = []
        self._down: tuple[bool, int | None] = (False, 503)
        self._lock = threading.RLock()
        self._counter = 0
        self._httpd = ThreadingHTTPServer((host, port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self._httpd.server_address[0]}:{self.port}"

    def start(self) -> "HubServer":
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="test-hub", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ failure injection
    def fail_next(
        self,
        n: int = 1,
        status: int | None = 500,
        *,
        path_contains: str | None = None,
        method: str | None = None,
        message: str = "Injected failure (test hub)",
        body_contains: str | None = None,
    ) -> None:
        """Answer the next ``n`` requests matching ``path_contains``/``method``/``body_contains``
        with ``status`` (``status=None``: close the connection without answering)."""
        with self._lock:
            self._faults.append(_Fault(n, status, path_contains, method.upper() if method else None, message,
                                       body_contains.encode() if body_contains else None))

    def set_down(self, down: bool = True, status: int | None = 503) -> None:
        """While down, every request gets ``status`` (``None``: the connection is dropped)."""
        with self._lock:
            self._down = (down, status)

    def reset_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._down = (False, 503)

    def _injected_fault(self, method: str, path: str, body: bytes = b"") -> _Fault | None:
        with self._lock:
            down, status = self._down
            if down:
                return _Fault(1, status, None, None, "Service unavailable (test hub is down)")
            for fault in self._faults:
                if fault.remaining <= 0:
                    continue
                if fault.method and fault.method != method:
                    continue
                if fault.path_contains and fault.path_contains not in path:
                    continue
                if fault.body_contains and fault.body_contains not in body:
                    continue
                fault.remaining -= 1
                return fault
            self._faults = [f for f in self._faults if f.remaining > 0]
        return None

    # ------------------------------------------------------------------ logs
    def clear_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def authorization_headers(self) -> list[str | None]:
        with self._lock:
            return [r.authorization for r in self.requests]

    def find_in_requests(self, needle: str) -> list[tuple[RequestRecord, str]]:
        """Where ``needle`` (e.g. the token) appears in a request OUTSIDE its Authorization header:
        the URL, another header or the body. An empty list is what a careful client produces."""
        hits = []
        raw = needle.encode()
        with self._lock:
            for rec in self.requests:
                if needle in rec.path or quote(needle) in rec.path:
                    hits.append((rec, "url"))
                for key, value in rec.headers.items():
                    if key.lower() != "authorization" and needle in value:
                        hits.append((rec, f"header {key}"))
                if rec.body is not None and raw in rec.body:
                    hits.append((rec, "body"))
        return hits

    def requests_matching(self, method: str | None = None, path_contains: str | None = None) -> list[RequestRecord]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method.upper()) and (path_contains is None or path_contains in r.path)
            ]

    # ------------------------------------------------------------------ direct inspection
    def _get_repo(self, repo_id: str, repo_type: str = "model") -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise KeyError(f"{repo_type} repo {repo_id!r} does not exist on the test hub")
        return repo

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    def head(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> str:
        with self._lock:
            return self._resolve(self._get_repo(repo_id, repo_type), revision)

    def commit_ids(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[str]:
        """Commit ids reachable from ``revision``, newest first (includes the initial commit)."""
        with self._lock:
            repo = self._get_repo(repo_id, repo_type)
            return [c.oid for c in self._history(repo, self._resolve(repo, revision))]

    def list_files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> list[str]:
        with self._lock:
            repo = self._get_repo(repo_id, repo_type)
            return sorted(repo.commits[self._resolve(repo, revision)].files)

    def read_file(self, repo_id: str, path: str, repo_type: str = "model", revision: str = "main") -> bytes:
        with self._lock:
            repo = self._get_repo(repo_id, repo_type)
            return repo.commits[self._resolve(repo, revision)].files[path].data

    def is_private(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return self._get_repo(repo_id, repo_type).private

    # ------------------------------------------------------------------ model helpers
    def _new_commit(self, repo: _Repo, parent: str | None, files: dict, title: str, message: str, author: str) -> _Commit:
        self._counter += 1
        tree = hashlib.sha1("".join(f"{p}\0{b.git_oid}\n" for p, b in sorted(files.items())).encode()).hexdigest()
        date = _now()
        raw = f"tree {tree}\nparent {parent}\nauthor {author} {date} #{self._counter}\n\n{title}\n\n{message}"
        oid = hashlib.sha1(raw.encode()).hexdigest()
        commit = _Commit(oid, parent, dict(files), title, message, date, author)
        repo.commits[oid] = commit
        return commit

    def _resolve(self, repo: _Repo, revision: str | None) -> str:
        rev = unquote(revision or "main")
        for prefix in ("refs/heads/", "refs/tags/"):
            if rev.startswith(prefix) and rev[len(prefix):] in (repo.branches if "heads" in prefix else repo.tags):
                rev = rev[len(prefix):]
        if rev in repo.branches:
            return repo.branches[rev]
        if rev in repo.tags:
            return repo.tags[rev]
        if rev in repo.commits:
            return rev
        if re.fullmatch(r"[0-9a-f]{7,39}", rev):
            matches = [oid for oid in repo.commits if oid.startswith(rev)]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    @staticmethod
    def _history(repo: _Repo, oid: str | None) -> list[_Commit]:
        out = []
        while oid is not None:
            commit = repo.commits[oid]
            out.append(commit)
            oid = commit.parent
        return out

    def _last_commit_for(self, repo: _Repo, head: str, path: str) -> _Commit:
        """Most recent commit (from ``head``) that changed ``path`` (a file or a folder)."""

        def snapshot(c: _Commit):
            if path in c.files:
                return c.files[path].git_oid
            return tuple(sorted((p, b.git_oid) for p, b in c.files.items() if p.startswith(path + "/")))

        history = self._history(repo, head)
        for i, commit in enumerate(history):
            parent = history[i + 1] if i + 1 < len(history) else None
            if parent is None or snapshot(parent) != snapshot(commit):
                return commit
        return history[-1]

    @staticmethod
    def _tree_oid(files: dict, folder: str) -> str:
        prefix = folder + "/" if folder else ""
        listing = "".join(f"{p}\0{b.git_oid}\n" for p, b in sorted(files.items()) if p.startswith(prefix))
        return hashlib.sha1(listing.encode()).hexdigest()

    def _entries(self, files: dict, folder: str, recursive: bool) -> list[dict]:
        prefix = folder + "/" if folder else ""
        dirs: dict[str, None] = {}
        out_files = []
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            parts = rest.split("/")
            if len(parts) == 1:
                out_files.append(files[path].tree_entry(path))
                continue
            if recursive:
                for depth in range(1, len(parts)):
                    dirs[prefix + "/".join(parts[:depth])] = None
                out_files.append(files[path].tree_entry(path))
            else:
                dirs[prefix + parts[0]] = None
        out_dirs = [{"type": "directory", "oid": self._tree_oid(files, d), "size": 0, "path": d} for d in dirs]
        return sorted(out_dirs + out_files, key=lambda e: e["path"])

    def _is_dir(self, files: dict, path: str) -> bool:
        return path == "" or any(p.startswith(path + "/") for p in files)

    def _upload_mode(self, path: str, size: int, sample: bytes) -> str:
        if size == 0:
            return "regular"
        if size >= self.lfs_threshold or path.lower().endswith(LFS_EXTENSIONS) or b"\0" in sample:
            return "lfs"
        try:
            sample.decode("utf-8")
        except UnicodeDecodeError:
            # a sample cut in the middle of a multi-byte character is still text
            try:
                sample[:-3].decode("utf-8")
            except UnicodeDecodeError:
                return "lfs"
        return "regular"

    @staticmethod
    def _card_data(files: dict) -> dict | None:
        readme = files.get("README.md")
        if readme is None:
            return None
        text = readme.data.decode("utf-8", errors="replace")
        match = re.match(r"^\s*---\s*\n(.*?)\n---\s*(\n|$)", text, re.DOTALL)
        if not match:
            return None
        try:
            import yaml

            data = yaml.safe_load(match.group(1))
        except Exception:
            return None
        return data if isinstance(data, dict) else None


def _make_handler(server: HubServer):
    class Handler(_HubHandler):
        hub = server

    return Handler


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "slice-trl-test-hub/1.0"
    hub: HubServer

    # ------------------------------------------------------------------ plumbing
    def log_message(self, format, *args):  # silence stderr; everything is in hub.requests
        pass

    def do_GET(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def do_PATCH(self):
        self._dispatch()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                line = self.rfile.readline().strip()
                size = int(line.split(b";")[0] or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # trailers, then the empty line
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()  # CRLF after each chunk
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self):
        hub = self.hub
        try:
            body = self._read_body()
        except Exception:
            self.close_connection = True
            return
        self._body = body
        rec = RequestRecord(
            self.command, self.path, dict(self.headers.items()), body if len(body) <= MAX_LOGGED_BODY else None
        )
        with hub._lock:
            hub.requests.append(rec)
        self._rec = rec
        fault = hub._injected_fault(self.command, self.path, body)
        if fault is not None:
            rec.injected = True
            if fault.status is None:
                rec.status = -1
                self.close_connection = True
                return
            self._send_json(fault.status, {"error": fault.message})
            return
        try:
            status, payload, headers = self._route()
        except HubError as err:
            headers = dict(err.headers)
            if err.code:
                headers["X-Error-Code"] = err.code
            headers["X-Error-Message"] = err.message
            self._send_json(err.status, {"error": err.message, **err.extra}, headers)
            return
        except Exception as err:  # a bug in the test hub: answer 500 with the reason
            self._send_json(500, {"error": f"test hub internal error: {type(err).__name__}: {err}"})
            return
        if isinstance(payload, (bytes, bytearray)):
            self._send_bytes(status, bytes(payload), headers)
        else:
            self._send_json(status, payload, headers)

    def _send_bytes(self, status: int, data: bytes, headers: dict | None = None, content_length: int | None = None):
        self._rec.status = status
        self.send_response(status)
        headers = dict(headers or {})
        headers.setdefault("Content-Type", "application/octet-stream")
        for key, value in headers.items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(data) if content_length is None else content_length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _send_json(self, status: int, payload, headers: dict | None = None):
        headers = dict(headers or {})
        headers["Content-Type"] = "application/json; charset=utf-8"
        self._send_bytes(status, json.dumps(payload).encode(), headers)

    def _json_body(self) -> dict:
        if not self._body:
            return {}
        try:
            data = json.loads(self._body)
        except ValueError:
            raise HubError(400, "Request body is not valid JSON")
        if not isinstance(data, dict):
            raise HubError(400, "Request body must be a JSON object")
        return data

    # ------------------------------------------------------------------ auth
    def _bearer(self) -> str | None:
        value = self.headers.get("Authorization")
        if not value:
            return None
        if not value.lower().startswith("bearer "):
            raise HubError(401, "Invalid credentials in Authorization header")
        return value[7:].strip()

    def _user(self, required: bool) -> str | None:
        """The authenticated user name, or None (anonymous)."""
        token = self._bearer()
        if token is None:
            if required or self.hub.require_token:
                raise HubError(401, "Invalid username or password.")
            return None
        if self.hub.token is not None and token != self.hub.token:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.hub.user

    def _namespaces(self, user: str | None) -> set[str]:
        return {user, *self.hub.orgs} if user else set()

    def _repo(self, repo_type: str, repo_id: str, write: bool = False) -> _Repo:
        user = self._user(required=write)
        repo = self.hub._repos.get((repo_type, repo_id))
        can_read = repo is not None and (not repo.private or repo_id.split("/")[0] in self._namespaces(user))
        if not can_read:
            status = 401 if user is None else 404
            raise HubError(status, "Repository not found", "RepoNotFound")
        if write and repo_id.split("/")[0] not in self._namespaces(user):
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    # ------------------------------------------------------------------ routing
    def _route(self):
        split = urlsplit(self.path)
        self._query = parse_qs(split.query, keep_blank_values=True)
        raw = [s for s in split.path.split("/")]
        segs = [unquote(s) for s in raw[1:]]
        if segs and segs[-1] == "" and len(segs) > 1:
            segs = segs[:-1]
        method = self.command
        hub = self.hub
        with hub._lock:
            if segs[:1] == ["api"]:
                return self._route_api(method, segs[1:])
            if segs[:1] == ["_lfs"]:
                return self._route_lfs_storage(method, segs[1:])
            repo_type = "model"
            if segs and segs[0] in ("datasets", "spaces", "kernels"):
                repo_type, segs = REPO_TYPES[segs[0]], segs[1:]
            if len(segs) >= 2 and segs[1].endswith(".git") and segs[2:] == ["info", "lfs", "objects", "batch"]:
                return self._lfs_batch(repo_type, f"{segs[0]}/{segs[1][:-4]}")
            if len(segs) >= 5 and segs[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve_file(repo_type, f"{segs[0]}/{segs[1]}", segs[3], "/".join(segs[4:]))
            raise HubError(404, f"Not found (test hub has no route for {method} {split.path})")

    def _route_api(self, method: str, segs: list[str]):
        if segs == ["whoami-v2"] and method == "GET":
            user = self._user(required=True)
            orgs = [{"name": o, "type": "org", "roleInOrg": "admin"} for o in self.hub.orgs]
            return 200, {"type": "user", "name": user, "fullname": user, "orgs": orgs,
                         "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}}, {}
        if segs == ["validate-yaml"] and method == "POST":
            return self._validate_yaml()
        if segs == ["repos", "create"] and method == "POST":
            return self._create_repo()
        if segs == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo()
        if len(segs) >= 3 and segs[0] in REPO_TYPES:
            repo_type = REPO_TYPES[segs[0]]
            repo_id = f"{segs[1]}/{segs[2]}"
            rest = segs[3:]
            if not rest and method == "GET":
                return self._repo_info(repo_type, repo_id, None)
            if len(rest) == 2 and rest[0] == "revision" and method == "GET":
                return self._repo_info(repo_type, repo_id, rest[1])
            if rest[:1] == ["tree"] and len(rest) >= 2 and method == "GET":
                return self._tree(repo_type, repo_id, rest[1], "/".join(rest[2:]))
            if rest[:1] == ["paths-info"] and len(rest) == 2 and method == "POST":
                return self._paths_info(repo_type, repo_id, rest[1])
            if rest[:1] == ["preupload"] and len(rest) == 2 and method == "POST":
                return self._preupload(repo_type, repo_id, rest[1])
            if rest[:1] == ["commit"] and len(rest) == 2 and method == "POST":
                return self._commit(repo_type, repo_id, rest[1])
            if rest[:1] == ["commits"] and len(rest) == 2 and method == "GET":
                return self._commits(repo_type, repo_id, rest[1])
            if rest == ["refs"] and method == "GET":
                return self._refs(repo_type, repo_id)
            if rest[:1] == ["branch"] and len(rest) == 2 and method in ("POST", "DELETE"):
                return self._branch(repo_type, repo_id, rest[1], method)
            if rest[:1] == ["tag"] and len(rest) == 2 and method in ("POST", "DELETE"):
                return self._tag(repo_type, repo_id, rest[1], method)
            if rest == ["settings"] and method == "PUT":
                return self._settings(repo_type, repo_id)
            if rest == ["auth-check"] and method == "GET":
                self._repo(repo_type, repo_id)
                return 200, {}, {}
        raise HubError(404, f"Not found (test hub has no route for {method} /api/{'/'.join(segs)})")

    # ------------------------------------------------------------------ endpoints
    def _validate_yaml(self):
        if self.headers.get("Authorization"):  # anonymous calls are fine (ModelCard.validate sends no token)
            self._user(required=False)
        content = self._json_body().get("content", "")
        match = re.match(r"^\s*---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
        if match:
            try:
                import yaml

                data = yaml.safe_load(match.group(1))
            except ImportError:
                data = {}
            except Exception as err:
                return 400, {"errors": [{"message": f"Invalid YAML: {err}"}], "warnings": []}, {}
            if data is not None and not isinstance(data, dict):
                return 400, {"errors": [{"message": "YAML metadata must be a mapping"}], "warnings": []}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _create_repo(self):
        hub = self.hub
        user = self._user(required=True)
        body = self._json_body()
        name, org = body.get("name"), body.get("organization")
        repo_type = body.get("type") or "model"
        if repo_type not in URL_PREFIX:
            raise HubError(400, f"Invalid repo type {repo_type!r}")
        if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}", name) or ".." in name:
            raise HubError(400, f"Invalid repo name {name!r}")
        namespace = org or user
        if namespace not in self._namespaces(user):
            raise HubError(403, f"You don't have the rights to create a repo under {namespace!r}")
        repo_id = f"{namespace}/{name}"
        url = f"{hub.url}/{URL_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in hub._repos:
            # the Hub answers the existing repo's url: create_repo(exist_ok=True) reads it from the 409 body
            raise HubError(409, "You already created this repo", extra={"url": url})
        visibility = body.get("visibility")
        private = bool(body.get("private")) if visibility is None else visibility != "public"
        repo = _Repo(repo_type, repo_id, private, _now())
        initial = hub._new_commit(
            repo, None, {".gitattributes": _Blob.make(GITATTRIBUTES, False)}, "initial commit", "", user
        )
        repo.branches["main"] = initial.oid
        hub._repos[(repo_type, repo_id)] = repo
        return 200, {"url": url, "name": repo_id, "id": secrets.token_hex(12)}, {}

    def _delete_repo(self):
        body = self._json_body()
        repo_type = body.get("type") or "model"
        org = body.get("organization") or self._user(required=True)
        repo_id = f"{org}/{body.get('name')}"
        self._repo(repo_type, repo_id, write=True)
        del self.hub._repos[(repo_type, repo_id)]
        return 200, {}, {}

    def _settings(self, repo_type, repo_id):
        repo = self._repo(repo_type, repo_id, write=True)
        body = self._json_body()
        if "private" in body:
            repo.private = bool(body["private"])
        if "visibility" in body:
            repo.private = body["visibility"] != "public"
        return 200, {"private": repo.private}, {}

    def _repo_info(self, repo_type, repo_id, revision):
        hub = self.hub
        repo = self._repo(repo_type, repo_id)
        oid = hub._resolve(repo, revision)
        commit = repo.commits[oid]
        blobs = self._query.get("blobs", ["false"])[0].lower() in ("1", "true") and not hub.strict
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sib = {"rfilename": path}
            if blobs:
                sib.update(size=blob.size, blobId=blob.git_oid)
                if blob.lfs:
                    sib["lfs"] = {"sha256": blob.sha256, "size": blob.size, "pointerSize": blob.pointer_size}
            siblings.append(sib)
        card = None if hub.strict else hub._card_data(commit.files)
        info = {
            "_id": hashlib.sha1(f"{repo_type}/{repo_id}".encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": oid,
            "lastModified": commit.date,
            "createdAt": repo.created_at,
            "private": repo.private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": list((card or {}).get("tags") or []),
            "siblings": siblings,
        }
        if card is not None:
            info["cardData"] = card
        if repo_type == "model" and card and card.get("library_name"):
            info["library_name"] = card["library_name"]
        if blobs:
            info["usedStorage"] = sum(b.size for b in commit.files.values())
        return 200, info, {}

    def _tree(self, repo_type, repo_id, revision, path):
        hub = self.hub
        repo = self._repo(repo_type, repo_id)
        oid = hub._resolve(repo, revision)
        files = repo.commits[oid].files
        path = path.strip("/")
        if path and not hub._is_dir(files, path):
            raise HubError(404, f"Entry not found: {path!r} is not a folder at {revision}", "EntryNotFound",
                           {"X-Repo-Commit": oid})
        recursive = self._query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = self._query.get("expand", ["false"])[0].lower() in ("1", "true") and not hub.strict
        entries = hub._entries(files, path, recursive)
        if expand:
            for entry in entries:
                last = hub._last_commit_for(repo, oid, entry["path"])
                entry["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
        return 200, entries, {}

    def _paths_info(self, repo_type, repo_id, revision):
        hub = self.hub
        repo = self._repo(repo_type, repo_id)
        oid = hub._resolve(repo, revision)
        files = repo.commits[oid].files
        ctype = self.headers.get("Content-Type", "")
        if "json" in ctype:
            body = self._json_body()
            paths, expand = body.get("paths", []), bool(body.get("expand"))
        else:
            form = parse_qs(self._body.decode(), keep_blank_values=True)
            paths = form.get("paths", [])
            expand = form.get("expand", ["false"])[0].lower() in ("1", "true")
        if isinstance(paths, str):
            paths = [paths]
        expand = expand and not hub.strict
        out = []
        for p in paths:
            p = p.strip("/")
            if p in files:
                entry = files[p].tree_entry(p)
            elif p and hub._is_dir(files, p):
                entry = {"type": "directory", "oid": hub._tree_oid(files, p), "size": 0, "path": p}
            else:
                continue
            if expand:
                last = hub._last_commit_for(repo, oid, p)
                entry["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
            out.append(entry)
        return 200, out, {}

    def _preupload(self, repo_type, repo_id, revision):
        hub = self.hub
        repo = self._repo(repo_type, repo_id, write=True)
        files = {}
        try:
            files = repo.commits[hub._resolve(repo, revision)].files
        except HubError:
            if "create_pr" not in self._query:
                raise
        out = []
        for item in self._json_body().get("files", []):
            path = item["path"]
            sample = base64.b64decode(item.get("sample", ""))
            mode = hub._upload_mode(path, int(item.get("size", 0)), sample)
            entry = {"path": path, "uploadMode": mode, "shouldIgnore": False}
            existing = files.get(path)
            if existing is not None:
                # the client compares this with sha256 (lfs mode) or the git blob sha1 (regular mode)
                entry["oid"] = existing.sha256 if mode == "lfs" else git_blob_oid(existing.data)
            out.append(entry)
        return 200, {"files": out}, {}

    def _lfs_batch(self, repo_type, repo_id):
        hub = self.hub
        self._repo(repo_type, repo_id, write=True)
        body = self._json_body()
        if body.get("operation") != "upload":
            raise HubError(400, "Only the 'upload' operation is supported by the test hub")
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj.get("oid"), obj.get("size")
            if not isinstance(oid, str) or not re.fullmatch(r"[0-9a-f]{64}", oid) or not isinstance(size, int):
                objects.append({"oid": str(oid), "size": int(size or 0),
                                "error": {"code": 422, "message": "Invalid oid or size"}})
                continue
            entry = {"oid": oid, "size": size, "authenticated": True}
            if oid not in hub._lfs:
                nonce = secrets.token_urlsafe(16)
                hub._pending_uploads[nonce] = (oid, size)
                entry["actions"] = {
                    "upload": {"href": f"{hub.url}/_lfs/upload/{nonce}/{oid}", "expires_in": 3600},
                    "verify": {"href": f"{hub.url}/_lfs/verify", "expires_in": 3600},
                }
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}, {
            "Content-Type": "application/vnd.git-lfs+json"
        }

    def _route_lfs_storage(self, method, segs):
        hub = self.hub
        if method == "PUT" and len(segs) == 3 and segs[0] == "upload":
            nonce, oid = segs[1], segs[2]
            expected = hub._pending_uploads.get(nonce)
            if expected is None or expected[0] != oid:
                return 403, b"<Error><Code>AccessDenied</Code></Error>", {"Content-Type": "application/xml"}
            data = self._body
            if len(data) != expected[1] or hashlib.sha256(data).hexdigest() != oid:
                return 400, b"<Error><Code>BadDigest</Code></Error>", {"Content-Type": "application/xml"}
            hub._lfs[oid] = data
            hub._pending_uploads.pop(nonce, None)
            return 200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'}
        if method == "POST" and segs == ["verify"]:
            self._user(required=True)
            body = self._json_body()
            data = hub._lfs.get(body.get("oid"))
            if data is None or len(data) != body.get("size"):
                raise HubError(404, "LFS object not found")
            return 200, {}, {}
        raise HubError(404, "Not found")

    def _commit(self, repo_type, repo_id, revision):
        hub = self.hub
        user = self._user(required=True)
        repo = self._repo(repo_type, repo_id, write=True)
        branch = unquote(revision)
        if branch.startswith("refs/heads/"):
            branch = branch[len("refs/heads/"):]
        if branch not in repo.branches:
            if _OID_RE.fullmatch(branch) and branch in repo.commits:
                raise HubError(400, "Can only commit to a branch, not to a commit id")
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        lines = [json.loads(line) for line in self._body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first ndjson line must be the commit header")
        header = lines[0]["value"]
        head = repo.branches[branch]
        parent_commit = header.get("parentCommit")
        if parent_commit is not None and parent_commit != head:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        create_pr = self._query.get("create_pr", ["0"])[0] in ("1", "true")
        files = dict(repo.commits[head].files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = str(value.get("path", "")).strip("/")
            if key in ("file", "lfsFile") and (not path or path.startswith(".git/") or ".." in path.split("/")):
                raise HubError(400, f"Invalid path {path!r}")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, "Only base64 encoding is supported")
                data = base64.b64decode(value.get("content", ""))
                files[path] = _Blob.make(data, False)
            elif key == "lfsFile":
                oid = value.get("oid")
                if value.get("algo", "sha256") != "sha256" or oid not in hub._lfs:
                    raise HubError(422, f"LFS object {oid} for {path!r} was not uploaded")
                data = hub._lfs[oid]
                if value.get("size") is not None and value["size"] != len(data):
                    raise HubError(422, f"Size mismatch for LFS file {path!r}")
                files[path] = _Blob.make(data, True)
            elif key == "deletedFile":
                if path not in files:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                doomed = [p for p in files if p.startswith(path + "/")]
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in doomed:
                    del files[p]
            else:
                raise HubError(400, f"Unknown commit operation {key!r}")
        title = header.get("summary") or "Update"
        commit = hub._new_commit(repo, head, files, title, header.get("description") or "", user)
        url_base = f"{hub.url}/{URL_PREFIX[repo_type]}{repo_id}"
        result = {"success": True, "commitOid": commit.oid, "commitUrl": f"{url_base}/commit/{commit.oid}"}
        if create_pr:
            repo.n_prs += 1
            repo.branches[f"refs/pr/{repo.n_prs}"] = commit.oid
            result["pullRequestUrl"] = f"{url_base}/discussions/{repo.n_prs}"
        else:
            repo.branches[branch] = commit.oid
        return 200, result, {}

    def _commits(self, repo_type, repo_id, revision):
        hub = self.hub
        repo = self._repo(repo_type, repo_id)
        history = hub._history(repo, hub._resolve(repo, revision))
        return 200, [
            {"id": c.oid, "title": c.title, "message": c.message, "date": c.date, "authors": [{"user": c.author}]}
            for c in history
        ], {}

    def _refs(self, repo_type, repo_id):
        repo = self._repo(repo_type, repo_id)
        branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o}
                    for n, o in repo.branches.items() if not n.startswith("refs/")]
        tags = [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in repo.tags.items()]
        out = {"branches": branches, "tags": tags, "converts": []}
        if self._query.get("include_prs", ["false"])[0].lower() in ("1", "true"):
            out["pullRequests"] = [{"name": n, "ref": n, "targetCommit": o}
                                   for n, o in repo.branches.items() if n.startswith("refs/pr/")]
        return 200, out, {}

    def _branch(self, repo_type, repo_id, branch, method):
        hub = self.hub
        repo = self._repo(repo_type, repo_id, write=True)
        if method == "DELETE":
            if branch not in repo.branches or branch == "main":
                raise HubError(404 if branch != "main" else 403, f"Cannot delete branch {branch!r}",
                               "RevisionNotFound" if branch != "main" else None)
            del repo.branches[branch]
            return 200, {}, {}
        if branch.startswith("refs/") or not re.fullmatch(r"[\w.\-/]+", branch) or ".." in branch:
            raise HubError(400, f"Invalid reference for a branch: {branch}")
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = self._json_body().get("startingPoint")
        repo.branches[branch] = hub._resolve(repo, start or "main")
        return 200, {}, {}

    def _tag(self, repo_type, repo_id, name, method):
        hub = self.hub
        repo = self._repo(repo_type, repo_id, write=True)
        if method == "DELETE":
            if name not in repo.tags:
                raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
            del repo.tags[name]
            return 200, {}, {}
        tag = self._json_body().get("tag")
        if not tag:
            raise HubError(400, "Missing tag name")
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = hub._resolve(repo, name)
        return 200, {}, {}

    def _resolve_file(self, repo_type, repo_id, revision, path):
        hub = self.hub
        repo = self._repo(repo_type, repo_id)
        oid = hub._resolve(repo, revision)
        blob = repo.commits[oid].files.get(path)
        if blob is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": oid})
        headers = {"X-Repo-Commit": oid, "Accept-Ranges": "bytes", "ETag": f'"{blob.git_oid}"'}
        if blob.lfs:
            headers.update({"ETag": f'"{blob.sha256}"', "X-Linked-Etag": f'"{blob.sha256}"',
                            "X-Linked-Size": str(blob.size)})
        data = blob.data
        rng = self.headers.get("Range")
        if rng:
            match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
            if not match or (not match.group(1) and not match.group(2)):
                return 416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"}
            if match.group(1):
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else len(data) - 1
            else:  # suffix range: the last N bytes
                start, end = max(0, len(data) - int(match.group(2))), len(data) - 1
            end = min(end, len(data) - 1)
            if start >= len(data) or start > end:
                return 416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"}
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, data[start:end + 1], headers
        return 200, data, headers
