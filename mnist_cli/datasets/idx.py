"""IDX files (MNIST's format), gzipped or not, read straight into uint8 tensors and checked as they are read.

A damaged file is one sentence naming it. Nothing is cached and nothing is written while reading.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Tuple

import numpy as np
import torch

from mnist_cli.errors import UserError

IMAGE_SIZE = 28


REPLACE = "replace it with a good copy."


MAX_BYTES = 16 + 1_000_000 * IMAGE_SIZE * IMAGE_SIZE  # a million images: more than any MNIST-family file


def file_bytes(path: Path) -> bytes:
    """The bytes of an IDX file, unpacked when its name ends in .gz."""
    try:
        if path.suffix != ".gz":
            return path.read_bytes()
        with gzip.open(path, "rb") as packed:  # read in a bounded amount: a small .gz may unpack to gigabytes
            data = packed.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise UserError(
                f"{path} unpacks to more than {MAX_BYTES:,} bytes, more than any IDX file it could hold; {REPLACE}"
            )
        return data
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise UserError(f"{path} is not a readable gzip file ({error}); {REPLACE}") from None
    except OSError as error:
        raise UserError(f"Could not read {path} ({error.strerror or error}); check its permissions.") from None


def idx_bytes(raw: Path, name: str) -> Tuple[Path, bytes]:
    """(the file read, its bytes) for IDX file `name` in `raw`, gzipped or not. With both present they
    must agree: a copy replaced in one form only would otherwise be read or ignored by chance."""
    plain, packed = raw / name, raw / f"{name}.gz"
    if not plain.is_file():
        return packed, file_bytes(packed)
    data = file_bytes(plain)
    if packed.is_file() and file_bytes(packed) != data:
        raise UserError(f"{plain} and {packed.name} hold different data; delete the one that is out of date.")
    return plain, data


# IDX's type byte (the magic number's third byte): what each element is, its size, as numpy reads it big-endian
TYPES = {
    torch.uint8: (0x08, 1, "unsigned bytes", ">u1"),
    torch.int32: (0x0C, 4, "32-bit integers", ">i4"),  # QMNIST's extended labels (idx2-int)
}


def read_idx(
    raw: Path, name: str, shape: Tuple[int, ...], dtype: torch.dtype = torch.uint8
) -> Tuple[Path, torch.Tensor]:
    """(the file read, a `dtype` tensor: uint8, or int32 for QMNIST's labels) for IDX file `name`, checked
    against its header and against `shape`, where 0 stands for any positive size (the image or label count)."""
    path, data = idx_bytes(raw, name)
    code, size, kind, big_endian = TYPES[dtype]
    what = "images" if len(shape) == 3 else "labels"
    header = 4 + 4 * len(shape)
    if len(data) < header:
        raise UserError(f"{path} is {len(data)} bytes long, too short for an IDX file of {what}; {REPLACE}")
    magic = int.from_bytes(data[:4], "big")
    want = code << 8 | len(shape)
    if magic != want:
        raise UserError(
            f"{path} starts with 0x{magic:08x}, not the 0x{want:08x} of an IDX file of "
            f"{len(shape)}-dimensional {kind} ({what}); {REPLACE}"
        )
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(len(shape)))
    if dims[0] == 0:
        raise UserError(f"{path} holds no {what}; {REPLACE}")
    if any(want and got != want for got, want in zip(dims, shape)):
        if len(shape) == 3:
            size_text = "×".join(map(str, dims[1:]))
            raise UserError(
                f"{path} holds {size_text} images; mnist-cli reads {IMAGE_SIZE}×{IMAGE_SIZE} images (MNIST's IDX format)."
            )
        raise UserError(f"{path} holds rows of {dims[1]} labels where {shape[1]} are expected; {REPLACE}")
    count = 1
    for dim in dims:
        count *= dim
    expected = header + count * size
    if len(data) != expected:
        state = "it is cut short" if len(data) < expected else "it has extra bytes at its end"
        raise UserError(
            f"{path} is {len(data)} bytes long where its header says {expected} ({dims[0]} {what}): {state}; {REPLACE}"
        )
    if dtype == torch.uint8:
        return path, torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=header).view(dims)
    values = np.frombuffer(data, dtype=big_endian, offset=header).astype(big_endian[1:])  # to the machine's order
    return path, torch.from_numpy(values).view(dims)
