"""What every fixture factory needs: test videos in a source's codec settings (flat gray, or given frames)
and a safe way to rewrite its folder."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def encode_rgb_frames(
    path: Path, frames: Iterable[np.ndarray], size: tuple[int, int], fps: int, encoder: str, options: dict[str, str],
    gop: int, stream_time_base: Fraction | None = None,
) -> None:
    """RGB frames ``[H, W, 3]`` uint8 encoded with a source's own codec settings (codec, GOP, time
    base: they decide how a reader must seek), pts = frame number."""
    width, height = size
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(encoder, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if stream_time_base is not None:
            stream.time_base = stream_time_base
        stream.codec_context.time_base = Fraction(1, fps)
        stream.codec_context.gop_size = gop
        stream.options = options
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def encode_gray_video(
    path: Path, levels: Sequence[int], size: tuple[int, int], fps: int, encoder: str, options: dict[str, str],
    gop: int, stream_time_base: Fraction | None = None,
) -> None:
    """One flat frame per gray level (flat areas survive lossy codecs, so a test can read the
    level back and know which frame it decoded), encoded as :func:`encode_rgb_frames`."""
    width, height = size
    flat = (np.full((height, width, 3), level, dtype=np.uint8) for level in levels)
    encode_rgb_frames(path, flat, size, fps, encoder, options, gop, stream_time_base)


def clear_generated(root: Path, overwrite: bool, is_ours: Callable[[Path], bool], what: str) -> None:
    """Empty ``root`` for a new generated dataset — only when asked to, and only if it holds one
    generated before (``is_ours``): a factory must never delete a user's folder."""
    if not root.exists() or not any(root.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"{root} is not empty; pass overwrite=True to replace a generated {what}")
    if not is_ours(root):
        raise FileExistsError(f"{root} is not empty and holds no {what}; refusing to replace it")
    shutil.rmtree(root)
