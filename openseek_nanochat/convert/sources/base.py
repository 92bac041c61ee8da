"""What every source yields: Arrow batches of document text, each with a cursor to restart from.

A source knows nothing about mixing, filtering or shards. It reads its inputs in order and says, for each batch, where
that batch began (`cursor`, a small JSON object). Passing a batch's cursor back to `read` restarts exactly at that
batch, which is all the conversion engine needs to resume after a crash without re-reading whole datasets.
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import pyarrow as pa


@dataclass
class Batch:
    cursor: dict  # where this batch's first record lies; read(cursor) starts again here
    texts: pa.Array  # string or large_string, one document per element, nulls allowed (dropped later as empty)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> records of this batch the source dropped
    stats: dict[str, int] = field(default_factory=dict)  # other counters, e.g. {"decode_replacements": 3}
    progress: float | None = None  # fraction of the source read once this batch is consumed, where known


class TextSource(Protocol):
    name: str  # how the manifest names this source
    weight: float

    def check(self) -> None:
        """Fail fast (InputError) on what can be known before reading: missing files, absent columns, bad headers."""

    def read(self, cursor: dict | None = None) -> Iterator[Batch]:
        """Batches in a fixed order from `cursor` (None: the beginning) to the end of the source."""

    def fingerprint(self) -> list[dict]:
        """One entry per input: {"path", "size", "mtime"} (or an id and revision for remote data)."""


def file_fingerprint(path: Path) -> dict:
    st = os.stat(path)
    return {"path": str(path), "size": st.st_size, "mtime": st.st_mtime_ns / 1e9}
