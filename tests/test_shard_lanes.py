"""A shard lane: row groups written in order on its own thread, the same file as written in the caller's thread, and
an abort that drops what is still queued instead of writing it first."""

import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from openseek_nanochat.convert import provenance, shard_file
from openseek_nanochat.convert.mixture import Rows, Shuffled
from openseek_nanochat.convert.shard_lanes import ShardLane
from openseek_nanochat.convert.shards import ShardWriter


def group(i: int) -> tuple:
    text = pa.chunked_array([pa.array([f"document {i}-{k} " * (k + 1) for k in range(50)])])
    origin = pa.table({"source": pa.array([0] * 50, pa.int16()), "item": pa.array([i] * 50, pa.int32())})
    origin = origin.append_column("pos", pa.array(range(50), pa.int64()))
    return text, origin.cast(provenance.SCHEMA)


def test_a_lane_writes_the_same_file_on_a_thread_or_not(tmp_path):
    lanes = {}
    for name, on_thread in (("inline", False), ("lane", True)):
        lane = ShardLane(tmp_path / f"{name}.parquet", tmp_path / f"{name}.side", threaded=on_thread)
        for i in range(5):
            text, origin = group(i)
            lane.write(lambda text=text: text, origin)
        lanes[name] = lane.close().result(timeout=30)
    assert (tmp_path / "inline.parquet").read_bytes() == (tmp_path / "lane.parquet").read_bytes()
    assert lanes["inline"] == lanes["lane"]  # sizes and sha256 of the shard and its sidecar


def test_an_abort_drops_the_backlog(tmp_path, monkeypatch):
    real_write, written = shard_file.ShardFile.write, []

    def slow_write(self, text, origin):
        time.sleep(0.2)
        written.append(threading.current_thread().name)
        return real_write(self, text, origin)

    monkeypatch.setattr(shard_file.ShardFile, "write", slow_write)
    lane = ShardLane(tmp_path / "s.parquet", tmp_path / "s.side", threaded=True)
    for i in range(30):  # 6 s of writing queued
        text, origin = group(i)
        lane.write(lambda text=text: text, origin)
    time.sleep(0.3)
    started = time.monotonic()
    lane.abort()
    assert time.monotonic() - started < 1.5 and len(written) < 5
    assert not (tmp_path / "s.parquet").exists() and not (tmp_path / "s.side").exists()
    assert not any(t.name.startswith("shard-lane") and t.is_alive() for t in threading.enumerate())


def test_an_abort_removes_the_files_even_when_the_footer_cannot_be_written(tmp_path):
    lane = ShardLane(tmp_path / "s.parquet", tmp_path / "s.side", threaded=True)
    text, origin = group(0)
    lane.write(lambda: text, origin)

    def full_disk():
        raise OSError(28, "No space left on device")

    lane.shard.writer.close = full_disk
    lane.abort()
    del lane.shard.writer.close  # the writer's own close again, for when it is collected
    assert not (tmp_path / "s.parquet").exists() and not (tmp_path / "s.side").exists()


def test_the_writer_aborts_every_lane_when_one_fails_to(tmp_path, monkeypatch):
    """A lane whose abort fails does not keep the others running or their files on disk; the failure is raised."""
    (tmp_path / "provenance").mkdir()
    n = 600
    table = pa.table(
        {
            "text": pa.array([f"doc {i} " * 20 for i in range(n)]),
            "item": pa.array(np.zeros(n, np.int32)),
            "pos": pa.array(np.arange(n)),
            "source": pa.array(np.zeros(n, np.int16)),
        }
    )
    block = Shuffled(table, np.arange(n), np.full(n, 100, np.int64))
    writer = ShardWriter(
        tmp_path, num_sources=1, row_group_size=50, chars_per_shard=10_000, rows_per_shard=None, lanes=4
    )
    lanes, real_abort, real_write = [], ShardLane.abort, shard_file.ShardFile.write

    def abort(self):
        lanes.append(self)
        real_abort(self)
        if len(lanes) == 1:
            raise OSError(5, "Input/output error")

    def slow_write(self, text, origin):  # the lanes are still busy when the run fails
        time.sleep(0.3)
        return real_write(self, text, origin)

    monkeypatch.setattr(shard_file.ShardFile, "write", slow_write)
    for start in range(0, 250, 50):
        writer.add(Rows([block.slice(start, 50)]))
    busy = len(writer._in_flight) + (writer._open is not None)
    monkeypatch.setattr(ShardLane, "abort", abort)
    with pytest.raises(OSError, match="Input/output error"):
        writer.abort()
    assert len(lanes) == busy >= 2  # the open shard's lane and those still writing
    assert not list(tmp_path.rglob(".*")) and not any(t.name.startswith("shard-lane") for t in threading.enumerate())
