"""Video probing, validation, stream copy, re-encoding and concatenation with PyAV.

Stream copy is the default everywhere: decoding and re-encoding HEVC at 1280×720 costs orders of
magnitude more than moving packets, and copied packets decode to bit-identical frames. Timestamps
are rewritten on the way so that frame i of an episode sits exactly at i / fps, which is what
LeRobot's reader looks up (within 1e-4 s).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property, lru_cache
from pathlib import Path

import av
import numpy as np
from PIL import Image

# Ticks per frame in our output time base 1/(fps·512): ffmpeg's own mp4 default (1/15360 at
# 30 fps), and fine enough that every frame boundary is an integer.
TICKS_PER_FRAME = 512

_ENCODERS = {"h264": "libx264", "hevc": "libx265", "av1": "libsvtav1"}


class VideoError(Exception):
    """A video that cannot be used; the message says why (the caller names the file)."""


@dataclass(frozen=True)
class VideoProbe:
    """What demuxing (no decoding) tells about a file: cheap enough to run on every episode."""

    codec: str
    width: int
    height: int
    pix_fmt: str
    presentation_rank: tuple[int, ...]  # for each packet in decode order, its display position
    display_pts: tuple[int, ...]  # source timestamps in display order: frame i has display_pts[i]
    keyframe_ranks: frozenset[int]  # display positions of keyframes
    codec_fingerprint: str  # equal fingerprints can be concatenated by stream copy

    @property
    def frame_count(self) -> int:
        return len(self.display_pts)

    @property
    def decode_delay(self) -> int:
        """How many frames decode order runs ahead of display order (0 without B-frames)."""
        return max([0] + [i - r for i, r in enumerate(self.presentation_rank)])

    @cached_property
    def rank_of_pts(self) -> dict[int, int]:
        """Display position of each timestamp, built once per probe (files can hold many episodes)."""
        return {pts: rank for rank, pts in enumerate(self.display_pts)}

    def can_copy(self, start: int) -> bool:
        """Whether frames from ``start`` on can be stream-copied: the whole file, or a window that
        starts on a keyframe of a stream without B-frames (so no frame needs one before it)."""
        return start == 0 or (self.decode_delay == 0 and start in self.keyframe_ranks)


def _open(path: Path) -> av.container.InputContainer:
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoError(f"cannot be opened as a video ({exc})") from exc
    if not container.streams.video:
        container.close()
        raise VideoError("has no video stream")
    return container


def probe_video(path: Path) -> VideoProbe:
    """Demux every packet of the first video stream: counts frames and finds truncation.

    Probes are cached per file version (path, size, modification time): a LeRobot v3 file or an
    Ego4D clip holds many episodes, and each of them would otherwise demux the whole file again.
    """
    try:
        stat = Path(path).stat()
    except OSError as exc:
        raise VideoError(f"cannot be opened as a video ({exc})") from exc
    return _probe_file_version(str(path), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)
def _probe_file_version(path: str, size: int, mtime_ns: int) -> VideoProbe:
    with _open(Path(path)) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        pts_list: list[int] = []
        keyframe_pts: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                if packet.pts is None:
                    raise VideoError(f"packet {len(pts_list)} has no timestamp")
                if packet.is_keyframe:
                    keyframe_pts.append(packet.pts)
                pts_list.append(packet.pts)
        except av.error.FFmpegError as exc:
            raise VideoError(f"is corrupt after {len(pts_list)} frames ({exc})") from exc
        if not pts_list:
            raise VideoError("has no frames")
        if not keyframe_pts:
            raise VideoError("has no keyframe")
        extradata = bytes(ctx.extradata or b"")
        fingerprint = hashlib.sha256(
            f"{ctx.codec.canonical_name}|{ctx.width}x{ctx.height}|{ctx.pix_fmt}|".encode() + extradata
        ).hexdigest()
        order = np.argsort(np.asarray(pts_list), kind="stable")
        rank = np.empty(len(pts_list), dtype=np.int64)
        rank[order] = np.arange(len(pts_list))
        display_pts = tuple(int(pts_list[i]) for i in order)
        rank_of_pts = {pts: r for r, pts in enumerate(display_pts)}
        return VideoProbe(
            codec=ctx.codec.canonical_name,
            width=ctx.width,
            height=ctx.height,
            pix_fmt=ctx.pix_fmt or "unknown",
            presentation_rank=tuple(int(r) for r in rank),
            display_pts=display_pts,
            keyframe_ranks=frozenset(rank_of_pts[pts] for pts in keyframe_pts),
            codec_fingerprint=fingerprint,
        )


def _decode_window(container: av.container.InputContainer, probe: VideoProbe, start: int, count: int) -> Iterator[tuple[int, av.VideoFrame]]:
    """Frames ``[start, start + count)`` in display order as ``(index, frame)``: seeks to the
    keyframe before ``start`` and decodes forward, matching frames to positions by timestamp,
    so offset or irregular source clocks do not shift the window. Stops at the window's last frame — the decoder
    hands frames out in display order, so none of the window can come after it — rather than decoding one more frame
    to see the window has ended, which for a single sampled keyframe would double its cost."""
    stream = container.streams.video[0]
    rank_of_pts = probe.rank_of_pts
    last = start + count - 1
    if start > 0:
        container.seek(probe.display_pts[start], stream=stream, backward=True, any_frame=False)
    for frame in container.decode(stream):
        index = rank_of_pts.get(frame.pts)
        if index is None or index < start:
            continue
        if index > last:
            return
        yield index, frame
        if index == last:
            return


def check_decodes(path: Path, probe: VideoProbe, full: bool, start: int = 0, count: int | None = None) -> None:
    """Prove the frames ``[start, start + count)`` decode. Fast: the first frame and the last
    keyframe-to-end stretch of the window. Full: every frame of the window."""
    check_and_sample(path, probe, full, 0, start, count)


def check_and_sample(path: Path, probe: VideoProbe, full: bool, keyframes: int, start: int = 0,
                     count: int | None = None) -> np.ndarray:
    """Prove frames ``[start, start + count)`` decode (as :func:`check_decodes`) and return ``keyframes`` keyframes
    spread over them (as :func:`sample_keyframes`; none for 0), opening the file once and decoding each frame both
    need once: the window's first frame and its last keyframe are sampled keyframes too, and a full check decodes
    every sampled one on its way. Decoding is what an ingest spends most of its time on, so this is what its
    conversion calls (the same frames and pixels as checking and sampling apart, two decodes fewer per camera)."""
    count = probe.frame_count - start if count is None else count
    last = start + count - 1
    picks = _spread_keyframes(probe, keyframes, start, count) if keyframes else []
    if full:
        stretches = [(start, last)]
    else:
        tail_start = max([k for k in probe.keyframe_ranks if start <= k <= last] or [start])
        stretches = [(start, start), (tail_start, last)] + [(rank, rank) for rank in picks]
    with _open(path) as container:
        try:
            decoded, sampled = _decode_stretches(container, probe, stretches, set(picks))
        except av.error.FFmpegError as exc:
            raise VideoError(f"does not decode ({exc})") from exc
    if full and len(decoded) != count:
        raise VideoError(f"decodes to {len(decoded)} frames where {count} are expected")
    for frame in (start, last):
        if frame not in decoded:
            raise VideoError(f"frame {frame} does not decode")
    return _stacked_samples(picks, sampled)


def _decode_stretches(container: av.container.InputContainer, probe: VideoProbe, stretches: list[tuple[int, int]],
                      keep: set[int]) -> tuple[set[int], dict[int, np.ndarray]]:
    """Decode each ``(first, last)`` stretch of display positions — overlapping ones once — seeking to the keyframe
    at or before its first frame; the positions decoded, and the frames at ``keep`` as statistics samples."""
    decoded: set[int] = set()
    sampled: dict[int, np.ndarray] = {}
    merged: list[list[int]] = []
    for first, last in sorted(stretches):
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    for first, last in merged:
        for index, frame in _decode_window(container, probe, first, last - first + 1):
            decoded.add(index)
            if index in keep:
                sampled[index] = _statistics_sample(frame)
    return decoded, sampled


def packet_byte_ranges(path: Path, probe: VideoProbe, start: int = 0, count: int | None = None) -> list[tuple[int, int]]:
    """``(offset, size)`` in the file of every packet that frames ``[start, start + count)`` need: from the keyframe
    at or before ``start`` until every frame of the window has come by (decode order). Demuxing reads only the
    container's index, never a payload, so this works on a copy whose payloads are not there yet — how a remote
    source fetches one episode's bytes of a video shared by many (:mod:`clap_data.sources.remote_files`)."""
    count = probe.frame_count - start if count is None else count
    wanted = set(range(start, min(start + count, probe.frame_count)))
    rank_of_pts = probe.rank_of_pts
    ranges: list[tuple[int, int]] = []
    with _open(path) as container:
        stream = container.streams.video[0]
        if start > 0:
            container.seek(probe.display_pts[start], stream=stream, backward=True, any_frame=False)
        for packet in container.demux(stream):
            if not wanted:
                break
            if packet.size == 0 or packet.pts is None or packet.pos is None or packet.pos < 0:
                continue
            ranges.append((int(packet.pos), int(packet.size)))
            wanted.discard(rank_of_pts.get(packet.pts, -1))
    return ranges


def _output(path: Path) -> av.container.OutputContainer:
    path.parent.mkdir(parents=True, exist_ok=True)
    return av.open(str(path), "w", format="mp4")


def copy_window(src: Path, dst: Path, probe: VideoProbe, fps: int, start: int = 0, count: int | None = None) -> None:
    """Stream-copy frames ``[start, start + count)`` of ``src`` to ``dst``, frame i of the window
    displayed at exactly i / fps. Needs ``probe.can_copy(start)``.

    Display order comes from the source timestamps (``probe.presentation_rank``), so irregular
    or offset source clocks become a regular grid while the compressed frames stay untouched.
    """
    if not probe.can_copy(start):
        raise ValueError(f"frames from {start} on cannot be stream-copied")
    count = probe.frame_count - start if count is None else count
    delay = probe.decode_delay
    with _open(src) as inp, _output(dst) as out:
        ist = inp.streams.video[0]
        ost = out.add_stream_from_template(ist, opaque=True)
        time_base = Fraction(1, fps * TICKS_PER_FRAME)
        ost.time_base = time_base
        if start > 0:
            inp.seek(probe.display_pts[start], stream=ist, backward=True, any_frame=False)
        rank_of_pts = probe.rank_of_pts
        written = 0
        for packet in inp.demux(ist):
            if packet.size == 0 or packet.pts is None:
                continue
            rank = rank_of_pts[packet.pts]
            if rank < start:
                continue
            if rank >= start + count:  # only windows end early, and they have no B-frames
                break
            packet.stream = ost
            packet.time_base = time_base
            packet.pts = (rank - start) * TICKS_PER_FRAME
            packet.dts = (written - delay) * TICKS_PER_FRAME
            packet.duration = TICKS_PER_FRAME
            out.mux(packet)
            written += 1


def _encoder(out: av.container.OutputContainer, codec: str, fps: int, width: int, height: int, gop: int, crf: int):
    """An output stream with clap-data's encoding settings: yuv420p, fixed GOP, no B-frames, so
    every episode starts on a keyframe and random access costs at most ``gop`` decodes."""
    if codec not in _ENCODERS:
        raise VideoError(f"unknown codec {codec!r}; choose one of {', '.join(_ENCODERS)}")
    stream = out.add_stream(_ENCODERS[codec], rate=fps)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = Fraction(1, fps * TICKS_PER_FRAME)
    stream.codec_context.gop_size = gop
    if codec == "av1":
        stream.options = {"crf": str(crf), "preset": "8", "svtav1-params": f"keyint={gop}:scd=0"}
    elif codec == "hevc":
        stream.options = {"crf": str(crf), "x265-params": f"keyint={gop}:min-keyint={gop}:bframes=0:log-level=error"}
    else:
        stream.options = {"crf": str(crf), "bf": "0", "g": str(gop), "keyint_min": str(gop)}
    return stream


def _encode_frames(frames: Iterator[av.VideoFrame], dst: Path, fps: int, size: tuple[int, int] | None,
                   codec: str, gop: int, crf: int) -> int:
    """Encode frames in order, frame i at i / fps; the first frame fixes the size unless given."""
    written = 0
    # Frame timestamps are in our time base, fixed here: the stream's own may change when the
    # muxer writes the header (mp4 raises timescales below 10000, e.g. 15 fps → 1/15360).
    time_base = Fraction(1, fps * TICKS_PER_FRAME)
    with _output(dst) as out:
        stream = None
        try:
            for frame in frames:
                if stream is None:
                    height, width = size or (frame.height, frame.width)
                    stream = _encoder(out, codec, fps, width, height, gop, crf)
                out_frame = frame.reformat(width=stream.width, height=stream.height, format="yuv420p")
                out_frame.pts = written * TICKS_PER_FRAME
                out_frame.time_base = time_base
                for packet in stream.encode(out_frame):
                    out.mux(packet)
                written += 1
            if stream is not None:
                for packet in stream.encode():
                    out.mux(packet)
        except av.error.FFmpegError as exc:
            raise VideoError(f"could not be encoded with {codec} ({exc})") from exc
    return written


def _pick(decoded: Iterator[tuple[int, av.VideoFrame]], start: int, frames: Sequence[int]) -> Iterator[av.VideoFrame]:
    """The decoded frames at offsets ``frames`` from ``start`` (non-decreasing), each as often as
    it is listed: a resampled episode drops frames and may repeat some."""
    wanted = iter(frames)
    offset = next(wanted, None)
    for index, frame in decoded:
        while offset is not None and offset == index - start:
            yield frame
            offset = next(wanted, None)
        if offset is None:
            return


def reencode(src: Path, dst: Path, fps: int, size: tuple[int, int] | None, codec: str, gop: int, crf: int,
             start: int = 0, count: int | None = None, probe: VideoProbe | None = None,
             frames: Sequence[int] | None = None) -> None:
    """Decode frames ``[start, start + count)`` and re-encode them (optionally resized to
    ``(height, width)``), frame-accurately: the output's first frame is exactly frame ``start``.
    ``frames`` keeps only those offsets from ``start``, in order (non-decreasing, repeats allowed)."""
    probe = probe or probe_video(src)
    count = probe.frame_count - start if count is None else count
    if frames is not None and (
        any(b < a for a, b in zip(frames, frames[1:])) or not all(0 <= f < count for f in frames)
    ):
        raise ValueError(f"frames to keep must be non-decreasing offsets below {count}")
    with _open(src) as inp:
        decoded = _decode_window(inp, probe, start, count)
        kept = (frame for _, frame in decoded) if frames is None else _pick(decoded, start, frames)
        written = _encode_frames(kept, dst, fps, size, codec, gop, crf)
    expected = count if frames is None else len(frames)
    if written != expected:
        raise VideoError(f"decodes to {written} of the {expected} frames asked for")


def encode_images(images: Sequence[bytes], dst: Path, fps: int, size: tuple[int, int] | None,
                  codec: str, gop: int, crf: int) -> None:
    """Encode still images (JPEG/PNG bytes, e.g. RLDS frames) into a video, one frame each."""

    def frames() -> Iterator[av.VideoFrame]:
        for number, data in enumerate(images):
            try:
                with Image.open(io.BytesIO(data)) as image:
                    pixels = np.asarray(image.convert("RGB"))
            except (OSError, ValueError) as exc:
                raise VideoError(f"image {number} cannot be decoded ({exc})") from exc
            yield av.VideoFrame.from_ndarray(pixels, format="rgb24")

    _encode_frames(frames(), dst, fps, size, codec, gop, crf)


class VideoConcatenator:
    """Appends regular (``copy_window``) episode videos into one mp4 by stream copy,
    so v3 files hold many episodes without re-encoding. Returns each episode's start/end time."""

    def __init__(self, dst: Path, fps: int):
        self.dst = dst
        self.fps = fps
        self._out: av.container.OutputContainer | None = None
        self._stream = None
        self._next_tick = 0
        self.fingerprint: str | None = None

    @property
    def duration_s(self) -> float:
        return self._next_tick / (self.fps * TICKS_PER_FRAME)

    def append(self, src: Path, frame_count: int, fingerprint: str, start_pts: int | None = None) -> tuple[float, float]:
        """Append ``src`` (an episode's own video, regular-timed), or — with ``start_pts`` — the ``frame_count``
        packets of ``src`` from the one at ``start_pts`` on (a stream without B-frames: its packets are its frames
        in display order), frame i at the episode's start + i / fps."""
        time_base = Fraction(1, self.fps * TICKS_PER_FRAME)
        start_tick = self._next_tick
        with _open(src) as inp:
            ist = inp.streams.video[0]
            if self._out is None:
                self._out = _output(self.dst)
                self._stream = self._out.add_stream_from_template(ist, opaque=True)
                self._stream.time_base = time_base
                self.fingerprint = fingerprint
            elif fingerprint != self.fingerprint:
                raise VideoError("has other codec parameters than the file it would be appended to")
            if start_pts is None:
                self._append_episode_file(inp, ist, start_tick, time_base)
            else:
                self._append_window(inp, ist, start_pts, frame_count, start_tick, time_base)
        self._next_tick = start_tick + frame_count * TICKS_PER_FRAME
        return start_tick / (self.fps * TICKS_PER_FRAME), self.duration_s

    def _append_episode_file(self, inp: av.container.InputContainer, ist: av.video.stream.VideoStream,
                             start_tick: int, time_base: Fraction) -> None:
        # The muxer may have stored the episode at a finer timescale than ours (mp4 raises
        # timescales below 10000, e.g. 15 fps → 1/15360), so rescale instead of assuming ours.
        scale = ist.time_base / time_base
        for packet in inp.demux(ist):
            if packet.size == 0:
                continue
            pts, dts = packet.pts, packet.dts
            self._mux(packet, start_tick + round(pts * scale), start_tick + round(dts * scale), time_base)

    def _append_window(self, inp: av.container.InputContainer, ist: av.video.stream.VideoStream, start_pts: int,
                       frame_count: int, start_tick: int, time_base: Fraction) -> None:
        inp.seek(start_pts, stream=ist, backward=True, any_frame=False)
        written = 0
        for packet in inp.demux(ist):
            if packet.size == 0 or packet.pts is None or packet.pts < start_pts:
                continue
            if written == frame_count:
                break
            tick = start_tick + written * TICKS_PER_FRAME
            self._mux(packet, tick, tick, time_base)
            written += 1
        if written != frame_count:
            raise VideoError(f"ends {frame_count - written} frames before the episode's last frame")

    def _mux(self, packet: av.Packet, pts: int, dts: int, time_base: Fraction) -> None:
        packet.stream = self._stream
        packet.time_base = time_base
        packet.pts, packet.dts = pts, dts
        packet.duration = TICKS_PER_FRAME
        self._out.mux(packet)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def sample_keyframes(path: Path, probe: VideoProbe, count: int, start: int = 0, length: int | None = None) -> np.ndarray:
    """Up to ``count`` keyframes spread over frames ``[start, start + length)`` of the video (``probe`` is its probe:
    it already knows where the keyframes are), as ``[k, H, W, 3]`` uint8, strided as :func:`_statistics_sample` says.

    Keyframes decode on their own, so sampling them costs one decode each (a handful of
    milliseconds) instead of decoding the episode.
    """
    length = probe.frame_count - start if length is None else length
    picks = _spread_keyframes(probe, count, start, length)
    with _open(path) as container:
        try:
            _, sampled = _decode_stretches(container, probe, [(rank, rank) for rank in picks], set(picks))
        except av.error.FFmpegError as exc:
            raise VideoError(f"has keyframes that do not decode ({exc})") from exc
    return _stacked_samples(picks, sampled)


def _spread_keyframes(probe: VideoProbe, count: int, start: int, length: int) -> list[int]:
    """Display positions of up to ``count`` keyframes evenly spread over frames ``[start, start + length)``, the
    first and the last among them."""
    keyframes = sorted(rank for rank in probe.keyframe_ranks if start <= rank < start + length)
    if not keyframes:
        raise VideoError(f"has no keyframe in frames {start} to {start + length - 1}")
    return sorted({keyframes[int(i)] for i in np.linspace(0, len(keyframes) - 1, min(count, len(keyframes)))})


def _statistics_sample(frame: av.VideoFrame, target_side: int = 150, threshold_side: int = 300) -> np.ndarray:
    """A decoded frame as RGB for image statistics: frames whose long side reaches ``threshold_side`` are strided
    down to about ``target_side``, as lerobot does for its own."""
    pixels = frame.to_ndarray(format="rgb24")
    long_side = max(pixels.shape[:2])
    stride = long_side // target_side if long_side >= threshold_side else 1
    return pixels[::stride, ::stride]


def _stacked_samples(picks: list[int], sampled: dict[int, np.ndarray]) -> np.ndarray:
    """The sampled keyframes in display order, ``[k, H, W, 3]``; a pick that did not decode is an error."""
    missing = [rank for rank in picks if rank not in sampled]
    if missing:
        raise VideoError(f"keyframe {picks.index(missing[0])} of {len(picks)} does not decode")
    return np.stack([sampled[rank] for rank in picks]) if picks else np.zeros((0, 0, 0, 3), dtype=np.uint8)


def iter_rgb_frames(path: Path) -> Iterator[tuple[float, np.ndarray]]:
    """Every frame as ``(timestamp_s, HxWx3 uint8)`` in display order: for checks and tests."""
    with _open(path) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            yield float(frame.pts * stream.time_base), frame.to_ndarray(format="rgb24")


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` → ``(height, width)``; both even, as yuv420p needs."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise ValueError(f"size {text!r} is not of the form HEIGHTxWIDTH, e.g. 224x224") from exc
    if height <= 0 or width <= 0 or height % 2 or width % 2:
        raise ValueError(f"size {text!r} needs positive, even height and width")
    return height, width

