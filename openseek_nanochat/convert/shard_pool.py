"""Worker processes that write shards, so every core compresses while the main process reads and mixes.

The main process decides everything that shapes the output: which documents go to which shard and row group
(shards.py). A worker gets one whole shard's row groups, writes it under its temp name (shard_file.py), flushes it and
returns its size and sha256; the main process renames shards into place and records them strictly in shard order,
so the shards, the manifest and every resume point are those of a run in one process.

Workers are started with 'spawn' (the main process runs reader threads; a fork of it could inherit a held lock) and
get SIGTERM when the main process dies (procs.die_with_parent as the initializer): a killed or cancelled conversion
leaves no worker behind, only temp files that the next run's manifest.open removes. As with any 'spawn' pool, a
script that calls convert() with processes > 1 keeps its work under `if __name__ == "__main__":` (a worker imports the
main module); the CLI, the job process and the benchmarks do.
"""

import os
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from openseek_nanochat import procs
from openseek_nanochat.convert.shard_file import ShardFile, unpack


def write_shard(tmp: str, sidecar_tmp: str, groups: list[tuple[bytes, bytes]]):
    """In a worker: the shard at `tmp` and its sidecar from its packed row groups; returns what ShardFile.close does."""
    shard = ShardFile(Path(tmp), Path(sidecar_tmp))
    try:
        for group in groups:
            shard.write(*unpack(group))
        return shard.close()
    except BaseException:
        shard.discard()
        raise


class ShardPool:
    """`processes` workers writing shards; the shard writer keeps at most `processes` shards in flight."""

    def __init__(self, processes: int):
        self.processes = processes
        self.executor = ProcessPoolExecutor(
            processes,
            mp_context=get_context("spawn"),
            initializer=procs.die_with_parent,
            initargs=(os.getpid(),),
        )
        # Start every worker now: each imports pyarrow (most of a second on a busy machine) while this process reads
        # its first shard, instead of when that shard is handed over.
        for _ in range(processes):
            self.executor.submit(int)

    def submit(self, tmp: Path, sidecar_tmp: Path, groups: list[tuple[bytes, bytes]]) -> Future:
        return self.executor.submit(write_shard, str(tmp), str(sidecar_tmp), groups)

    def close(self) -> None:
        """Stop the workers; a shard still queued is dropped, one being written is finished (its writer unlinks it)."""
        self.executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "ShardPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
