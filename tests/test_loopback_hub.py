"""The loopback Hub itself (tests/loopback_hub.py): the answers the real huggingface_hub client relies on, so
that tests built on it (publish, Hub ingest) test our code and not the stand-in."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tests.loopback_hub import LoopbackHub

REPO = "lab/tiny"
PARQUET = b"PAR1" + bytes(range(256)) * 40 + b"PAR1"  # binary: stored in LFS
FILES = {f"data/chunk-000/file-{i:03d}.parquet": PARQUET + bytes([i]) for i in range(4)}
FILES |= {"meta/info.json": b'{"codebase_version": "v3.0"}\n', "meta/tasks.jsonl": b'{"task": "pick"}\n'}


@pytest.fixture()
def hub(tmp_path):
    """A hub of its own with a tree page of 3 entries, so listing the repo takes several pages."""
    with LoopbackHub(tmp_path / "hub", page_size=3) as server:
        server.commit_files(REPO, FILES, message="add files", tag="v3.0")
        server.commit_files(REPO, {"meta/info.json": b'{"codebase_version": "v3.1"}\n'}, message="bump")
        yield server


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_resolve_answers_heads_ranges_and_errors(hub):
    path = "data/chunk-000/file-002.parquet"
    data = FILES[path]
    url = f"{hub.url}/datasets/{REPO}/resolve/v3.0/{path}"
    status, headers, body = _get(url, method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["X-Repo-Commit"] == hub.refs(REPO)["tags"]["v3.0"]
    assert headers["X-Linked-Etag"] == headers["ETag"] == f'"{hashlib.sha256(data).hexdigest()}"'
    assert headers["X-Linked-Size"] == headers["Content-Length"] == str(len(data))
    assert _get(url, {"Range": "bytes=4-9"})[::2] == (206, data[4:10])
    assert _get(url, {"Range": "bytes=4-9"})[1]["Content-Range"] == f"bytes 4-9/{len(data)}"
    assert _get(url, {"Range": "bytes=-4"})[::2] == (206, data[-4:])
    assert _get(url, {"Range": f"bytes={len(data) - 2}-"})[::2] == (206, data[-2:])
    assert _get(url, {"Range": f"bytes={len(data)}-"})[0] == 416
    status, headers, _ = _get(f"{hub.url}/datasets/{REPO}/resolve/main/meta/info.json", method="HEAD")
    content = b'{"codebase_version": "v3.1"}\n'
    assert headers["ETag"] == f'"{hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()}"'
    assert "X-Linked-Etag" not in headers
    status, headers, _ = _get(f"{hub.url}/datasets/{REPO}/resolve/main/nothing.txt")
    assert (status, headers["X-Error-Code"]) == (404, "EntryNotFound")
    assert headers["X-Repo-Commit"] == hub.refs(REPO)["branches"]["main"]
    assert _get(f"{hub.url}/datasets/{REPO}/resolve/v9.9/meta/info.json")[1]["X-Error-Code"] == "RevisionNotFound"
    assert _get(f"{hub.url}/datasets/lab/none/resolve/main/x")[1]["X-Error-Code"] == "RepoNotFound"


def test_a_private_repo_needs_a_token(hub):
    hub.commit_files("lab/secret", {"a.txt": b"a\n"}, private=True)
    url = f"{hub.url}/api/datasets/lab/secret"
    status, headers, _ = _get(url)
    assert (status, headers["X-Error-Code"]) == (401, "RepoNotFound")
    status, _, body = _get(url, {"Authorization": "Bearer hf_loopback"})
    assert (status, json.loads(body)["private"]) == (200, True)
    assert hub.is_private("lab/secret")


CLIENT = """
import json, sys
from huggingface_hub import CommitOperationAdd, HfApi, HfFileSystem, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError

repo, first = sys.argv[1], sys.argv[2]
api = HfApi()
out = {}
out["tree"] = sorted(f.path for f in api.list_repo_tree(repo, repo_type="dataset", recursive=True))
out["tree_lfs"] = sorted(f.path for f in api.list_repo_tree(repo, repo_type="dataset", recursive=True)
                         if getattr(f, "lfs", None))
out["meta"] = [f.path for f in api.list_repo_tree(repo, "meta", repo_type="dataset", expand=True)]
out["info_at_tag"] = open(hf_hub_download(repo, "meta/info.json", repo_type="dataset", revision="v3.0")).read()
out["info_at_sha"] = open(hf_hub_download(repo, "meta/info.json", repo_type="dataset", revision=first)).read()
out["paths"] = [(p.path, type(p).__name__) for p in api.get_paths_info(repo, ["meta/info.json", "data", "x"],
                                                                        repo_type="dataset")]
fs = HfFileSystem()
with fs.open(f"datasets/{repo}@v3.0/data/chunk-000/file-001.parquet", "rb", block_size=16) as f:
    f.seek(-5, 2)
    out["tail"] = f.read().hex()
out["ls"] = fs.ls(f"datasets/{repo}/meta", detail=False)
commit = api.create_commit(repo, [CommitOperationAdd("notes/a.bin", bytes(range(256)) * 3),
                                  CommitOperationAdd("notes/b.txt", b"hello\\n")],
                           commit_message="notes", repo_type="dataset")
api.create_branch(repo, branch="dev", repo_type="dataset")
api.create_tag(repo, tag="v3.2", revision="dev", repo_type="dataset")
out["refs"] = [[r.name for r in api.list_repo_refs(repo, repo_type="dataset").branches],
               [r.name for r in api.list_repo_refs(repo, repo_type="dataset").tags]]
try:
    api.create_commit(repo, [CommitOperationAdd("c.txt", b"c")], commit_message="late", repo_type="dataset",
                      parent_commit=first)
except HfHubHTTPError as exc:
    out["stale_parent"] = exc.response.status_code
api.delete_file("notes/b.txt", repo, repo_type="dataset")
out["commits"] = [c.title for c in api.list_repo_commits(repo, repo_type="dataset")]
print(json.dumps(out))
"""


def test_the_real_client_pages_reads_ranges_and_commits(hub, tmp_path):
    first = hub.refs(REPO)["tags"]["v3.0"]
    result = subprocess.run([sys.executable, "-c", CLIENT, REPO, first], env=hub.client_env(tmp_path / "home"),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout)
    assert out["tree"] == sorted([".gitattributes", *FILES, "data", "data/chunk-000", "meta"])
    assert out["tree_lfs"] == sorted(p for p in FILES if p.endswith(".parquet"))
    # 10 entries (7 files, 3 folders) in pages of 3 that the client follows by the Link header: 4 pages, twice
    assert len(hub.requests_matching("GET", f"^/api/datasets/{REPO}/tree/main$")) == 2 * 4
    assert out["meta"] == ["meta/info.json", "meta/tasks.jsonl"]
    assert out["info_at_tag"] == '{"codebase_version": "v3.0"}\n'
    assert out["info_at_sha"] == '{"codebase_version": "v3.0"}\n'
    assert out["paths"] == [["meta/info.json", "RepoFile"], ["data", "RepoFolder"]]
    assert bytes.fromhex(out["tail"]) == FILES["data/chunk-000/file-001.parquet"][-5:]
    assert any(r.status == 206 for r in hub.requests_matching("GET", "/resolve/"))
    assert out["ls"] == [f"datasets/{REPO}/meta/info.json", f"datasets/{REPO}/meta/tasks.jsonl"]
    assert out["refs"] == [["dev", "main"], ["v3.0", "v3.2"]]
    assert out["stale_parent"] == 412
    assert out["commits"][:2] == ["Delete notes/b.txt with huggingface_hub", "notes"]
    files = hub.files(REPO)
    assert files["notes/a.bin"] == bytes(range(256)) * 3 and "notes/b.txt" not in files
    assert hub.files(REPO, "v3.2") == hub.files(REPO, "dev")
    assert len(hub.requests_matching("PUT", "^/lfs-upload/")) == 1  # a.bin is binary: LFS; b.txt went in the commit
