"""Parquet shards in nanochat's layout, written atomically (manifest.py describes them).

Layout: `shard_00000.parquet`, `shard_00001.parquet`, ...; one `text` column; zstd; row groups of `row_group_size`
rows; the last shard is the validation split. A shard is written under atomic.py's hidden temp name and published
(fsync, rename, fsync of the folder) when complete, so a reader never sees half a shard. A train shard closes at the
first row-group boundary at or past the size target (nanochat's loaders stride row groups across ranks, so full row
groups matter).
"""

import hashlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from openseek_nanochat.atomic import fsync_file, publish, temp_path

VAL_MIN_ROW_GROUPS = 8  # enough for one node of 8 GPUs
SCHEMA = pa.schema([pa.field("text", pa.string())])
# Fixed writer settings: together with a deterministic document order they make re-runs byte-identical.
WRITER_OPTIONS = dict(compression="zstd", compression_level=3, use_dictionary=False, write_statistics=False)


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def list_shards(folder: Path) -> list[Path]:
    """The shards of a dataset in order, the validation shard last: nanochat's own rule (every `*.parquet`, sorted by
    name), without the hidden files a write in progress uses."""
    return sorted(p for p in Path(folder).iterdir() if p.name.endswith(".parquet") and not p.name.startswith("."))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class ShardInfo:
    file: str
    rows: int
    chars: int
    bytes: int
    row_groups: int
    sha256: str
    split: str
    source_docs: list[int] = field(default_factory=list)  # documents per source in this shard
    source_chars: list[int] = field(default_factory=list)

    def public(self) -> dict:
        d = asdict(self)
        d.pop("source_docs"), d.pop("source_chars")
        return d


class ShardWriter:
    """Takes documents in order (tables with text, source, chars) and writes shards as they fill."""

    def __init__(
        self,
        out_dir: Path,
        *,
        num_sources: int,
        row_group_size: int,
        chars_per_shard: int,
        rows_per_shard: int | None,
        first_index: int = 0,
        before_publish: Callable[[], None] | None = None,
    ):
        self.out_dir = out_dir
        self.before_publish = before_publish  # the run's fencing check (fence.py): it raises to stop a rename
        self.num_sources = num_sources
        self.row_group_size = row_group_size
        self.chars_per_shard = chars_per_shard
        self.rows_per_shard = rows_per_shard
        self.index = first_index
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._open = None  # (writer, tmp path, counters) of the shard being written

    # -- feeding --------------------------------------------------------------------------------------------------
    def add(self, table: pa.Table) -> list[ShardInfo]:
        """Queue documents; write every full row group; return the shards completed by this call."""
        done = []
        if table.num_rows:
            self._pending.append(table)
            self._pending_rows += table.num_rows
        while self._pending_rows >= self.next_group_rows():
            info = self._write_group(self._take(self.next_group_rows()), split="train")
            if info:
                done.append(info)
        return done

    def finish(self) -> list[ShardInfo]:
        """Flush what is queued into the last train shard (a short final row group)."""
        done = []
        if self._pending_rows:
            info = self._write_group(self._take(self._pending_rows), split="train")
            if info:
                done.append(info)
        if self._open is not None:
            done.append(self._close("train"))
        return done

    def write_val(self, table: pa.Table) -> ShardInfo:
        """The validation shard, in at least VAL_MIN_ROW_GROUPS row groups where it has the rows: nanochat's loaders
        give each rank its own row groups of the validation shard, so one big group would leave ranks without data."""
        assert self._open is None and not self._pending_rows
        group_rows = max(1, min(self.row_group_size, -(-table.num_rows // VAL_MIN_ROW_GROUPS)))
        for start in range(0, table.num_rows, group_rows):
            self._append(table.slice(start, group_rows))
        return self._close("val")

    def abort(self) -> None:
        """Drop the shard being written: a failed run must not leave half a shard behind, even under a temp name."""
        if self._open is not None:
            writer, tmp, _ = self._open
            writer.close()
            tmp.unlink(missing_ok=True)
            self._open = None

    # -- internals ------------------------------------------------------------------------------------------------
    def next_group_rows(self) -> int:
        if self.rows_per_shard is None:
            return self.row_group_size
        rows_in_shard = self._open[2]["rows"] if self._open else 0
        return min(self.row_group_size, self.rows_per_shard - rows_in_shard)

    def _take(self, rows: int) -> pa.Table:
        table = pa.concat_tables(self._pending) if len(self._pending) > 1 else self._pending[0]
        head, rest = table.slice(0, rows), table.slice(rows)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        return head

    def _write_group(self, group: pa.Table, split: str) -> ShardInfo | None:
        self._append(group)
        counters = self._open[2]
        full = (
            (counters["rows"] >= self.rows_per_shard)
            if self.rows_per_shard
            else (counters["chars"] >= self.chars_per_shard and counters["rows"] % self.row_group_size == 0)
        )
        return self._close(split) if full else None

    def _append(self, group: pa.Table) -> None:
        if self._open is None:
            tmp = temp_path(self.out_dir / shard_name(self.index))
            counters = {
                "rows": 0,
                "chars": 0,
                "row_groups": 0,
                "source_docs": np.zeros(self.num_sources, np.int64),
                "source_chars": np.zeros(self.num_sources, np.int64),
            }
            self._open = (pq.ParquetWriter(tmp, SCHEMA, **WRITER_OPTIONS), tmp, counters)
        writer, _, counters = self._open
        text = group.column("text").cast(pa.string())
        writer.write_table(pa.table({"text": text}, schema=SCHEMA), row_group_size=max(1, group.num_rows))
        sources = group.column("source").to_numpy()
        chars = group.column("chars").to_numpy()
        counters["rows"] += group.num_rows
        counters["chars"] += int(chars.sum())
        counters["row_groups"] += 1
        counters["source_docs"] += np.bincount(sources, minlength=self.num_sources)
        counters["source_chars"] += np.bincount(sources, weights=chars, minlength=self.num_sources).astype(np.int64)

    def _close(self, split: str) -> ShardInfo:
        writer, tmp, counters = self._open
        writer.close()
        fsync_file(tmp)
        final = self.out_dir / shard_name(self.index)
        if self.before_publish is not None:
            self.before_publish()
        publish(tmp, final)
        info = ShardInfo(
            file=final.name,
            rows=counters["rows"],
            chars=counters["chars"],
            bytes=final.stat().st_size,
            row_groups=counters["row_groups"],
            sha256=sha256_of(final),
            split=split,
            source_docs=counters["source_docs"].tolist(),
            source_chars=counters["source_chars"].tolist(),
        )
        self._open = None
        self.index += 1
        return info
