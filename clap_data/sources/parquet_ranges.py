"""Which bytes of a parquet file an episode needs, from the file's footer alone: the row groups of its rows and
the column chunks of the columns read. The local reader skips the rest; a remote source fetches only these
(:mod:`clap_data.sources.remote_files`)."""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.parquet as pq


def overlapping_row_groups(parquet: pq.ParquetFile, first: int, stop: int) -> list[int]:
    """The row groups whose ``index`` statistics overlap ``[first, stop)`` (all of them where statistics are
    missing): lerobot writes one row group per episode, so an episode of a v3 file is one or two of them."""
    names = [parquet.schema.column(i).path for i in range(len(parquet.schema))]
    if "index" not in names:
        return list(range(parquet.metadata.num_row_groups))
    leaf = names.index("index")
    groups = []
    for group in range(parquet.metadata.num_row_groups):
        stats = parquet.metadata.row_group(group).column(leaf).statistics
        if stats is None or not stats.has_min_max or (stats.min < stop and stats.max >= first):
            groups.append(group)
    return groups


def _leaves(data_type: pa.DataType) -> int:
    """How many parquet leaf columns an arrow type is stored as."""
    if pa.types.is_struct(data_type):
        return sum(_leaves(data_type.field(i).type) for i in range(data_type.num_fields))
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type) or pa.types.is_fixed_size_list(data_type):
        return _leaves(data_type.value_type)
    if pa.types.is_map(data_type):
        return _leaves(data_type.key_type) + _leaves(data_type.item_type)
    return 1


def leaf_owners(parquet: pq.ParquetFile) -> list[str] | None:
    """The top-level column each leaf column belongs to, in leaf order (names may hold dots, so a leaf's dotted
    path cannot be split); None where the arrow schema does not account for every leaf."""
    owners = [field.name for field in parquet.schema_arrow for _ in range(_leaves(field.type))]
    return owners if len(owners) == parquet.metadata.num_columns else None


def column_chunk_ranges(parquet: pq.ParquetFile, groups: Iterable[int], columns: list[str]) -> list[tuple[int, int]]:
    """``(offset, length)`` of the column chunks of ``columns`` (top-level names) in the row groups ``groups``:
    every column's where the schema cannot be mapped to leaves."""
    wanted = set(columns)
    owners = leaf_owners(parquet)
    ranges = []
    for group in groups:
        row_group = parquet.metadata.row_group(group)
        for i in range(row_group.num_columns):
            if owners is not None and owners[i] not in wanted:
                continue
            chunk = row_group.column(i)
            offsets = [chunk.data_page_offset]
            if chunk.has_dictionary_page and chunk.dictionary_page_offset:
                offsets.append(chunk.dictionary_page_offset)
            ranges.append((min(offsets), chunk.total_compressed_size))
    return ranges
