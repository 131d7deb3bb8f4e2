"""Reader for the IDX format of (Fashion-)MNIST, plain or gzip-compressed.

Parsed by hand (a 4-byte magic, big-endian dimensions, raw bytes) so no pickle and no download is
ever involved, and every malformed file fails with a message that names it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class IDXFormatError(ValueError):
    """An IDX file is truncated or has a bad header."""


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` decompressed on the fly) into an array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:  # gzip raises these for corrupt archives
        raise IDXFormatError(f"{path}: cannot read IDX data ({exc})") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise IDXFormatError(f"{path}: not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        raise IDXFormatError(f"{path}: unknown IDX element type 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXFormatError(f"{path}: truncated header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IDXFormatError(
            f"{path}: expected {expected} bytes of data for shape {shape}, found {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
