"""``--src hf://datasets/…``: a LeRobot v3 dataset (DROID's port) on the loopback Hub, ingested without downloading
it — the same dataset as from a local folder, only the episode's byte ranges fetched (counted by the server),
flaky reads retried, a missing file quarantined, a killed run resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from clap_data import video
from clap_data.errors import ExitCode
from clap_data.factories.lerobot import write_lerobot_dataset
from clap_data.pipelines.ingest import IngestRequest, ingest
from clap_data.sources.droid import DroidSource
from clap_data.sources.parquet_ranges import column_chunk_ranges, overlapping_row_groups
from clap_data.sources.remote_files import FETCH_PREFIX
from tests.pipelines.test_ingest_atomicity import tree_digest, wait_for

REPO = "remote/droid-port"
URL = f"hf://datasets/{REPO}"
EPISODES = 12
PER_DATA_FILE, PER_VIDEO_FILE = 4, 6


@pytest.fixture(scope="module")
def port(tmp_path_factory) -> Path:
    """DROID's LeRobot port: 12 episodes, 4 per data file (a row group each), 6 per video file."""
    return write_lerobot_dataset(
        tmp_path_factory.mktemp("remote") / "droid_port", flavour="droid", episode_lengths=[24 + i % 5 for i in range(EPISODES)],
        video_size=(96, 64), episodes_per_data_file=PER_DATA_FILE, episodes_per_video_file=PER_VIDEO_FILE,
    )


@pytest.fixture(scope="module")
def hub(loopback_hub, port):
    loopback_hub.commit_files(REPO, {str(p.relative_to(port)): p.read_bytes() for p in sorted(port.rglob("*")) if p.is_file()})
    return loopback_hub


@pytest.fixture(scope="module")
def client_env(hub, tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("client_home")
    return {**hub.client_env(home), "CLAP_DATA_CACHE": str(home / "clap-data"), "PYTHONUNBUFFERED": "1"}


def cli_ingest(env: dict[str, str], out: Path, src: str = URL, wait: bool = True) -> subprocess.Popen | subprocess.CompletedProcess:
    command = [sys.executable, "-m", "clap_data.cli", "ingest", "droid", "--src", src, "--out", str(out), "--workers", "2"]
    if not wait:
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def local_reference(port, tmp_path_factory, ray_local) -> Path:
    out = tmp_path_factory.mktemp("local_ingest") / "out"
    assert ingest(DroidSource(port), IngestRequest(out=out, workers=2)).exit_code == ExitCode.OK
    return out


@pytest.fixture(scope="module")
def remote_run(hub, client_env, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, dict[str, int]]:
    """One ingest from the Hub, and the bytes the server sent for data and video files."""
    out = tmp_path_factory.mktemp("remote_ingest") / "out"
    before = {kind: hub.bytes_served(f"/{kind}/") for kind in ("data", "videos", "meta")}
    copies_before = fetched_copies()
    result = cli_ingest(client_env, out)
    sent = {kind: hub.bytes_served(f"/{kind}/") - before[kind] for kind in before}
    assert fetched_copies() <= copies_before, "the workers left fetched copies in the temporary folder"
    return out, result, sent


def fetched_copies() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob(f"{FETCH_PREFIX}*"))


def packets(path: Path) -> list[tuple[int | None, bytes]]:
    with av.open(str(path)) as container:
        return [(p.pts, bytes(p)) for p in container.demux(container.streams.video[0]) if p.size]


def test_ingest_from_the_hub_writes_the_same_dataset_as_from_a_local_folder(remote_run, local_reference, hub):
    out, result, _ = remote_run
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    assert f"{EPISODES} written, 0 quarantined" in result.stdout
    for data in sorted((local_reference / "data").rglob("*.parquet")):
        relative = data.relative_to(local_reference)
        assert pq.read_table(out / relative).equals(pq.read_table(data)), relative
    videos = sorted((local_reference / "videos").rglob("*.mp4"))
    assert videos
    for path in videos:
        assert packets(out / path.relative_to(local_reference)) == packets(path), path
    assert json.loads((out / "meta/info.json").read_text())["total_frames"] == json.loads((local_reference / "meta/info.json").read_text())["total_frames"]
    provenance = json.loads((out / "meta/clap_data.json").read_text())["source"]
    commit = hub.refs(REPO)["branches"]["main"]
    assert provenance["root"] == f"{URL}@{commit}"  # pinned: a resumed run, and every worker, read this commit


def test_a_whole_ingest_fetches_each_file_at_most_once_and_no_unused_column(remote_run, port):
    _, result, sent = remote_run
    assert result.returncode == ExitCode.OK
    data_bytes = sum(p.stat().st_size for p in (port / "data").rglob("*.parquet"))
    video_bytes = sum(p.stat().st_size for p in (port / "videos").rglob("*.mp4"))
    # Data: the columns the mapping reads, a footer once per worker process.
    columns = DroidSource(port)._impl.data_columns
    used, footers = 0, 0
    for path in (port / "data").rglob("*.parquet"):
        parquet = pq.ParquetFile(path)
        used += sum(n for _, n in column_chunk_ranges(parquet, range(parquet.metadata.num_row_groups), columns))
        footers += parquet.metadata.serialized_size + 8
    assert used < 0.8 * data_bytes  # the port has columns DROID's mapping does not read
    assert used <= sent["data"] <= used + 2 * footers
    # Videos: the camera DROID's mapping leaves out is never fetched, the others' frames once, their index once
    # per worker process (two).
    used = [p for p in (port / "videos").rglob("*.mp4") if "exterior_2_left" not in str(p)]
    payload = sum(p.stat().st_size - mp4_index_bytes(p) for p in used)
    assert payload <= sent["videos"] <= payload + 2 * sum(mp4_index_bytes(p) for p in used)
    assert sent["videos"] < video_bytes


def mp4_index_bytes(path: Path) -> int:
    """The bytes of an MP4 file that are not frame payload: every top-level box but ``mdat``, and its header."""
    data, offset, total = path.read_bytes(), 0, 0
    while offset < len(data):
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        total += 16 if kind == b"mdat" else size
        offset += size
    return total


def episode_video_bytes(path: Path, start: int, count: int) -> int:
    probe = video.probe_video(path)
    display = set(probe.display_pts[start:start + count])
    with av.open(str(path)) as container:
        return sum(p.size for p in container.demux(container.streams.video[0]) if p.size and p.pts in display)


READ_EPISODES = """
import json, sys
from clap_data.sources.base import discard_fetched
from clap_data.sources.droid import DroidSource
source = DroidSource(sys.argv[1])
refs = source.list_episodes()
for index in sys.argv[2:]:
    ref = refs[int(index)]
    episode = source.read_episode(ref)
    print(json.dumps({"details": ref.details, "frames": len(episode.state), "state": episode.state.tolist(),
                      "windows": {c: [w.start, w.count, w.name, w.fetched] for c, w in episode.videos.items()}}))
    discard_fetched(episode.videos.values())
"""


def read_episodes(env: dict[str, str], *indices: int, url: str = URL) -> list[dict]:
    """Read episodes in one process, as a worker does (``read_episode``), without converting them."""
    result = subprocess.run([sys.executable, "-c", READ_EPISODES, url, *map(str, indices)], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.strip().splitlines()[-len(indices):]]


def test_episodes_fetch_their_own_bytes_and_each_file_s_metadata_once(hub, client_env, port):
    indices = (PER_DATA_FILE + 1, PER_DATA_FILE + 2)  # inside one data file and one video file, not at their start
    before = {kind: hub.bytes_served(f"/{kind}/") for kind in ("data", "videos")}
    reads = read_episodes(client_env, *indices)
    sent = {kind: hub.bytes_served(f"/{kind}/") - before[kind] for kind in before}
    data_file = port / reads[0]["details"]["data_file"]
    parquet = pq.ParquetFile(data_file)
    own_data = 0
    for read in reads:
        assert read["details"]["data_file"] == reads[0]["details"]["data_file"]
        groups = overlapping_row_groups(parquet, *read["details"]["rows"])
        assert len(groups) == 1
        row_group = parquet.metadata.row_group(groups[0])
        own_data += sum(row_group.column(i).total_compressed_size for i in range(row_group.num_columns))
    allowance = own_data + parquet.metadata.serialized_size + 8
    assert 0 < sent["data"] <= 1.5 * allowance, (sent, allowance)
    assert sent["data"] < data_file.stat().st_size * 0.75  # the file's other episodes stayed on the Hub
    own_video, index_bytes = 0, {}
    for read in reads:
        for key, (relative, start, count) in read["details"]["videos"].items():
            if "exterior_2_left" not in key:
                own_video += episode_video_bytes(port / relative, start, count)
                index_bytes[relative] = mp4_index_bytes(port / relative)
    assert own_video <= sent["videos"] <= 1.5 * (own_video + sum(index_bytes.values())), (sent, own_video, index_bytes)
    for read in reads:
        assert all(fetched for *_, fetched in read["windows"].values())
        assert {name for _, _, name, _ in read["windows"].values()} <= {r for r, _, _ in read["details"]["videos"].values()}


def test_a_lerobot_v2_1_port_reads_from_the_hub_as_from_its_folder(hub, client_env, tmp_path):
    """v2.1: one data file and one video per episode, fetched (its columns, its packets) and read as locally."""
    port = write_lerobot_dataset(tmp_path / "v21", version="v2.1", flavour="droid", episode_lengths=(18, 21, 16),
                                 video_size=(64, 48))
    hub.commit_files("remote/droid-port-v21", {str(p.relative_to(port)): p.read_bytes() for p in sorted(port.rglob("*"))
                                               if p.is_file()})
    reads = read_episodes(client_env, 0, 2, url="hf://datasets/remote/droid-port-v21")
    source = DroidSource(port)
    refs = source.list_episodes()
    for read, ref in zip(reads, (refs[0], refs[2]), strict=True):
        local = source.read_episode(ref)
        np.testing.assert_array_equal(np.array(read["state"]), local.state)
        for camera, (start, count, name, fetched) in read["windows"].items():
            assert fetched and name == str(local.videos[camera].path.relative_to(port))
            assert (start, count) == (local.videos[camera].start, local.videos[camera].count)


def test_any_fsspec_url_reads_as_the_folder(port, tmp_path, monkeypatch):
    """A ``file://`` URL goes through the same fetching path (fsspec's local filesystem) as ``hf://``."""
    monkeypatch.setenv("CLAP_DATA_CACHE", str(tmp_path / "cache"))
    remote, local = DroidSource(f"file://{port}"), DroidSource(port)
    assert remote.describe()["root"] == f"file://{port}"
    ref = remote.list_episodes()[PER_DATA_FILE + 1]
    assert ref == local.list_episodes()[PER_DATA_FILE + 1]
    fetched, expected = remote.read_episode(ref), local.read_episode(ref)
    np.testing.assert_array_equal(fetched.state, expected.state)
    for camera, window in fetched.videos.items():
        original = expected.videos[camera].path.read_bytes()
        copy = window.path.read_bytes()
        assert window.fetched and len(copy) == len(original) and copy != original  # the other episodes' bytes: holes
        probe = video.probe_video(window.path)  # the index is all there: the same frames as the original's
        assert probe == video.probe_video(expected.videos[camera].path)
        video.check_decodes(window.path, probe, full=True, start=window.start, count=window.count)
        keyframes = video.sample_keyframes(window.path, probe, 8, window.start, window.count)
        original_keyframes = video.sample_keyframes(expected.videos[camera].path, probe, 8, window.start, window.count)
        np.testing.assert_array_equal(keyframes, original_keyframes)
        window.path.unlink()


def test_dropped_connections_are_retried(hub, client_env):
    hub.drop_ranged_reads(3)
    before = len(hub.requests_matching("GET", "/resolve/"))
    [read] = read_episodes(client_env, 2)
    dropped = [r for r in hub.requests_matching("GET", "/resolve/")[before:] if r.status == 0]
    assert len(dropped) == 3
    assert read["frames"] == 24 + 2 % 5


def test_a_file_missing_on_the_hub_quarantines_its_episodes_only(hub, port, client_env, tmp_path):
    files = {str(p.relative_to(port)): p.read_bytes() for p in sorted(port.rglob("*")) if p.is_file()}
    missing = "data/chunk-000/file-001.parquet"
    del files[missing]
    hub.commit_files("remote/droid-port-broken", files)
    result = cli_ingest(client_env, tmp_path / "out", src="hf://datasets/remote/droid-port-broken")
    assert result.returncode == ExitCode.QUARANTINED, result.stdout + result.stderr
    quarantine = pq.read_table(tmp_path / "out" / "quarantine.parquet").to_pylist()
    assert sorted(int(row["source_episode"]) for row in quarantine) == list(range(PER_DATA_FILE, 2 * PER_DATA_FILE))
    assert {row["category"] for row in quarantine} == {"missing_file"}
    assert all(missing in row["reason"] for row in quarantine)
    assert f"{EPISODES - PER_DATA_FILE} written, {PER_DATA_FILE} quarantined" in result.stdout


def test_only_lerobot_layout_sources_read_urls(client_env, tmp_path):
    command = [sys.executable, "-m", "clap_data.cli", "ingest", "astribot", "--src", URL, "--out", str(tmp_path / "out")]
    result = subprocess.run(command, env=client_env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "only droid, lerobot (LeRobot layout) can be read from a URL" in result.stderr + result.stdout


def test_an_unknown_hub_dataset_is_one_sentence(client_env, tmp_path):
    result = cli_ingest(client_env, tmp_path / "out", src="hf://datasets/remote/no-such-dataset")
    assert result.returncode == ExitCode.FAILED
    assert "no dataset remote/no-such-dataset on the Hub" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_kill_9_during_a_hub_ingest_then_rerun_resumes_to_the_same_bytes(remote_run, client_env, tmp_path):
    finished, result, _ = remote_run
    assert result.returncode == ExitCode.OK
    out = tmp_path / "out"
    staged = tmp_path / ".out.clap-staging" / "episodes"
    process = cli_ingest(client_env, out, wait=False)
    reached = wait_for(lambda: staged.is_dir() and len([p for p in staged.iterdir() if not p.name.startswith(".")]) >= 2, 240)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert reached, "the run never staged enough episodes to be interrupted"
    rerun = cli_ingest(client_env, out)
    assert rerun.returncode == ExitCode.OK, rerun.stdout + rerun.stderr
    assert "resumed from an earlier run" in rerun.stdout
    assert tree_digest(out) == tree_digest(finished)
    shutil.rmtree(out)
