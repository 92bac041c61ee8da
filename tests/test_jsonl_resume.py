"""JSONL resumes from a byte offset: each batch's cursor says where its first line starts, and reading from a cursor
never parses the lines before it (a plain file is seeked, a compressed one decompressed up to it unparsed)."""

import gzip
import json

import pytest
import zstandard

import openseek_nanochat.convert.sources.files as files
from openseek_nanochat.convert.sources.files import FilesTextSource
from openseek_nanochat.convert.spec import FilesSource
from openseek_nanochat.errors import InputError
from openseek_nanochat.settings import get_settings

from convertutil import run_spec, shard_bytes

TEXTS = [f"document {i}: " + "word " * (i % 37) + "é中🦜" for i in range(3000)]


def jsonl(texts: list[str]) -> bytes:
    return "".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)).encode()


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(files, "JSON_BLOCK_BYTES", 8192)
    monkeypatch.setattr(files, "PEEK_BYTES", 2048)  # the schema comes from the lines in the first 2 KB


def source(path) -> FilesTextSource:
    return FilesTextSource(FilesSource(paths=[str(path)]), get_settings())


def texts(batches) -> list[str]:
    return [t for b in batches for t in b.texts.to_pylist()]


@pytest.mark.parametrize("codec", ["plain", "gz", "zst"])
def test_each_batch_records_where_it_starts(data_dir, codec):
    raw = jsonl(TEXTS)
    path = data_dir / ("c.jsonl" + {"plain": "", "gz": ".gz", "zst": ".zst"}[codec])
    path.write_bytes({"plain": lambda b: b, "gz": gzip.compress, "zst": zstandard.compress}[codec](raw))
    batches = list(source(path).read())
    assert len(batches) > 20 and texts(batches) == TEXTS
    done = 0
    for batch in batches:
        byte = batch.cursor["byte"]
        assert byte == 0 or raw[byte - 1 : byte] == b"\n"
        assert json.loads(raw[byte : raw.index(b"\n", byte)])["id"] == batch.cursor["row"] == done
        assert texts(source(path).read(batch.cursor)) == TEXTS[done:]
        done += len(batch.texts)


def test_a_resume_reads_nothing_before_the_cursor(data_dir):
    """The lines between the schema's first 2 KB and the cursor are overwritten with garbage: a reader that parsed
    them would fail."""
    raw = jsonl(TEXTS)
    path = data_dir / "c.jsonl"
    path.write_bytes(raw)
    batches = list(source(path).read())
    cursor = batches[len(batches) // 2].cursor
    head = raw.rindex(b"\n", 0, files.PEEK_BYTES) + 1
    path.write_bytes(raw[:head] + b"#" * (cursor["byte"] - head - 1) + b"\n" + raw[cursor["byte"] :])
    assert texts(source(path).read(cursor)) == TEXTS[cursor["row"] :]
    # An older cursor, without "byte", counts its way there again: through the garbage, to the wrong rows.
    assert texts(source(path).read({"file": 0, "row": cursor["row"]})) != TEXTS[cursor["row"] :]


def test_a_file_cut_short_before_the_cursor_is_named(data_dir):
    raw = jsonl(TEXTS)
    path = data_dir / "c.jsonl"
    path.write_bytes(raw)
    cursor = list(source(path).read())[-1].cursor
    path.write_bytes(raw[: cursor["byte"] // 2])
    with pytest.raises(InputError) as e:
        list(source(path).read(cursor))
    assert str(e.value) == f"{path}: the resume point (byte {cursor['byte']}) is past the end: the file changed"


class Crash(Exception):
    pass


def crash_after(shards: int):
    def on_progress(p):
        if p["shards"] >= shards:
            raise Crash()

    return on_progress


def test_a_conversion_resumed_from_its_manifest_is_identical(data_dir, datasets):
    """The whole path: a run stopped after its first shards records byte offsets, and finishes byte-identical to one
    that never stopped."""
    path = data_dir / "c.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(TEXTS * 4)))
    spec = {"sources": [{"type": "files", "paths": [str(path)]}], "chars_per_shard": 40_000, "shuffle_buffer": 2000}
    run_spec({**spec, "output_dir": str(datasets / "whole")})
    with pytest.raises(Crash):
        run_spec({**spec, "output_dir": str(datasets / "resumed")}, on_progress=crash_after(3))
    partial = json.loads((datasets / "resumed" / "manifest.json").read_text())
    assert not partial["complete"] and '"byte": ' in json.dumps(partial["resume"])
    run_spec({**spec, "output_dir": str(datasets / "resumed")})
    assert shard_bytes(datasets / "resumed") == shard_bytes(datasets / "whole")
