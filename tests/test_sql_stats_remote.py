"""`clap-data sql` and `clap-data stats` on tokenized datasets on the (loopback) Hub, ``hf://datasets/ORG/NAME``:
the same answers as on the local folders, DuckDB reading the data files through HfFileSystem (no httpfs)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

MAIN = "import clap_data.cli.stats_commands; from clap_data.cli import main; main()"
QUERY = ("SELECT dataset, count(*) AS n, count(action_tokens) AS tokenized, count(DISTINCT episode_index) AS episodes "
         "FROM frames GROUP BY dataset ORDER BY dataset")


@pytest.fixture(scope="module")
def published(loopback_hub, tokenized_corpus) -> dict[str, str]:
    """The tokenized robot and human datasets committed to the Hub as they are on disk; name → URL."""
    urls = {}
    for root in (tokenized_corpus.robot, tokenized_corpus.human):
        files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        loopback_hub.commit_files(f"remote-corpus/{root.name}", files)
        urls[root.name] = f"hf://datasets/remote-corpus/{root.name}"
    return urls


@pytest.fixture(scope="module")
def env(loopback_hub, tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("sql_client")
    return {**loopback_hub.client_env(home), "CLAP_DATA_CACHE": str(home / "clap-data")}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", MAIN, *args], env=env, capture_output=True, text=True, timeout=180)


def local(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", MAIN, *args], capture_output=True, text=True, timeout=180)


def test_sql_on_hub_datasets_answers_as_on_the_local_folders(published, env, tokenized_corpus):
    remote = run(env, "sql", published["astribot"], published["ego4d"], QUERY, "--json")
    assert remote.returncode == 0, remote.stderr
    on_disk = local("sql", str(tokenized_corpus.robot), str(tokenized_corpus.human), QUERY, "--json")
    assert on_disk.returncode == 0, on_disk.stderr
    assert json.loads(remote.stdout) == json.loads(on_disk.stdout)
    datasets = run(env, "sql", published["astribot"], "SELECT dataset, root, episodes FROM datasets", "--json")
    assert datasets.returncode == 0, datasets.stderr
    [row] = json.loads(datasets.stdout)
    assert row["dataset"] == "astribot"
    assert row["root"].startswith(published["astribot"] + "@")  # pinned to the commit read


def rounded(value: Any) -> Any:
    """Floats to 10 significant digits, in nested results: DuckDB's parallel sums may add in another order."""
    if isinstance(value, float):
        return float(f"{value:.10g}")
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item) for item in value]
    return value


def test_stats_on_a_hub_dataset_equal_the_local_ones(published, env, tokenized_corpus):
    remote = run(env, "stats", published["astribot"], "--json")
    assert remote.returncode == 0, remote.stderr
    on_disk = local("stats", str(tokenized_corpus.robot), "--json")
    assert on_disk.returncode == 0, on_disk.stderr
    remote_stats, local_stats = json.loads(remote.stdout), json.loads(on_disk.stdout)
    for result in (remote_stats, local_stats):
        for dataset in result.get("datasets", []):
            dataset.pop("root")
    assert rounded(remote_stats) == rounded(local_stats)
    assert remote_stats["columns"], "the robot dataset has token columns"


def test_an_unknown_hub_dataset_is_one_sentence(env):
    result = run(env, "sql", "hf://datasets/remote-corpus/nothing-here", "SELECT 1")
    assert result.returncode == 1
    assert "no dataset remote-corpus/nothing-here on the Hub" in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_the_quarantine_view_reads_the_hub_dataset_s_quarantine(published, env, tokenized_corpus):
    query = "SELECT count(*) AS n FROM quarantine"
    remote = run(env, "sql", published["ego4d"], query, "--json")
    on_disk = local("sql", str(tokenized_corpus.human), query, "--json")
    assert remote.returncode == on_disk.returncode == 0, remote.stderr + on_disk.stderr
    assert json.loads(remote.stdout) == json.loads(on_disk.stdout)
