"""The rendered-motion factory draws what the poses say, varies only the appearance between
variants, and writes sources that the real ingesters read back to the same poses and pixels.

The VD-VAE tests trust these frames to carry the motion, so the drawing is checked against the
camera's projection, and the written sources go through ``clap-data ingest`` as a user runs it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from clap_data.cli import app
from clap_data.factories.astribot import COMMAND_LEAD_FRAMES
from clap_data.factories.rendered import (
    CAMERAS,
    DEFAULT_SIZE,
    PART_RGB,
    TIP_RGB,
    RenderStyle,
    appearance_variants,
    human_instruction,
    main,
    random_motion,
    render_episode,
    write_rendered_robot,
)
from clap_data.lerobot_v3.reader import read_episode_arrays
from clap_data.video import iter_rgb_frames

SEED = 5
HEAD = CAMERAS["head"]
LENGTHS = "40,48"
# Unified camera name -> the source camera it is ingested from (Astribot short names).
ROBOT_CAMERAS = {"head": "head", "wrist_left": "left"}
# Codec loss allowed between the rendered frames and the decoded ingested video (0..255 levels).
MAX_MEAN_ABS_DIFF = 8.0

runner = CliRunner()


@pytest.fixture(scope="module")
def poses() -> np.ndarray:
    return random_motion(SEED, 0, 40)


def _foreground(poses: np.ndarray, style: RenderStyle) -> np.ndarray:
    """[N, H, W] pixels where the arms are drawn: where the frame differs from the background alone."""
    return (render_episode(poses, [1, 1], style=style) != render_episode(poses, [0, 0], style=style)).any(-1)


def test_each_tip_is_drawn_where_the_camera_projects_it(poses):
    for embodiment in ("robot", "human"):
        frames = render_episode(poses, [1, 1], style=RenderStyle(embodiment, background_seed=1))
        assert frames.shape == (40, DEFAULT_SIZE[1], DEFAULT_SIZE[0], 3) and frames.dtype == np.uint8
        for arm, colour in enumerate(TIP_RGB[embodiment]):
            uv, _ = HEAD.project(poses[:, 7 * arm : 7 * arm + 3], DEFAULT_SIZE)
            for i in (0, 13, 26, 39):
                rows, cols = np.nonzero((frames[i] == colour).all(-1))
                assert len(cols) >= 10, (embodiment, arm, i)
                assert np.hypot(cols.mean() - uv[i, 0], rows.mean() - uv[i, 1]) < 2.0, (embodiment, arm, i)


def _approach_axis(rpy: np.ndarray) -> np.ndarray:
    """First column of R = Rz(yaw)·Ry(pitch)·Rx(roll), written out (METHOD.md §1): where the gripper points."""
    _, pitch, yaw = rpy
    return np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), -np.sin(pitch)])


def test_jaw_spread_shows_the_opening_and_the_wrist_bar_the_orientation(poses):
    robot = RenderStyle("robot")
    pose = np.repeat(poses[:1], 2, axis=0)
    pose[:, 6] = [-1.0, 1.0]  # the left gripper open, then closed; only the left arm is drawn
    frames = render_episode(pose, [1, 0], style=robot)
    spread = [np.argwhere((f == PART_RGB["robot"]["jaws"]).all(-1)).std(0).sum() for f in frames]
    assert spread[0] > 1.5 * spread[1]
    for yaw in (-0.6, 0.6):
        turned = pose[:1].copy()
        turned[0, 3:6] = (0.0, 0.35, yaw)
        frame = render_episode(turned, [1, 0], style=robot)[0]
        bar = np.argwhere((frame == PART_RGB["robot"]["wrist_bar"]).all(-1))[:, ::-1]  # (u, v)
        tip, _ = HEAD.project(turned[0, :3], DEFAULT_SIZE)
        wrist, _ = HEAD.project(turned[0, :3] - 0.09 * _approach_axis(turned[0, 3:6]), DEFAULT_SIZE)
        want, got = wrist - tip, bar.mean(0) - tip
        assert want @ got / (np.linalg.norm(want) * np.linalg.norm(got)) > 0.9, yaw


def test_variants_change_background_and_light_but_not_where_the_arms_are(poses):
    styles = appearance_variants(3, SEED, "robot")
    assert styles[0] == RenderStyle("robot", styles[0].background_seed)  # variant 0: neutral light
    assert len({s.background_seed for s in styles}) == 3
    assert all((s.brightness, s.contrast, s.hue_shift) != (1.0, 1.0, 0.0) for s in styles[1:])
    backgrounds = [render_episode(poses[:1], [0, 0], style=s)[0].astype(int) for s in styles]
    masks = [_foreground(poses, s) for s in styles]
    assert masks[0].sum() > 40 * 60  # both grippers, every frame
    for k in (1, 2):
        assert np.abs(backgrounds[k] - backgrounds[0]).mean() > 10
        overlap = (masks[0] & masks[k]).sum() / (masks[0] | masks[k]).sum()
        assert overlap > 0.98, (k, overlap)


def test_robot_and_human_are_drawn_differently(poses):
    robot = render_episode(poses, [1, 1], style=RenderStyle("robot"))
    human = render_episode(poses, [1, 1], style=RenderStyle("human"))
    for colour in TIP_RGB["robot"]:
        assert (robot == colour).all(-1).any() and not (human == colour).all(-1).any()
    for colour in TIP_RGB["human"]:
        assert (human == colour).all(-1).any() and not (robot == colour).all(-1).any()
    robot_fg, human_fg = _foreground(poses, RenderStyle("robot")), _foreground(poses, RenderStyle("human"))
    assert (robot_fg & human_fg).sum() / (robot_fg | human_fg).sum() < 0.7


def test_a_folder_the_factory_did_not_write_is_never_replaced(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        write_rendered_robot(tmp_path, episodes=1, lengths=(40, 40), overwrite=True)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


# --- Through the real ingesters -------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("rendered") / "demo"
    args = [str(dest), "--robot-episodes", "2", "--human-episodes", "2", "--variants", "2", "--lengths", LENGTHS]
    assert main(args + ["--seed", str(SEED)]) == 0
    return dest


def _ingest(source: str, src: Path, out: Path) -> list[dict]:
    """``clap-data ingest SOURCE`` as a user runs it; the episodes metadata of the result."""
    result = runner.invoke(app, ["ingest", source, "--src", str(src), "--out", str(out), "--workers", "2"])
    assert result.exit_code == 0, result.output
    return pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet").to_pylist()


def _decoded(out: Path, episode: dict, camera: str) -> np.ndarray:
    """The frames of one ingested episode's camera, decoded from the unified video file."""
    key = f"observation.images.{camera}"
    chunk, file = episode[f"videos/{key}/chunk_index"], episode[f"videos/{key}/file_index"]
    start = round(episode[f"videos/{key}/from_timestamp"] * 30)
    frames = [f for _, f in iter_rgb_frames(out / f"videos/{key}/chunk-{chunk:03d}/file-{file:03d}.mp4")]
    return np.stack(frames[start : start + episode["length"]])


def _manifest(root: Path) -> tuple[dict, np.lib.npyio.NpzFile]:
    return json.loads((root / "rendered.json").read_text()), np.load(root / "motions.npz")


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_robot_source_ingests_to_the_rendered_poses_and_frames(rendered, tmp_path, ray_local):
    manifest, motions = _manifest(rendered / "robot")
    assert [v["root"] for v in manifest["variants"]] == ["variant_00", "variant_01"]
    heads = []
    for variant in manifest["variants"]:
        style = RenderStyle(**variant["style"])
        out = tmp_path / variant["root"]
        episodes = _ingest("astribot", rendered / "robot" / variant["root"], out)
        assert [e["source/episode_id"] for e in episodes] == [m["episode_id"] for m in manifest["motions"]]
        for episode, motion in zip(episodes, manifest["motions"], strict=True):
            poses = motions[f"motion_{motion['motion']:04d}"]
            assert episode["length"] == motion["frames"] == len(poses)
            np.testing.assert_allclose(poses, random_motion(SEED, motion["motion"], len(poses)))
            arrays = read_episode_arrays(out, episode["episode_index"])
            np.testing.assert_allclose(arrays.state, poses, atol=1e-5)
            command = random_motion(SEED, motion["motion"], len(poses) + COMMAND_LEAD_FRAMES)[COMMAND_LEAD_FRAMES:]
            np.testing.assert_allclose(arrays.action, command, atol=1e-5)
            assert (arrays.arm_mask == 1).all()
            for camera, source_camera in ROBOT_CAMERAS.items():
                want = render_episode(poses, [1, 1], style=style, camera=CAMERAS[source_camera])
                assert _mean_abs_diff(_decoded(out, episode, camera), want) < MAX_MEAN_ABS_DIFF, (variant, camera)
        heads.append(_decoded(out, episodes[0], "head"))
    assert _mean_abs_diff(heads[0], heads[1]) > 10  # same motion, another appearance


def test_human_source_ingests_with_zero_labels_and_the_rendered_frames(rendered, tmp_path, ray_local):
    manifest, motions = _manifest(rendered / "human")
    variant = manifest["variants"][1]  # the non-neutral appearance
    out = tmp_path / "human"
    episodes = _ingest("ego4d", rendered / "human" / variant["root"], out)
    assert [e["source/clip_uid"] for e in episodes] == [m["clip_uid"] for m in manifest["motions"]]
    for episode, motion in zip(episodes, manifest["motions"], strict=True):
        assert episode["tasks"] == [human_instruction(motion["motion"])] == [motion["instruction"]]
        poses = motions[f"motion_{motion['motion']:04d}"]
        np.testing.assert_allclose(poses, random_motion(SEED, motion["motion"], len(poses)))
        arrays = read_episode_arrays(out, episode["episode_index"])
        assert len(arrays.state) == len(poses)
        assert not arrays.state.any() and not arrays.action.any() and (arrays.arm_mask == 1).all()
        want = render_episode(poses, [1, 1], style=RenderStyle(**variant["style"]))
        assert _mean_abs_diff(_decoded(out, episode, "head"), want) < MAX_MEAN_ABS_DIFF
