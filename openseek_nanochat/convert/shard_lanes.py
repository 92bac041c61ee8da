"""Shards compressed on threads of their own, so several are written at once while the main thread reads and mixes.

A lane is one shard. The main thread hands it row groups as it cuts them; the lane's thread gathers each one's text
(mixture.Rows), writes them in order into its ShardFile, then closes it (flush, fsync, sha256). The gather,
compression, hashing and fsync run outside the GIL, so a lane fills a core without holding up the main thread. With
one core (cores.py) a lane has no thread: it writes each row group when it is handed over, in the caller's thread.

A shard's bytes depend only on its row groups, so they are the same on a lane's thread and in the caller's. Which
documents go to which shard is decided before a lane sees them (shards.py), and shards are published in order.
"""

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import pyarrow as pa

from openseek_nanochat.convert.shard_file import ShardFile

_CLOSE, _ABORT = object(), object()


class ShardLane:
    """One shard being written under temp names; `done` resolves to ShardFile.close()'s result, or its error."""

    def __init__(self, tmp: Path, sidecar_tmp: Path, threaded: bool):
        self.shard = ShardFile(tmp, sidecar_tmp)
        self.done: Future = Future()
        self._queue: queue.SimpleQueue | None = None
        self._thread: threading.Thread | None = None
        self._aborted = threading.Event()  # read by the thread before each row group: a backlog is dropped, not written
        if threaded:
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, name=f"shard-lane {tmp.name}", daemon=True)
            self._thread.start()

    def write(self, text: Callable[[], pa.ChunkedArray], origin: pa.Table) -> None:
        """Queue one row group: what gathers its text, and its provenance columns."""
        if self._queue is None:
            self.shard.write(text(), origin)
            return
        if self.done.done():
            self.done.result()  # the lane failed: say so now, not after the rest of the shard is cut
        self._queue.put((text, origin))

    def close(self) -> Future:
        """No more row groups: the shard is flushed and measured (on the lane's thread, if it has one)."""
        if self._queue is not None:
            self._queue.put(_CLOSE)
        elif not self.done.done():
            self._finish()
        return self.done

    def abort(self) -> None:
        """Stop, wait for the thread, and remove the shard and its sidecar whatever state they are in."""
        if self._queue is not None:
            self._aborted.set()
            self._queue.put(_ABORT)
            self._thread.join()
        self.shard.discard()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _ABORT or self._aborted.is_set():
                return
            if item is _CLOSE:
                self._finish()
                return
            if self.done.done():
                continue  # failed earlier: drop what is still queued until the close or the abort
            text, origin = item
            try:
                self.shard.write(text(), origin)
            except BaseException as e:
                self.done.set_exception(e)

    def _finish(self) -> None:
        if self.done.done():
            return  # a write failed: `done` holds its error
        try:
            self.done.set_result(self.shard.close())
        except BaseException as e:
            self.done.set_exception(e)
