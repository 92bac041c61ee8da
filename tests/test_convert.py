"""The conversion engine on the real shared fixtures: exact documents, nanochat layout, determinism, budgets."""

import collections
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from convertutil import jsonl_records, read_docs, run_spec, shard_bytes, shard_paths


def gsm8k_docs(shared_data):
    return [f"{r['question']}\n{r['answer']}" for r in jsonl_records(shared_data / "jsonl/gsm8k.jsonl")]


def test_templated_jsonl_every_document_exactly_once(shared_data, datasets):
    out = datasets / "gsm8k"
    manifest = run_spec(
        {
            "sources": [
                {
                    "type": "files",
                    "paths": [str(shared_data / "jsonl/gsm8k.jsonl")],
                    "text_template": "{question}\n{answer}",
                }
            ],
            "output_dir": str(out),
            "chars_per_shard": 100_000,
            "row_group_size": 64,
        }
    )
    expected = gsm8k_docs(shared_data)
    got = read_docs(out)
    assert collections.Counter(got) == collections.Counter(expected)
    assert got != expected, "documents should be shuffled"
    assert manifest["complete"] and manifest["totals"]["docs"] == len(expected) == 1319
    assert manifest["sources"][0]["docs"] == 1319


def test_chinese_text_and_list_columns_render(shared_data, datasets):
    out = datasets / "mix"
    run_spec(
        {
            "sources": [
                {
                    "type": "files",
                    "paths": [str(shared_data / "jsonl/cmath.jsonl")],
                    "text_template": "{question}\n答案: {answer}",
                },
                {
                    "type": "files",
                    "paths": [str(shared_data / "jsonl/mmlu_stem.jsonl")],
                    "text_template": "{question}\n{choices}",
                },
            ],
            "output_dir": str(out),
            "chars_per_shard": 200_000,
        }
    )
    cmath = [f"{r['question']}\n答案: {r['answer']}" for r in jsonl_records(shared_data / "jsonl/cmath.jsonl")]
    mmlu = [
        f"{r['question']}\n" + "\n".join(r["choices"]) for r in jsonl_records(shared_data / "jsonl/mmlu_stem.jsonl")
    ]
    assert collections.Counter(read_docs(out)) == collections.Counter(cmath + mmlu)
    assert any("答案" in d for d in read_docs(out, "val") + read_docs(out, "train"))


def test_nanochat_layout(shared_data, datasets):
    out = datasets / "layout"
    manifest = run_spec(
        {
            "sources": [
                {
                    "type": "files",
                    "paths": [str(shared_data / "jsonl/gsm8k.jsonl")],
                    "text_template": "{question}\n{answer}",
                }
            ],
            "output_dir": str(out),
            "chars_per_shard": 150_000,
            "row_group_size": 100,
            "val_docs": 50,
        }
    )
    paths = shard_paths(out)
    assert [p.name for p in paths] == [f"shard_{i:05d}.parquet" for i in range(len(paths))]
    assert len(paths) >= 2 and [s["split"] for s in manifest["shards"]] == ["train"] * (len(paths) - 1) + ["val"]
    assert manifest["shards"][-1]["rows"] == 50
    for path, entry in zip(paths, manifest["shards"]):
        pf = pq.ParquetFile(path)
        assert pf.schema_arrow == pa.schema([pa.field("text", pa.string())])
        assert all(pf.metadata.row_group(i).num_rows <= 100 for i in range(pf.num_row_groups))
        assert pf.metadata.row_group(0).column(0).compression == "ZSTD"
        assert entry["rows"] == pf.metadata.num_rows and entry["row_groups"] == pf.num_row_groups
        assert entry["bytes"] == path.stat().st_size
        assert entry["chars"] == sum(len(t) for t in pf.read().column("text").to_pylist())
    train = manifest["shards"][:-1]
    # Every train shard but the last is full: past the size target and made of whole row groups.
    assert all(s["chars"] >= 150_000 and s["rows"] % 100 == 0 for s in train[:-1])
    assert not list(out.glob("**/.*tmp"))


def test_local_parquet_dataset_through_datasets(shared_data, data_dir, datasets):
    lines = [p for p in (shared_data / "tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
    ds_dir = data_dir / "hf_local"
    ds_dir.mkdir()
    half = len(lines) // 2
    pq.write_table(pa.table({"content": lines[:half], "n": list(range(half))}), ds_dir / "train-00000.parquet")
    pq.write_table(
        pa.table({"content": lines[half:], "n": list(range(half, len(lines)))}), ds_dir / "train-00001.parquet"
    )
    out = datasets / "from_hf"
    manifest = run_spec(
        {
            "sources": [{"type": "hf", "dataset": str(ds_dir), "text_column": "content"}],
            "output_dir": str(out),
            "chars_per_shard": 300_000,
        }
    )
    assert collections.Counter(read_docs(out)) == collections.Counter(lines)
    assert manifest["sources"][0]["type"] == "hf"


def test_plain_text_one_document_per_file(shared_data, data_dir, datasets):
    text = (shared_data / "tinyshakespeare.txt").read_text()
    pieces = [text[i : i + 20_000] for i in range(0, 200_000, 20_000)]
    src = data_dir / "texts"
    src.mkdir()
    for i, piece in enumerate(pieces):
        (src / f"doc{i:02d}.txt").write_text(piece)
    (src / "blank.txt").write_text("  \n")
    out = datasets / "text_out"
    manifest = run_spec(
        {
            "sources": [{"type": "files", "paths": [str(src / "*.txt")]}],
            "output_dir": str(out),
            "chars_per_shard": 50_000,
            "row_group_size": 2,
            "val_docs": 1,
        }
    )
    assert sorted(read_docs(out)) == sorted(pieces)
    assert manifest["sources"][0]["skipped"]["empty"] == 1


def test_compressed_jsonl_parquet_and_arrow_files(shared_data, data_dir, datasets):
    records = jsonl_records(shared_data / "jsonl/math500.jsonl")
    lines = [
        line for line in (shared_data / "jsonl/math500.jsonl").read_bytes().splitlines(keepends=True) if line.strip()
    ]
    half = len(lines) // 2
    (data_dir / "a.jsonl.gz").write_bytes(gzip.compress(b"".join(lines[:half])))
    (data_dir / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b"".join(lines[half:])))
    table = pa.table({"problem": [r["problem"] for r in records], "solution": [r["solution"] for r in records]})
    pq.write_table(table, data_dir / "c.parquet")
    with pa.OSFile(str(data_dir / "d.arrow"), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table)
    out = datasets / "multi"
    run_spec(
        {
            "sources": [
                {
                    "type": "files",
                    "paths": [str(data_dir / p) for p in ("a.jsonl.gz", "b.jsonl.zst", "c.parquet", "d.arrow")],
                    "text_template": "{problem}\n\n{solution}",
                }
            ],
            "output_dir": str(out),
        }
    )
    expected = [f"{r['problem']}\n\n{r['solution']}" for r in records]
    assert collections.Counter(read_docs(out)) == collections.Counter(expected * 3)


def test_same_spec_same_bytes_and_seed_changes_order(shared_data, datasets):
    spec = {
        "sources": [
            {"type": "files", "paths": [str(shared_data / "jsonl/gsm8k.jsonl")], "text_column": "question"},
            {
                "type": "files",
                "paths": [str(shared_data / "jsonl/math500.jsonl")],
                "text_column": "problem",
                "weight": 2,
            },
        ],
        "chars_per_shard": 60_000,
        "row_group_size": 32,
        "shuffle_buffer": 300,
    }
    run_spec({**spec, "output_dir": str(datasets / "a")})
    run_spec({**spec, "output_dir": str(datasets / "b")})
    run_spec({**spec, "output_dir": str(datasets / "c"), "seed": 7})
    assert shard_bytes(datasets / "a") == shard_bytes(datasets / "b")
    assert read_docs(datasets / "a") != read_docs(datasets / "c")
    assert sorted(read_docs(datasets / "a")) == sorted(read_docs(datasets / "c"))


def test_sources_are_interleaved_from_the_start(shared_data, datasets):
    out = datasets / "inter"
    run_spec(
        {
            "sources": [
                {"type": "files", "paths": [str(shared_data / "jsonl/gsm8k.jsonl")], "text_column": "question"},
                {"type": "files", "paths": [str(shared_data / "jsonl/math500.jsonl")], "text_column": "problem"},
            ],
            "output_dir": str(out),
            "shuffle_buffer": 200,
            "chars_per_shard": 10**9,
            "val_docs": 10,
        }
    )
    math = {r["problem"] for r in jsonl_records(shared_data / "jsonl/math500.jsonl")}
    first = read_docs(out)[:200]
    share = sum(d in math for d in first) / len(first)
    assert 0.35 < share < 0.65, share  # equal weights: both domains from the first documents on


def test_no_shuffle_keeps_source_order(shared_data, datasets):
    out = datasets / "ordered"
    run_spec(
        {
            "sources": [
                {
                    "type": "files",
                    "paths": [str(shared_data / "jsonl/gsm8k.jsonl")],
                    "text_template": "{question}\n{answer}",
                }
            ],
            "output_dir": str(out),
            "shuffle": False,
            "val_docs": 19,
        }
    )
    docs = read_docs(out)
    assert docs == gsm8k_docs(shared_data)  # train in file order, val = the last 19 documents


def test_budgets_max_docs_and_max_chars(shared_data, datasets):
    src = [{"type": "files", "paths": [str(shared_data / "jsonl/gsm8k.jsonl")], "text_column": "answer"}]
    m = run_spec({"sources": src, "output_dir": str(datasets / "d"), "max_docs": 500, "val_docs": 20})
    assert m["totals"]["docs"] == 500 and m["totals"]["val_docs"] == 20
    m = run_spec({"sources": src, "output_dir": str(datasets / "c"), "max_chars": 100_000, "val_docs": 20})
    longest = max(len(r["answer"]) for r in jsonl_records(shared_data / "jsonl/gsm8k.jsonl"))
    assert 100_000 <= m["totals"]["chars"] < 100_000 + longest


def test_budget_repeats_a_source_as_new_epochs(shared_data, datasets):
    m = run_spec(
        {
            "sources": [
                {"type": "files", "paths": [str(shared_data / "jsonl/cmath.jsonl")], "text_column": "question"}
            ],
            "output_dir": str(datasets / "ep"),
            "max_docs": 1500,
            "val_docs": 10,
        }
    )
    assert m["totals"]["docs"] == 1500
    assert m["sources"][0]["epochs"] == 3  # 600 documents per epoch


def test_max_shards_and_min_chars(shared_data, datasets):
    m = run_spec(
        {
            "sources": [{"type": "files", "paths": [str(shared_data / "jsonl/gsm8k.jsonl")], "text_column": "answer"}],
            "output_dir": str(datasets / "ms"),
            "max_shards": 3,
            "chars_per_shard": 50_000,
            "row_group_size": 16,
            "min_chars": 200,
            "val_docs": 25,
        }
    )
    assert len(m["shards"]) == 3 and m["shards"][-1]["split"] == "val" and m["shards"][-1]["rows"] == 25
    assert all(len(d) >= 200 for d in read_docs(datasets / "ms"))
    assert m["sources"][0]["skipped"]["short"] > 0


def test_rows_per_shard(shared_data, datasets):
    m = run_spec(
        {
            "sources": [{"type": "files", "paths": [str(shared_data / "jsonl/gsm8k.jsonl")], "text_column": "answer"}],
            "output_dir": str(datasets / "rps"),
            "rows_per_shard": 300,
            "row_group_size": 128,
            "val_docs": 19,
        }
    )
    assert [s["rows"] for s in m["shards"]] == [300, 300, 300, 300, 100, 19]
    assert [s["row_groups"] for s in m["shards"]][:4] == [3, 3, 3, 3]


def test_rerun_of_complete_output_is_a_no_op(shared_data, datasets):
    spec = {
        "sources": [{"type": "files", "paths": [str(shared_data / "jsonl/gsm8k.jsonl")], "text_column": "answer"}],
        "output_dir": str(datasets / "again"),
    }
    first = run_spec(spec)
    before = {p: p.stat().st_mtime_ns for p in shard_paths(datasets / "again")}
    second = run_spec(spec)
    assert second["shards"] == first["shards"]
    assert before == {p: p.stat().st_mtime_ns for p in shard_paths(datasets / "again")}


def test_manifest_records_inputs_and_spec(shared_data, datasets):
    path = shared_data / "jsonl/gsm8k.jsonl"
    m = run_spec(
        {
            "sources": [{"type": "files", "paths": [str(path)], "text_column": "answer"}],
            "output_dir": str(datasets / "fp"),
        }
    )
    assert m["inputs"][0]["files"] == [
        {"path": str(path), "size": path.stat().st_size, "mtime": path.stat().st_mtime_ns / 1e9}
    ]
    assert m["spec"]["sources"][0]["text_column"] == "answer" and m["output_dir"] == str(datasets / "fp")
    assert json.loads((datasets / "fp" / "manifest.json").read_text())["complete"] is True


def test_progress_follows_the_writing_of_a_single_file(shared_data, datasets):
    reports = []
    run_spec(
        {
            "sources": [{"type": "files", "paths": [str(shared_data / "jsonl/gsm8k.jsonl")], "text_column": "answer"}],
            "output_dir": str(datasets / "p"),
            "chars_per_shard": 20_000,
            "row_group_size": 16,
            "shuffle_buffer": 200,
            "val_docs": 10,
        },
        on_progress=reports.append,
    )
    fractions = [r["fraction"] for r in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert len({f for f in fractions if 0 < f < 1}) >= 10, fractions  # it moves while shards are written
    assert reports[-1]["shards"] == 18 and reports[-1]["message"] == "done"


def test_validation_shard_has_a_row_group_for_each_of_8_ranks(shared_data, datasets):
    m = run_spec(
        {
            "sources": [{"type": "files", "paths": [str(shared_data / "jsonl/gsm8k.jsonl")], "text_column": "answer"}],
            "output_dir": str(datasets / "v"),
            "val_docs": 100,
        }
    )
    val = pq.ParquetFile(datasets / "v" / m["shards"][-1]["file"])
    assert [val.metadata.row_group(i).num_rows for i in range(val.num_row_groups)] == [13] * 7 + [9]
