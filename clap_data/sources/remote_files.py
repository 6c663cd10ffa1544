"""A LeRobot-layout source on the Hugging Face Hub (``hf://datasets/ORG/NAME[@REV][/SUBDIR]``) or at any fsspec
URL, read without downloading it.

The driver copies the dataset's ``meta/`` folder into a local cache (:func:`metadata_mirror`) and lists episodes
from it, exactly as for a local folder. A worker then fetches only what its episode needs into a
:class:`SparseCopy` — a local file as long as the remote one that holds the fetched byte ranges and holes
elsewhere — and reads it with the same local readers (pyarrow, PyAV) as any other source:

- a data file: its footer, then the column chunks of the episode's row groups (v3 files hold many episodes, one
  row group each) for the columns read;
- a video file: its MP4 boxes other than the payload (``ftyp``, ``moov``: the index), then the packets of the
  episode's frames, found by demuxing the index (:func:`clap_data.video.packet_byte_ranges`).

Nothing else of a shared file is fetched, so the bytes moved per episode stay close to its own bytes plus the
files' metadata, and a worker keeps the metadata of the files it has read, for their next episodes. Each range is
fetched with retries (:data:`ATTEMPTS`, backing off); a range that still fails quarantines the episode with that
reason, and rerunning the same command tries it again (the run resumes).
Hub sources are pinned to the commit they resolve to when listed, so every worker, and a resumed run, reads the
same bytes; a branch that moves in between makes a new run, not a mixed one.

:class:`RemoteFolder` (the pinned location, its filesystem and the metadata mirror) is what ``sql`` and ``stats``
use for a dataset at a URL (:mod:`clap_data.corpus`); :class:`RemoteFiles` adds the per-episode fetches.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import struct
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pyarrow.parquet as pq

from clap_data import video
from clap_data.errors import ClapDataError
from clap_data.locking import process_alive
from clap_data.sources.base import EpisodeRejected, VideoWindow
from clap_data.sources.parquet_ranges import column_chunk_ranges, overlapping_row_groups

T = TypeVar("T")
ATTEMPTS = 5  # per byte range
FIRST_BACKOFF_S = 0.25  # doubled after each failed attempt
METADATA_FOLDER = "meta"
_HF_URL = re.compile(r"^hf://(?P<kind>datasets|spaces|models)/(?P<org>[^/@]+)/(?P<name>[^/@]+)(?:@(?P<rev>[^/]+))?(?P<sub>/.*)?$")
_PAYLOAD_BOX = b"mdat"
FETCH_PREFIX = "clap-data-fetch-"  # + process id: the temporary names of fetched copies
_ORPHANS_REMOVED = False
INDEX_CACHE_FILES = 32  # files whose index a worker keeps (a large MP4's is ~1 MB)
_INDEX_CACHE: OrderedDict[tuple[str, int], list[tuple[int, bytes]]] = OrderedDict()


def cache_home() -> Path:
    """Where metadata mirrors are kept: ``$CLAP_DATA_CACHE``, else ``$XDG_CACHE_HOME/clap-data``, else
    ``~/.cache/clap-data``."""
    if os.environ.get("CLAP_DATA_CACHE"):
        return Path(os.environ["CLAP_DATA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clap-data"


def _transient(exc: BaseException) -> bool:
    """Whether an error fetching a range may go away on retry: network trouble, server errors, throttling — not a
    missing file or a refused request."""
    if isinstance(exc, FileNotFoundError | PermissionError | IsADirectoryError | NotADirectoryError):
        return False
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status is None or status == 429 or status >= 500


def _with_retries(action: Callable[[], T]) -> T:
    """``action()``, retried on transient errors with exponential backoff (:data:`ATTEMPTS` in all); the last error
    is re-raised."""
    attempt = 0
    while True:
        try:
            return action()
        except Exception as exc:
            attempt += 1
            if attempt == ATTEMPTS or not _transient(exc):
                raise
            time.sleep(FIRST_BACKOFF_S * 2 ** (attempt - 1))


class RemoteFolder:
    """A dataset folder at a URL: its filesystem (``fs``, ``base``), its pinned ``location``, and ``root``, the local
    mirror of its ``meta/`` folder (and of the top-level files ``also`` names, where they exist)."""

    def __init__(self, url: str, also: tuple[str, ...] = ()):
        import fsspec

        self.location = _pinned(url)
        try:
            self.fs, self.base = fsspec.core.url_to_fs(self.location)
        except (ImportError, ValueError) as exc:
            raise ClapDataError(f"{url} cannot be opened: {exc}") from None
        self.root = metadata_mirror(self.fs, self.base, self.location, also)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"

    def _remote(self, relative: str) -> str:
        return f"{self.base.rstrip('/')}/{relative}"

    def glob(self, pattern: str) -> list[str]:
        """The paths, relative to the folder, of its files matching ``pattern`` (listing only, nothing fetched)."""
        base = self.base.rstrip("/")
        try:
            found = _with_retries(lambda: self.fs.glob(f"{base}/{pattern}"))
        except Exception as exc:
            raise ClapDataError(f"{self.location}: {pattern} cannot be listed ({exc})") from None
        return sorted(str(path)[len(base) + 1:] for path in found)


class RemoteFiles(RemoteFolder):
    """A remote LeRobot dataset read by an ingest: listing from the metadata mirror, per-episode sparse fetches."""

    @contextmanager
    def data_file(self, relative: str, columns: list[str], rows: tuple[int, int] | None) -> Iterator[Path]:
        """A local sparse copy of a data file holding its footer and, for ``columns``, the row groups whose ``index``
        overlaps ``rows`` (every row group when None); removed after the block."""
        with SparseCopy.temporary(self, relative, suffix=".parquet") as copy:
            with copy.caching_index():
                footer_length = struct.unpack("<I", copy.read(copy.size - 8, 4))[0] if copy.size >= 12 else copy.size
                if footer_length + 8 > copy.size:
                    raise EpisodeRejected("unreadable_file", relative, f"data file {relative} is not a parquet file (no footer)")
                copy.fetch([(copy.size - 8 - footer_length, footer_length + 8)])
            parquet = _open_parquet(copy.path, relative)
            groups = range(parquet.metadata.num_row_groups) if rows is None else overlapping_row_groups(parquet, *rows)
            copy.fetch(column_chunk_ranges(parquet, groups, columns))
            yield copy.path

    def video_window(self, relative: str, start: int, count: int | None) -> VideoWindow:
        """A local sparse copy of a video file holding its index and the packets of frames ``[start, start +
        count)``, as a window marked ``fetched`` (conversion stages its frames and deletes it)."""
        with SparseCopy.temporary(self, relative, suffix=".mp4", keep=True) as copy:
            with copy.caching_index():
                boxes = mp4_boxes(copy, relative)
                copy.fetch((offset, header if kind == _PAYLOAD_BOX else size) for kind, offset, size, header in boxes)
            try:
                probe = video.probe_video(copy.path)
                if start + (count or 0) <= probe.frame_count:  # otherwise validation names the missing frames
                    copy.fetch(video.packet_byte_ranges(copy.path, probe, start, count))
            except video.VideoError as exc:
                raise EpisodeRejected("bad_video", relative, f"video file {relative} {exc}") from None
            return VideoWindow(copy.path, start, count, name=relative, fetched=True)


class SparseCopy:
    """A local file as long as a remote one, holding only the byte ranges fetched so far; the rest reads as zeros
    and takes no disk space. ``fetched_bytes`` counts what was transferred."""

    def __init__(self, files: RemoteFiles, relative: str, path: Path):
        self.relative, self.path, self.fetched_bytes = relative, path, 0
        self._fs, self._remote = files.fs, files._remote(relative)
        self._have: list[tuple[int, int]] = []  # fetched [start, end) ranges
        self._recording: list[tuple[int, bytes]] | None = None  # see caching_index
        self._file: Any = None
        try:
            self.size = int(_with_retries(lambda: self._fs.size(self._remote)))
        except FileNotFoundError:
            raise EpisodeRejected("missing_file", relative, f"{relative} is missing from {files.location}") from None
        except Exception as exc:
            raise EpisodeRejected("fetch_failed", relative, _fetch_failure(relative, exc)) from None
        with open(path, "r+b") as local:
            local.truncate(self.size)

    @classmethod
    @contextmanager
    def temporary(cls, files: RemoteFiles, relative: str, suffix: str, keep: bool = False) -> Iterator[SparseCopy]:
        """A copy in a fresh temporary file: removed after the block, or (``keep``) only if the block fails."""
        _remove_orphans()
        handle, name = tempfile.mkstemp(prefix=f"{FETCH_PREFIX}{os.getpid()}-", suffix=suffix)
        os.close(handle)
        path = Path(name)
        copy = None
        try:
            copy = cls(files, relative, path)
            yield copy
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        finally:
            if copy is not None:
                copy.close()
        if not keep:
            path.unlink(missing_ok=True)

    @contextmanager
    def caching_index(self) -> Iterator[None]:
        """The ranges fetched inside the block are the file's index (a parquet footer, the MP4 boxes around the
        frames): they are kept in this process (:data:`INDEX_CACHE_FILES` files) and written from there for the
        next episode of the same file instead of fetched again — a worker converts many episodes of one file."""
        key = (self._remote, self.size)
        cached = _INDEX_CACHE.get(key)
        if cached is not None:
            _INDEX_CACHE.move_to_end(key)
            with open(self.path, "r+b") as local:
                for offset, data in cached:
                    local.seek(offset)
                    local.write(data)
            self._have = _merged([*self._have, *((offset, offset + len(data)) for offset, data in cached)])
            yield
            return
        self._recording = []
        try:
            yield
            _INDEX_CACHE[key] = self._recording
            while len(_INDEX_CACHE) > INDEX_CACHE_FILES:
                _INDEX_CACHE.popitem(last=False)
        finally:
            self._recording = None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read(self, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset + length)`` of the file, fetched first where they are not yet here."""
        self.fetch([(offset, length)])
        with open(self.path, "rb") as local:
            local.seek(offset)
            return local.read(length)

    def fetch(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Fetch the ``(offset, length)`` ranges not fetched yet, neighbours merged into one request each."""
        for start, end in _merged((max(o, 0), min(o + n, self.size)) for o, n in ranges if n > 0):
            for gap_start, gap_end in _missing(start, end, self._have):
                data = self._fetch_range(gap_start, gap_end)
                with open(self.path, "r+b") as local:
                    local.seek(gap_start)
                    local.write(data)
                self.fetched_bytes += len(data)
                if self._recording is not None:
                    self._recording.append((gap_start, data))
                self._have = _merged([*self._have, (gap_start, gap_end)])

    def _fetch_range(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` from the remote file, with retries; the episode is rejected if they cannot be had."""
        try:
            return _with_retries(lambda: self._read_remote(start, end))
        except FileNotFoundError:
            raise EpisodeRejected("missing_file", self.relative, f"{self.relative} is missing from the source") from None
        except Exception as exc:
            raise EpisodeRejected("fetch_failed", self.relative, _fetch_failure(self.relative, exc)) from None

    def _read_remote(self, start: int, end: int) -> bytes:
        try:
            if self._file is None:
                self._file = self._fs.open(self._remote, "rb", cache_type="none")
            self._file.seek(start)
            data = self._file.read(end - start)
        except Exception:
            self.close()  # a broken connection: reopen on the next attempt
            raise
        if len(data) != end - start:
            self.close()
            raise OSError(f"got {len(data)} bytes of range {start}-{end - 1}, expected {end - start}")
        return data


def _remove_orphans() -> None:
    """Delete the fetched copies that processes killed mid-episode (``kill -9``) left in the temporary folder: their
    names carry the process id. Once per process, before its first fetch."""
    global _ORPHANS_REMOVED
    if _ORPHANS_REMOVED:
        return
    _ORPHANS_REMOVED = True
    for path in Path(tempfile.gettempdir()).glob(f"{FETCH_PREFIX}*-*"):
        pid = path.name[len(FETCH_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            path.unlink(missing_ok=True)


def _fetch_failure(relative: str, exc: BaseException) -> str:
    return (f"{relative} could not be fetched after {ATTEMPTS} attempts ({type(exc).__name__}: {exc}); "
            "rerun the same command to try this episode again")


def _merged(ranges: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """``[start, end)`` ranges sorted, with overlapping or touching ones joined."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(r for r in ranges if r[1] > r[0]):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _missing(start: int, end: int, have: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of ``[start, end)`` not covered by the merged ranges ``have``."""
    gaps, cursor = [], start
    for have_start, have_end in have:
        if have_end <= cursor or have_start >= end:
            continue
        if have_start > cursor:
            gaps.append((cursor, have_start))
        cursor = max(cursor, have_end)
    if cursor < end:
        gaps.append((cursor, end))
    return gaps


def _open_parquet(path: Path, relative: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except Exception as exc:
        raise EpisodeRejected("unreadable_file", relative, f"data file {relative} cannot be read ({exc})") from None


def mp4_boxes(copy: SparseCopy, relative: str) -> list[tuple[bytes, int, int, int]]:
    """The top-level boxes of an MP4 file as ``(type, offset, size, header size)``, read header by header."""
    boxes, offset = [], 0
    while offset + 8 <= copy.size:
        size, kind = struct.unpack(">I4s", copy.read(offset, 8))
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", copy.read(offset + 8, 8))[0], 16
        elif size == 0:
            size = copy.size - offset
        if size < header or not re.fullmatch(rb"[\x20-\x7e]{4}", kind):
            raise EpisodeRejected(
                "bad_video", relative,
                f"video file {relative} is not an MP4 file (no box at byte {offset}); a remote source's videos "
                "are read by byte range, which needs MP4",
            )
        boxes.append((kind, offset, size, header))
        offset += size
    return boxes


def _pinned(url: str) -> str:
    """``url`` with a Hub revision replaced by the commit it resolves to now (branches move; a commit does not)."""
    match = _HF_URL.match(url.rstrip("/"))
    if match is None:
        if url.startswith("hf://"):
            raise ClapDataError(f"{url} is not a Hub dataset URL; write hf://datasets/ORG/NAME[@REVISION][/FOLDER]")
        return url.rstrip("/")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    kind = match["kind"][:-1]
    repo_id = f"{match['org']}/{match['name']}"
    try:
        sha = HfApi().repo_info(repo_id, repo_type=kind, revision=match["rev"]).sha
    except RevisionNotFoundError:
        raise ClapDataError(f"{url}: the {kind} {repo_id} has no revision {match['rev']!r}") from None
    except RepositoryNotFoundError:
        raise ClapDataError(f"{url}: no {kind} {repo_id} on the Hub (or it is private and no token is set)") from None
    except (HfHubHTTPError, OSError) as exc:
        raise ClapDataError(f"{url}: the Hub cannot be reached ({exc})") from None
    return f"hf://{match['kind']}/{repo_id}@{sha}{(match['sub'] or '').rstrip('/')}"


def metadata_mirror(fs: Any, base: str, location: str, also: tuple[str, ...] = ()) -> Path:
    """A local copy of the dataset's ``meta/`` folder (and of the top-level files ``also`` names, where they exist),
    what listing reads. Kept in :func:`cache_home` per location; a pinned Hub commit is reused as it is, any other
    location is fetched afresh. The folder is named like the dataset, so messages and provenance name it as they
    would a local copy."""
    name = location.split("@")[0].rstrip("/").rsplit("/", 1)[-1] or "source"
    slot = cache_home() / "sources" / hashlib.sha256(location.encode()).hexdigest()[:16]
    mirror = slot / name
    pinned = location.startswith("hf://") and "@" in location
    if pinned and (slot / "complete").is_file():
        return mirror
    remote = f"{base.rstrip('/')}/{METADATA_FOLDER}"
    try:
        found = _with_retries(lambda: fs.find(remote))
    except Exception as exc:
        raise ClapDataError(f"{location}: its metadata folder cannot be listed ({exc})") from None
    if not found:
        raise ClapDataError(f"{location} has no {METADATA_FOLDER}/ folder; is it a LeRobot dataset?")
    found += [f"{base.rstrip('/')}/{name}" for name in also if _with_retries(lambda n=name: fs.isfile(f"{base.rstrip('/')}/{n}"))]
    building = slot.with_name(f".{slot.name}.tmp-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    try:
        for path in found:
            relative = path[len(base.rstrip("/")) + 1:]
            target = building / name / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            _with_retries(lambda p=path, t=target: fs.get_file(p, str(t)))
        (building / "complete").write_text(location + "\n")
        shutil.rmtree(slot, ignore_errors=True)
        os.rename(building, slot)
    except Exception as exc:
        raise ClapDataError(f"{location}: its metadata cannot be fetched ({type(exc).__name__}: {exc})") from None
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return mirror
