"""Telling a URL from a folder on the command line, without importing what reads URLs (fsspec, the Hub client):
every command that takes a dataset or a source accepts both (:mod:`clap_data.sources.remote_files`)."""

from __future__ import annotations

import os


def is_url(src: str | os.PathLike[str]) -> bool:
    """Whether ``src`` names a remote location (``scheme://…``, e.g. ``hf://datasets/ORG/NAME``) rather than a
    path on this machine."""
    return "://" in str(src)
