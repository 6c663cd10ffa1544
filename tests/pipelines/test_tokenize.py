"""`clap-data tokenize act-vae`: the codes equal the model on `clap-data chunk`'s view of every
frame, stock lerobot returns them, re-running changes nothing, another checkpoint replaces them,
human data is refused, and a crash while committing is finished by the rerun."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from lerobot.datasets import LeRobotDataset
from typer.testing import CliRunner

from clap_data.act_vae.checkpoint import load_act_vae
from clap_data.act_vae.training import TrainOptions, train_act_vae
from clap_data.actions import tokenizer_input
from clap_data.cli import app
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3 import column_update
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.lerobot_v3.reader import iter_episode_arrays
from clap_data.norm_stats import load_norm_stats
from clap_data.pipelines.tokenize import TokenizeRequest, tokenize_dataset
from tests.conftest import HOLDOUT, TINY

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("ray_local")


def data_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def expected_tokens(root: Path, ckpt: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every frame through the tokenizer's documented view, one chunk at a time."""
    model, _ = load_act_vae(ckpt)
    stats = load_norm_stats(root, "openclap")
    tokens, padded = [], []
    for episode in iter_episode_arrays(root):
        for t in range(len(episode.state)):
            seen = tokenizer_input(episode.state, episode.action, episode.arm_mask, t, stats)
            tokens.append(model.tokenize_dual(torch.tensor(seen.action[None], dtype=torch.float32))[0].numpy())
            padded.append(seen.padded)
    return np.array(tokens), np.array(padded)


@pytest.fixture
def dataset(unified_astribot, tmp_path) -> Path:
    copy = tmp_path / "astribot"
    shutil.copytree(unified_astribot, copy)
    return copy


def test_tokens_match_the_model_and_lerobot_returns_them(dataset, tiny_ckpt):
    result = runner.invoke(app, ["tokenize", "act-vae", str(dataset), "--ckpt", str(tiny_ckpt), "--batch-size", "50"])
    assert result.exit_code == 0, result.output
    assert "added action_tokens: 137 frames" in result.output
    tokens, padded = expected_tokens(dataset, tiny_ckpt)
    assert tokens.shape == (137, 8) and padded.sum() == 3 * 31
    assert len(np.unique(tokens)) > 6  # a meaningful comparison: the codes vary
    loaded = LeRobotDataset("local/tokenized", root=dataset, video_backend="pyav")
    for index in (0, 39, 40, 136, 100):
        item = loaded.hf_dataset[index]
        assert item["action_tokens"].tolist() == tokens[index].tolist()
        assert bool(item["action_tokens_padded"]) == bool(padded[index])
    frame = loaded[39]  # the decoding path of lerobot too (videos and all)
    assert frame["action_tokens"].tolist() == tokens[39].tolist() and bool(frame["action_tokens_padded"])
    info = json.loads((dataset / "meta/info.json").read_text())
    feature = info["features"]["action_tokens"]
    assert feature["dtype"] == "int16" and feature["shape"] == [8]
    assert feature["names"][:2] == ["left_0", "left_1"] and feature["names"][4] == "right_0"
    identity = feature["info"]
    model, sha = load_act_vae(tiny_ckpt)
    assert identity["checkpoint_sha256"] == sha and identity["num_queries"] == 4 and identity["codebook_size"] == 16
    assert identity["chunk_size"] == 32 and identity["stats_id"] == "openclap:S1-stationary"
    assert identity["arm_order"] == ["left", "right"] and identity["token_order"] == "left_then_right"
    assert identity["text_order"] == "right_then_left"
    assert info["features"]["action_tokens_padded"]["dtype"] == "bool"
    meta = json.loads((dataset / "meta/clap_data.json").read_text())
    assert meta["tokenizers"]["action_tokens"]["checkpoint"] == str(tiny_ckpt.absolute())
    summary = runner.invoke(app, ["info", str(dataset), "--json"])
    assert json.loads(summary.output)["token_columns"] == ["action_tokens"]
    assert not list(dataset.parent.glob(".astribot.clap-columns"))  # staging removed


def test_same_checkpoint_changes_nothing_another_replaces(dataset, tiny_ckpt, tmp_path):
    request = TokenizeRequest(ckpt=tiny_ckpt)
    first = tokenize_dataset(dataset, request)
    assert not first.unchanged and first.replaced is None
    before = data_bytes(dataset)
    mtimes = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    again = tokenize_dataset(dataset, request)
    assert again.unchanged
    assert data_bytes(dataset) == before and {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == mtimes
    other = tmp_path / "other"
    train_act_vae([dataset], other, config=TINY, options=TrainOptions(steps=2, batch_size=16, holdout=HOLDOUT, device="cpu", seed=7))
    replaced = tokenize_dataset(dataset, TokenizeRequest(ckpt=other))
    assert replaced.replaced["checkpoint_sha256"] == first.identity["checkpoint_sha256"]
    tokens, _ = expected_tokens(dataset, other)
    loaded = LeRobotDataset("local/replaced", root=dataset, video_backend="pyav")
    assert [loaded.hf_dataset[i]["action_tokens"].tolist() for i in range(137)] == tokens.tolist()
    assert list(loaded.hf_dataset.column_names).count("action_tokens") == 1
    meta = json.loads((dataset / "meta/clap_data.json").read_text())
    assert meta["tokenizers"]["action_tokens"]["checkpoint_sha256"] == replaced.identity["checkpoint_sha256"]

def test_every_other_column_is_kept_as_it_was(dataset, unified_astribot, tiny_ckpt):
    tokenize_dataset(dataset, TokenizeRequest(ckpt=tiny_ckpt))
    relative = "data/chunk-000/file-000.parquet"
    before, after = pq.ParquetFile(unified_astribot / relative), pq.ParquetFile(dataset / relative)
    assert after.schema_arrow.names == before.schema_arrow.names + ["action_tokens", "action_tokens_padded"]
    assert after.num_row_groups == before.num_row_groups
    assert after.read(columns=before.schema_arrow.names).equals(before.read())


def test_human_datasets_and_non_checkpoints_are_refused(dataset, tiny_ckpt):
    result = runner.invoke(app, ["tokenize", "act-vae", str(dataset), "--ckpt", str(dataset)])
    assert result.exit_code == 1 and "is not an Act-VAE checkpoint" in result.output
    info = json.loads((dataset / "meta/info.json").read_text())
    info["robot_type"] = "human"
    (dataset / "meta/info.json").write_text(json.dumps(info))
    result = runner.invoke(app, ["tokenize", "act-vae", str(dataset), "--ckpt", str(tiny_ckpt)])
    assert result.exit_code == 1 and "is human video: it has no actions to tokenize" in result.output


def test_a_crash_while_committing_is_finished_by_the_rerun(dataset, tiny_ckpt, monkeypatch):
    real_replace = column_update.os.replace

    def crash_on_metadata(src, dst):  # the data files are swapped, then the process dies
        if str(dst).endswith("info.json") and ".clap-columns" in str(src) and ".clap-columns" not in str(dst):
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(column_update.os, "replace", crash_on_metadata)
    with pytest.raises(KeyboardInterrupt):
        tokenize_dataset(dataset, TokenizeRequest(ckpt=tiny_ckpt))
    monkeypatch.setattr(column_update.os, "replace", real_replace)
    assert (dataset.parent / ".astribot.clap-columns" / "commit.json").is_file()
    report = tokenize_dataset(dataset, TokenizeRequest(ckpt=tiny_ckpt))
    assert report.unchanged  # the commit was rolled forward first: nothing left to do
    tokens, _ = expected_tokens(dataset, tiny_ckpt)
    loaded = LeRobotDataset("local/crashed", root=dataset, video_backend="pyav")
    assert [loaded.hf_dataset[i]["action_tokens"].tolist() for i in range(137)] == tokens.tolist()


def test_interrupted_staging_resumes_finished_files(dataset, tiny_ckpt):
    update = column_update.ColumnUpdate(dataset)
    model, sha = load_act_vae(tiny_ckpt)
    from clap_data.pipelines.tokenize import tokenizer_identity

    identity = tokenizer_identity(model, sha, "openclap:S1-stationary")
    files = DatasetMetadata.load(dataset).data_files()
    update.prepare({"identity": identity, "files": files}, files)
    with pytest.raises(ClapDataError, match="were not staged"):
        update.commit({}, {}, files, None)
    report = tokenize_dataset(dataset, TokenizeRequest(ckpt=tiny_ckpt))
    assert report.files == 1 and report.resumed_files == 0 and report.frames == 137
