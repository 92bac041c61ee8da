"""Documents drawn from a finished dataset with their provenance: what the samples endpoint and the dashboard show.

A draw is uniform over the documents that match (a source, a split), without replacement, and fixed by the seed. It
reads only what it returns: the manifest's per-shard counts pick the shards, a sidecar (provenance.py) maps a pick
to its row where a source is asked for, and only the row groups holding the picked rows are read from the shards.
"""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from openseek_nanochat.convert import provenance
from openseek_nanochat.errors import InputError


def draw(out: Path, manifest: dict, n: int, seed: int, source: str | None, split: str | None, max_chars: int):
    """Up to `n` documents: [{"text", "chars", "split", "shard", "row", "source", "locator"}], text cut to
    `max_chars` (`chars` is its whole length). InputError names a source the dataset does not have."""
    out = Path(out)
    sources = manifest["sources"]
    names = [s["name"] for s in sources]
    wanted = None
    if source is not None:
        if source not in names:
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise InputError(f"the dataset has no source {source!r}; its sources are {shown}", "source")
        wanted = names.index(source)
    shards = [s for s in manifest["shards"] if split is None or s["split"] == split]
    counts = np.array([s["source_docs"][wanted] if wanted is not None else s["rows"] for s in shards], np.int64)
    total = int(counts.sum())
    picks = np.random.default_rng(seed).choice(total, min(n, total), replace=False) if total else np.zeros(0, int)
    ends = np.cumsum(counts)
    shard_of = np.searchsorted(ends, picks, side="right")
    rank = picks - (ends[shard_of] - counts[shard_of])
    drawn: list[dict] = [{}] * len(picks)  # in the order drawn: the same seed, the same documents in the same order
    for i in np.unique(shard_of):
        shard = shards[i]
        origin = pq.read_table(provenance.sidecar_path(out, shard["file"]))
        taken = np.flatnonzero(shard_of == i)
        rows = rank[taken]
        if wanted is not None:
            rows = np.flatnonzero(origin["source"].to_numpy() == wanted)[rows]
        for k, row, text in zip(taken.tolist(), rows.tolist(), _rows(out / shard["file"], rows)):
            s, item, pos = (origin[c][row].as_py() for c in ("source", "item", "pos"))
            drawn[k] = {
                "text": text[:max_chars],
                "chars": len(text),
                "split": shard["split"],
                "shard": shard["file"],
                "row": row,
                "source": names[s],
                "locator": provenance.locator(sources[s]["items"][item], pos),
            }
    return drawn


def _rows(path: Path, rows: np.ndarray) -> list[str]:
    """The text of `rows` of a shard, reading only the row groups that hold them."""
    shard = pq.ParquetFile(path)
    starts = np.cumsum([0] + [shard.metadata.row_group(g).num_rows for g in range(shard.num_row_groups)])
    groups = np.searchsorted(starts, rows, side="right") - 1
    texts = {}
    for group in np.unique(groups):
        column = shard.read_row_group(int(group), columns=["text"]).column("text")
        for row in rows[groups == group].tolist():
            texts[row] = column[row - int(starts[group])].as_py()
    return [texts[row] for row in rows.tolist()]
