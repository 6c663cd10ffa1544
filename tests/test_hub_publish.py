"""``clap-data publish`` against the loopback Hub (tests/loopback_hub.py), with the real huggingface_hub client:
the files and the card arrive byte for byte and stock lerobot, huggingface_hub and ``datasets`` read them back;
a rerun sends nothing; an interrupted upload resumes; licence-gated and damaged datasets are refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

import clap_data.cli.hub_commands  # noqa: F401  (registers publish until clap_data.cli imports it)
from clap_data.cli import app
from clap_data.dataset_card import CardLicence, render_card, source_counts, token_stats
from clap_data.lerobot_v3.manifest import Manifest
from clap_data.lerobot_v3.metadata import DatasetMetadata

CLI = [sys.executable, "-c", "import clap_data.cli.hub_commands; from clap_data.cli import main; main()"]
DEAD_ENDPOINT = "http://127.0.0.1:9"  # nothing listens there: a call that ignored --endpoint fails at once
HUB_FILES = {"README.md", ".gitattributes"}  # on the Hub besides the dataset's own files


def _local_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _lfs_files(root: Path) -> int:
    """The dataset's files the Hub keeps in LFS (binary: parquet and mp4)."""
    return sum(1 for p in _local_files(root) if p.endswith((".parquet", ".mp4")))


def _publish(hub, home: Path, dataset: Path, repo_id: str, *flags: str) -> subprocess.CompletedProcess:
    """The real command in a subprocess, HF_ENDPOINT pointing nowhere: every call must follow --endpoint."""
    command = [*CLI, "publish", str(dataset), "--repo-id", repo_id, "--endpoint", hub.url, *flags]
    return subprocess.run(command, env=hub.client_env(home, endpoint=DEAD_ENDPOINT), capture_output=True, text=True,
                          timeout=300)


def _card(hub, repo_id: str) -> tuple[dict, str]:
    text = hub.files(repo_id)["README.md"].decode()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


@pytest.fixture(scope="module")
def robot(robot_copy) -> Path:
    """Publish takes the dataset's lock, whose file lives beside it: a copy of the tokenized dataset."""
    return robot_copy


@pytest.fixture(scope="module")
def published(robot, loopback_hub, tmp_path_factory) -> subprocess.CompletedProcess:
    return _publish(loopback_hub, tmp_path_factory.mktemp("home"), robot, "clap/astribot")


def test_publish_uploads_every_file_and_the_card_and_tags_v3(published, robot, loopback_hub):
    assert published.returncode == 0, published.stderr[-3000:]
    assert f"published  {loopback_hub.url}/datasets/clap/astribot" in published.stdout
    local = _local_files(robot)
    assert "uploaded   12 files" in published.stdout and "in 2 commit(s); 0 already on the Hub" in published.stdout
    remote = loopback_hub.files("clap/astribot")
    assert set(remote) == set(local) | HUB_FILES
    assert all(remote[path] == data for path, data in local.items())
    refs = loopback_hub.refs("clap/astribot")
    assert refs["tags"] == {"v3.0": refs["branches"]["main"]}
    assert loopback_hub.commits("clap/astribot") == ["clap-data publish (2/2)", "clap-data publish (1/2)",
                                                     "initial commit"]
    assert not loopback_hub.is_private("clap/astribot")
    assert "no licence is known for astribot: the card says 'unknown'" in published.stderr
    front, body = _card(loopback_hub, "clap/astribot")
    assert front == {
        "license": "unknown", "task_categories": ["robotics"], "tags": ["LeRobot", "clap-data", "astribot"],
        "configs": [{"config_name": "default", "data_files": "data/*/*.parquet"}],
    }
    identity = DatasetMetadata.load(robot).token_identity("action_tokens")
    assert f"| checkpoint_sha256 | {identity['checkpoint_sha256']} |" in body
    assert 'LeRobotDataset("clap/astribot")' in body and "hf://datasets/clap/astribot/data/*/*.parquet" in body


def test_the_card_counts_codes_padding_sources_and_quarantine(robot, tokenized_corpus):
    meta = DatasetMetadata.load(robot)
    table = pq.read_table(robot / "data/chunk-000/file-000.parquet", columns=["action_tokens", "action_tokens_padded"])
    codes = np.unique(np.asarray(table.column(0).combine_chunks().flatten()))
    stats = token_stats(meta, "action_tokens")
    assert (stats.codebook_size, stats.codes_used, stats.frames) == (16, len(codes), meta.total_frames)
    assert stats.padded == sum(table.column(1).to_pylist())
    card = render_card(meta, "clap/astribot", CardLicence("mit", "mit."), source_counts(meta), private=False)
    assert f"Codes used: {len(codes)} of 16. Padded: {stats.padded} of {meta.total_frames} frames" in card
    human = DatasetMetadata.load(tokenized_corpus.human)
    categories = pq.read_table(tokenized_corpus.human / "quarantine.parquet").column("category").to_pylist()
    card = render_card(human, "clap/ego4d", CardLicence("other", "gated.", "ego4d"), source_counts(human), private=True)
    assert source_counts(human) == {"ego4d": human.total_episodes}
    assert f"{len(categories)} source episode(s) were rejected at ingest" in card
    assert all(f"| {c} | {categories.count(c)} |" in card for c in set(categories))
    assert "license_name: ego4d" in card and "The repo is private: log in first" in card


LOADER = """
import json, sys
from datasets import load_dataset
from huggingface_hub import snapshot_download
from lerobot.datasets import LeRobotDataset

repo = sys.argv[1]
dataset = LeRobotDataset(repo, video_backend="pyav")
frame = dataset[5]
frames = load_dataset(repo, split="train")
print(json.dumps({
    "len": len(dataset), "revision": dataset.revision, "episodes": dataset.meta.total_episodes,
    "action_tokens": frame["action_tokens"].tolist(), "state": frame["observation.state"].tolist(),
    "image": list(frame["observation.images.head"].shape),
    "rows": frames.num_rows, "row_tokens": frames[5]["action_tokens"],
    "snapshot": snapshot_download(repo, repo_type="dataset"),
}))
"""


def test_stock_lerobot_huggingface_hub_and_datasets_load_it_back(published, robot, loopback_hub, tmp_path):
    assert published.returncode == 0
    result = subprocess.run([sys.executable, "-c", LOADER, "clap/astribot"], env=loopback_hub.client_env(tmp_path),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    meta = DatasetMetadata.load(robot)
    row = pq.read_table(robot / "data/chunk-000/file-000.parquet").slice(5, 1).to_pylist()[0]
    assert (out["len"], out["rows"]) == (meta.total_frames, meta.total_frames)
    assert (out["episodes"], out["revision"]) == (3, "v3.0")
    assert out["action_tokens"] == row["action_tokens"] == out["row_tokens"]
    assert np.allclose(out["state"], row["observation.state"])
    assert out["image"] == [3, 48, 64]
    snapshot = Path(out["snapshot"])
    downloaded = {str(p.relative_to(snapshot)): p.read_bytes() for p in sorted(snapshot.rglob("*")) if p.is_file()}
    local = _local_files(robot)
    assert set(downloaded) == set(local) | HUB_FILES
    assert all(downloaded[path] == data for path, data in local.items())


def test_a_rerun_uploads_nothing(published, robot, loopback_hub, tmp_path):
    assert published.returncode == 0
    before, commits = len(loopback_hub.requests), loopback_hub.commits("clap/astribot")
    result = _publish(loopback_hub, tmp_path, robot, "clap/astribot")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "uploaded   0 files (0.0 MiB) in 0 commit(s); 12 already on the Hub" in result.stdout
    assert "tag already here" in result.stdout
    sent = [(r.method, r.path) for r in loopback_hub.requests[before:]]
    assert sent == [("POST", "/api/repos/create"), ("GET", "/api/datasets/clap/astribot/tree/main"),
                    ("GET", "/api/datasets/clap/astribot/refs"), ("GET", "/api/datasets/clap/astribot/refs")]
    assert loopback_hub.commits("clap/astribot") == commits


def _uploads(hub, since: int) -> list[int]:
    return [r.status for r in hub.requests[since:] if r.method == "PUT" and r.path.startswith("/lfs-upload/")]


def test_an_interrupted_upload_resumes_without_sending_anything_twice(robot, loopback_hub, tmp_path):
    before = len(loopback_hub.requests)
    loopback_hub.fail_lfs_uploads_after(2)
    try:
        failed = _publish(loopback_hub, tmp_path, robot, "clap/interrupted")
    finally:
        loopback_hub.fail_lfs_uploads_after(None)
    assert failed.returncode == 1
    error = " ".join(failed.stderr.split())
    assert f"error: publishing to {loopback_hub.url}/datasets/clap/interrupted stopped (Error while uploading" in error
    assert "403 Forbidden: upload refused" in error and error.endswith("rerun the same command to upload the rest")
    assert _uploads(loopback_hub, before).count(200) == 2
    assert loopback_hub.commits("clap/interrupted") == ["initial commit"]
    middle = len(loopback_hub.requests)
    resumed = _publish(loopback_hub, tmp_path, robot, "clap/interrupted")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _uploads(loopback_hub, middle) == [200] * (_lfs_files(robot) - 2)  # the two already there are not sent
    remote, local = loopback_hub.files("clap/interrupted"), _local_files(robot)
    assert set(remote) == set(local) | HUB_FILES and all(remote[path] == data for path, data in local.items())


def test_a_partly_published_repo_gets_only_what_it_lacks(robot, loopback_hub, tmp_path):
    local = _local_files(robot)
    kept = {"data/chunk-000/file-000.parquet": local["data/chunk-000/file-000.parquet"],
            "meta/info.json": local["meta/info.json"], "meta/stats.json": b"{}\n", "old/stale.txt": b"gone\n"}
    loopback_hub.commit_files("clap/partial", kept)
    before = len(loopback_hub.requests)
    result = _publish(loopback_hub, tmp_path, robot, "clap/partial")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "uploaded   10 files" in result.stdout and "2 already on the Hub" in result.stdout
    assert "removed    1 files the dataset no longer has" in result.stdout
    assert _uploads(loopback_hub, before) == [200] * (_lfs_files(robot) - 1)
    remote = loopback_hub.files("clap/partial")
    assert set(remote) == set(local) | HUB_FILES and remote["meta/stats.json"] == local["meta/stats.json"]


def test_a_revision_is_a_branch_from_main_and_the_v3_tag_moves_to_it(robot, loopback_hub, tmp_path):
    loopback_hub.commit_files("clap/branched", {"notes.txt": b"main only\n"}, tag="v3.0")
    result = _publish(loopback_hub, tmp_path, robot, "clap/branched", "--revision", "tokens-v2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"published  {loopback_hub.url}/datasets/clap/branched/tree/tokens-v2" in result.stdout
    assert "(tag moved here)" in result.stdout and "removed    1 files the dataset no longer has" in result.stdout
    refs = loopback_hub.refs("clap/branched")
    assert refs["tags"]["v3.0"] == refs["branches"]["tokens-v2"] != refs["branches"]["main"]
    assert set(loopback_hub.files("clap/branched", "main")) == {".gitattributes", "notes.txt"}
    assert set(loopback_hub.files("clap/branched", "v3.0")) == set(_local_files(robot)) | HUB_FILES


def test_a_private_publish_refuses_an_existing_public_repo(published, robot, loopback_hub, tmp_path):
    assert published.returncode == 0
    result = _publish(loopback_hub, tmp_path, robot, "clap/astribot", "--private")
    assert result.returncode == 1
    error = " ".join(result.stderr.split())
    assert "error: clap/astribot already exists and is public; make it private on the Hub" in error
    assert not loopback_hub.is_private("clap/astribot")


runner = CliRunner()


def _refusal(*args: str) -> str:
    result = runner.invoke(app, ["publish", *args], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    return text[text.index("error:"):]  # after the progress lines, if the checks got that far


@pytest.fixture(scope="module")
def human(tokenized_corpus, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("publish_human") / "ego4d"
    shutil.copytree(tokenized_corpus.human, root)
    return root


def test_ego4d_is_refused_unless_private_and_licence_ok(human, loopback_hub, tmp_path):
    before = len(loopback_hub.requests)
    expected = (f"error: {human} is derived from ego4d, bound by the Ego4D licence agreement (ego4d-data.org), which "
                "forbids redistribution: publish it only to a private repo whose readers all hold that licence, "
                "with --private --licence-ok")
    for flags in ([], ["--private"], ["--licence-ok"], ["--licence", "cc-by-4.0"]):
        assert _refusal(str(human), "--repo-id", "clap/ego4d", "--endpoint", loopback_hub.url, *flags) == expected
    assert len(loopback_hub.requests) == before
    result = _publish(loopback_hub, tmp_path, human, "clap/ego4d", "--private", "--licence-ok")
    assert result.returncode == 0, result.stderr[-3000:]
    assert loopback_hub.is_private("clap/ego4d")
    assert set(loopback_hub.files("clap/ego4d")) == set(_local_files(human)) | HUB_FILES
    front, body = _card(loopback_hub, "clap/ego4d")
    assert (front["license"], front["license_name"]) == ("other", "ego4d")
    assert front["tags"] == ["LeRobot", "clap-data", "ego4d"]
    assert "share this private repo only with licensees" in body
    with pytest.raises(urllib.error.HTTPError) as anonymous:  # no token: the repo is not there
        urllib.request.urlopen(f"{loopback_hub.url}/datasets/clap/ego4d/resolve/main/README.md", timeout=10)
    assert anonymous.value.code == 401


def test_dirty_datasets_are_refused_before_any_request(robot, loopback_hub, tmp_path):
    before = len(loopback_hub.requests)
    dirty = tmp_path / "astribot"
    shutil.copytree(robot, dirty)
    args = (str(dirty), "--repo-id", "clap/dirty", "--endpoint", loopback_hub.url)
    staging = tmp_path / ".astribot.clap-staging"
    (staging / "episodes" / "00000000").mkdir(parents=True)
    assert _refusal(*args) == (f"error: {dirty} has an unfinished ingest beside it ({staging}); rerun that ingest to "
                               "finish it, then publish")
    shutil.rmtree(staging)
    columns = tmp_path / ".astribot.clap-columns"
    (columns / "new").mkdir(parents=True)
    assert _refusal(*args) == (f"error: {dirty} has an unfinished column update beside it ({columns}); rerun the "
                               "tokenize or pseudolabel command that started it to finish it, then publish")
    shutil.rmtree(columns)
    data = dirty / "data/chunk-000/file-000.parquet"
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    data.write_bytes(bytes(damaged))
    refusal = _refusal(*args)
    assert refusal.startswith(f"error: {dirty} fails verification: data/chunk-000/file-000.parquet has another sha256 "
                              "than the manifest records: its content changed")
    assert refusal.endswith(f"nothing was uploaded. Run `clap-data verify {dirty}` for every problem")
    data.write_bytes(_local_files(robot)["data/chunk-000/file-000.parquet"])
    (dirty / "notes.txt").write_text("mine\n")
    assert _refusal(*args).startswith(f"error: {dirty} fails verification: notes.txt is not in the manifest")
    assert len(loopback_hub.requests) == before


def test_dry_run_lists_the_files_and_prints_the_card_without_a_request(robot, loopback_hub, tmp_path):
    before = len(loopback_hub.requests)
    result = _publish(loopback_hub, tmp_path, robot, "clap/dry", "--dry-run", "--licence", "CC-BY-4.0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(loopback_hub.requests) == before
    manifest = Manifest.read(robot)
    lines = result.stdout.splitlines()
    for path, entry in manifest.files.items():
        assert any(line.split() == [path, f"{entry['size']:,}"] for line in lines), path
    card_size = len(result.stdout.split("--- README.md (the dataset card) ---\n", 1)[1].split("dry run:")[0].encode())
    assert any(line.split() == ["README.md", f"{card_size:,}"] for line in lines)
    assert f"would upload to {loopback_hub.url}/datasets/clap/dry" in result.stdout
    assert f"{len(manifest.files) + 2} files, " in result.stdout
    assert "license: cc-by-4.0\n" in result.stdout and "Licence: cc-by-4.0, as the publisher states." in result.stdout
    assert result.stdout.rstrip().endswith("dry run: nothing was uploaded")
    assert "note:" not in result.stderr


def test_bad_arguments_exit_2():
    assert runner.invoke(app, ["publish", "x", "--repo-id", "no-slash"]).exit_code == 2
    assert runner.invoke(app, ["publish", "x", "--repo-id", "a/b", "--licence", "CC BY 4.0"]).exit_code == 2
