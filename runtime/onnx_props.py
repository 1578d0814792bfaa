"""ONNX ``metadata_props`` read from the file's protobuf wire format, with no ONNX package.

An engine that reads ONNX files itself (OpenVINO) does not expose the model's custom
metadata, and an install with only that engine has neither ``onnx`` nor ONNX Runtime to read
it. The dymn-edge metadata is a top-level field of ``ModelProto`` (field 14, repeated
``StringStringEntryProto {1: key, 2: value}``), so walking the top-level fields and skipping
the others by their length (the graph's weights are never read into memory) is exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from dymn_edge.errors import MetadataError

__all__ = ["read_onnx_metadata_props"]

_METADATA_PROPS = 14  # ModelProto.metadata_props
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class _Truncated(Exception):
    """The stream ended inside a field."""


def _varint(fh: BinaryIO) -> int:
    value, shift = 0, 0
    while True:
        b = fh.read(1)
        if not b:
            raise _Truncated
        value |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return value
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(data: bytes) -> dict[int, bytes]:
    """Length-delimited fields of a small message (the last value of each number wins)."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(data):
        tag, pos = _varint_at(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == _LEN:
            n, pos = _varint_at(data, pos)
            out[number] = data[pos:pos + n]
            pos += n
        elif wire == _VARINT:
            pos = _varint_at(data, pos)[1]
        elif wire in (_I64, _I32):
            pos += 8 if wire == _I64 else 4
        else:
            raise ValueError(f"wire type {wire}")
    return out


def _varint_at(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise _Truncated
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def read_onnx_metadata_props(path: str | Path) -> dict[str, str]:
    """``{key: value}`` of an ONNX file's ``metadata_props``; MetadataError for a broken file."""
    p = Path(path)
    size = p.stat().st_size
    props: dict[str, str] = {}
    try:
        with p.open("rb") as fh:
            while fh.tell() < size:
                tag = _varint(fh)
                number, wire = tag >> 3, tag & 7
                if wire == _VARINT:
                    _varint(fh)
                elif wire in (_I64, _I32):
                    fh.seek(8 if wire == _I64 else 4, 1)
                elif wire == _LEN:
                    n = _varint(fh)
                    if fh.tell() + n > size:
                        raise _Truncated
                    if number == _METADATA_PROPS:
                        entry = _fields(fh.read(n))
                        props[entry.get(1, b"").decode("utf-8")] = entry.get(2, b"").decode("utf-8")
                    else:
                        fh.seek(n, 1)
                else:
                    raise ValueError(f"wire type {wire} at the top level")
            if fh.tell() != size:
                raise _Truncated
    except _Truncated as exc:
        raise MetadataError(f"{p}: not a readable ONNX file (truncated)") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise MetadataError(f"{p}: not a readable ONNX file ({exc})") from exc
    return props
