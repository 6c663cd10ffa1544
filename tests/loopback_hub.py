"""A Hugging Face Hub on 127.0.0.1 for the tests: the real ``huggingface_hub`` client (and lerobot,
``datasets``, ``HfFileSystem`` on top of it) talks to it over HTTP, and nothing leaves the machine.

It implements the endpoints huggingface_hub 1.x calls to create repos, commit (preupload, the LFS batch
API, basic PUT uploads and verify, the ndjson commit), tag and branch, and to read back (repo info,
refs, commits, tree listing with pagination, paths-info, ``resolve`` with HEAD and ranged GETs), with
the headers the client checks (``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``/``X-Linked-Size``,
``Content-Length``, ``Content-Range``, ``X-Error-Code``). Repos live on disk under ``root`` (a JSON
record per repo, blobs stored by sha256); every request is logged for tests that count them, and
``fail_lfs_uploads_after`` makes it refuse uploads the way a dropped connection or a full quota
interrupts a real one; ``drop_ranged_reads`` hangs up on ranged reads as a flaky network does, and
``bytes_served`` counts what file reads sent. Xet is not spoken: clients need ``HF_HUB_DISABLE_XET=1``.

What it leaves out: pull requests, gating, Xet, multipart LFS, squash/super-squash, renames
(no redirects: every ``resolve`` is answered directly, as the Hub answers files stored in git).
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

LFS_THRESHOLD = 10 * 2**20  # the Hub stores larger files in LFS whatever their content
TREE_PAGE_SIZE = 50  # small enough that tests of a few dozen files exercise the ``Link`` pagination
PREFIXES = {"datasets": "dataset", "spaces": "space", "models": "model"}
# The beginning of the .gitattributes the Hub writes into every new dataset repo.
GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in ("*.7z", "*.arrow", "*.bin", "*.gz", "*.h5", "*.npy", "*.parquet", "*.pt", "*.safetensors",
                    "*.tar", "*.zip", "*.mp4", "*.mp3", "*.jpg", "*.png", "*.webm")
)


class HubError(Exception):
    """An error answer: HTTP status, the ``X-Error-Code`` the client dispatches on, and a message."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None,
                 body: dict[str, Any] | None = None):
        super().__init__(message)
        self.status, self.code, self.headers, self.body = status, code, headers or {}, body or {}


@dataclass(frozen=True)
class HubRequest:
    method: str
    path: str  # without the query string
    status: int  # 0: the connection was dropped without an answer (drop_ranged_reads)
    body_bytes: int = 0  # bytes of the answer's body sent: what a client downloaded


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class LoopbackHub:
    """The server and its state. ``with LoopbackHub(tmp) as hub:`` serves on ``hub.url`` until the block ends."""

    def __init__(self, root: Path, page_size: int = TREE_PAGE_SIZE):
        self.root = Path(root)
        self.page_size = page_size
        self.requests: list[HubRequest] = []
        self.lfs_uploads = 0  # successful LFS PUTs since the start
        self._drop_ranged = 0  # ranged file reads still to drop (drop_ranged_reads)
        self._fail_after: int | None = None
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)

    # ── lifecycle ─────────────────────────────────────────────────────
    def start(self) -> LoopbackHub:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.hub = self  # type: ignore[attr-defined]
        threading.Thread(target=self._server.serve_forever, name="loopback-hub", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LoopbackHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "the hub is not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # ── helpers for tests ─────────────────────────────────────────────
    def files(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, bytes]:
        """Path → content of every file of ``repo_id`` at ``revision`` (a branch, tag or commit)."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            tree = repo["commits"][self._resolve(repo, revision)]["files"]
            return {path: self._object(entry["sha256"]).read_bytes() for path, entry in sorted(tree.items())}

    def refs(self, repo_id: str, repo_type: str = "dataset") -> dict[str, dict[str, str]]:
        """``{"branches": {name: commit}, "tags": {name: commit}}``."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            return {"branches": dict(repo["branches"]), "tags": dict(repo["tags"])}

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> list[str]:
        """The titles of the commits reachable from ``revision``, newest first."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            return [repo["commits"][oid]["title"] for oid in self._history(repo, self._resolve(repo, revision))]

    def is_private(self, repo_id: str, repo_type: str = "dataset") -> bool:
        with self._lock:
            return bool(self._repo(repo_type, repo_id)["private"])

    def requests_matching(self, method: str, pattern: str) -> list[HubRequest]:
        """The logged requests of ``method`` whose path matches the regular expression ``pattern``."""
        with self._lock:
            return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    def client_env(self, home: Path, endpoint: str | None = None) -> dict[str, str]:
        """The environment of a client subprocess: this hub as ``HF_ENDPOINT`` (or ``endpoint``), no Xet, a fake
        token, every cache under ``home``, and without the ``HF_HUB_OFFLINE`` the test session sets."""
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
        env.update(
            HF_ENDPOINT=endpoint or self.url, HF_HUB_DISABLE_XET="1", HF_TOKEN="hf_loopback", HF_HOME=str(home),
            HF_LEROBOT_HOME=str(Path(home) / "lerobot"), HF_DATASETS_CACHE=str(Path(home) / "datasets"),
            HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1",
        )
        return env

    def commit_files(self, repo_id: str, files: dict[str, bytes], *, private: bool = False, branch: str = "main",
                     tag: str | None = None, message: str = "commit_files", repo_type: str = "dataset") -> str:
        """Commit ``files`` (path → content) straight into the store, creating the repo if needed, and point ``tag``
        at the commit: a test's starting state without a client. LFS or not as the Hub decides; returns the sha."""
        with self._lock:
            path = self._repo_file(repo_type, repo_id)
            repo = self._repo(repo_type, repo_id) if path.is_file() else self._new_repo(repo_type, repo_id, private)
            repo["branches"].setdefault(branch, repo["branches"]["main"])  # a new branch starts at main
            tree = dict(repo["commits"][repo["branches"][branch]]["files"])
            for name, data in files.items():
                tree[name] = self._entry(data, self._is_lfs(tree, name, len(data), data[:512]))
                if tree[name]["lfs"]:
                    repo["lfs"][tree[name]["sha256"]] = len(data)
            oid = self._commit(repo, branch, message, "", tree)
            if tag is not None:
                repo["tags"][tag] = oid
            self._save(repo)
            return oid

    def drop_ranged_reads(self, count: int) -> None:
        """Close the connection without an answer on the next ``count`` ranged file reads, as a flaky network
        does: clients must retry them."""
        with self._lock:
            self._drop_ranged = count

    def bytes_served(self, pattern: str) -> int:
        """Body bytes sent by file reads (``resolve``) whose path matches the regular expression ``pattern``."""
        return sum(r.body_bytes for r in self.requests_matching("GET", f"/resolve/.*{pattern}"))

    def fail_lfs_uploads_after(self, count: int | None) -> None:
        """Answer 403 to every LFS upload once ``count`` more have succeeded (None: stop failing). 403, because
        the client retries 5xx answers with backoff, while a refusal ends the upload at once."""
        with self._lock:
            self._fail_after = None if count is None else self.lfs_uploads + count

    # ── storage ───────────────────────────────────────────────────────
    def _object(self, sha256: str) -> Path:
        return self.root / "objects" / sha256[:2] / sha256[2:]

    def _store(self, data: bytes) -> str:
        sha256 = hashlib.sha256(data).hexdigest()
        path = self._object(sha256)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + f".{threading.get_ident()}.partial")
            partial.write_bytes(data)
            partial.replace(path)
        return sha256

    def _repo_file(self, repo_type: str, repo_id: str) -> Path:
        return self.root / "repos" / f"{repo_type}s" / repo_id / "repo.json"

    def _repo(self, repo_type: str, repo_id: str) -> dict[str, Any]:
        path = self._repo_file(repo_type, repo_id)
        if not path.is_file():
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return json.loads(path.read_text())

    def _save(self, repo: dict[str, Any]) -> None:
        path = self._repo_file(repo["type"], repo["id"])
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(repo, indent=1))
        partial.replace(path)

    def _new_repo(self, repo_type: str, repo_id: str, private: bool) -> dict[str, Any]:
        """A repo as the Hub creates it: one commit holding its .gitattributes."""
        repo = {"type": repo_type, "id": repo_id, "private": private, "created": _now(),
                "branches": {}, "tags": {}, "commits": {}, "lfs": {}}  # lfs: sha256 → size of the objects uploaded
        self._commit(repo, "main", "initial commit", "", {".gitattributes": self._entry(GITATTRIBUTES.encode(), False)})
        self._save(repo)
        return repo

    def _entry(self, data: bytes, lfs: bool) -> dict[str, Any]:
        """A file of a commit: its content's sha256 (the blob's name in the store), size, and how git holds it."""
        entry: dict[str, Any] = {"sha256": self._store(data), "size": len(data), "lfs": lfs}
        if not lfs:
            entry["git_oid"] = _git_blob_oid(data)
        return entry

    def _resolve(self, repo: dict[str, Any], revision: str) -> str:
        """A branch, a tag or a full commit sha → the commit sha."""
        if revision in repo["branches"]:
            return repo["branches"][revision]
        if revision in repo["tags"]:
            return repo["tags"][revision]
        if revision in repo["commits"]:
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _history(self, repo: dict[str, Any], oid: str | None) -> list[str]:
        history = []
        while oid is not None and len(history) <= len(repo["commits"]):
            history.append(oid)
            oid = repo["commits"][oid]["parent"]
        return history

    def _commit(self, repo: dict[str, Any], branch: str, title: str, message: str, files: dict[str, Any]) -> str:
        parent = repo["branches"].get(branch)
        seed = json.dumps([parent, title, message, files, time.time_ns()], sort_keys=True)
        oid = hashlib.sha1(seed.encode()).hexdigest()
        repo["commits"][oid] = {"parent": parent, "title": title, "message": message, "date": _now(), "files": files}
        repo["branches"][branch] = oid
        return oid

    def _tree_entry(self, path: str, entry: dict[str, Any]) -> dict[str, Any]:
        """A file as the tree and paths-info endpoints describe it."""
        item: dict[str, Any] = {"type": "file", "path": path, "size": entry["size"]}
        if entry["lfs"]:
            pointer = _lfs_pointer(entry["sha256"], entry["size"])
            item["oid"] = _git_blob_oid(pointer)
            item["lfs"] = {"oid": entry["sha256"], "size": entry["size"], "pointerSize": len(pointer)}
        else:
            item["oid"] = entry["git_oid"]
        return item

    def _last_commit(self, repo: dict[str, Any], head: str, prefix: str, is_file: bool) -> dict[str, str]:
        """The newest commit that changed ``prefix`` (a file, or a folder's files), for ``expand=True``."""

        def under(files: dict[str, Any]) -> dict[str, str]:
            inside = prefix + "/"
            return {p: e["sha256"] for p, e in files.items() if p == prefix or not is_file and p.startswith(inside)}

        history = self._history(repo, head)
        found = history[0]
        for newer, older in zip(history, history[1:], strict=False):
            if under(repo["commits"][newer]["files"]) != under(repo["commits"][older]["files"]):
                break
            found = older
        commit = repo["commits"][found]
        return {"id": found, "title": commit["title"], "date": commit["date"]}

    def _folders(self, files: dict[str, Any]) -> set[str]:
        return {"/".join(path.split("/")[:depth]) for path in files for depth in range(1, path.count("/") + 1)}

    def _folder_entry(self, path: str, files: dict[str, Any]) -> dict[str, Any]:
        listing = json.dumps(sorted((p, e["sha256"]) for p, e in files.items() if p.startswith(path + "/")))
        return {"type": "directory", "path": path, "oid": hashlib.sha1(listing.encode()).hexdigest()}

    def _is_lfs(self, files: dict[str, Any], path: str, size: int, sample: bytes) -> bool:
        """What the Hub decides in preupload: big, binary, or named LFS by the repo's .gitattributes."""
        if size >= LFS_THRESHOLD or b"\0" in sample:
            return True
        attributes = self._object(files[".gitattributes"]["sha256"]).read_text() if ".gitattributes" in files else ""
        patterns = [line.split()[0] for line in attributes.splitlines() if "filter=lfs" in line]
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(path.rsplit("/", 1)[-1], p) for p in patterns)


# ── HTTP ──────────────────────────────────────────────────────────────
_API = re.compile(r"^/api/(?P<kind>datasets|models|spaces)/(?P<repo>[^/]+/[^/]+)/(?P<verb>[a-z-]+)(?:/(?P<rest>.*))?$")
_INFO = re.compile(r"^/api/(?P<kind>datasets|models|spaces)/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
_RESOLVE = re.compile(r"^/(?:(?P<kind>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_LFS_BATCH = re.compile(r"^/(?:(?P<kind>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$")
_LFS_OBJECT = re.compile(
    r"^/lfs-(?:upload|verify)/(?P<kind>datasets|models|spaces)/(?P<repo>[^/]+/[^/]+)(?:/(?P<oid>[0-9a-f]{64}))?$"
)
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as httpx expects; every answer has a Content-Length

    @property
    def hub(self) -> LoopbackHub:
        return self.server.hub  # type: ignore[attr-defined]

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as two writes; without this, Nagle's algorithm holds the body back until the
        # client's delayed ACK (~40 ms a request), which a client making many small ranged reads would feel.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (the stdlib's signature)
        pass  # the request log is self.hub.requests

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # ── plumbing ──────────────────────────────────────────────────────
    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        self.body = self._read_body()
        status, self.sent = 500, 0
        try:
            status = self._route(method, split.path)
        except HubError as error:
            status = error.status
            headers = {"X-Error-Message": str(error), **error.headers}
            if error.code:
                headers["X-Error-Code"] = error.code
            self._json({"error": str(error), **error.body}, status, headers)
        finally:
            with self.hub._lock:
                self.hub.requests.append(HubRequest(method, split.path, status, self.sent))

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes, headers: dict[str, str], content_type: str) -> int:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
            self.sent = len(body)
        return status

    def _json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> int:
        return self._send(status, json.dumps(data).encode(), headers or {}, "application/json")

    def _json_body(self) -> Any:
        try:
            return json.loads(self.body or b"{}")
        except json.JSONDecodeError as exc:
            raise HubError(400, f"the request body is not JSON ({exc})") from None

    def _authorized(self, repo: dict[str, Any]) -> None:
        """A private repo is visible to any request that carries a token (there is one user), and to no other."""
        if repo["private"] and not self.headers.get("Authorization"):
            raise HubError(401, f"Repository {repo['id']} not found", "RepoNotFound")

    def _route(self, method: str, path: str) -> int:
        """Match the raw (still quoted) path: revisions and tree paths arrive with their slashes quoted."""
        hub = self.hub
        with hub._lock:
            if method == "POST" and path == "/api/repos/create":
                return self._create_repo()
            if method == "POST" and path == "/api/validate-yaml":
                return self._validate_yaml()
            if method in ("PUT", "POST") and (match := _LFS_OBJECT.match(path)):
                repo = hub._repo(PREFIXES[match["kind"]], unquote(match["repo"]))
                return self._lfs_put(repo, match["oid"]) if method == "PUT" else self._lfs_verify(repo)
            if method == "POST" and (match := _LFS_BATCH.match(path)):
                return self._lfs_batch(PREFIXES[match["kind"] or "models"], unquote(match["repo"]))
            if method in ("GET", "HEAD") and (match := _RESOLVE.match(path)):
                return self._resolve_file(PREFIXES[match["kind"] or "models"], unquote(match["repo"]),
                                          unquote(match["rev"]), unquote(match["path"]))
            if method == "GET" and (match := _INFO.match(path)):
                revision = unquote(match["rev"]) if match["rev"] else None
                return self._repo_info(PREFIXES[match["kind"]], unquote(match["repo"]), revision)
            if match := _API.match(path):
                repo = hub._repo(PREFIXES[match["kind"]], unquote(match["repo"]))
                self._authorized(repo)
                return self._repo_api(method, repo, match["verb"], match["rest"] or "")
        raise HubError(404, f"no route for {method} {path}")

    def _repo_api(self, method: str, repo: dict[str, Any], verb: str, rest: str) -> int:
        revision, _, subpath = (unquote(part) for part in rest.partition("/"))
        if method == "GET" and verb == "refs":
            return self._refs(repo)
        if method == "GET" and verb == "tree":
            return self._tree(repo, revision, subpath)
        if method == "GET" and verb == "commits":
            return self._list_commits(repo, revision)
        if method == "POST" and verb == "paths-info":
            return self._paths_info(repo, revision)
        if method == "POST" and verb == "preupload":
            return self._preupload(repo, revision)
        if method == "POST" and verb == "commit":
            return self._commit(repo, revision)
        if verb in ("tag", "branch") and method in ("POST", "DELETE"):
            return self._ref(repo, verb, method, revision)
        raise HubError(404, f"no route for {method} {verb}")

    # ── repos ─────────────────────────────────────────────────────────
    def _create_repo(self) -> int:
        payload = self._json_body()
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or 'loopback-user'}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.url}/{prefix}{repo_id}"
        if self.hub._repo_file(repo_type, repo_id).is_file():
            raise HubError(409, "You already created this repo", body={"url": url})  # create_repo(exist_ok) reads it
        self.hub._new_repo(repo_type, repo_id, payload.get("visibility", "public") != "public")
        return self._json({"url": url, "name": repo_id, "id": repo_id})

    def _repo_info(self, repo_type: str, repo_id: str, revision: str | None) -> int:
        repo = self.hub._repo(repo_type, repo_id)
        self._authorized(repo)
        sha = self.hub._resolve(repo, revision or "main")
        commit = repo["commits"][sha]
        blobs = self.query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for path, entry in sorted(commit["files"].items()):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                item = self.hub._tree_entry(path, entry)
                sibling.update(size=entry["size"], blobId=item["oid"])
                if "lfs" in item:
                    sibling["lfs"] = {"sha256": entry["sha256"], "size": entry["size"],
                                      "pointerSize": item["lfs"]["pointerSize"]}
            siblings.append(sibling)
        return self._json({
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "author": repo_id.split("/")[0],
            "sha": sha, "private": repo["private"], "gated": False, "disabled": False, "downloads": 0, "likes": 0,
            "tags": [], "createdAt": repo["created"], "lastModified": commit["date"], "siblings": siblings,
        })

    def _refs(self, repo: dict[str, Any]) -> int:
        def refs(kind: str, names: dict[str, str]) -> list[dict[str, str]]:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": oid} for n, oid in sorted(names.items())]

        return self._json({"branches": refs("heads", repo["branches"]), "converts": [],
                           "tags": refs("tags", repo["tags"]), "pullRequests": []})

    def _ref(self, repo: dict[str, Any], kind: str, method: str, name: str) -> int:
        """POST tag/{revision} {"tag": name}; DELETE tag/{name}; POST branch/{name} {"startingPoint": rev}."""
        refs = repo["tags" if kind == "tag" else "branches"]
        if method == "DELETE":
            if name not in refs:
                raise HubError(404, f"Invalid rev id: {name}", "RevisionNotFound")
            del refs[name]
        elif kind == "tag":
            payload = self._json_body()
            if payload["tag"] in refs:
                raise HubError(409, f"Tag {payload['tag']} already exists")
            refs[payload["tag"]] = self.hub._resolve(repo, name)
        else:
            if name in refs:
                raise HubError(409, f"Branch {name} already exists")
            refs[name] = self.hub._resolve(repo, self._json_body().get("startingPoint") or "main")
        self.hub._save(repo)
        return self._json({})

    # ── reading ───────────────────────────────────────────────────────
    def _tree(self, repo: dict[str, Any], revision: str, subpath: str) -> int:
        files = repo["commits"][self.hub._resolve(repo, revision)]["files"]
        prefix = subpath.strip("/")
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        expand = self.query.get("expand", "").lower() in ("1", "true")
        folders = self.hub._folders(files)
        if prefix and prefix not in folders:
            raise HubError(404, f"{prefix} does not exist on {revision}", "EntryNotFound")
        start = f"{prefix}/" if prefix else ""
        paths = sorted(p for p in set(files) | folders if p.startswith(start)
                       and (recursive or "/" not in p[len(start):]))
        cursor = int(self.query.get("cursor") or 0)
        page = paths[cursor:cursor + self.hub.page_size]
        head = self.hub._resolve(repo, revision)
        entries = []
        for path in page:
            entry = self.hub._tree_entry(path, files[path]) if path in files else self.hub._folder_entry(path, files)
            if expand:
                entry["lastCommit"] = self.hub._last_commit(repo, head, path, path in files)
            entries.append(entry)
        headers = {}
        if cursor + self.hub.page_size < len(paths):
            query = "&".join(f"{k}={quote(v)}" for k, v in {**self.query, "cursor": str(cursor + len(page))}.items())
            headers["Link"] = f'<{self.hub.url}{urlsplit(self.path).path}?{query}>; rel="next"'
        return self._json(entries, headers=headers)

    def _paths_info(self, repo: dict[str, Any], revision: str) -> int:
        form = parse_qs(self.body.decode())
        head = self.hub._resolve(repo, revision)
        files = repo["commits"][head]["files"]
        expand = form.get("expand", ["false"])[-1].lower() in ("1", "true")
        folders = self.hub._folders(files)
        entries = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in files:
                entry = self.hub._tree_entry(path, files[path])
            elif path in folders:
                entry = self.hub._folder_entry(path, files)
            else:
                continue
            if expand:
                entry["lastCommit"] = self.hub._last_commit(repo, head, path, path in files)
            entries.append(entry)
        return self._json(entries)

    def _list_commits(self, repo: dict[str, Any], revision: str) -> int:
        history = self.hub._history(repo, self.hub._resolve(repo, revision))
        return self._json([
            {"id": oid, "title": repo["commits"][oid]["title"], "message": repo["commits"][oid]["message"],
             "authors": [{"user": "loopback-user"}], "date": repo["commits"][oid]["date"]}
            for oid in history
        ])

    def _resolve_file(self, repo_type: str, repo_id: str, revision: str, path: str) -> int:
        repo = self.hub._repo(repo_type, repo_id)
        self._authorized(repo)
        sha = self.hub._resolve(repo, revision)
        entry = repo["commits"][sha]["files"].get(path)
        if entry is None:
            raise HubError(404, f"{path} does not exist on {revision}", "EntryNotFound", {"X-Repo-Commit": sha})
        data = self.hub._object(entry["sha256"]).read_bytes()
        etag = entry["sha256"] if entry["lfs"] else entry["git_oid"]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(entry["size"])})
        status, body = 200, data
        requested = self.headers.get("Range")
        if requested and self.hub._drop_ranged > 0:
            self.hub._drop_ranged -= 1
            self.close_connection = True
            return 0
        if requested:
            match = _RANGE.match(requested.strip())
            if match is None or match.groups() == ("", ""):
                raise HubError(416, f"unsupported range {requested}", headers={"Content-Range": f"bytes */{len(data)}"})
            first, last = match.groups()
            start = len(data) - int(last) if first == "" else int(first)
            end = len(data) - 1 if first == "" or last == "" else min(int(last), len(data) - 1)
            if start >= len(data) or start > end:
                raise HubError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            status, body = 206, data[max(start, 0):end + 1]
            headers["Content-Range"] = f"bytes {max(start, 0)}-{end}/{len(data)}"
        return self._send(status, body, headers, "application/octet-stream")

    # ── writing ───────────────────────────────────────────────────────
    def _validate_yaml(self) -> int:
        content = self._json_body().get("content", "")
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        try:
            metadata = yaml.safe_load(match[1]) if match else {}
        except yaml.YAMLError as exc:
            return self._json({"errors": [{"message": f"invalid YAML: {exc}"}], "warnings": []}, 400)
        if not isinstance(metadata, dict):
            return self._json({"errors": [{"message": "the metadata is not a mapping"}], "warnings": []}, 400)
        return self._json({"errors": [], "warnings": []})

    def _preupload(self, repo: dict[str, Any], revision: str) -> int:
        files = repo["commits"][self.hub._resolve(repo, revision)]["files"]
        answers = []
        for item in self._json_body()["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = self.hub._is_lfs(files, item["path"], item["size"], sample)
            existing = files.get(item["path"])
            oid = None
            if existing is not None and existing["lfs"] == lfs:
                oid = existing["sha256"] if lfs else existing["git_oid"]
            answers.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular",
                            "shouldIgnore": False, "oid": oid})
        return self._json({"files": answers, "commitOid": repo["branches"].get(revision)})

    def _lfs_batch(self, repo_type: str, repo_id: str) -> int:
        repo = self.hub._repo(repo_type, repo_id)
        self._authorized(repo)
        payload = self._json_body()
        objects = []
        for item in payload["objects"]:
            answer: dict[str, Any] = {"oid": item["oid"], "size": item["size"], "authenticated": True}
            if item["oid"] not in repo["lfs"]:  # already uploaded to this repo: no actions, the client skips it
                where = f"{repo_type}s/{repo_id}"
                answer["actions"] = {
                    "upload": {"href": f"{self.hub.url}/lfs-upload/{where}/{item['oid']}", "header": {}},
                    "verify": {"href": f"{self.hub.url}/lfs-verify/{where}", "header": {}},
                }
            objects.append(answer)
        return self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(), {},
                          "application/vnd.git-lfs+json")

    def _lfs_put(self, repo: dict[str, Any], oid: str) -> int:
        """The basic transfer's PUT of one object (the href the batch answer gave), kept per repo as the Hub does."""
        hub = self.hub
        if hub._fail_after is not None and hub.lfs_uploads >= hub._fail_after:
            raise HubError(403, "upload refused (the test interrupts the upload here)")
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, f"the uploaded content does not have sha256 {oid}")
        hub._store(self.body)
        repo["lfs"][oid] = len(self.body)
        hub._save(repo)
        hub.lfs_uploads += 1
        return self._send(200, b"", {}, "text/plain")

    def _lfs_verify(self, repo: dict[str, Any]) -> int:
        payload = self._json_body()
        if repo["lfs"].get(payload["oid"]) != payload["size"]:
            raise HubError(404, f"object {payload['oid']} was not uploaded")
        return self._json({})

    def _commit(self, repo: dict[str, Any], revision: str) -> int:
        if self.query.get("create_pr"):
            raise HubError(400, "the loopback hub has no pull requests")
        if revision not in repo["branches"]:
            raise HubError(404, f"Invalid rev id: {revision} (commits go to a branch)", "RevisionNotFound")
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise HubError(400, "the commit payload does not start with a header")
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, repo["branches"][revision]):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo["commits"][repo["branches"][revision]]["files"])
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = self.hub._entry(base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                if value["oid"] not in repo["lfs"]:
                    raise HubError(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                files[value["path"]] = {"sha256": value["oid"], "size": repo["lfs"][value["oid"]], "lfs": True}
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
            elif key == "deletedFolder":
                for path in [p for p in files if p.startswith(value["path"].rstrip("/") + "/")]:
                    del files[path]
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        oid = self.hub._commit(repo, revision, header["summary"], header.get("description", ""), files)
        self.hub._save(repo)
        prefix = "" if repo["type"] == "model" else f"{repo['type']}s/"
        return self._json({"success": True, "commitOid": oid, "pullRequestUrl": None,
                           "commitUrl": f"{self.hub.url}/{prefix}{repo['id']}/commit/{oid}"})
