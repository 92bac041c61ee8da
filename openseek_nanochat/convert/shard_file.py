"""One shard file on disk: written under its temp name, closed, flushed, measured; the same calls wherever it runs.

A shard's bytes depend only on the row groups written into it and the fixed writer settings, so a shard written in
this process (one process) and one written by a worker process (shard_pool.py) are the same file when both are handed
the same row groups. Row groups travel to a worker as Arrow IPC with their chunks as they are: the parquet writer
cuts pages along the chunks it is given, so the chunk layout is part of what fixes the bytes.
"""

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from openseek_nanochat.atomic import fsync_file

SCHEMA = pa.schema([pa.field("text", pa.string())])
# Fixed writer settings: together with a deterministic document order they make re-runs byte-identical.
WRITER_OPTIONS = dict(compression="zstd", compression_level=3, use_dictionary=False, write_statistics=False)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class ShardFile:
    """A shard being written under `tmp`; `close` flushes it to disk and returns (bytes, sha256)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.writer = pq.ParquetWriter(tmp, SCHEMA, **WRITER_OPTIONS)

    def write(self, text: pa.ChunkedArray) -> None:
        """One row group."""
        self.writer.write_table(pa.table({"text": text}, schema=SCHEMA), row_group_size=max(1, len(text)))

    def close(self) -> tuple[int, str]:
        self.writer.close()
        fsync_file(self.tmp)  # before the rename: a published shard is on disk whole
        return self.tmp.stat().st_size, sha256_of(self.tmp)

    def discard(self) -> None:
        self.writer.close()
        self.tmp.unlink(missing_ok=True)


def pack(text: pa.ChunkedArray) -> bytes:
    """A row group's text as Arrow IPC, one record batch per chunk. Only the rows of a slice are copied (pickling a
    slice would carry its whole block along); an empty chunk is sent as a fresh empty array for the same reason."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, SCHEMA) as stream:
        for chunk in text.chunks:
            chunk = chunk if len(chunk) else pa.array([], pa.string())
            stream.write_batch(pa.record_batch([chunk], schema=SCHEMA))
    return sink.getvalue().to_pybytes()


def unpack(data: bytes) -> pa.ChunkedArray:
    batches = list(pa.ipc.open_stream(pa.py_buffer(data)))
    return pa.chunked_array([batch.column(0) for batch in batches], pa.string())
