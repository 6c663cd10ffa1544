"""`clap-data export`: the manifest against counts taken from the datasets' parquet, every sample against the
dataset's values at its frame (tokens, text, state, the chunk as `tokenizer_input` builds it, images), stride and
the shared held-out split, identical bytes from two exports and after an interruption (in either stage, and
`kill -9`), and the refusals."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from lerobot.datasets import LeRobotDataset
from PIL import Image
from typer.testing import CliRunner

from clap_data.actions import tokenizer_input
from clap_data.cli import export_commands  # noqa: F401  (registers export)
from clap_data.cli.common import app
from clap_data.errors import ClapDataError
from clap_data.factories.astribot import expected_gray_level
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.models.tokens import text_tokens
from clap_data.norm_stats import load_norm_stats
from clap_data.pipelines.export import ExportRequest, export
from clap_data.schemas import shards_v1 as S
from clap_data.splits import Holdout, episode_keys
from clap_data.training.loader import decode_jpeg
from tests.lock_holder import lock_held_elsewhere

pytestmark = pytest.mark.usefixtures("ray_local")
runner = CliRunner()
HOLDOUT = Holdout("episodes", 0.3)  # holds out 3 of the 9 human episodes, none of the 3 robot ones (tail: below)
OPTIONS = {"image_size": (40, 56), "stride": 2, "shard_mb": 0.02, "holdout": HOLDOUT, "row_group_bytes": 8 << 10,
           "mix": {"ego4d": 2.0}}
ASTRIBOT_CAMERA = {"head": "head", "wrist_left": "left", "wrist_right": "right"}


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def shard_rows(out: Path, split: str) -> list[dict]:
    return [row for path in sorted((out / split).glob("shard-*.parquet")) for row in pq.read_table(path).to_pylist()]


def dataset_frames(root: Path) -> dict[tuple[int, int], dict]:
    """(episode, frame) → the dataset's row, read straight from its data files."""
    table = pq.ParquetDataset(root / "data").read()
    rows = table.to_pylist()
    return {(r["episode_index"], r["frame_index"]): r for r in rows}


def dataset_id(root: Path) -> str:
    return next(iter(episode_keys(DatasetMetadata.load(root)).values())).partition("/")[0]


def expected_samples(root: Path, holdout: Holdout, stride: int) -> dict[str, set[str]]:
    """Split → sample ids, counted independently: every stride-th frame of each episode on the side the shared
    split puts the episode, human frames whose pseudo-tokens are padded left out."""
    meta = DatasetMetadata.load(root)
    keys, human = episode_keys(meta), meta.robot_type == "human"
    out: dict[str, set[str]] = {S.TRAIN_SPLIT: set(), S.HELDOUT_SPLIT: set()}
    for (episode, frame), row in dataset_frames(root).items():
        if frame % stride or (human and row["pseudo_tokens_padded"]):
            continue
        split = S.HELDOUT_SPLIT if holdout.episode_held_out(keys[episode]) else S.TRAIN_SPLIT
        out[split].add(f"{keys[episode]}/{frame}")
    return out


@pytest.fixture(scope="module")
def exported(tokenized_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "shards"
    export([tokenized_corpus.robot, tokenized_corpus.human], ExportRequest(out=out, **OPTIONS))
    return out


def test_manifest_counts_match_the_datasets(exported, tokenized_corpus):
    manifest = json.loads((exported / S.SHARD_MANIFEST).read_text())
    robot_id, human_id = dataset_id(tokenized_corpus.robot), dataset_id(tokenized_corpus.human)
    robot = expected_samples(tokenized_corpus.robot, HOLDOUT, 2)
    human = expected_samples(tokenized_corpus.human, HOLDOUT, 2)
    robot_padded = {k for k, r in dataset_frames(tokenized_corpus.robot).items() if r["action_tokens_padded"]}
    for split in (S.TRAIN_SPLIT, S.HELDOUT_SPLIT):
        entry = manifest["splits"][split]
        assert len(human[split]) > 0 and len(robot[split]) > (0 if split == S.TRAIN_SPLIT else -1)
        counts = {"S1-stationary": (robot_id, len(robot[split])), "human": (human_id, len(human[split]))}
        assert entry["datasets"] == {name: n for name, n in counts.values() if n}
        assert entry["embodiments"] == {embodiment: n for embodiment, (_, n) in counts.items() if n}
        assert entry["samples"] == len(robot[split]) + len(human[split])
        padded = sum((int(e), int(f)) in robot_padded for e, f in (i.rsplit("/", 2)[1:] for i in robot[split]))
        assert entry["padded"] == padded and (padded > 0) == (split == S.TRAIN_SPLIT)
        rows = shard_rows(exported, split)
        assert {r[S.SAMPLE_ID] for r in rows} == robot[split] | human[split] and len(rows) == entry["samples"]
        assert len(entry["shards"]) > 1  # --shard-mb 0.02: several shards
        for shard in entry["shards"]:
            path = exported / shard["file"]
            assert pq.ParquetFile(path).metadata.num_rows == shard["rows"]
            assert path.stat().st_size == shard["bytes"]
            assert hashlib.sha256(path.read_bytes()).hexdigest() == shard["sha256"]
        assert pq.ParquetFile(exported / entry["shards"][0]["file"]).metadata.num_row_groups > 1  # 8 KiB row groups
    assert manifest["samples"] == sum(manifest["splits"][s]["samples"] for s in manifest["splits"])
    robot_meta = DatasetMetadata.load(tokenized_corpus.robot)
    identity = robot_meta.token_identity("action_tokens")
    assert manifest["act_vae"]["checkpoint_sha256"] == identity["checkpoint_sha256"]
    assert manifest["act_vae"]["checkpoint"] == str(tokenized_corpus.act_vae.absolute())
    assert manifest["act_vae"]["num_queries"] == 4 and manifest["num_tokens"] == 8
    stats = load_norm_stats(tokenized_corpus.robot, "openclap")
    assert manifest["statistics"] == {"S1-stationary": {
        "id": identity["stats_id"], "action": {"q01": stats.action_q01.tolist(), "q99": stats.action_q99.tolist()},
        "state": {"q01": stats.state_q01.tolist(), "q99": stats.state_q99.tolist()}}}
    assert manifest["token_sources"] == {robot_id: "action_tokens", human_id: "pseudo_tokens"}
    assert manifest["mix"]["weights"] == {robot_id: 1.0, human_id: 2.0}
    assert (manifest["seed"], manifest["stride"], manifest["split"]) == (0, 2, HOLDOUT.to_dict())
    assert manifest["image"]["height"] == 40 and manifest["image"]["width"] == 56
    sources = {d["path"]: d for d in manifest["datasets"]}
    assert sources[str(tokenized_corpus.robot)]["snapshot"]["inode"] == robot_meta.snapshot()[1]
    human_identity = DatasetMetadata.load(tokenized_corpus.human).token_identity("pseudo_tokens")
    assert sources[str(tokenized_corpus.human)]["tokenizer"] == human_identity


def test_samples_hold_the_datasets_values_at_their_frame(exported, tokenized_corpus):
    stats = load_norm_stats(tokenized_corpus.robot, "openclap")
    frames = {root: dataset_frames(root) for root in (tokenized_corpus.robot, tokenized_corpus.human)}
    tasks = {root: {r["task_index"]: r["task"] for r in pq.read_table(root / "meta/tasks.parquet").to_pylist()}
             for root in frames}
    rows = shard_rows(exported, S.TRAIN_SPLIT) + shard_rows(exported, S.HELDOUT_SPLIT)
    checked = {"S1-stationary": 0, "human": 0}
    for row in rows:
        human = row[S.EMBODIMENT] == "human"
        root = tokenized_corpus.human if human else tokenized_corpus.robot
        episode, t = row[S.EPISODE_INDEX], row[S.FRAME_INDEX]
        source = frames[root][(episode, t)]
        column = "pseudo_tokens" if human else "action_tokens"
        assert row[S.TOKENS] == source[column] and row[S.TOKEN_SOURCE] == column
        assert row[S.TOKENS_TEXT] == text_tokens(source[column], 4)
        assert row[S.PADDED] == (False if human else source["action_tokens_padded"])
        assert row[S.STATE] == pytest.approx(source["observation.state"])
        assert row[S.ARM_MASK] == [v != 0 for v in source["arm_mask"]]
        assert row[S.INSTRUCTION] == tasks[root][source["task_index"]]
        assert row[S.SUBTASK] == (source["subtask"] or row[S.INSTRUCTION]) and row[S.SUBTASK]
        episode_rows = [frames[root][(episode, f)] for f in range(sum(1 for k in frames[root] if k[0] == episode))]
        state, action, mask = (np.array([r[c] for r in episode_rows])
                               for c in ("observation.state", "action", "arm_mask"))
        expected = tokenizer_input(state, action, mask, t, None if human else stats).action
        assert np.allclose(np.array(row[S.ACTIONS]).reshape(32, 14), expected, atol=1e-5)
        assert row[S.DATASET] == row[S.SAMPLE_ID].split("/")[0] and row[S.SAMPLE_ID].endswith(f"/{t}")
        checked[row[S.EMBODIMENT]] += 1
        if not human:  # flat gray frames whose level encodes (episode, frame, camera): proves frame alignment
            for camera, source_camera in ASTRIBOT_CAMERA.items():
                pixels = decode_jpeg(row[S.image_column(camera)])
                assert pixels.shape == (40, 56, 3)
                assert abs(pixels.astype(float).mean() - expected_gray_level(episode, t, source_camera)) < 6
        else:
            assert row[S.image_column("wrist_left")] is None and row[S.image_column("wrist_right")] is None
    assert checked["S1-stationary"] > 30 and checked["human"] > 10
    assert any(r[S.PADDED] for r in rows) and any(np.abs(r[S.ACTIONS]).sum() > 0 for r in rows)


def test_human_images_are_the_frames_lerobot_decodes_resized(exported, tokenized_corpus):
    loaded = LeRobotDataset("local/ego4d", root=tokenized_corpus.human, video_backend="pyav")
    lengths = DatasetMetadata.load(tokenized_corpus.human).episode_lengths()
    starts = np.concatenate([[0], np.cumsum([lengths[e] for e in sorted(lengths)])])
    rows = [r for r in shard_rows(exported, S.TRAIN_SPLIT) if r[S.EMBODIMENT] == "human"][:4]
    for row in rows:
        item = loaded[int(starts[row[S.EPISODE_INDEX]] + row[S.FRAME_INDEX])]
        frame = (item["observation.images.head"].permute(1, 2, 0) * 255).round().byte().numpy()
        resized = np.asarray(Image.fromarray(frame).resize((56, 40), Image.Resampling.BILINEAR), dtype=float)
        assert np.abs(decode_jpeg(row[S.image_column("head")]) - resized).mean() < 3


def test_stride_and_the_shared_split(exported, tokenized_corpus):
    keys = {}
    for split in (S.TRAIN_SPLIT, S.HELDOUT_SPLIT):
        rows = shard_rows(exported, split)
        assert all(r[S.FRAME_INDEX] % 2 == 0 for r in rows)
        keys[split] = {r[S.SAMPLE_ID].rsplit("/", 1)[0] for r in rows}
        assert all(HOLDOUT.episode_held_out(key) == (split == S.HELDOUT_SPLIT) for key in keys[split])
    assert keys[S.TRAIN_SPLIT].isdisjoint(keys[S.HELDOUT_SPLIT])


def test_tail_split_keeps_training_chunks_out_of_the_held_out_tail(tokenized_corpus, tmp_path):
    holdout = Holdout("tail", 0.25)
    out = tmp_path / "tail"
    export([tokenized_corpus.robot], ExportRequest(out=out, cameras=("head",), image_size=(16, 16), holdout=holdout))
    meta = DatasetMetadata.load(tokenized_corpus.robot)
    keys, lengths = episode_keys(meta), meta.episode_lengths()
    for split in (S.TRAIN_SPLIT, S.HELDOUT_SPLIT):
        got = sorted((r[S.EPISODE_INDEX], r[S.FRAME_INDEX]) for r in shard_rows(out, split))
        held = split == S.HELDOUT_SPLIT
        expected = sorted((e, int(t)) for e in lengths for t in holdout.starts(keys[e], lengths[e], held))
        assert got == expected and got
    assert pq.read_schema(next((out / S.TRAIN_SPLIT).glob("*.parquet"))).names.count("image.head") == 1


def test_two_exports_give_the_same_bytes_and_another_seed_another_order(exported, tokenized_corpus, tmp_path):
    again = tmp_path / "again"
    export([tokenized_corpus.human, tokenized_corpus.robot], ExportRequest(out=again, **OPTIONS))  # --data order free
    assert tree_digest(again) == tree_digest(exported)
    assert not list(tmp_path.glob(".again.clap-staging"))
    reseeded = tmp_path / "reseeded"
    export([tokenized_corpus.robot, tokenized_corpus.human], ExportRequest(out=reseeded, **{**OPTIONS, "seed": 1}))
    first, second = ([r[S.SAMPLE_ID] for r in shard_rows(path, S.TRAIN_SPLIT)] for path in (exported, reseeded))
    assert sorted(first) == sorted(second) and first != second
    with pytest.raises(ClapDataError, match="already holds a shard folder; add --overwrite"):
        export([tokenized_corpus.robot], ExportRequest(out=again, **{**OPTIONS, "mix": {}}))
    export([tokenized_corpus.robot], ExportRequest(out=again, overwrite=True, **{**OPTIONS, "mix": {}}))
    assert json.loads((again / S.SHARD_MANIFEST).read_text())["splits"][S.TRAIN_SPLIT]["datasets"].keys() == {
        dataset_id(tokenized_corpus.robot)}


class _StopWhileWritingShards:
    """A reporter that interrupts the run at the first shard written (as a crash in the writing stage would)."""

    def __init__(self) -> None:
        self.writing = False

    def phase(self, text: str) -> None:
        self.writing = text.startswith("Writing")

    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, ok: bool, frames: int) -> None:
        if self.writing:
            raise KeyboardInterrupt

    def stop(self) -> None:
        pass


def test_an_interrupted_shard_stage_resumes_to_the_same_bytes(exported, tokenized_corpus, tmp_path):
    out = tmp_path / "shards"
    roots = [tokenized_corpus.robot, tokenized_corpus.human]
    with pytest.raises(KeyboardInterrupt):
        export(roots, ExportRequest(out=out, **OPTIONS), _StopWhileWritingShards())
    assert not out.exists() and (tmp_path / ".shards.clap-staging" / "episodes").is_dir()
    report = export(roots, ExportRequest(out=out, **OPTIONS))
    assert report.resumed_episodes == report.episodes == 12 and report.resumed_shards >= 1
    assert tree_digest(out) == tree_digest(exported)
    with pytest.raises(KeyboardInterrupt):
        export(roots, ExportRequest(out=tmp_path / "other", **OPTIONS), _StopWhileWritingShards())
    with pytest.raises(ClapDataError, match="interrupted run with other options; rerun it with the same options"):
        export(roots, ExportRequest(out=tmp_path / "other", **{**OPTIONS, "seed": 5}))


def test_refusals_name_the_command_that_fixes_them(tokenized_corpus, unified_astribot, tmp_path):
    result = runner.invoke(app, ["export", "--data", str(unified_astribot), "--out", str(tmp_path / "a")])
    assert result.exit_code == 1
    hint = f"add them with `clap-data tokenize act-vae {unified_astribot}"
    assert f"without action_tokens, which the export needs: {hint}" in " ".join(result.output.split())
    human = tmp_path / "human"
    shutil.copytree(tokenized_corpus.human, human)
    info = json.loads((human / "meta/info.json").read_text())
    info["features"].pop("pseudo_tokens")
    (human / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(ClapDataError, match=r"human video without pseudo_tokens.*clap-data pseudolabel vd-vae"):
        export([human], ExportRequest(out=tmp_path / "b"))
    other = tmp_path / "other_act_vae"
    shutil.copytree(tokenized_corpus.human, other)
    info = json.loads((other / "meta/info.json").read_text())
    info["features"]["pseudo_tokens"]["info"]["act_vae_sha256"] = "f" * 64
    (other / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(ClapDataError, match="tokens come from different Act-VAEs"):
        export([tokenized_corpus.robot, other], ExportRequest(out=tmp_path / "c"))
    twin = tmp_path / "twin"
    shutil.copytree(tokenized_corpus.human, twin)
    with pytest.raises(ClapDataError, match="hold episodes of the same source dataset .* would share ids"):
        export([tokenized_corpus.human, twin], ExportRequest(out=tmp_path / "d"))
    with pytest.raises(ClapDataError, match="'nope' is none of the --data datasets"):
        export([tokenized_corpus.robot], ExportRequest(out=tmp_path / "e", mix={"nope": 2.0}))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith("clap-staging") or p.name in list("abcde")]


def test_the_sources_are_read_under_their_shared_lock(tokenized_corpus, tmp_path):
    """A writer holding a source refuses the export; a reader (verify, another export) does not."""
    request = ExportRequest(out=tmp_path / "out", cameras=("head",), image_size=(16, 16))
    with lock_held_elsewhere(tokenized_corpus.human, exclusive=True) as pid:
        with pytest.raises(ClapDataError, match=f"is being written by pid {pid}: tokenize act-vae"):
            export([tokenized_corpus.human], request)
    assert not (tmp_path / "out").exists()
    with lock_held_elsewhere(tokenized_corpus.human, exclusive=False, purpose="verify"):
        assert export([tokenized_corpus.human], request).samples[S.TRAIN_SPLIT] > 0


def test_an_undecodable_video_stops_the_export_naming_the_file(tokenized_corpus, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tokenized_corpus.robot, broken)
    video = broken / "videos/observation.images.head/chunk-000/file-000.mp4"
    data = bytearray(video.read_bytes())
    moov = data.rfind(b"moov")
    data[moov - 4:] = bytes(len(data) - moov + 4)  # same size (the manifest check passes), index gone
    video.write_bytes(bytes(data))
    result = runner.invoke(app, ["export", "--data", str(broken), "--out", str(tmp_path / "out"),
                                 "--image-size", "16x16"])
    assert result.exit_code == 1
    assert f"{video}: episode" in "".join(result.output.split("\n")) and "cannot be decoded" in result.output
    assert not (tmp_path / "out").exists()


def _export_cli(roots: list[Path], out: Path) -> subprocess.Popen:
    code = "from clap_data.cli import export_commands, main; main()"  # registers export even before cli/__init__ does
    command = [sys.executable, "-c", code, "export", *(f"--data={r}" for r in roots), "--out", str(out),
               "--image-size", "240x320", "--shard-mb", "0.2", "--holdout-fraction", "0.3", "--workers", "2"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.slow
def test_kill_9_while_staging_then_rerun_gives_identical_bytes(tokenized_corpus, tmp_path):
    roots = [tokenized_corpus.robot, tokenized_corpus.human]
    reference = tmp_path / "reference"
    request = ExportRequest(out=reference, image_size=(240, 320), shard_mb=0.2, holdout=Holdout("episodes", 0.3))
    export(roots, request)
    out = tmp_path / "out"
    staged = tmp_path / ".out.clap-staging" / "episodes"
    process = _export_cli(roots, out)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (staged.is_dir() and any(staged.glob("*.arrow"))):
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert any(staged.glob("*.arrow")), "the run never staged an episode to be interrupted"
    assert not out.exists()
    rerun = _export_cli(roots, out)
    output = rerun.communicate(timeout=300)[0].decode()
    assert rerun.returncode == 0, output
    assert "staged by an earlier run" in output
    assert tree_digest(out) == tree_digest(reference)
    assert not (tmp_path / ".out.clap-staging").exists()
