"""One shard file on disk, with its provenance sidecar: written under temp names, closed, flushed, measured; the same
calls wherever it runs.

A shard's bytes depend only on the row groups written into it and the fixed writer settings, so a shard written in
this process (one process) and one written by a worker process (shard_pool.py) are the same file when both are handed
the same row groups. Row groups travel to a worker as Arrow IPC with their chunks as they are: the parquet writer
cuts pages along the chunks it is given, so the chunk layout is part of what fixes the bytes. The sidecar
(provenance.py) gets the same row groups' provenance columns, each in one chunk.
"""

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from openseek_nanochat.atomic import fsync_file
from openseek_nanochat.convert import provenance

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
    """A shard being written under `tmp` and its sidecar under `sidecar_tmp`; `close` flushes both to disk and
    returns ((bytes, sha256) of the shard, (bytes, sha256) of the sidecar)."""

    def __init__(self, tmp: Path, sidecar_tmp: Path):
        self.tmp, self.sidecar_tmp = tmp, sidecar_tmp
        self.writer = pq.ParquetWriter(tmp, SCHEMA, **WRITER_OPTIONS)
        self.sidecar = pq.ParquetWriter(sidecar_tmp, provenance.SCHEMA, **WRITER_OPTIONS)

    def write(self, text: pa.ChunkedArray, origin: pa.Table) -> None:
        """One row group: its text, and its provenance (provenance.columns)."""
        rows = max(1, len(text))
        self.writer.write_table(pa.table({"text": text}, schema=SCHEMA), row_group_size=rows)
        self.sidecar.write_table(origin, row_group_size=rows)

    def close(self) -> tuple[tuple[int, str], tuple[int, str]]:
        self.writer.close()
        self.sidecar.close()
        for path in (self.tmp, self.sidecar_tmp):
            fsync_file(path)  # before the rename: a published shard is on disk whole
        return (self.tmp.stat().st_size, sha256_of(self.tmp)), (
            self.sidecar_tmp.stat().st_size,
            sha256_of(self.sidecar_tmp),
        )

    def discard(self) -> None:
        self.writer.close()
        self.sidecar.close()
        self.tmp.unlink(missing_ok=True)
        self.sidecar_tmp.unlink(missing_ok=True)


def pack(text: pa.ChunkedArray, origin: pa.Table) -> tuple[bytes, bytes]:
    """A row group as Arrow IPC: its text, one record batch per chunk, and its provenance. Only the rows of a slice
    are copied (pickling a slice would carry its whole block along); an empty chunk is sent as a fresh empty array for
    the same reason."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, SCHEMA) as stream:
        for chunk in text.chunks:
            chunk = chunk if len(chunk) else pa.array([], pa.string())
            stream.write_batch(pa.record_batch([chunk], schema=SCHEMA))
    origin_sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(origin_sink, provenance.SCHEMA) as stream:
        stream.write_table(origin)
    return sink.getvalue().to_pybytes(), origin_sink.getvalue().to_pybytes()


def unpack(data: tuple[bytes, bytes]) -> tuple[pa.ChunkedArray, pa.Table]:
    text_data, origin_data = data
    batches = list(pa.ipc.open_stream(pa.py_buffer(text_data)))
    text = pa.chunked_array([batch.column(0) for batch in batches], pa.string())
    origin = pa.ipc.open_stream(pa.py_buffer(origin_data)).read_all()
    return text, origin.combine_chunks() if origin.num_rows else provenance.SCHEMA.empty_table()
