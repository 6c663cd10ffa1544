"""LeRobot's own dataset tools on our output, then clap-data on theirs: recognised with a sentence naming
``clap-data adopt``, adopted, and every command works again (info, verify, stats, tokenize)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from clap_data.cli import app
from clap_data.corpus import open_corpus
from clap_data.errors import ClapDataError
from clap_data.lerobot_v3.adopt import adopt_dataset
from clap_data.lerobot_v3.metadata import DatasetMetadata
from clap_data.lerobot_v3.reader import dataset_summary
from clap_data.lerobot_v3.verify import verify_dataset
from clap_data.schemas import ACTION_TOKENS, PSEUDO_TOKENS
from clap_data.stats import token_stats

runner = CliRunner()


def lerobot_dataset(root: Path, name: str):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    return LeRobotDataset(f"local/{name}", root=root, video_backend="pyav")


@pytest.fixture(scope="module")
def ours(robot_copy) -> Path:
    return robot_copy


@pytest.fixture(scope="module")
def deleted(ours, tmp_path_factory) -> Path:
    """lerobot's delete-episodes (it re-encodes the video files that mixed kept and deleted episodes)."""
    from lerobot.datasets.dataset_tools import delete_episodes

    out = tmp_path_factory.mktemp("lerobot_delete") / "deleted"
    delete_episodes(lerobot_dataset(ours, "ours"), [1], output_dir=out, repo_id="local/deleted")
    return out


def test_a_dataset_lerobot_rewrote_is_recognised_with_a_sentence(deleted):
    with pytest.raises(ClapDataError, match=r"rewritten by LeRobot's tools.*run `clap-data adopt"):
        DatasetMetadata.load(deleted)
    result = runner.invoke(app, ["info", str(deleted)], catch_exceptions=False)
    assert result.exit_code != 0 and "clap-data adopt" in result.output


def test_adopt_after_delete_episodes_restores_every_command(deleted, ours, tiny_ckpt, ray_local):
    result = runner.invoke(app, ["adopt", str(deleted)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "reconstructed" in result.output and "pseudo_tokens" in result.output
    summary = dataset_summary(deleted)
    assert summary["episodes"] == 2 and summary["token_columns"] == [ACTION_TOKENS, PSEUDO_TOKENS]
    assert any("pseudo_tokens is stale" in notice for notice in summary["notices"])
    assert verify_dataset(deleted, full=True).ok
    episodes = pq.ParquetDataset(deleted / "meta/episodes").read().to_pylist()
    assert [e["source/episode_id"] for e in episodes] == ["0", "1"] and all(e["source/reconstructed"] for e in episodes)
    meta = DatasetMetadata.load(deleted)
    assert meta.token_identity(ACTION_TOKENS) == DatasetMetadata.load(ours).token_identity(ACTION_TOKENS)
    # the kept episodes' tokens are the ones clap-data wrote (episode 1 of 3 deleted)
    theirs = pq.ParquetDataset(deleted / "data").read().sort_by("index")
    mine = pq.ParquetDataset(ours / "data").read().sort_by("index")
    kept = np.isin(np.asarray(mine.column("episode_index")), [0, 2])
    assert np.array_equal(np.asarray(theirs.column(ACTION_TOKENS).to_pylist()),
                          np.asarray(mine.column(ACTION_TOKENS).to_pylist())[kept])
    with open_corpus([deleted], purpose="test") as corpus:
        stats = token_stats(corpus, top=3)
    column = next(c for c in stats.columns if c.column == ACTION_TOKENS)
    assert column.overall.frames == theirs.num_rows
    from clap_data.pipelines.tokenize import TokenizeRequest, tokenize_dataset

    tokenize_dataset(deleted, TokenizeRequest(ckpt=tiny_ckpt, device="cpu", workers=1))
    assert np.array_equal(np.asarray(pq.ParquetDataset(deleted / "data").read().sort_by("index")
                                     .column(ACTION_TOKENS).to_pylist()), np.asarray(theirs.column(ACTION_TOKENS)
                                                                                     .to_pylist()))
    assert verify_dataset(deleted).ok


def test_pseudo_labelling_an_adopted_dataset_again_clears_its_stale_flag(deleted, tokenized_corpus, ray_local):
    from clap_data.pipelines.pseudolabel import PseudolabelRequest, pseudolabel_dataset

    if not (deleted / "meta/clap_data.json").is_file():
        adopt_dataset(deleted)
    assert PSEUDO_TOKENS in DatasetMetadata.load(deleted).clap["stale_columns"]
    pseudolabel_dataset(deleted, PseudolabelRequest(ckpt=tokenized_corpus.vd_vae, backbone=tokenized_corpus.backbone,
                                                    camera="head", device="cpu", workers=1))
    meta = DatasetMetadata.load(deleted)
    assert meta.clap["stale_columns"] == {} and not any("is stale" in n for n in dataset_summary(deleted)["notices"])
    assert any(n.startswith("adopted by clap-data") for n in meta.clap["notices"]) and verify_dataset(deleted).ok


def test_adopt_after_split_merge_and_remove_feature(ours, tmp_path):
    from lerobot.datasets.dataset_tools import merge_datasets, remove_feature, split_dataset

    parts = split_dataset(lerobot_dataset(ours, "ours"), {"train": [0, 1], "val": [2]}, output_dir=tmp_path / "split")
    for name, part in parts.items():
        report = adopt_dataset(Path(part.root))
        assert report.episodes == {"train": 2, "val": 1}[name] and verify_dataset(Path(part.root)).ok
    joined = tmp_path / "joined"
    merge_datasets([lerobot_dataset(ours, "a"), lerobot_dataset(ours, "b")], output_repo_id="local/joined",
                   output_dir=joined)
    assert adopt_dataset(joined).episodes == 6 and dataset_summary(joined)["episodes"] == 6
    without = tmp_path / "without_pseudo"
    remove_feature(lerobot_dataset(ours, "c"), ["pseudo_tokens", "pseudo_tokens_padded"], output_dir=without,
                   repo_id="local/without")
    report = adopt_dataset(without)
    assert report.token_columns == [ACTION_TOKENS] and report.stale_columns == {}
    assert DatasetMetadata.load(without).token_columns == [ACTION_TOKENS]


def test_adopt_refuses_what_it_cannot_adopt(ours, unified_astribot, tmp_path):
    with pytest.raises(ClapDataError, match="nothing to adopt"):
        adopt_dataset(unified_astribot)
    foreign = tmp_path / "foreign"
    shutil.copytree(ours, foreign)
    (foreign / "meta/clap_data.json").unlink()
    info = (foreign / "meta/info.json").read_text().replace('"arm_mask"', '"gripper_mask"')
    (foreign / "meta/info.json").write_text(info)
    with pytest.raises(ClapDataError, match="does not have clap-data's unified features"):
        adopt_dataset(foreign)


def test_a_stale_clap_meta_copied_along_is_adopted_and_re_encoded_videos_caught(ours, tmp_path):
    """lerobot's tools re-encoded the videos but our meta/clap_data.json and manifest came along (copied by hand):
    the manifest no longer matches, adopt keeps the old source facts and sees that the videos changed."""
    from lerobot.datasets.dataset_tools import delete_episodes

    out = tmp_path / "deleted"
    delete_episodes(lerobot_dataset(ours, "ours"), [0], output_dir=out, repo_id="local/deleted0")
    for name in ("meta/clap_data.json", "meta/clap_manifest.json"):
        shutil.copyfile(ours / name, out / name)
    assert any("changed after clap-data wrote it" in w for w in dataset_summary(out)["warnings"])
    report = adopt_dataset(out)
    assert PSEUDO_TOKENS in report.stale_columns and "is not the video it was computed on" in report.stale_columns[PSEUDO_TOKENS]
    meta = DatasetMetadata.load(out)
    assert meta.clap["source"]["before"] == DatasetMetadata.load(ours).clap["source"] and verify_dataset(out).ok
    assert dataset_summary(out)["warnings"] == []
