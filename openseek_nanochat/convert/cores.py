"""How many cores a conversion keeps busy: the spec's `processes`, one number read by every part that works in
parallel.

convert() sets it for its run (`using`). Arrow's CPU pool, which parses JSON and runs the compute kernels, is sized to
it; the block reader runs ahead on a thread of its own only above 1 (prefetch.py); Megatron batches decode on that many
threads; and that many shards are compressed at once (shard_lanes.py). All of that work (parsing, zstd, hashing,
numpy, memory-mapped reads) runs outside the GIL, which is why threads of one process, and no copies between
processes, are enough to fill the cores. With 1, everything runs in the calling thread, one step after the other.
The number never changes what is written, only how fast.

Arrow's pool is process-wide, so this is too: one conversion at a time per process (a job process runs one).
"""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa

from openseek_nanochat.capacity import cpu_count

_current = cpu_count()
_lock = threading.Lock()


def current() -> int:
    """The cores the running conversion may keep busy (outside a run: every core this process may use)."""
    return _current


@contextmanager
def using(cores: int | None) -> Iterator[int]:
    """Run the block with `cores` (None: every usable core); Arrow's pool and this number are restored after."""
    global _current
    cores = cores or cpu_count()
    with _lock:
        before, arrow_before = _current, pa.cpu_count()
        _current = cores
        pa.set_cpu_count(cores)
    try:
        yield cores
    finally:
        with _lock:
            _current = before
            pa.set_cpu_count(arrow_before)
