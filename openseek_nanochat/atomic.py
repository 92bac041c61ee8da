"""Writing files so that a crash leaves either the old file or the whole new one, never a part.

Every file the project writes for others to read (shards, manifests, tokenizer files, checkpoints) goes through here:
written under a hidden temporary name in the same folder, flushed to disk, renamed over the final name, and then the
folder itself is flushed, so that the rename survives a power loss too (POSIX leaves it in the page cache until then).
"""

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def temp_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place.

    Hidden, so no listing of `*.parquet` or `*.pt` sees it."""
    return path.with_name(f".{path.name}.tmp")


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def publish(tmp: Path, path: Path) -> None:
    """Rename a finished, fsynced `tmp` over `path` and make the rename durable."""
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """`write(f)` into a temporary file, then publish it as `path`."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_atomic(path: Path, save: Callable[[Path], None]) -> None:
    """For writers that take a path (torch.save, pyarrow): `save(tmp)`, then publish it as `path`."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        save(tmp)
        fsync_file(tmp)
        publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data, encoded: dict[str, list[str]] | None = None) -> None:
    write_atomic(path, lambda f: f.write(readable_json(data, encoded).encode("utf-8")))


def compact_json(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def readable_json(data, encoded: dict[str, list[str]] | None = None) -> str:
    """JSON with each top-level field on a line of its own and each element of a top-level list too (a manifest's
    shards, inputs, sources), everything inside compact. `encoded` gives, for some top-level lists, their elements
    already made `compact_json` (a manifest's shards, which never change once recorded, are encoded once).

    Written this way, not with `indent`, because `indent` takes json's pure-Python encoder: a manifest over 1,000
    Megatron parts (1 MB) took 0.3 s each time a shard was recorded, holding the GIL the reading thread needs."""
    if not isinstance(data, dict):
        return compact_json(data) + "\n"
    encoded = encoded or {}
    fields = []
    for key, value in data.items():
        if isinstance(value, list) and value:
            lines = encoded[key] if key in encoded else map(compact_json, value)
            items = "    " + ",\n    ".join(lines)
            fields.append(f"  {json.dumps(key)}: [\n{items}\n  ]")
        else:
            fields.append(f"  {json.dumps(key)}: {compact_json(value)}")
    return "{\n" + ",\n".join(fields) + "\n}\n" if fields else "{}\n"
