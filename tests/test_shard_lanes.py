"""A shard lane: row groups written in order on its own thread, the same file as written in the caller's thread, and
an abort that drops what is still queued instead of writing it first."""

import threading
import time

import pyarrow as pa

from openseek_nanochat.convert import provenance, shard_file
from openseek_nanochat.convert.shard_lanes import ShardLane


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
