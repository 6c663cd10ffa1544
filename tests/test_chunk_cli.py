"""`clap-data chunk` and `clap-data normstats` on an ingested real episode, against an independent
implementation of METHOD.md §2 computed straight from the source files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clap_data.cli import app
from clap_data.pipelines.ingest import IngestRequest, ingest
from clap_data.reference import openclap_stats_table
from clap_data.sources.astribot import AstribotSource
from tests.reference import reference_canonical, reference_chunk

runner = CliRunner()
POSE = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]


@pytest.fixture(scope="module")
def dataset(real_astribot, tmp_path_factory, ray_local) -> Path:
    out = tmp_path_factory.mktemp("chunk") / "astribot"
    ingest(AstribotSource(real_astribot), IngestRequest(out=out))
    return out


@pytest.mark.parametrize("frame", [0, 100, 230])
def test_chunk_json_matches_an_independent_implementation(dataset, real_astribot, frame):
    result = runner.invoke(app, ["chunk", str(dataset), "--episode", "0", "--frame", str(frame), "--stats", "openclap", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    state, action = reference_canonical(real_astribot / "data/chunk-000/episode_000000.parquet")
    # the dataset stores float32; the reference starts from the same rounded values
    state, action = state.astype(np.float32).astype(np.float64), action.astype(np.float32).astype(np.float64)
    chunk, norm_state, padded = reference_chunk(state, action, frame, openclap_stats_table()["S1-stationary"])
    np.testing.assert_allclose(np.array(printed["action"]), chunk, atol=1e-5)
    np.testing.assert_allclose(np.array(printed["state"]), norm_state, atol=1e-5)
    assert printed["arm_mask"] == [1.0, 1.0]
    assert printed["padded"] is padded


def test_normstats_are_exact_quantiles_and_chunk_uses_them(dataset):
    result = runner.invoke(app, ["normstats", str(dataset)])
    assert result.exit_code == 0, result.output
    stored = json.loads((dataset / "meta/clap_norm_stats.json").read_text())
    from clap_data.actions import episode_chunks
    from clap_data.lerobot_v3.reader import read_episode_arrays

    arrays = read_episode_arrays(dataset, 0)
    chunks, _ = episode_chunks(arrays.state, arrays.action)
    entry = stored["statistics"]["S1-stationary"]
    np.testing.assert_allclose(entry["action"]["q01"], np.quantile(chunks.reshape(-1, 14), 0.01, axis=0), atol=1e-9)
    np.testing.assert_allclose(entry["state"]["q99"], np.quantile(arrays.state, 0.99, axis=0), atol=1e-9)
    result = runner.invoke(app, ["chunk", str(dataset), "--episode", "0", "--frame", "5", "--stats", "dataset", "--json"])
    printed = np.array(json.loads(result.output)["action"])
    q01, q99 = np.array(entry["action"]["q01"]), np.array(entry["action"]["q99"])
    expected = (chunks[5][:, POSE] - q01[POSE]) / (q99[POSE] - q01[POSE]) * 2 - 1
    np.testing.assert_allclose(printed[:, POSE], expected, atol=1e-9)


def test_chunk_errors_are_sentences(dataset, tmp_path):
    result = runner.invoke(app, ["chunk", str(dataset), "--episode", "7", "--frame", "0"])
    assert result.exit_code == 1 and "has no episode 7" in result.output
    result = runner.invoke(app, ["chunk", str(dataset), "--episode", "0", "--frame", "5000"])
    assert result.exit_code == 1 and "frame 5000 is outside the episode" in result.output
    result = runner.invoke(app, ["chunk", str(dataset), "--episode", "0", "--frame", "0", "--stats", "mine"])
    assert result.exit_code == 2
