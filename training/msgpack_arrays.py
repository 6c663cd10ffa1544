"""msgpack with numpy arrays: the frame format of the policy server (:mod:`clap_data.training.policy_server`).

Robot clients of this field (openpi's websocket policy clients, LeRobot's async inference) send observations as
msgpack maps with arrays inline, because msgpack is fast, has bindings in every language a robot stack is written
in, and carries raw bytes without base64. An array travels as the map::

    {"__ndarray__": True, "data": <raw bytes, C order>, "dtype": "<f4", "shape": [32, 14]}

``dtype`` is numpy's ``dtype.str`` (byte order, kind and item size: ``"|u1"`` for uint8 images), so a client in
another language can decode it without numpy. A numpy scalar is packed as the Python number it holds.

Why :func:`unpack` checks what it decodes: the bytes come from the network. Only bool and numeric dtypes are
accepted (never ``object``, which would let a peer build arbitrary objects), and ``data`` must hold exactly
``prod(shape) × itemsize`` bytes; anything else raises :class:`ClapDataError` with a sentence.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

from clap_data.errors import ClapDataError

ARRAY_MARKER = "__ndarray__"
ARRAY_KINDS = frozenset("biufc")  # bool, signed and unsigned integers, floats, complex: numpy's dtype.kind


def _encode(value: Any) -> Any:
    """msgpack's hook for what it cannot pack itself."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in ARRAY_KINDS:
            raise ClapDataError(f"cannot send an array of dtype {value.dtype}: only bool and numeric arrays travel")
        return {ARRAY_MARKER: True, "data": np.ascontiguousarray(value).tobytes(), "dtype": value.dtype.str,
                "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot pack an object of type {type(value).__name__}")


def pack(obj: Any) -> bytes:
    """``obj`` (maps, lists, strings, numbers, bytes, numpy arrays and scalars, nested) as msgpack bytes."""
    try:
        return msgpack.packb(obj, default=_encode, use_bin_type=True)
    except TypeError as exc:
        raise ClapDataError(f"cannot pack the message: {exc}") from None


def _decode_array(encoded: dict[Any, Any]) -> np.ndarray:
    data, dtype_str, shape = encoded.get("data"), encoded.get("dtype"), encoded.get("shape")
    if not isinstance(data, bytes) or not isinstance(dtype_str, str) or not isinstance(shape, list):
        raise ClapDataError("an encoded array needs data (bytes), dtype (a string) and shape (a list)")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ClapDataError(f"an encoded array's shape must be non-negative integers, got {shape}")
    try:
        dtype = np.dtype(dtype_str)
    except (TypeError, ValueError):
        raise ClapDataError(f"{dtype_str!r} is not a numpy dtype (numpy's dtype.str is expected, e.g. '<f4', "
                            "'|u1')") from None
    if dtype.kind not in ARRAY_KINDS:
        raise ClapDataError(f"arrays of dtype {dtype_str!r} are refused: only bool and numeric arrays are accepted")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise ClapDataError(f"an encoded {dtype_str} array of shape {shape} needs {expected} bytes of data, "
                            f"got {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()  # a copy: writable, not tied to the message


def decode_arrays(obj: Any) -> Any:
    """``obj`` with every encoded array (at any depth) turned into a numpy array, checked (see the module)."""
    if isinstance(obj, dict):
        if obj.get(ARRAY_MARKER) is True:
            return _decode_array(obj)
        return {key: decode_arrays(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [decode_arrays(value) for value in obj]
    return obj


def unpack(data: bytes, *, arrays: bool = True) -> Any:
    """The object msgpack ``data`` holds, its arrays decoded; ``arrays=False`` leaves them encoded, for a reader
    that wants to look at a message (its request id) before its arrays are checked."""
    try:
        obj = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:  # ExtraData, FormatError, StackError, bad UTF-8 are these
        raise ClapDataError(f"the message is not valid msgpack ({type(exc).__name__}: {exc})") from None
    return decode_arrays(obj) if arrays else obj
