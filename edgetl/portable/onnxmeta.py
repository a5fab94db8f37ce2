"""An ONNX file's `metadata_props` read with the standard library alone, so that a device with TensorRT but no
onnx or onnxruntime can still ask a graph what it is (its form, edgetl.portable.forms) before building from it.

ONNX files are protobuf: ModelProto field 14 is `metadata_props`, a repeated StringStringEntryProto (key = 1,
value = 2). Every other field is skipped by its length without being read, so a large graph costs a few seeks.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Dict

METADATA_PROPS = 14  # ModelProto.metadata_props
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class NotOnnx(ValueError):
    """The file is not a protobuf this reader can walk (truncated, or not an ONNX model)."""


def _varint(read) -> int:
    value = shift = 0
    while True:
        byte = read(1)
        if not byte:
            raise EOFError
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
        if shift > 63:
            raise NotOnnx("a varint longer than 10 bytes")


def _entry(data: bytes) -> tuple[str, str]:
    """One StringStringEntryProto: (key, value)."""
    fields = {1: "", 2: ""}
    pos = 0

    def read(n: int) -> bytes:
        nonlocal pos
        pos += n
        return data[pos - n:pos]

    while pos < len(data):
        tag = _varint(read)
        if tag & 7 != _LEN:
            raise NotOnnx("a metadata entry with a non-string field")
        size = _varint(read)
        fields[tag >> 3] = read(size).decode("utf-8", errors="replace")
    return fields[1], fields[2]


def _skip(f: BinaryIO, wire: int) -> None:
    if wire == _VARINT:
        _varint(f.read)
    elif wire == _LEN:
        f.seek(_varint(f.read), os.SEEK_CUR)
    elif wire in (_I64, _I32):
        f.seek(8 if wire == _I64 else 4, os.SEEK_CUR)
    else:
        raise NotOnnx(f"wire type {wire}")


def metadata_props(path: str | os.PathLike) -> Dict[str, str]:
    """The graph's metadata_props as a dict; NotOnnx if the file cannot be walked as a ModelProto."""
    found: Dict[str, str] = {}
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        try:
            while f.tell() < size:
                tag = _varint(f.read)
                if tag >> 3 == METADATA_PROPS and tag & 7 == _LEN:
                    key, value = _entry(f.read(_varint(f.read)))
                    found[key] = value
                else:
                    _skip(f, tag & 7)
            if f.tell() > size:  # a skip seeks past the end without complaint
                raise EOFError
        except EOFError:
            raise NotOnnx("the file ends inside a field") from None
    return found
