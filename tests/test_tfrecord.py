"""TFRecord framing, CRC-32C and tf.train.Example protos, checked against published test
vectors, an independent bit-by-bit CRC and hand-assembled protobuf wire bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from clap_data.tfrecord import (
    DecodeError,
    Feature,
    RecordSpan,
    TFRecordError,
    crc32c,
    encode_example,
    encode_sequence_example,
    frame_record,
    iter_record_spans,
    iter_records,
    masked_crc32c,
    parse_example,
    parse_sequence_example,
    read_record,
    write_records,
)


def bitwise_crc32c(data: bytes) -> int:
    """CRC-32C straight from its definition (reflected polynomial 0x82F63B78), one bit at a time."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"123456789", 0xE3069283),  # the CRC catalogue's check value
        (bytes(32), 0x8A9136AA),  # RFC 3720 B.4
        (b"\xff" * 32, 0x62A8AB43),
        (bytes(range(32)), 0x46DD794E),
        (bytes(range(31, -1, -1)), 0x113FDB5C),
        (b"", 0),
    ],
)
def test_crc32c_published_vectors(data, expected):
    assert crc32c(data) == expected


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 33_333, 200_003])
def test_crc32c_lanes_match_the_definition(size):
    """Sizes at and beyond the switch to the lane-parallel path, including ragged tails."""
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    assert crc32c(data) == bitwise_crc32c(data)


def test_masked_crc_formula():
    crc = bitwise_crc32c(b"abc")
    assert masked_crc32c(b"abc") == ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def test_frame_layout_is_length_crc_data_crc():
    framed = frame_record(b"hello")
    assert framed[:8] == struct.pack("<Q", 5)
    assert struct.unpack("<I", framed[8:12])[0] == masked_crc32c(struct.pack("<Q", 5))
    assert framed[12:17] == b"hello"
    assert struct.unpack("<I", framed[17:])[0] == masked_crc32c(b"hello")


@pytest.fixture
def shard(tmp_path) -> Path:
    path = tmp_path / "x.tfrecord-00000-of-00001"
    write_records(path, [b"a" * 10, b"", b"b" * 5000])
    return path


def test_spans_come_from_headers_and_records_read_back(shard):
    spans = list(iter_record_spans(shard))
    assert spans == [RecordSpan(0, 0, 10), RecordSpan(1, 26, 0), RecordSpan(2, 42, 5000)]
    assert spans[-1].end == shard.stat().st_size
    assert [read_record(shard, s.offset) for s in spans] == [b"a" * 10, b"", b"b" * 5000]
    assert list(iter_records(shard)) == [b"a" * 10, b"", b"b" * 5000]


def test_truncated_payload_names_shard_and_offset(shard):
    shard.write_bytes(shard.read_bytes()[:-100])
    spans = []
    with pytest.raises(TFRecordError) as error:
        for span in iter_record_spans(shard):
            spans.append(span)
    assert len(spans) == 2, "the records before the cut are still listed"
    assert (error.value.kind, error.value.offset) == ("truncated", 42)
    assert str(error.value) == f"{shard}: the 5000-byte record is cut short: the file ends 100 bytes early (record at byte offset 42)"
    with pytest.raises(TFRecordError, match="cut short"):
        read_record(shard, 42)


def test_truncated_header(shard):
    shard.write_bytes(shard.read_bytes()[:42 + 5])
    with pytest.raises(TFRecordError) as error:
        list(iter_record_spans(shard))
    assert error.value.kind == "truncated" and error.value.offset == 42
    assert "the record header is cut short (5 of 12 bytes)" in str(error.value)


def test_flipped_payload_byte_fails_the_data_crc_only_when_read(shard):
    raw = bytearray(shard.read_bytes())
    raw[42 + 12 + 1000] ^= 0x01
    shard.write_bytes(bytes(raw))
    assert len(list(iter_record_spans(shard))) == 3, "listing reads headers only"
    with pytest.raises(TFRecordError) as error:
        read_record(shard, 42)
    assert (error.value.kind, error.value.offset) == ("crc_mismatch", 42)
    assert "the 5000-byte record fails its data CRC check" in str(error.value)


def test_corrupt_length_field_stops_the_scan(shard):
    raw = bytearray(shard.read_bytes())
    raw[26] ^= 0x40  # length of record 1
    shard.write_bytes(bytes(raw))
    spans = []
    with pytest.raises(TFRecordError) as error:
        for span in iter_record_spans(shard):
            spans.append(span)
    assert spans == [RecordSpan(0, 0, 10)]
    assert (error.value.kind, error.value.offset) == ("crc_mismatch", 26)
    assert "length field fails its CRC check" in str(error.value)


# Example{features{feature{key:"a" value{int64_list{value:[1, 2]}}}}}, assembled by hand:
# Int64List 0a 02 01 02 (packed) | Feature 1a 04 .. | entry 0a 01 'a' 12 06 .. | Features 0a 0b .. | Example 0a 0d ..
PACKED_INT64_EXAMPLE = bytes.fromhex("0a0d" "0a0b" "0a0161" "1206" "1a04" "0a020102")
# The same list unpacked (one varint per value, tag 08), as older writers may emit it.
UNPACKED_INT64_EXAMPLE = bytes.fromhex("0a0d" "0a0b" "0a0161" "1206" "1a04" "08010802")
# feature "f": float_list with 1.5 unpacked (tag 0d + fixed32) and feature "s": bytes_list ["hi"].
MIXED_EXAMPLE = bytes.fromhex("0a1b" "0a0c" "0a0166" "1207" "1205" "0d0000c03f" "0a0b" "0a0173" "1206" "0a04" "0a026869")


def test_encoding_matches_tensorflow_wire_bytes():
    assert encode_example({"a": Feature.ints([1, 2])}) == PACKED_INT64_EXAMPLE


@pytest.mark.parametrize("data", [PACKED_INT64_EXAMPLE, UNPACKED_INT64_EXAMPLE])
def test_packed_and_unpacked_lists_parse_alike(data):
    example = parse_example(data)
    assert example.keys() == ["a"]
    assert example.kind("a") == "int64_list" and example.size("a") == 2
    feature = example.get("a")
    assert feature.values.dtype == np.int64 and feature.values.tolist() == [1, 2]


def test_unpacked_floats_and_bytes_parse():
    example = parse_example(MIXED_EXAMPLE)
    assert example.get("f").kind == "float_list" and example.get("f").values.tolist() == [1.5]
    assert example.get("s") == Feature("bytes_list", [b"hi"])


def test_round_trip_of_every_kind():
    features = {
        "floats": Feature.floats(np.array([[0.1, 2.0], [3.0, -4.5]], dtype=np.float64)),
        "ints": Feature.ints(np.array([True, False, True])),
        "text": Feature.bytes(["héllo", b"\x00raw"]),
        "empty": Feature("", []),
    }
    example = parse_example(encode_example(features))
    assert example.keys() == ["empty", "floats", "ints", "text"]
    np.testing.assert_array_equal(example.get("floats").values, np.float32([0.1, 2.0, 3.0, -4.5]))
    assert example.get("ints").values.tolist() == [1, 0, 1]
    assert example.get("text").values == ["héllo".encode(), b"\x00raw"]
    assert example.kind("empty") == "" and example.size("empty") == 0 and example.get("empty").values == []
    with pytest.raises(KeyError):
        example.get("absent")


def test_sequence_example_round_trip():
    data = encode_sequence_example(
        {"id": Feature.bytes(["ep0"])},
        {"pos": [Feature.floats([1.0, 2.0]), Feature.floats([3.0])], "tok": [Feature.ints([7])]},
    )
    context, lists = parse_sequence_example(data)
    assert context.get("id").values == [b"ep0"]
    assert [f.values.tolist() for f in lists["pos"]] == [[1.0, 2.0], [3.0]]
    assert lists["tok"][0].kind == "int64_list" and lists["tok"][0].values.tolist() == [7]


def test_garbage_is_not_an_example():
    with pytest.raises(DecodeError):
        parse_example(b"\xff\xff\xff\xff")
