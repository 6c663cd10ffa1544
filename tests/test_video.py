"""clap_data.video on real encoded MP4s: probing, validation, stream copy onto a regular clock
(offset, jittered and B-frame sources), concatenation."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from clap_data import video

X265_NO_B = {"x265-params": "keyint=2:min-keyint=2:bframes=0:log-level=error"}


def encode(path: Path, codec: str, frames: int = 20, options: dict | None = None,
           pts=lambda i: i, time_base: Fraction = Fraction(1, 30), size: tuple[int, int] = (64, 48)) -> Path:
    """Flat frames whose gray level encodes the frame index (robust to compression)."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=30)
        stream.width, stream.height, stream.pix_fmt, stream.time_base = width, height, "yuv420p", time_base
        stream.options = options or {}
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.full((height, width, 3), 20 + (11 * i) % 220, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts(i), time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def gray_levels(path: Path) -> list[int]:
    return [int(round(f.mean())) for _, f in video.iter_rgb_frames(path)]


def timestamps(path: Path) -> list[float]:
    return [t for t, _ in video.iter_rgb_frames(path)]


def test_probe_counts_frames_and_fingerprints_codec_parameters(tmp_path):
    a = video.probe_video(encode(tmp_path / "a.mp4", "libx265", options=X265_NO_B))
    b = video.probe_video(encode(tmp_path / "b.mp4", "libx265", options={"x265-params": "keyint=4:bframes=0:crf=20:log-level=error"}))
    assert (a.codec, a.width, a.height, a.frame_count, a.decode_delay) == ("hevc", 64, 48, 20, 0)
    assert a.codec_fingerprint != b.codec_fingerprint


@pytest.mark.parametrize(
    ("pts", "time_base"),
    [
        (lambda i: 9000 + 3000 * i, Fraction(1, 90000)),  # clock starting at 0.1 s
        (lambda i: 3000 * i + (700 if i % 3 == 1 else 0), Fraction(1, 90000)),  # jittered clock
    ],
)
def test_copy_puts_frame_i_at_i_over_fps_and_keeps_pixels(tmp_path, pts, time_base):
    src = encode(tmp_path / "src.mp4", "libx264", options={"bf": "0", "g": "2"}, pts=pts, time_base=time_base)
    dst = tmp_path / "dst.mp4"
    video.copy_window(src, dst, video.probe_video(src), fps=30)
    assert timestamps(dst) == pytest.approx([i / 30 for i in range(20)], abs=1e-9)
    assert [f.tobytes() for _, f in video.iter_rgb_frames(dst)] == [f.tobytes() for _, f in video.iter_rgb_frames(src)]


def test_copy_handles_b_frames(tmp_path):
    src = encode(tmp_path / "bf.mp4", "libx264", options={"bf": "2", "g": "8"})
    probe = video.probe_video(src)
    assert probe.decode_delay > 0
    dst = tmp_path / "dst.mp4"
    video.copy_window(src, dst, probe, fps=30)
    assert timestamps(dst) == pytest.approx([i / 30 for i in range(20)], abs=1e-9)
    assert gray_levels(dst) == gray_levels(src)


def test_concatenation_offsets_each_episode_and_refuses_other_codec_parameters(tmp_path):
    episodes = []
    for name, frames in (("a", 12), ("b", 7)):
        src = encode(tmp_path / f"{name}.mp4", "libx265", frames=frames, options=X265_NO_B)
        regular = tmp_path / f"{name}_regular.mp4"
        video.copy_window(src, regular, video.probe_video(src), fps=30)
        episodes.append((regular, video.probe_video(regular)))
    joined = video.VideoConcatenator(tmp_path / "joined.mp4", fps=30)
    spans = [joined.append(path, probe.frame_count, probe.codec_fingerprint) for path, probe in episodes]
    with pytest.raises(video.VideoError, match="other codec parameters"):
        joined.append(episodes[0][0], 12, "another fingerprint")
    joined.close()
    assert spans == [(0.0, pytest.approx(12 / 30)), (pytest.approx(12 / 30), pytest.approx(19 / 30))]
    assert timestamps(tmp_path / "joined.mp4") == pytest.approx([i / 30 for i in range(19)], abs=1e-9)
    assert gray_levels(tmp_path / "joined.mp4") == gray_levels(episodes[0][0]) + gray_levels(episodes[1][0])


def test_validation_reports_truncated_and_garbage_files(tmp_path):
    good = encode(tmp_path / "good.mp4", "libx265", options=X265_NO_B)
    probe = video.probe_video(good)
    video.check_decodes(good, probe, full=False)
    video.check_decodes(good, probe, full=True)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(video.VideoError, match="cannot be opened"):
        video.probe_video(truncated)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00" * 4096)
    with pytest.raises(video.VideoError):
        video.probe_video(garbage)


def test_reencode_resizes_with_the_chosen_codec(tmp_path):
    src = encode(tmp_path / "src.mp4", "libx265", options=X265_NO_B)
    dst = tmp_path / "small.mp4"
    video.reencode(src, dst, fps=30, size=(32, 48), codec="h264", gop=2, crf=18)
    probe = video.probe_video(dst)
    assert (probe.codec, probe.height, probe.width, probe.frame_count) == ("h264", 32, 48, 20)
    assert np.abs(np.array(gray_levels(dst)) - np.array(gray_levels(src))).max() <= 3


@pytest.mark.parametrize(("text", "size"), [("224x224", (224, 224)), ("360X640", (360, 640))])
def test_parse_size(text, size):
    assert video.parse_size(text) == size


@pytest.mark.parametrize("text", ["224", "0x10", "223x224", "axb"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        video.parse_size(text)


def test_av1_is_reported_by_its_codec_name_not_the_decoder(tmp_path):
    src = encode(tmp_path / "src.mp4", "libx265", options=X265_NO_B)
    dst = tmp_path / "av1.mp4"
    video.reencode(src, dst, fps=30, size=None, codec="av1", gop=2, crf=30)
    probe = video.probe_video(dst)
    assert (probe.codec, probe.frame_count) == ("av1", 20)  # the decoder is libdav1d


def test_sample_keyframes_spreads_over_the_video_and_strides_large_frames(tmp_path):
    src = encode(tmp_path / "gop2.mp4", "libx265", frames=20, options=X265_NO_B, size=(640, 360))
    frames = video.sample_keyframes(src, video.probe_video(src), count=4)
    assert frames.shape == (4, 90, 160, 3)  # 640 // 150 = stride 4, as lerobot downsamples
    # keyframes are every second frame: 4 picks spread over keyframes 0, 2, …, 18
    levels = np.array([f.mean() for f in frames])
    assert np.abs(levels - np.array([20 + 11 * i for i in (0, 6, 12, 18)])).max() <= 2


class CountingContainer:
    """A real PyAV input container that records the display position of every frame its decoder hands out."""

    def __init__(self, container, probe, decoded: list[int]):
        self._container, self._probe, self._decoded = container, probe, decoded

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._container.__exit__(*exc)

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            self._decoded.append(self._probe.rank_of_pts[frame.pts])
            yield frame


def test_check_and_sample_decodes_each_frame_it_needs_once_and_samples_what_sample_keyframes_does(tmp_path, monkeypatch):
    src = encode(tmp_path / "gop2.mp4", "libx265", frames=20, options=X265_NO_B, size=(640, 360))
    probe = video.probe_video(src)
    decoded: list[int] = []
    real_open = video._open
    monkeypatch.setattr(video, "_open", lambda path: CountingContainer(real_open(path), probe, decoded))
    # frames 4..15: keyframes 4, 6, …, 14; 4 picks are 4, 6, 10, 14 — the first frame and the last GOP among them.
    # Checked apart and sampled apart, 4 and 14 would decode twice; decoding on to see where a stretch ends, the
    # frame after each pick and after the window (7, 11, 16 …) would decode too.
    fast = video.check_and_sample(src, probe, False, 4, start=4, count=12)
    assert sorted(decoded) == [4, 6, 10, 14, 15]
    assert fast.shape == (4, 90, 160, 3)
    assert np.abs(np.array([f.mean() for f in fast]) - np.array([20 + 11 * i for i in (4, 6, 10, 14)])).max() <= 2
    decoded.clear()
    full = video.check_and_sample(src, probe, True, 4, start=4, count=12)
    assert sorted(decoded) == list(range(4, 16))  # the full check decodes the picks on its way
    assert np.array_equal(full, fast)
    decoded.clear()
    assert np.array_equal(video.sample_keyframes(src, probe, 4, 4, 12), fast)
    assert sorted(decoded) == [4, 6, 10, 14]  # one decode per keyframe
    assert video.check_and_sample(src, probe, False, 0, start=4, count=12).shape[0] == 0


@pytest.mark.parametrize("full", [False, True])
def test_check_and_sample_rejects_a_window_whose_last_gop_does_not_decode(tmp_path, full):
    src = encode(tmp_path / "src.mp4", "libx265", frames=20, options=X265_NO_B)
    data = bytearray(src.read_bytes())
    for offset, size in video.packet_byte_ranges(src, video.probe_video(src), 18, 2):  # the last GOP's packets
        data[offset:offset + size] = bytes(size)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    probe = video.probe_video(broken)  # demuxing still finds every packet
    assert probe.frame_count == 20
    video.check_and_sample(broken, probe, full, 4, start=0, count=16)  # a window before the damage is fine
    with pytest.raises(video.VideoError, match="does not decode"):
        video.check_and_sample(broken, probe, full, 4)


@pytest.mark.parametrize("fps", [15, 10, 30])
def test_concatenation_at_low_frame_rates_whose_mp4_timescale_is_raised(tmp_path, fps):
    # mp4 raises timescales below 10000 (15 fps · 512 = 7680 → 15360), so staged episodes come
    # back at another time base than the one they were written with.
    parts = []
    for name, frames in (("a", 6), ("b", 5)):
        src = encode(tmp_path / f"{name}.mp4", "libx264", frames=frames, options={"bf": "0", "g": "2"})
        regular = tmp_path / f"{name}_{fps}.mp4"
        video.copy_window(src, regular, video.probe_video(src), fps=fps)
        parts.append((regular, video.probe_video(regular)))
    joined = video.VideoConcatenator(tmp_path / "joined.mp4", fps=fps)
    for path, probe in parts:
        joined.append(path, probe.frame_count, probe.codec_fingerprint)
    joined.close()
    assert timestamps(tmp_path / "joined.mp4") == pytest.approx([i / fps for i in range(11)], abs=1e-9)


@pytest.mark.parametrize("codec", ["av1", "h264", "hevc"])
@pytest.mark.parametrize("fps", [15, 30])
def test_encoding_keeps_one_frame_per_step_at_any_frame_rate(tmp_path, codec, fps):
    # At 15 fps the mp4 muxer changes the stream's time base when it writes the header; frame
    # timestamps must not follow it (they did once, and every 15 fps re-encode failed).
    import io

    from PIL import Image

    images = []
    for i in range(12):
        buffer = io.BytesIO()
        Image.fromarray(np.full((36, 64, 3), 28 + 10 * i, np.uint8)).save(buffer, format="JPEG")
        images.append(buffer.getvalue())
    dst = tmp_path / "out.mp4"
    video.encode_images(images, dst, fps=fps, size=None, codec=codec, gop=2, crf=30)
    assert video.probe_video(dst).frame_count == 12
    assert timestamps(dst) == pytest.approx([i / fps for i in range(12)], abs=1e-9)


def test_probes_are_cached_per_file_version(tmp_path):
    # Episodes of one LeRobot v3 file or Ego4D clip all probe the same file: demux it once.
    first = encode(tmp_path / "clip.mp4", "libx264", frames=8, options={"bf": "0", "g": "2"})
    probe = video.probe_video(first)
    assert video.probe_video(first) is probe
    encode(tmp_path / "clip.mp4", "libx264", frames=12, options={"bf": "0", "g": "2"})  # rewritten in place
    assert video.probe_video(first).frame_count == 12
