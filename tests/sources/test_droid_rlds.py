"""DROID in its RLDS layout: listing from record headers, canonical values against an independent
scipy implementation, cameras, language and provenance, and every bad input with its message."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

import clap_data.tfrecord
from clap_data.errors import ClapDataError
from clap_data.factories.droid_rlds import edit_episode, plan_droid_episodes, shard_paths, write_droid_rlds_dataset
from clap_data.sources.base import EpisodeRejected, ImageSequence
from clap_data.sources.droid_rlds import DroidRldsSource
from clap_data.tfrecord import Feature, iter_record_spans, iter_records, parse_example, write_records
from tests.reference import copy_source

LENGTHS = (20, 14, 17, 12)  # shard 0 holds episodes 0 and 1, shard 1 episodes 2 and 3
SHARD_0 = "droid/1.0.1/droid-train.tfrecord-00000-of-00002"
SHARD_1 = "droid/1.0.1/droid-train.tfrecord-00001-of-00002"
CARTESIAN = "steps/observation/cartesian_position"
GRIPPER = "steps/observation/gripper_position"


@pytest.fixture(scope="module")
def droid(tmp_path_factory) -> Path:
    return write_droid_rlds_dataset(tmp_path_factory.mktemp("droid_rlds") / "src", LENGTHS, episodes_per_shard=2)


def source_examples(root: Path):
    return [parse_example(record) for shard in shard_paths(root) for record in iter_records(shard)]


def reference_state(example) -> np.ndarray:
    """METHOD.md §1 for a single arm, independently: scipy "xyz" Euler, 2g-1 clamped, right slot."""
    cartesian = example.get(CARTESIAN).values.astype(np.float64).reshape(-1, 6)
    gripper = example.get(GRIPPER).values.astype(np.float64)
    state = np.zeros((len(cartesian), 14))
    state[:, 7:10] = cartesian[:, :3]
    state[:, 10:13] = Rotation.from_euler("xyz", cartesian[:, 3:]).as_euler("xyz")
    state[:, 13] = np.clip(2 * gripper - 1, -1, 1)
    return state


def assert_canonical_close(actual: np.ndarray, expected: np.ndarray) -> None:
    """Equal to 1e-6, angles compared modulo 2π (roll near ±π may come out as +π or -π)."""
    angles = [3, 4, 5, 10, 11, 12]
    other = [i for i in range(14) if i not in angles]
    np.testing.assert_allclose(actual[:, other], expected[:, other], atol=1e-6)
    np.testing.assert_allclose(np.angle(np.exp(1j * (actual[:, angles] - expected[:, angles]))), 0, atol=1e-6)


def broken(droid: Path, tmp_path: Path, shard: int, index: int, edit: Callable[[dict[str, Feature]], None]) -> DroidRldsSource:
    root = copy_source(droid, tmp_path / "src")
    edit_episode(shard_paths(root)[shard], index, edit)
    return DroidRldsSource(root)


def rejection(source: DroidRldsSource, order: int) -> EpisodeRejected:
    with pytest.raises(EpisodeRejected) as rejected:
        source.read_episode(source.list_episodes()[order])
    return rejected.value


# --- listing ---------------------------------------------------------------------------------


def test_lists_shard_record_and_offset_per_episode(droid):
    refs = DroidRldsSource(droid).list_episodes()
    assert [r.source_episode for r in refs] == [f"{SHARD_0}#0", f"{SHARD_0}#1", f"{SHARD_1}#0", f"{SHARD_1}#1"]
    assert [r.order for r in refs] == [0, 1, 2, 3]
    assert [r.path for r in refs] == [SHARD_0, SHARD_0, SHARD_1, SHARD_1]
    first_record = len(next(iter_records(droid / SHARD_0)))
    assert [r.details["offset"] for r in refs[:2]] == [0, 16 + first_record]


def test_listing_reads_only_record_headers(droid, monkeypatch):
    read_sizes: list[int] = []
    real_open = open

    class CountingFile:
        def __init__(self, handle):
            self.handle = handle

        def read(self, size: int = -1) -> bytes:
            data = self.handle.read(size)
            read_sizes.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(clap_data.tfrecord, "open", lambda *a, **k: CountingFile(real_open(*a, **k)), raising=False)
    refs = DroidRldsSource(droid).list_episodes()
    assert len(refs) == 4 and read_sizes == [12] * 4


def test_payload_damage_does_not_stop_the_listing(droid, tmp_path):
    root = copy_source(droid, tmp_path / "src")
    raw = bytearray((root / SHARD_0).read_bytes())
    raw[5000] ^= 0xFF  # inside episode 0's payload
    (root / SHARD_0).write_bytes(bytes(raw))
    source = DroidRldsSource(root)
    assert len(source.list_episodes()) == 4
    error = rejection(source, 0)
    assert error.category == "corrupt_record" and error.file == SHARD_0
    assert error.reason.startswith(f"{SHARD_0}#0: the ") and error.reason.endswith("-byte record fails its data CRC check (byte offset 0)")
    source.read_episode(source.list_episodes()[1])  # the next record of the shard is intact


# --- canonical values ------------------------------------------------------------------------


def test_state_matches_scipy_reference_and_action_is_next_state(droid):
    source = DroidRldsSource(droid)
    for ref, example in zip(source.list_episodes(), source_examples(droid), strict=True):
        episode = source.read_episode(ref)
        expected = reference_state(example)
        assert_canonical_close(episode.state, expected)
        assert_canonical_close(episode.action, np.vstack([expected[1:], expected[-1:]]))
        assert episode.arm_mask.tolist() == [[0.0, 1.0]] * len(expected)
        assert not episode.state[:, :7].any() and not episode.action[:, :7].any(), "left slot is zero"


def test_action_values_by_hand(droid, tmp_path):
    n = LENGTHS[3]
    t = np.arange(n, dtype=np.float64)
    cartesian = np.column_stack([t, 2 * t, 3 * t, np.full(n, 0.1), np.full(n, 0.2), 0.3 + 0.01 * t])

    def set_values(features):
        features[CARTESIAN] = Feature.floats(cartesian)
        features[GRIPPER] = Feature.floats(t / (n - 1))

    source = broken(droid, tmp_path, 1, 1, set_values)
    episode = source.read_episode(source.list_episodes()[3])
    np.testing.assert_allclose(episode.state[:, 7:10], cartesian[:, :3])
    np.testing.assert_allclose(episode.action[0, 7:10], [1, 2, 3])
    np.testing.assert_allclose(episode.action[n - 2, 7:10], [n - 1, 2 * (n - 1), 3 * (n - 1)])
    np.testing.assert_allclose(episode.action[n - 1, 7:10], [n - 1, 2 * (n - 1), 3 * (n - 1)], err_msg="last frame repeats")
    np.testing.assert_allclose(episode.action[0, 10:13], [0.1, 0.2, 0.31], atol=1e-6)
    np.testing.assert_allclose(episode.state[:, 13], 2 * t / (n - 1) - 1, atol=1e-6)
    np.testing.assert_allclose(episode.action[:, 13], np.append(2 * t[1:] / (n - 1) - 1, 1.0), atol=1e-6)


def test_gripper_outside_0_1_is_clamped(droid, tmp_path):
    def overshoot(features):
        values = features[GRIPPER].values.copy()
        values[:3] = [-0.2, 1.3, 0.25]
        features[GRIPPER] = Feature.floats(values)

    source = broken(droid, tmp_path, 0, 0, overshoot)
    state = source.read_episode(source.list_episodes()[0]).state
    np.testing.assert_allclose(state[:3, 13], [-1.0, 1.0, -0.5])


def test_roll_wrapping_at_pi_is_kept_as_recorded(droid):
    source = DroidRldsSource(droid)
    roll_source = source_examples(droid)[0].get(CARTESIAN).values.reshape(-1, 6)[:, 3].astype(np.float64)
    roll = source.read_episode(source.list_episodes()[0]).state[:, 10]
    assert (roll > 3.0).any() and (roll < -3.0).any(), "the episode crosses ±π"
    np.testing.assert_allclose(roll, roll_source, atol=1e-6)


# --- cameras, language, provenance -----------------------------------------------------------


def test_cameras_are_the_source_jpegs(droid):
    source = DroidRldsSource(droid)
    assert source.cameras == ("head", "wrist_right")
    assert source.notices == ["camera exterior_image_2_left has no unified camera name and is not ingested"]
    assert (source.fps, source.embodiment) == (15, "droid")
    example = source_examples(droid)[1]
    episode = source.read_episode(source.list_episodes()[1])
    assert set(episode.videos) == {"head", "wrist_right"}
    assert all(isinstance(v, ImageSequence) for v in episode.videos.values())
    assert list(episode.videos["head"].images) == example.get("steps/observation/exterior_image_1_left").values
    assert list(episode.videos["wrist_right"].images) == example.get("steps/observation/wrist_image_left").values


def test_cameras_option(droid):
    source = DroidRldsSource(droid, cameras=["wrist_right"])
    assert source.cameras == ("wrist_right",)
    assert set(source.read_episode(source.list_episodes()[0]).videos) == {"wrist_right"}
    with pytest.raises(ClapDataError, match="unknown camera 'wrist_left'; DROID cameras are head, wrist_right"):
        DroidRldsSource(droid, cameras=["wrist_left"])


def test_instruction_success_and_extra(droid):
    source = DroidRldsSource(droid)
    specs = plan_droid_episodes(LENGTHS)
    episodes = [source.read_episode(ref) for ref in source.list_episodes()]
    for spec, episode in zip(specs, episodes, strict=True):
        assert episode.tasks == [spec.instruction] * spec.length
        assert episode.subtasks == [""] * spec.length
        assert episode.extra == {
            "language_instruction_2": spec.instruction_2,
            "language_instruction_3": spec.instruction_3,
            "file_path": spec.file_path,
            "is_episode_successful": spec.success,
            "empty_instruction": spec.instruction == "",
        }
    assert episodes[2].tasks[0] == "" and episodes[2].extra["empty_instruction"] is True, "unannotated episode kept, flagged"
    assert episodes[1].extra["is_episode_successful"] is False and "/failure/" in episodes[1].extra["file_path"]


def test_instruction_is_the_first_steps_stripped(droid, tmp_path):
    def vary(features):
        n = len(features["steps/is_first"])
        features["steps/language_instruction"] = Feature.bytes(["  open the drawer \n"] + ["something else"] * (n - 1))
        del features["steps/language_instruction_3"]

    source = broken(droid, tmp_path, 0, 1, vary)
    episode = source.read_episode(source.list_episodes()[1])
    assert episode.tasks == ["open the drawer"] * LENGTHS[1]
    assert episode.extra["language_instruction_3"] == "", "an absent alternative instruction reads as empty"


def test_partial_download_and_missing_metadata(tmp_path):
    root = write_droid_rlds_dataset(tmp_path / "d", (5, 6, 7), episodes_per_shard=2, declared_shards=2048,
                                    image_size=(16, 16), language_embeddings=False)
    source = DroidRldsSource(root / "droid/1.0.1")
    assert "2 of the 2048 shards of droid-train are present; only those are ingested" in source.notices
    assert len(source.list_episodes()) == 3
    (root / "droid/1.0.1/features.json").unlink()
    (root / "droid/1.0.1/dataset_info.json").unlink()
    bare = DroidRldsSource(root)
    assert bare.cameras == ("head", "wrist_right")
    assert len(bare.read_episode(bare.list_episodes()[2]).state) == 7


def test_describe(droid):
    assert DroidRldsSource(droid).describe() == {
        "source": "droid", "layout": "rlds", "root": str(droid.resolve()), "cameras": ["head", "wrist_right"], "fps": 15,
    }


# --- bad records -----------------------------------------------------------------------------


def test_truncated_shard(droid, tmp_path):
    root = copy_source(droid, tmp_path / "src")
    raw = (root / SHARD_1).read_bytes()
    (root / SHARD_1).write_bytes(raw[:-100])
    source = DroidRldsSource(root)
    refs = source.list_episodes()
    assert len(refs) == 4 and not any("declares" in n for n in source.notices)
    error = rejection(source, 3)
    offset = refs[3].details["offset"]
    length = len(raw) - offset - 16
    assert (error.category, error.file) == ("truncated", SHARD_1)
    assert error.reason == f"{SHARD_1}#1: the {length}-byte record is cut short: the file ends 100 bytes early (byte offset {offset})"


def test_missing_whole_record_is_noticed_against_dataset_info(droid, tmp_path):
    root = copy_source(droid, tmp_path / "src")
    first = next(iter_record_spans(root / SHARD_1))
    (root / SHARD_1).write_bytes((root / SHARD_1).read_bytes()[: first.end])
    source = DroidRldsSource(root)
    assert len(source.list_episodes()) == 3
    assert f"shard {SHARD_1} holds 1 records but dataset_info.json declares 2" in source.notices


def test_corrupt_length_header(droid, tmp_path):
    root = copy_source(droid, tmp_path / "src")
    offset = list(iter_record_spans(root / SHARD_0))[1].offset
    raw = bytearray((root / SHARD_0).read_bytes())
    raw[offset + 2] ^= 0x10
    (root / SHARD_0).write_bytes(bytes(raw))
    source = DroidRldsSource(root)
    refs = source.list_episodes()
    assert [r.source_episode for r in refs] == [f"{SHARD_0}#0", f"{SHARD_0}#1", f"{SHARD_1}#0", f"{SHARD_1}#1"]
    assert any(f"shard {SHARD_0}: the record header at byte offset {offset} is corrupt" in n for n in source.notices)
    error = rejection(source, 1)
    assert error.category == "corrupt_record"
    assert error.reason == f"{SHARD_0}#1: the record's length field fails its CRC check (byte offset {offset})"
    assert len(source.read_episode(refs[0]).state) == LENGTHS[0]


def test_record_that_is_not_an_example(droid, tmp_path):
    root = copy_source(droid, tmp_path / "src")
    records = list(iter_records(root / SHARD_1))
    write_records(root / SHARD_1, [b"\xff\xff\xff\xff", records[1]])
    error = rejection(DroidRldsSource(root), 2)
    assert (error.category, error.reason) == ("unreadable_file", f"{SHARD_1}#0: the record at byte offset 0 is not a tf.train.Example")


def test_shard_deleted_after_listing(droid, tmp_path):
    root = copy_source(droid, tmp_path / "src")
    source = DroidRldsSource(root)
    refs = source.list_episodes()
    (root / SHARD_1).unlink()
    with pytest.raises(EpisodeRejected) as rejected:
        source.read_episode(refs[2])
    assert rejected.value.category == "missing_file" and rejected.value.reason == f"shard {SHARD_1} is missing"


@pytest.mark.parametrize(
    "edit, category, reason",
    [
        (lambda f: f.__setitem__(CARTESIAN, Feature.floats(f[CARTESIAN].values[:-1])),
         "bad_shape", "steps/observation/cartesian_position holds 119 values, expected 20 steps × 6"),
        (lambda f: f.__setitem__("steps/action_dict/joint_velocity", Feature.floats(f["steps/action_dict/joint_velocity"].values[:-3])),
         "bad_shape", "steps/action_dict/joint_velocity holds 137 values, expected a multiple of 20 steps"),
        (lambda f: f.__setitem__("steps/is_first", Feature.ints([1] + [0] * 6 + [1] + [0] * 12)),
         "step_flags", "steps/is_first is set at steps [0, 7]; RLDS sets it at step 0 only"),
        (lambda f: f.__setitem__("steps/is_last", Feature.ints([0] * 20)),
         "step_flags", "steps/is_last is set at steps []; RLDS sets it at step 19 only"),
        (lambda f: f.__setitem__(CARTESIAN, Feature.floats(np.where(np.arange(120) == 5 * 6 + 2, np.nan, f[CARTESIAN].values))),
         "non_finite", "steps/observation/cartesian_position has NaN or Inf at step 5"),
        (lambda f: f.__setitem__(GRIPPER, Feature.floats(np.where(np.arange(20) == 19, np.inf, f[GRIPPER].values))),
         "non_finite", "steps/observation/gripper_position has NaN or Inf at step 19"),
        (lambda f: f.pop(CARTESIAN), "missing_feature", "has no steps/observation/cartesian_position feature"),
        (lambda f: f.pop("episode_metadata/file_path"), "missing_feature", "has no episode_metadata/file_path feature"),
        (lambda f: f.__setitem__(GRIPPER, Feature.bytes([b"x"] * 20)),
         "bad_feature", "steps/observation/gripper_position is a bytes_list, expected a float_list"),
        (lambda f: f.update({k: Feature(v.kind, v.values[:0]) for k, v in f.items() if k.startswith("steps/")}),
         "empty", "has no steps"),
    ],
    ids=["short-cartesian", "ragged-other-feature", "is_first-twice", "no-is_last", "nan", "inf", "no-cartesian",
         "no-file-path", "wrong-kind", "no-steps"],
)
def test_bad_episode_contents(droid, tmp_path, edit, category, reason):
    error = rejection(broken(droid, tmp_path, 0, 0, edit), 0)
    assert (error.category, error.file, error.reason) == (category, SHARD_0, f"{SHARD_0}#0: {reason}")


def replace_image(camera: str, step: int, damage: Callable[[bytes], bytes]) -> Callable[[dict[str, Feature]], None]:
    def edit(features):
        key = f"steps/observation/{camera}"
        frames = list(features[key].values)
        frames[step] = damage(frames[step])
        features[key] = Feature.bytes(frames)

    return edit


def test_truncated_last_jpeg(droid, tmp_path):
    source = broken(droid, tmp_path, 0, 1, replace_image("wrist_image_left", 13, lambda jpeg: jpeg[: len(jpeg) // 2]))
    error = rejection(source, 1)
    assert error.category == "bad_image"
    assert error.reason.startswith(f"{SHARD_0}#1: camera wrist_image_left image at step 13 cannot be decoded (")


def test_middle_image_that_is_not_a_jpeg(droid, tmp_path):
    source = broken(droid, tmp_path, 0, 1, replace_image("exterior_image_1_left", 6, lambda _: b"<html>not found</html>"))
    error = rejection(source, 1)
    assert (error.category, error.reason) == ("bad_image", f"{SHARD_0}#1: camera exterior_image_1_left image at step 6 is not a JPEG or PNG file")


def test_damage_to_an_unused_camera_is_ignored(droid, tmp_path):
    source = broken(droid, tmp_path, 0, 1, replace_image("exterior_image_2_left", 0, lambda _: b"junk"))
    assert len(source.read_episode(source.list_episodes()[1]).state) == LENGTHS[1]


# --- the whole source ------------------------------------------------------------------------


def test_folder_without_shards(tmp_path):
    with pytest.raises(ClapDataError, match=r"no TFRecord shards \(\*\.tfrecord-\*-of-\*\) under .*; is this DROID in its RLDS layout"):
        DroidRldsSource(tmp_path)
    with pytest.raises(ClapDataError, match="does not exist"):
        DroidRldsSource(tmp_path / "nope")


def test_two_versions_side_by_side_are_refused(droid, tmp_path):
    root = copy_source(droid, tmp_path / "src")
    shutil.copytree(root / "droid/1.0.1", root / "droid/1.0.0")
    with pytest.raises(ClapDataError, match=r"shards in several folders \(droid/1.0.0, droid/1.0.1\)"):
        DroidRldsSource(root)
    assert len(DroidRldsSource(root / "droid/1.0.1").list_episodes()) == 4


def test_features_json_of_another_dataset(droid, tmp_path):
    root = copy_source(droid, tmp_path / "src")
    path = root / "droid/1.0.1/features.json"
    spec = json.loads(path.read_text())
    del spec["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"]["features"]["observation"]
    path.write_text(json.dumps(spec))
    with pytest.raises(ClapDataError, match="declares no steps/observation/cartesian_position; is this DROID's RLDS release"):
        DroidRldsSource(root)


def test_garbled_dataset_info(droid, tmp_path):
    root = copy_source(droid, tmp_path / "src")
    (root / "droid/1.0.1/dataset_info.json").write_text("{not json")
    with pytest.raises(ClapDataError, match="dataset info .*dataset_info.json cannot be read"):
        DroidRldsSource(root)


def test_droid_source_dispatches_rlds_shards_here(droid):
    from clap_data.sources.droid import DroidSource

    source = DroidSource(droid / "droid/1.0.1", cameras=["head"], workers_hint=64)
    assert (source.layout, source.cameras, source.fps) == ("rlds", ("head",), 15)
    refs = source.list_episodes()
    assert [r.source_episode for r in refs][:1] == ["droid-train.tfrecord-00000-of-00002#0"]
    assert set(source.read_episode(refs[0]).videos) == {"head"}


# --- listing duplicates and --fps ----------------------------------------------------------------


def test_two_files_naming_one_shard_are_refused(droid, tmp_path):
    """A second copy of a shard under another zero padding would list its episodes twice."""
    root = copy_source(droid, tmp_path / "src")
    copy = "droid/1.0.1/droid-train.tfrecord-001-of-00002"
    shutil.copyfile(root / SHARD_1, root / copy)
    with pytest.raises(ClapDataError) as error:
        DroidRldsSource(root)
    assert str(error.value) == (
        f"the RLDS folder {root} lists shard 'droid-train #1' twice ({SHARD_1} and {copy}); each may appear only once"
    )


def test_fps_option_keeps_the_nearest_steps_and_their_images(droid):
    """RLDS has no timestamps: step i is at i / 15 s. 20 steps onto 5 fps keep every third step."""
    full, slow = DroidRldsSource(droid), DroidRldsSource(droid, fps=5)
    assert (slow.fps, slow.describe()["fps"]) == (5, 5)
    ref = slow.list_episodes()[0]
    original, resampled = full.read_episode(ref), slow.read_episode(ref)
    picks = [0, 3, 6, 9, 12, 15, 18]
    np.testing.assert_array_equal(resampled.state, original.state[picks])
    np.testing.assert_array_equal(resampled.action[:-1], resampled.state[1:])
    assert resampled.videos["head"] == ImageSequence(tuple(original.videos["head"].images[i] for i in picks))
    assert len(resampled.tasks) == len(resampled.subtasks) == 7
