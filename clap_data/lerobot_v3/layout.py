"""Paths and file-rolling rules of LeRobot v3.0 (lerobot/datasets/utils.py), stated once."""

from __future__ import annotations

from dataclasses import dataclass

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk folder
DATA_FILE_SIZE_MB = 100
VIDEO_FILE_SIZE_MB = 200
EPISODES_PER_META_FILE = 10_000

DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
QUARANTINE_PATH = "quarantine.parquet"


@dataclass
class FileCursor:
    """(chunk, file) position of a rolling output; ``advance`` mirrors lerobot's
    ``update_chunk_file_indices`` so our numbering is the one lerobot expects."""

    chunk_index: int = 0
    file_index: int = 0

    def advance(self) -> None:
        self.file_index += 1
        if self.file_index == CHUNKS_SIZE:
            self.chunk_index += 1
            self.file_index = 0

    def path(self, template: str, **extra: str) -> str:
        return template.format(chunk_index=self.chunk_index, file_index=self.file_index, **extra)
