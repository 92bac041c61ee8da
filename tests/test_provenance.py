"""Provenance is exact: every document of a conversion leads, through its sidecar's locator, back to the identical
original text, read from the original input by that locator alone."""

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from openseek_nanochat.convert import lengths, provenance, samples
from openseek_nanochat.errors import InputError

from convertutil import run_spec

GSM8K_TEMPLATE = "{question}\n{answer}"


def original_text(locator: dict, source: dict, shared_data: Path) -> str:
    """The document a locator names, read from the original input the way a person would."""
    if "line" in locator:  # JSONL: the line, 1-based, parsed, the source's text selection applied
        line = Path(locator["file"]).read_bytes().split(b"\n")[locator["line"] - 1]
        record = json.loads(line)
        return GSM8K_TEMPLATE.format(**record) if "question" in record else record["text"]
    if "prefix" in locator:  # Megatron: the part's documents as they were before tokenizing, in order
        expected = Path(locator["prefix"] + ".expected.jsonl").read_text(encoding="utf-8").splitlines()
        return json.loads(expected[locator["doc"]])["text"]
    if "dataset" in locator:  # a local Hugging Face dataset: the split's row through `datasets` itself
        import datasets

        return datasets.load_from_disk(locator["dataset"])[locator["row"]]["body"]
    return pq.read_table(locator["file"]).column("text")[locator["row"]].as_py()  # parquet: the row, 0-based


@pytest.fixture
def mixed(shared_data, data_dir):
    """Every kind of source, with what makes positions hard: blank and whitespace-only lines, a malformed line (the
    file then goes through Python's json), documents dropped as empty or short, parquet in several row groups."""
    import datasets

    lines = [json.dumps({"text": f"line document {i} " + "word " * (i % 17)}) for i in range(600)]
    lines[10:10] = ["", "   ", json.dumps({"text": "   "}), json.dumps({"text": "tiny"})]
    (data_dir / "blank.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    broken = [json.dumps({"text": f"broken file document {i}, " + "x" * (i % 50)}) for i in range(300)]
    broken[123] = '{"text": "never closed'
    (data_dir / "broken.jsonl").write_text("\n".join(broken) + "\n", encoding="utf-8")
    pq.write_table(
        pa.table({"text": [f"parquet row {i} " + "y" * (i % 31) for i in range(900)]}),
        data_dir / "rows.parquet",
        row_group_size=100,
    )
    datasets.Dataset.from_dict({"body": [f"hf row {i} " + "z" * (i % 23) for i in range(400)]}).save_to_disk(
        data_dir / "hf"
    )
    megatron = shared_data / "megatron"
    return {
        "sources": [
            {"type": "files", "paths": [str(data_dir / "blank.jsonl"), str(data_dir / "broken.jsonl")]},
            {"type": "files", "paths": [str(shared_data / "jsonl/gsm8k.jsonl")], "text_template": GSM8K_TEMPLATE},
            {"type": "files", "paths": [str(data_dir / "rows.parquet")], "weight": 2},
            {"type": "hf", "dataset": str(data_dir / "hf"), "text_column": "body"},
            {
                "type": "megatron",
                "data_path": [
                    1.0,
                    str(megatron / "shakespeare_text_document"),
                    1.0,
                    str(megatron / "cmath_text_document"),
                ],
                "tokenizer": {"type": "qwen", "path": str(shared_data / "qwen.tiktoken")},
            },
        ],
        "on_error": "skip",
        "min_chars": 5,
        "chars_per_shard": 150_000,
        "row_group_size": 64,
        "shuffle_buffer": 700,
        "val_docs": 40,
    }


def every_document(out: Path, manifest: dict):
    """(shard record, row, text, source summary, locator) for every row of every shard, from the sidecars."""
    for shard in manifest["shards"]:
        texts = pq.read_table(out / shard["file"]).column("text").to_pylist()
        origin = pq.read_table(out / shard["provenance"]["file"]).to_pydict()
        assert len(origin["source"]) == len(texts) == shard["rows"]
        for row, (text, s, item, pos) in enumerate(zip(texts, origin["source"], origin["item"], origin["pos"])):
            source = manifest["sources"][s]
            yield shard, row, text, source, provenance.locator(source["items"][item], pos)


def test_every_locator_leads_back_to_the_identical_original(mixed, shared_data, datasets):
    out = datasets / "mixed"
    manifest = run_spec({**mixed, "output_dir": str(out)})
    kinds, seen = set(), set()
    for shard, row, text, source, locator in every_document(out, manifest):
        assert text == original_text(locator, source, shared_data), (shard["file"], row, locator)
        key = json.dumps(locator, sort_keys=True)
        assert key not in seen, f"two documents claim {key}"  # without a budget each document appears once
        seen.add(key)
        kinds.add(tuple(sorted(locator)))
    assert kinds == {("file", "line"), ("file", "row"), ("doc", "prefix"), ("dataset", "name", "row", "split")}
    assert len(seen) == manifest["totals"]["docs"]
    # The blank, whitespace and malformed lines are not documents, but they are lines: the JSONL positions count them.
    lines = sorted(json.loads(k)["line"] for k in seen if json.loads(k).get("file", "").endswith("blank.jsonl"))
    assert lines[:12] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 16]
    broken = {json.loads(k)["line"] for k in seen if json.loads(k).get("file", "").endswith("broken.jsonl")}
    assert 124 not in broken and {123, 125} <= broken


def test_sidecars_are_in_the_manifest_with_their_checksums(mixed, datasets):
    out = datasets / "mixed"
    manifest = run_spec({**mixed, "output_dir": str(out)})
    for shard in manifest["shards"]:
        sidecar = out / shard["provenance"]["file"]
        assert sidecar == provenance.sidecar_path(out, shard["file"])
        assert shard["provenance"]["bytes"] == sidecar.stat().st_size
        assert shard["provenance"]["sha256"] == hashlib.sha256(sidecar.read_bytes()).hexdigest()
        # nanochat lists the dataset folder's own *.parquet files: the sidecars are not among them
        assert sidecar.parent != out
    chars = [len(t) for s in manifest["shards"] for t in pq.read_table(out / s["file"]).column("text").to_pylist()]
    import numpy as np

    assert manifest["totals"]["length_hist"] == lengths.histogram(np.array(chars)).tolist()
    assert manifest["totals"]["length_bins"][:4] == [1, 2, 4, 8]


def test_a_draw_returns_what_the_sidecars_say(mixed, shared_data, datasets):
    out = datasets / "mixed"
    manifest = run_spec({**mixed, "output_dir": str(out)})
    by_place = {(s["file"], row): (text, src["name"], loc) for s, row, text, src, loc in every_document(out, manifest)}
    drawn = samples.draw(out, manifest, n=30, seed=7, source=None, split=None, max_chars=50)
    assert len(drawn) == 30 and len({(d["shard"], d["row"]) for d in drawn}) == 30
    for doc in drawn:
        text, source, locator = by_place[(doc["shard"], doc["row"])]
        assert (doc["text"], doc["chars"], doc["source"], doc["locator"]) == (text[:50], len(text), source, locator)
    assert samples.draw(out, manifest, n=30, seed=7, source=None, split=None, max_chars=50) == drawn
    assert samples.draw(out, manifest, n=30, seed=8, source=None, split=None, max_chars=50) != drawn

    parquet = manifest["sources"][2]["name"]
    only = samples.draw(out, manifest, n=100, seed=1, source=parquet, split="val", max_chars=10_000)
    expected = [
        (f, r) for (f, r), (_, name, _) in by_place.items() if name == parquet and f == manifest["shards"][-1]["file"]
    ]
    assert sorted((d["shard"], d["row"]) for d in only) == sorted(expected)  # fewer than n: all of them
    assert all(original_text(d["locator"], None, shared_data) == d["text"] for d in only)
    with pytest.raises(InputError, match="has no source 'nope'; its sources are"):
        samples.draw(out, manifest, n=1, seed=1, source="nope", split=None, max_chars=10)
