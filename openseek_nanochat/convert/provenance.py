"""Where every document of a dataset came from: a sidecar per shard, `provenance/<shard name>`, that nanochat never
lists (it reads only the `*.parquet` files of the dataset folder itself, not its subfolders).

A sidecar is a parquet file with the rows of its shard in the same order and three int columns: `source` (an index
into the manifest's `sources`), `item` (an index into that source's `items`: its files, Megatron prefixes or HF
split) and `pos` (the JSONL line, 1-based; the parquet or Arrow row, the Megatron document or the HF row, 0-based).
It is written beside its shard by the same writer, in the same row groups, under a temp name, and renamed into place
just before the shard; the manifest records its bytes and sha256 with the shard's.

`locator` turns a row's three numbers back into what a person can follow: {"file", "line"}, {"file", "row"},
{"prefix", "doc"} or {"dataset", "name", "split", "row"}.
"""

from pathlib import Path

import pyarrow as pa

FOLDER = "provenance"
SCHEMA = pa.schema([("source", pa.int16()), ("item", pa.int32()), ("pos", pa.int64())])


def sidecar_folder(out: Path) -> Path:
    return Path(out) / FOLDER


def sidecar_path(out: Path, shard_file: str) -> Path:
    return sidecar_folder(out) / shard_file


def columns(group: pa.Table) -> pa.Table:
    """A row group's provenance, one chunk per column: the sidecar's bytes then depend on the rows alone, not on how
    the mixture happened to slice them."""
    table = pa.table([group.column(field.name).cast(field.type) for field in SCHEMA], schema=SCHEMA)
    return table.combine_chunks()


def locator(item: dict, pos: int) -> dict:
    """{"file": ..., "line": 12} from a source's item {"file": ..., "pos": "line"} and a position."""
    found = {key: value for key, value in item.items() if key != "pos"}
    found[item["pos"]] = pos
    return found
