"""How many cores a conversion keeps busy: the spec's `processes`, one number read by every part that works in
parallel.

convert() sets it for its run (`using`). Arrow's CPU pool, which parses JSON and runs the compute kernels, is sized to
it; the block reader runs ahead on a thread of its own only above 1 (prefetch.py); Megatron batches decode on that many
threads; and that many shards are compressed at once (shard_lanes.py). All of that work (parsing, zstd, hashing,
numpy, memory-mapped reads) runs outside the GIL, which is why threads of one process, and no copies between
processes, are enough to fill the cores. With 1, everything runs in the calling thread, one step after the other.
The number never changes what is written, only how fast.

A run also allocates Arrow's memory from jemalloc where pyarrow has it (and ARROW_DEFAULT_MEMORY_POOL does not name
another): measured on the conversion benchmarks, the same speed as Arrow's default allocator (mimalloc) with 10-20%
less peak memory (one Megatron part: 706 MB against 891; 84 parts: 685 against 830).

Arrow's pools are process-wide, so this is too: one conversion at a time per process (a job process runs one).
"""

import os
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


def run_memory_pool() -> pa.MemoryPool:
    """The allocator a run uses (see the module doc): jemalloc, unless the user chose one or pyarrow lacks it."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return pa.default_memory_pool()
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without it
        return pa.default_memory_pool()


@contextmanager
def using(cores: int | None) -> Iterator[int]:
    """Run the block with `cores` (None: every usable core) and the run's allocator; Arrow's thread pool, its
    allocator and this number are restored after. (Buffers made in the block go back to the allocator that made them,
    whenever they are freed.)"""
    global _current
    cores = cores or cpu_count()
    with _lock:
        before, arrow_before, pool_before = _current, pa.cpu_count(), pa.default_memory_pool()
        _current = cores
        pa.set_cpu_count(cores)
        pa.set_memory_pool(run_memory_pool())
    try:
        yield cores
    finally:
        with _lock:
            _current = before
            pa.set_cpu_count(arrow_before)
            pa.set_memory_pool(pool_before)
