"""Helpers for conversion tests: run a spec, read shards back."""

import json
from pathlib import Path

import pyarrow.parquet as pq

from openseek_nanochat.convert.run import convert
from openseek_nanochat.convert.shards import list_shards
from openseek_nanochat.convert.spec import ConvertSpec
from openseek_nanochat.settings import get_settings


def run_spec(spec: dict, **kwargs) -> dict:
    return convert(ConvertSpec.model_validate(spec), get_settings(), **kwargs)


def shard_paths(out: Path) -> list[Path]:
    return list_shards(out)


def read_docs(out: Path, split: str | None = None) -> list[str]:
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    docs = []
    for shard in manifest["shards"]:
        if split is None or shard["split"] == split:
            docs.extend(pq.read_table(Path(out) / shard["file"]).column("text").to_pylist())
    return docs


def shard_bytes(out: Path) -> dict[str, bytes]:
    """Every shard and its provenance sidecar, as bytes."""
    sidecars = sorted((Path(out) / "provenance").glob("*.parquet"))
    assert [p.name for p in sidecars] == [p.name for p in shard_paths(out)]
    shards = {p.name: p.read_bytes() for p in shard_paths(out)}
    return {**shards, **{f"provenance/{p.name}": p.read_bytes() for p in sidecars}}


def jsonl_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
