"""Video probing, validation, stream copy, re-encoding and concatenation with PyAV.

Stream copy is the default everywhere: decoding and re-encoding HEVC at 1280×720 costs orders of
magnitude more than moving packets, and copied packets decode to bit-identical frames. Timestamps
are rewritten on the way so that frame i of an episode sits exactly at i / fps, which is what
LeRobot's reader looks up (within 1e-4 s).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

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
    frame_count: int
    presentation_rank: tuple[int, ...]  # for each packet in decode order, its display position
    last_keyframe_pts: int
    last_pts: int
    codec_fingerprint: str  # equal fingerprints can be concatenated by stream copy

    @property
    def decode_delay(self) -> int:
        """How many frames decode order runs ahead of display order (0 without B-frames)."""
        return max([0] + [i - r for i, r in enumerate(self.presentation_rank)])


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
    """Demux every packet of the first video stream: counts frames and finds truncation."""
    with _open(path) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        pts_list: list[int] = []
        last_key = None
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue
                if packet.pts is None:
                    raise VideoError(f"packet {len(pts_list)} has no timestamp")
                if packet.is_keyframe:
                    last_key = packet.pts
                pts_list.append(packet.pts)
        except av.error.FFmpegError as exc:
            raise VideoError(f"is corrupt after {len(pts_list)} frames ({exc})") from exc
        if not pts_list:
            raise VideoError("has no frames")
        if last_key is None:
            raise VideoError("has no keyframe")
        extradata = bytes(ctx.extradata or b"")
        fingerprint = hashlib.sha256(
            f"{ctx.codec.canonical_name}|{ctx.width}x{ctx.height}|{ctx.pix_fmt}|".encode() + extradata
        ).hexdigest()
        order = np.argsort(np.asarray(pts_list), kind="stable")
        rank = np.empty(len(pts_list), dtype=np.int64)
        rank[order] = np.arange(len(pts_list))
        return VideoProbe(
            codec=ctx.codec.canonical_name,
            width=ctx.width,
            height=ctx.height,
            pix_fmt=ctx.pix_fmt or "unknown",
            frame_count=len(pts_list),
            presentation_rank=tuple(int(r) for r in rank),
            last_keyframe_pts=int(last_key),
            last_pts=int(max(pts_list)),
            codec_fingerprint=fingerprint,
        )


def check_decodes(path: Path, probe: VideoProbe, full: bool) -> None:
    """Prove the frames decode. Fast: the first frame and the last GOP. Full: every frame."""
    with _open(path) as container:
        stream = container.streams.video[0]
        try:
            if full:
                decoded = sum(1 for _ in container.decode(stream))
                if decoded != probe.frame_count:
                    raise VideoError(f"decodes to {decoded} frames but holds {probe.frame_count}")
                return
            next(iter(container.decode(stream)))
            container.seek(probe.last_keyframe_pts, stream=stream, backward=True, any_frame=False)
            tail = [f.pts for f in container.decode(stream)]
        except StopIteration as exc:
            raise VideoError("decodes to no frame") from exc
        except av.error.FFmpegError as exc:
            raise VideoError(f"does not decode ({exc})") from exc
        if probe.last_pts not in tail:
            raise VideoError("its last frame does not decode")


def _output(path: Path) -> av.container.OutputContainer:
    path.parent.mkdir(parents=True, exist_ok=True)
    return av.open(str(path), "w", format="mp4")


def copy_with_frame_timestamps(src: Path, dst: Path, probe: VideoProbe, fps: int) -> None:
    """Stream-copy ``src`` to ``dst`` with frame i displayed at exactly i / fps.

    Display order comes from the source timestamps (``probe.presentation_rank``), so irregular
    or offset source clocks become a regular grid while the compressed frames stay untouched.
    """
    delay = probe.decode_delay
    with _open(src) as inp, _output(dst) as out:
        ist = inp.streams.video[0]
        ost = out.add_stream_from_template(ist, opaque=True)
        time_base = Fraction(1, fps * TICKS_PER_FRAME)
        ost.time_base = time_base
        index = 0
        for packet in inp.demux(ist):
            if packet.size == 0:
                continue
            packet.stream = ost
            packet.time_base = time_base
            packet.pts = probe.presentation_rank[index] * TICKS_PER_FRAME
            packet.dts = (index - delay) * TICKS_PER_FRAME
            packet.duration = TICKS_PER_FRAME
            out.mux(packet)
            index += 1


def reencode(
    src: Path, dst: Path, fps: int, size: tuple[int, int] | None, codec: str, gop: int, crf: int
) -> None:
    """Decode and re-encode (optionally resized to ``(height, width)``), one frame per 1/fps."""
    if codec not in _ENCODERS:
        raise VideoError(f"unknown codec {codec!r}; choose one of {', '.join(_ENCODERS)}")
    with _open(src) as inp, _output(dst) as out:
        ist = inp.streams.video[0]
        height, width = size or (ist.codec_context.height, ist.codec_context.width)
        ost = out.add_stream(_ENCODERS[codec], rate=fps)
        ost.width, ost.height, ost.pix_fmt = width, height, "yuv420p"
        ost.time_base = Fraction(1, fps * TICKS_PER_FRAME)
        ost.codec_context.gop_size = gop
        if codec == "av1":
            ost.options = {"crf": str(crf), "preset": "8", "svtav1-params": f"keyint={gop}:scd=0"}
        elif codec == "hevc":
            ost.options = {"crf": str(crf), "x265-params": f"keyint={gop}:min-keyint={gop}:bframes=0:log-level=error"}
        else:
            ost.options = {"crf": str(crf), "bf": "0", "g": str(gop), "keyint_min": str(gop)}
        for index, frame in enumerate(inp.decode(ist)):
            out_frame = frame.reformat(width=width, height=height, format="yuv420p")
            out_frame.pts = index * TICKS_PER_FRAME
            out_frame.time_base = ost.time_base
            for packet in ost.encode(out_frame):
                out.mux(packet)
        for packet in ost.encode():
            out.mux(packet)


class VideoConcatenator:
    """Appends regular (``copy_with_frame_timestamps``) episode videos into one mp4 by stream copy,
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

    def append(self, src: Path, frame_count: int, fingerprint: str) -> tuple[float, float]:
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
            for packet in inp.demux(ist):
                if packet.size == 0:
                    continue
                pts, dts = packet.pts, packet.dts
                packet.stream = self._stream
                packet.time_base = time_base
                packet.pts = start_tick + pts
                packet.dts = start_tick + dts
                packet.duration = TICKS_PER_FRAME
                self._out.mux(packet)
        self._next_tick = start_tick + frame_count * TICKS_PER_FRAME
        return start_tick / (self.fps * TICKS_PER_FRAME), self.duration_s

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def sample_keyframes(path: Path, count: int, target_side: int = 150, threshold_side: int = 300) -> np.ndarray:
    """Up to ``count`` keyframes spread over the video, as ``[k, H, W, 3]`` uint8.

    Keyframes decode on their own, so sampling them costs one decode each (a handful of
    milliseconds) instead of decoding the episode. Frames whose long side reaches
    ``threshold_side`` are strided down to about ``target_side``, as lerobot does for its image
    statistics.
    """
    with _open(path) as container:
        stream = container.streams.video[0]
        keyframes = [p.pts for p in container.demux(stream) if p.size and p.is_keyframe and p.pts is not None]
        picks = sorted({keyframes[int(i)] for i in np.linspace(0, len(keyframes) - 1, min(count, len(keyframes)))})
        frames = []
        for pts in picks:
            container.seek(pts, stream=stream, backward=True, any_frame=False)
            frame = next(iter(container.decode(stream))).to_ndarray(format="rgb24")
            long_side = max(frame.shape[:2])
            stride = long_side // target_side if long_side >= threshold_side else 1
            frames.append(frame[::stride, ::stride])
    return np.stack(frames)


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

