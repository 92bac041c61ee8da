"""Parquet shards in nanochat's layout, written atomically (manifest.py describes them).

Layout: `shard_00000.parquet`, `shard_00001.parquet`, ...; one `text` column; zstd; row groups of `row_group_size`
rows; the last shard is the validation split. A shard is written under atomic.py's hidden temp name and published
(fsync, rename, fsync of the folder) when complete, so a reader never sees half a shard. A train shard closes at the
first row-group boundary at or past the size target (nanochat's loaders stride row groups across ranks, so full row
groups matter). Several shards are compressed at once, each on a lane of its own (shard_lanes.py), and published in
order, so the number of lanes changes nothing that is written.
Each shard has its provenance sidecar (provenance.py), published just before it, and a histogram of its documents'
lengths (lengths.py) in its record.
"""

from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from openseek_nanochat.atomic import publish, temp_path
from openseek_nanochat.convert import lengths, provenance
from openseek_nanochat.convert.mixture import Rows
from openseek_nanochat.convert.shard_lanes import ShardLane

VAL_MIN_ROW_GROUPS = 8  # enough for one node of 8 GPUs


def shard_name(index: int) -> str:
    return f"shard_{index:05d}.parquet"


def list_shards(folder: Path) -> list[Path]:
    """The shards of a dataset in order, the validation shard last: nanochat's own rule (every `*.parquet`, sorted by
    name), without the hidden files a write in progress uses."""
    return sorted(p for p in Path(folder).iterdir() if p.name.endswith(".parquet") and not p.name.startswith("."))


@dataclass
class ShardInfo:
    file: str
    rows: int
    chars: int
    bytes: int
    row_groups: int
    sha256: str
    split: str
    provenance: dict = field(default_factory=dict)  # the sidecar: file, bytes, sha256
    length_hist: list[int] = field(default_factory=list)  # documents per length bin (lengths.py)
    source_docs: list[int] = field(default_factory=list)  # documents per source in this shard
    source_chars: list[int] = field(default_factory=list)

    def public(self) -> dict:
        d = asdict(self)
        d.pop("source_chars")
        return d


class ShardWriter:
    """Takes documents in order (mixture.Rows: text, provenance, lengths) and writes shards as they fill.

    Where each shard ends is decided here, from the rows and characters alone. Each shard is written by its lane as
    its row groups are cut; with `lanes` > 1 on threads, so the calls that complete shards return those published so
    far, in order (at most `lanes` shards are being written at once: before opening another, the writer waits for
    the oldest). `index` counts the shards closed, published or not (what a shard limit checks), `closed_rows` their
    rows.
    """

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
        lanes: int = 1,
    ):
        self.out_dir = out_dir
        self.before_publish = before_publish  # the run's fencing check (fence.py): it raises to stop a rename
        self.num_sources = num_sources
        self.row_group_size = row_group_size
        self.chars_per_shard = chars_per_shard
        self.rows_per_shard = rows_per_shard
        self.lanes = lanes
        self.index = first_index
        self.closed_rows = 0
        self._pending: list[Rows] = []
        self._pending_rows = 0
        self._open = None  # (lane, final path, counters) of the shard being filled
        self._in_flight: deque = deque()  # (lane, final path, counters, split) of shards closed, not yet published

    # -- feeding --------------------------------------------------------------------------------------------------
    def add(self, table: Rows) -> list[ShardInfo]:
        """Queue documents; write every full row group; return the shards published by this call."""
        done = []
        if table.num_rows:
            self._pending.append(table)
            self._pending_rows += table.num_rows
        while self._pending_rows >= self.next_group_rows():
            done += self._write_group(self._take(self.next_group_rows()), split="train")
        return done + self._collect(wait=False)

    def finish(self) -> list[ShardInfo]:
        """Flush what is queued into the last train shard (a short final row group) and close it; returns the shards
        published by this call (`drain` waits for the rest)."""
        done = []
        if self._pending_rows:
            done += self._write_group(self._take(self._pending_rows), split="train")
        if self._open is not None:
            done += self._close("train")
        return done

    def drain(self) -> list[ShardInfo]:
        """Wait for the shards in flight and publish them, in order."""
        return self._collect(wait=True)

    def write_val(self, table: Rows) -> list[ShardInfo]:
        """The validation shard, after the train shards (they may still be in flight: it is written beside them and
        published after them), in at least VAL_MIN_ROW_GROUPS row groups where it has the rows: nanochat's loaders
        give each rank its own row groups of the validation shard, so one big group would leave ranks without data.
        Returns the shards published by this call; `drain` waits for the rest, the validation shard last."""
        assert self._open is None and not self._pending_rows
        group_rows = max(1, min(self.row_group_size, -(-table.num_rows // VAL_MIN_ROW_GROUPS)))
        for start in range(0, table.num_rows, group_rows):
            self._append(table.slice(start, group_rows))
        return self._close("val")

    def abort(self) -> None:
        """Drop the shards not yet published: a failed run must not leave half a shard behind, even under a temp
        name. Each lane's thread is stopped before its files are removed; every lane is, even if one fails to, and
        then the first failure is raised."""
        lanes = [lane for lane, *_ in self._in_flight] + ([self._open[0]] if self._open is not None else [])
        self._open = None
        self._in_flight.clear()
        failures = []
        for lane in lanes:
            try:
                lane.abort()
            except Exception as e:
                failures.append(e)
        if failures:
            raise failures[0]

    # -- internals ------------------------------------------------------------------------------------------------
    def _sidecar(self, final: Path) -> Path:
        return provenance.sidecar_path(self.out_dir, final.name)

    def next_group_rows(self) -> int:
        if self.rows_per_shard is None:
            return self.row_group_size
        rows_in_shard = self._open[2]["rows"] if self._open else 0
        return min(self.row_group_size, self.rows_per_shard - rows_in_shard)

    def _take(self, rows: int) -> Rows:
        table = Rows.join(self._pending) if len(self._pending) > 1 else self._pending[0]
        head, rest = table.slice(0, rows), table.slice(rows)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        return head

    def _write_group(self, group: Rows, split: str) -> list[ShardInfo]:
        self._append(group)
        counters = self._open[2]
        full = (
            (counters["rows"] >= self.rows_per_shard)
            if self.rows_per_shard
            else (counters["chars"] >= self.chars_per_shard and counters["rows"] % self.row_group_size == 0)
        )
        return self._close(split) if full else []

    def _append(self, group: Rows) -> None:
        if self._open is None:
            final = self.out_dir / shard_name(self.index)
            counters = {
                "rows": 0,
                "chars": 0,
                "row_groups": 0,
                "source_docs": np.zeros(self.num_sources, np.int64),
                "source_chars": np.zeros(self.num_sources, np.int64),
                "length_hist": np.zeros(lengths.BINS, np.int64),
            }
            lane = ShardLane(temp_path(final), temp_path(self._sidecar(final)), threaded=self.lanes > 1)
            self._open = (lane, final, counters)
        lane, _, counters = self._open
        small = group.small_columns()
        lane.write(group.text, provenance.columns(small))  # the text is gathered by the lane
        sources = small.column("source").to_numpy()
        chars = group.chars()
        counters["rows"] += group.num_rows
        counters["chars"] += int(chars.sum())
        counters["row_groups"] += 1
        counters["source_docs"] += np.bincount(sources, minlength=self.num_sources)
        counters["source_chars"] += np.bincount(sources, weights=chars, minlength=self.num_sources).astype(np.int64)
        counters["length_hist"] += lengths.histogram(chars)

    def _close(self, split: str) -> list[ShardInfo]:
        lane, final, counters = self._open
        self.closed_rows += counters["rows"]
        lane.close()
        self._in_flight.append((lane, final, counters, split))
        self._open = None
        self.index += 1
        return self._collect(wait=False, room=True)

    def _collect(self, wait: bool, room: bool = False) -> list[ShardInfo]:
        """Publish the finished shards at the head of the queue: all of them (`wait`), or those done, waiting for
        the oldest while there is no `room` for another lane to open."""
        done = []
        while self._in_flight:
            lane, final, counters, split = self._in_flight[0]
            if not (wait or lane.done.done() or (room and len(self._in_flight) >= self.lanes)):
                break
            info = self._publish(final, counters, split, lane.done.result)
            self._in_flight.popleft()
            done.append(info)
        return done

    def _publish(self, final: Path, counters: dict, split: str, written: Callable[[], tuple]) -> ShardInfo:
        """Rename the sidecar and then the shard into place once `written()` (their bytes and sha256) returns and the
        fence allows it: a shard is never without its sidecar. On any failure the shard stays in the writer's hands
        (`_open` or `_in_flight`), and `abort` removes it; a sidecar renamed without its shard is removed by the next
        run's manifest.open, as any file beyond the last recorded shard."""
        (size, sha256), (sidecar_size, sidecar_sha256) = written()
        if self.before_publish is not None:
            self.before_publish()
        sidecar = self._sidecar(final)
        publish(temp_path(sidecar), sidecar)
        publish(temp_path(final), final)
        return ShardInfo(
            file=final.name,
            rows=counters["rows"],
            chars=counters["chars"],
            bytes=size,
            row_groups=counters["row_groups"],
            sha256=sha256,
            split=split,
            provenance={
                "file": sidecar.relative_to(self.out_dir).as_posix(),
                "bytes": sidecar_size,
                "sha256": sidecar_sha256,
            },
            length_hist=counters["length_hist"].tolist(),
            source_docs=counters["source_docs"].tolist(),
            source_chars=counters["source_chars"].tolist(),
        )
