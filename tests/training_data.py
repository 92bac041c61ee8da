"""Shards in nanochat's layout, made from the shared test text, for the tokenizer, loader and trainer tests.

Built here with pyarrow (not by the conversion engine) so that these tests pin the training side on its own.
"""

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def shakespeare_docs(shared_data: Path, seed: int = 0) -> list[str]:
    """Documents of 1 to 12 consecutive speeches: lengths from a few tokens to a couple of thousand."""
    speeches = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")
    rng = random.Random(seed)
    docs, i = [], 0
    while i < len(speeches):
        n = rng.choice([1, 1, 2, 3, 5, 8, 12])
        docs.append("\n\n".join(speeches[i : i + n]))
        i += n
    return docs


def write_shards(out_dir: Path, docs: list[str], num_shards: int, row_group_size: int, val_docs: int) -> Path:
    """`shard_00000.parquet` ... with one `text` column; the last shard holds the last `val_docs` documents. Beside
    them, the least manifest a train job accepts: complete, listing each shard and its size."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train, val = docs[:-val_docs], docs[-val_docs:]
    per_shard = -(-len(train) // (num_shards - 1))
    parts = [train[i : i + per_shard] for i in range(0, len(train), per_shard)] + [val]
    shards = []
    for i, part in enumerate(parts):
        table = pa.table({"text": pa.array(part, type=pa.string())})
        path = out_dir / f"shard_{i:05d}.parquet"
        pq.write_table(table, path, row_group_size=row_group_size)
        shards.append({"file": path.name, "bytes": path.stat().st_size, "rows": len(part)})
    (out_dir / "manifest.json").write_text(json.dumps({"complete": True, "shards": shards}))
    return out_dir
