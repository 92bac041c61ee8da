"""Run a generator one step ahead in a thread, so producing the next item overlaps consuming this one.

Arrow releases the GIL in its readers, kernels and writers, so reading and mixing the next block runs while the
current one is cut into shards. Exceptions reach the consumer at the point they happened. A conversion on one core
(cores.py) runs the generator in the consumer's thread instead: one step after the other.
"""

import queue
import threading
from collections.abc import Iterator
from typing import TypeVar

from openseek_nanochat.convert import cores

T = TypeVar("T")
_DONE = object()


def prefetch(items: Iterator[T], depth: int = 1) -> Iterator[T]:
    if cores.current() == 1:
        return iter(items)
    return _ahead(items, depth)


def _ahead(items: Iterator[T], depth: int) -> Iterator[T]:
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        """Hand `entry` over unless the consumer has gone (every put waits on `stop`, the last one too)."""
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as e:  # handed to the consumer, raised there
            put((_DONE, e))

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join()
