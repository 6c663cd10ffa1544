"""``clap-data ingest --fps``, end to end: an Astribot source at 30 fps written at 15 fps keeps the
frame nearest each output time in every stream and camera, and reads back at the new rate."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from clap_data.cli import app
from clap_data.factories.astribot import expected_gray_level
from clap_data.sources.astribot import AstribotSource
from clap_data.video import iter_rgb_frames

pytestmark = pytest.mark.usefixtures("ray_local")

LENGTHS = (40, 52, 45)  # the astribot_src fixture's episodes


def test_ingest_resamples_every_episode_onto_the_asked_rate(astribot_src, tmp_path):
    out = tmp_path / "astribot_15fps"
    args = ["ingest", "astribot", "--src", str(astribot_src), "--out", str(out), "--fps", "15", "--workers", "2"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "meta/info.json").read_text())["fps"] == 15

    picks = [list(range(0, length, 2)) for length in LENGTHS]  # k / 15 s is exactly source frame 2k
    (data,) = out.glob("data/*/*.parquet")
    rows = pq.read_table(data).to_pylist()
    assert [sum(1 for r in rows if r["episode_index"] == e) for e in range(3)] == [20, 26, 23]
    source = AstribotSource(astribot_src)
    for episode, ref in enumerate(source.list_episodes()):
        written = [r for r in rows if r["episode_index"] == episode]
        assert [r["frame_index"] for r in written] == list(range(len(picks[episode])))
        np.testing.assert_allclose([r["timestamp"] for r in written], np.arange(len(picks[episode])) / 15, atol=1e-6)
        state = source.read_episode(ref).state[picks[episode]]
        np.testing.assert_allclose([r["observation.state"] for r in written], state, atol=1e-5)

    for camera, factory_camera in (("head", "head"), ("wrist_left", "left"), ("wrist_right", "right")):
        (video,) = out.glob(f"videos/observation.images.{camera}/*/*.mp4")
        frames = list(iter_rgb_frames(video))
        expected = [expected_gray_level(e, i, factory_camera) for e, kept in enumerate(picks) for i in kept]
        assert len(frames) == len(expected) == 69
        assert [stamp for stamp, _ in frames] == pytest.approx([k / 15 for k in range(69)], abs=1e-6)
        levels = [int(round(float(rgb.mean()))) for _, rgb in frames]
        assert max(abs(a - b) for a, b in zip(levels, expected, strict=True)) <= 6
