"""Reading and writing IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number
of dimensions), one big-endian 32-bit size per dimension, then the values in
row-major order, big-endian. Files are often gzip-compressed; gzip is detected
by its magic bytes (``1f 8b``), never by the file name, so a renamed file still
reads.

The reader is strict on purpose: a truncated download or a file with trailing
garbage is an error, not a silently shorter data set. Every problem is a
:class:`~particlesim.errors.DataError` whose one-line message names the file
and what is wrong.
"""

from __future__ import annotations

import gzip
import math
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

from particlesim.errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

#: IDX type code → (big-endian numpy dtype, human name).
IDX_TYPES: dict[int, tuple[str, str]] = {
    0x08: (">u1", "ubyte"),
    0x09: (">i1", "byte"),
    0x0B: (">i2", "short"),
    0x0C: (">i4", "int"),
    0x0D: (">f4", "float"),
    0x0E: (">f8", "double"),
}

_CODE_BY_DTYPE: dict[np.dtype, int] = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}

_MAX_DIM = 2**31 - 1  # the spec's sizes are signed 32-bit integers


def _known_types() -> str:
    return ", ".join(f"0x{code:02X} {name}" for code, (_, name) in IDX_TYPES.items())


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """Return the uncompressed content of ``path`` (gunzipped if it starts with ``1f 8b``).

    A missing or unreadable file and a corrupt gzip stream raise
    :class:`DataError` naming the file (never a bare ``OSError``/``zlib.error``).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read file: {error.strerror or error}") from error
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"{path}: corrupt gzip stream: {error}") from error


def parse_idx(data: bytes, path: str | os.PathLike[str] = "<bytes>") -> np.ndarray:
    """Decode uncompressed IDX ``data`` into a native-endian, writable array.

    ``path`` is only used in error messages. Raises :class:`DataError` for a
    bad magic number, an unknown type code, zero dimensions, a non-positive
    size, a truncated header or payload and trailing bytes.
    """
    if len(data) < 4:
        raise DataError(
            f"{path}: not an IDX file: {len(data)} bytes, shorter than the 4-byte magic number"
        )
    magic = data[:4]
    if magic[0] != 0 or magic[1] != 0:
        raise DataError(
            f"{path}: not an IDX file: magic number 0x{magic.hex()} does not start with two zero"
            " bytes"
        )
    code, ndim = magic[2], magic[3]
    if code not in IDX_TYPES:
        raise DataError(
            f"{path}: unknown IDX type code 0x{code:02X} (expected one of {_known_types()})"
        )
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions (expected at least 1)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{path}: truncated IDX header: {ndim} dimensions need {header} bytes, found"
            f" {len(data)}"
        )
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big", signed=True) for i in range(ndim)]
    for axis, size in enumerate(dims):
        if size <= 0:
            raise DataError(
                f"{path}: IDX size of dimension {axis} is {size} (sizes must be positive),"
                f" header dims {_shape(dims)}"
            )
    dtype_code, _ = IDX_TYPES[code]
    dtype = np.dtype(dtype_code)
    expected = math.prod(dims) * dtype.itemsize
    found = len(data) - header
    if found != expected:
        what = "truncated IDX file" if found < expected else "IDX file too long"
        per = "" if dtype.itemsize == 1 else f" × {dtype.itemsize} bytes"
        extra = f" ({found - expected} trailing bytes)" if found > expected else ""
        raise DataError(
            f"{path}: {what}: header says {_shape(dims)}{per} = {expected} bytes of data,"
            f" found {found}{extra}"
        )
    array = np.frombuffer(data, dtype=dtype, count=math.prod(dims), offset=header)
    # astype copies: the result is native-endian and writable (torch.from_numpy-friendly).
    return array.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a numpy array of its declared shape.

    The dtype follows the type code (``0x08`` → ``uint8``, …, ``0x0E`` →
    ``float64``), in native byte order. Any problem raises :class:`DataError`
    whose message names the file, e.g. ``…/train-images-idx3-ubyte.gz:
    truncated IDX file: header says 60000×28×28 = 47040000 bytes of data,
    found 1024``.
    """
    return parse_idx(read_bytes(path), path)


def encode_idx(array: np.ndarray, path: str | os.PathLike[str] = "<array>") -> bytes:
    """Return the uncompressed IDX encoding of ``array`` (``path`` only names it in errors)."""
    array = np.asarray(array)
    code = _CODE_BY_DTYPE.get(array.dtype.newbyteorder("="))
    if code is None:
        raise DataError(
            f"{path}: cannot write dtype {array.dtype} as IDX (supported: uint8, int8, int16,"
            " int32, float32, float64; cast first)"
        )
    if array.ndim == 0 or array.ndim > 255:
        raise DataError(f"{path}: IDX needs 1 to 255 dimensions, the array has {array.ndim}")
    if any(size <= 0 or size > _MAX_DIM for size in array.shape):
        raise DataError(
            f"{path}: IDX sizes must be between 1 and {_MAX_DIM}, the array's shape is"
            f" {_shape(array.shape)}"
        )
    header = bytes([0, 0, code, array.ndim]) + b"".join(
        size.to_bytes(4, "big") for size in array.shape
    )
    big = array.astype(array.dtype.newbyteorder(">"), copy=False)
    return header + np.ascontiguousarray(big).tobytes()


def write_idx(
    path: str | os.PathLike[str], array: np.ndarray, *, compress: bool | None = None
) -> Path:
    """Write ``array`` as an IDX file at ``path`` and return the path.

    ``compress=None`` gzips when the name ends in ``.gz``; ``True``/``False``
    force it either way. The file is written to a temporary name and renamed,
    so a reader never sees half a file. Gzip output has a zero timestamp, so
    the same array always gives the same bytes.
    """
    path = Path(path)
    data = encode_idx(array, path)
    if compress is None:
        compress = path.name.endswith(".gz")
    if compress:
        data = gzip.compress(data, compresslevel=6, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)
    return path


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _shape(dims: list[int] | tuple[int, ...]) -> str:
    return "×".join(str(d) for d in dims)


def write_pixel_pair_set(
    folder: Path, *, seed: int, n_train: int, n_test: int, side: int = 4, classes: int = 10
) -> Path:
    """A learnable ``classes``-class IDX set of ``side × side`` images in ``folder``: class
    ``c`` lights a pixel pair drawn from ``seed`` (two seeds give two different tasks) on a
    dim noisy background. For runs that check mechanics in seconds (a reproduction's quick
    mode). Written once: an existing folder is kept (the same seed gives the same files).
    """
    if (folder / "t10k-labels-idx1-ubyte.gz").is_file():  # the last file written
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = side * side
    lit = [rng.choice(pixels, size=2, replace=False) for _ in range(classes)]
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % classes).astype(np.uint8)
        rng.shuffle(labels)
        images = rng.integers(0, 80, size=(n, pixels)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, lit[label]] = 200 + rng.integers(0, 55, size=2)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images.reshape(n, side, -1))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder
