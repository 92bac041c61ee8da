"""What every source yields: Arrow batches of document text, each with a cursor to restart from.

A source knows nothing about mixing, filtering or shards. It reads its inputs in order and says, for each batch, where
that batch began (`cursor`, a small JSON object). Passing a batch's cursor back to `read` restarts exactly at that
batch, which is all the conversion engine needs to resume after a crash without re-reading whole datasets.

Each document also says where it came from: `items` (an index into the source's `provenance_items()`, e.g. its
files) and `positions` (the line, row or document inside that item), two int arrays beside `texts`. They travel with
the text through the mixture into each shard's provenance sidecar (provenance.py).
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa


@dataclass
class Batch:
    cursor: dict  # where this batch's first record lies; read(cursor) starts again here
    texts: pa.Array  # string or large_string, one document per element, nulls allowed (dropped later as empty)
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> records of this batch the source dropped
    stats: dict[str, int] = field(default_factory=dict)  # other counters, e.g. {"decode_replacements": 3}
    progress: float | None = None  # fraction of the source read once this batch is consumed, where known
    items: np.ndarray | None = None  # int32 per document: which of the source's provenance_items() it is in
    positions: np.ndarray | None = None  # int64 per document: its line (1-based), row or document (0-based) there

    def __post_init__(self):
        # A source that does not say (a test's stand-in) gets unknown positions: item 0, position -1.
        if self.items is None:
            self.items = np.zeros(len(self.texts), np.int32)
        if self.positions is None:
            self.positions = np.full(len(self.texts), -1, np.int64)


def run_of(item: int, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(items, positions) of `count` consecutive documents of one item from position `first`."""
    return np.full(count, item, np.int32), np.arange(first, first + count, dtype=np.int64)


class TextSource(Protocol):
    name: str  # how the manifest names this source
    weight: float

    def check(self) -> None:
        """Fail fast (InputError) on what can be known before reading: missing files, absent columns, bad headers."""

    def read(self, cursor: dict | None = None) -> Iterator[Batch]:
        """Batches in a fixed order from `cursor` (None: the beginning) to the end of the source."""

    def fingerprint(self) -> list[dict]:
        """One entry per input: {"path", "size", "mtime"} (or an id and revision for remote data)."""

    def provenance_items(self) -> list[dict]:
        """What Batch.items index: each a locator without its position, plus "pos", the key the position goes under,
        e.g. {"file": "/data/a.jsonl", "pos": "line"} or {"prefix": "/data/part_0_text_document", "pos": "doc"}."""


def file_fingerprint(path: Path) -> dict:
    st = os.stat(path)
    return {"path": str(path), "size": st.st_size, "mtime": st.st_mtime_ns / 1e9}
