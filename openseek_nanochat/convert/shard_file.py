"""One shard file on disk, with its provenance sidecar: written under temp names, closed, flushed, measured.

A shard's bytes depend only on the row groups written into it (their rows and how their text is chunked: the parquet
writer cuts pages along the chunks it is given) and the fixed writer settings, so the same row groups make the same
file on any thread (shard_lanes.py). The sidecar (provenance.py) gets the same row groups' provenance columns, each in
one chunk.
"""

import contextlib
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
        """Close and remove both files. Closing writes a footer, which a full disk refuses: the files go anyway."""
        for writer in (self.writer, self.sidecar):
            with contextlib.suppress(OSError, pa.ArrowException):
                writer.close()
        self.tmp.unlink(missing_ok=True)
        self.sidecar_tmp.unlink(missing_ok=True)
