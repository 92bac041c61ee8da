"""Megatron's indexed dataset, as megatron-core writes it: `<prefix>.idx` (MMIDIDX, version 1) + `<prefix>.bin`.

The `.idx` layout, all little-endian:

    b"MMIDIDX\\x00\\x00"   magic (9 bytes)
    <Q version           always 1
    <B dtype code        of the tokens in .bin (DTYPES below)
    <Q N                 sequence count
    <Q M                 document index length (documents + 1)
    int32[N]             sequence lengths, in tokens
    int64[N]             sequence byte offsets into .bin
    int64[M]             document index: document i is sequences d[i] .. d[i+1]; d[0] = 0, d[M-1] = N

A document is usually one sequence; preprocessing that splits sentences writes several per document. The `.bin` is
nothing but the tokens, memory-mapped here and read in whole slices. Opening checks only what is O(1) to check (the
header, the file sizes, both ends of the document index) so that hundreds of parts open in moments; the entries a
read touches are checked as it reads them.
"""

import os
import struct
from pathlib import Path

import numpy as np

from openseek_nanochat.errors import InputError

MAGIC = b"MMIDIDX\x00\x00"
LEGACY_MAGIC = b"TNTIDX\x00\x00"  # the pre-mmap format of fairseq and old Megatron-LM
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, N, M
DTYPES = {
    1: np.dtype("u1"),
    2: np.dtype("i1"),
    3: np.dtype("<i2"),
    4: np.dtype("<i4"),
    5: np.dtype("<i8"),
    6: np.dtype("<f8"),
    7: np.dtype("<f4"),
    8: np.dtype("<u2"),
}
DTYPE_CODES = {dtype: code for code, dtype in DTYPES.items()}


def prefix_paths(prefix: str | os.PathLike) -> tuple[Path, Path]:
    prefix = os.fspath(prefix)
    return Path(prefix + ".idx"), Path(prefix + ".bin")


def _map(path: Path) -> np.ndarray:
    """The file as read-only bytes; mmap refuses empty files, which are legal here (no sequences)."""
    if os.path.getsize(path) == 0:
        return np.zeros(0, np.uint8)
    return np.memmap(path, np.uint8, mode="r")


class MegatronIndex:
    """One Megatron part: its document index, and the tokens of any run of documents."""

    def __init__(self, prefix: str | os.PathLike):
        self.idx_path, self.bin_path = prefix_paths(prefix)
        where = str(self.idx_path)
        if not self.idx_path.is_file():
            raise InputError("no such Megatron index file", where)
        if not self.bin_path.is_file():
            raise InputError(f"the index has no data file beside it ({self.bin_path.name} is missing)", where)

        with open(self.idx_path, "rb") as f:
            head = f.read(HEADER.size)
        if head.startswith(LEGACY_MAGIC):
            raise InputError(
                "legacy Megatron index format (TNTIDX); only megatron-core's MMIDIDX format is "
                "supported: preprocess the data again with megatron-core",
                where,
            )
        if not head.startswith(MAGIC):
            raise InputError(f"not a Megatron index: the file starts with {head[:9]!r}, expected {MAGIC!r}", where)
        if len(head) < HEADER.size:
            raise InputError(f"truncated .idx: {len(head)} bytes, less than the {HEADER.size}-byte header", where)
        _, version, code, n, m = HEADER.unpack(head)
        if version != VERSION:
            raise InputError(f"unsupported index version {version}; only version {VERSION} is known", where)
        if code not in DTYPES:
            known = ", ".join(f"{c} {d.name}" for c, d in DTYPES.items())
            raise InputError(f"unknown dtype code {code} (known: {known})", where)
        self.dtype = DTYPES[code]

        expected = HEADER.size + 12 * n + 8 * m
        actual = os.path.getsize(self.idx_path)
        counts = f"{n} sequences and {m} document index entries"
        if actual < expected:
            raise InputError(
                f"truncated .idx: the header announces {counts} ({expected} bytes), the file has {actual} bytes", where
            )
        if actual > expected:
            raise InputError(
                f"inconsistent .idx: the header announces {counts} ({expected} bytes), "
                f"the file has {actual - expected} bytes more",
                where,
            )
        if m < 1:
            raise InputError("inconsistent .idx: the document index is empty; it must at least hold 0", where)

        idx = _map(self.idx_path)
        self.sequence_lengths = np.frombuffer(idx, "<i4", n, HEADER.size)
        self.sequence_pointers = np.frombuffer(idx, "<i8", n, HEADER.size + 4 * n)
        self.document_index = np.frombuffer(idx, "<i8", m, HEADER.size + 12 * n)
        first, last = int(self.document_index[0]), int(self.document_index[-1])
        if first != 0 or last != n:
            raise InputError(
                f"inconsistent .idx: the document index runs from {first} to {last}, "
                f"expected 0 to {n} (the sequence count)",
                where,
            )

        self.bin_size = os.path.getsize(self.bin_path)
        if n:
            end = int(self.sequence_pointers[-1]) + int(self.sequence_lengths[-1]) * self.dtype.itemsize
            if end > self.bin_size:
                raise InputError(
                    f"truncated .bin: the index needs at least {end} bytes, the file has {self.bin_size}",
                    str(self.bin_path),
                )
        self._bin: np.ndarray | None = None

    @property
    def num_documents(self) -> int:
        return len(self.document_index) - 1

    @property
    def num_sequences(self) -> int:
        return len(self.sequence_lengths)

    def _sequences(self, start: int, stop: int) -> np.ndarray:
        """The document index entries for documents start..stop (stop included), checked."""
        bounds = self.document_index[start : stop + 1]
        if len(bounds) > 1 and np.any(bounds[1:] < bounds[:-1]):
            i = start + int(np.flatnonzero(bounds[1:] < bounds[:-1])[0])
            raise InputError(f"inconsistent .idx: the document index decreases at document {i}", str(self.idx_path))
        if len(bounds) and (bounds[0] < 0 or bounds[-1] > self.num_sequences):
            raise InputError(
                f"inconsistent .idx: documents {start}..{stop} point outside the {self.num_sequences} sequences",
                str(self.idx_path),
            )
        return bounds

    def document_offsets(self, start: int, stop: int) -> np.ndarray:
        """Token offsets of documents start..stop-1 within their concatenation: int64[stop - start + 1], from 0."""
        bounds = self._sequences(start, stop)
        lengths = self.sequence_lengths[bounds[0] : bounds[-1]]
        if np.any(lengths < 0):
            raise InputError(
                f"inconsistent .idx: negative sequence length in documents {start}..{stop - 1}", str(self.idx_path)
            )
        ends = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=ends[1:])
        return ends[bounds - bounds[0]]

    def read_documents(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, offsets): documents start..stop-1 concatenated, and where each begins (see document_offsets).

        Megatron writes sequences back to back, so this is one slice of the memory map; sequences stored elsewhere
        are gathered byte by byte with one vectorized index instead.
        """
        offsets = self.document_offsets(start, stop)
        bounds = self.document_index[start : stop + 1]
        first, last = int(bounds[0]), int(bounds[-1])
        if first == last:
            return np.zeros(0, self.dtype), offsets
        itemsize = self.dtype.itemsize
        nbytes = self.sequence_lengths[first:last].astype(np.int64) * itemsize
        pointers = self.sequence_pointers[first:last]
        ends = pointers + nbytes
        if pointers.min() < 0 or ends.max() > self.bin_size:
            bad = first + int(np.flatnonzero((pointers < 0) | (ends > self.bin_size))[0])
            raise InputError(
                f"truncated .bin: sequence {bad} lies at bytes {int(self.sequence_pointers[bad])}.."
                f"{int(ends[bad - first])}, the file has {self.bin_size}",
                str(self.bin_path),
            )
        if self._bin is None:
            self._bin = _map(self.bin_path)
        if np.array_equal(pointers[1:], ends[:-1]):
            raw = self._bin[pointers[0] : ends[-1]]
        else:
            starts_out = np.cumsum(nbytes) - nbytes
            raw = self._bin[np.repeat(pointers - starts_out, nbytes) + np.arange(int(nbytes.sum()))]
        return np.asarray(raw).view(self.dtype), offsets


def write_megatron(prefix: str | os.PathLike, documents: list[list[np.ndarray]], dtype=np.int32) -> None:
    """Write documents (each a list of token sequences) as a Megatron part, byte for byte as megatron-core does.

    The tests and the benchmark build their parts with it; real parts come from Megatron's own preprocessing.
    """
    dtype = np.dtype(dtype)
    sequences = [np.asarray(s, dtype) for doc in documents for s in doc]
    lengths = np.array([len(s) for s in sequences], np.int32)
    pointers = np.zeros(len(sequences), np.int64)
    np.cumsum(lengths[:-1].astype(np.int64) * dtype.itemsize, out=pointers[1:])
    document_index = np.zeros(len(documents) + 1, np.int64)
    np.cumsum([len(doc) for doc in documents], out=document_index[1:])
    idx_path, bin_path = prefix_paths(prefix)
    with open(bin_path, "wb") as f:
        for s in sequences:
            f.write(s.tobytes())
    with open(idx_path, "wb") as f:
        f.write(HEADER.pack(MAGIC, VERSION, DTYPE_CODES[dtype], len(sequences), len(document_index)))
        f.write(lengths.tobytes())
        f.write(pointers.tobytes())
        f.write(document_index.tobytes())
