"""Bad input: a clear message naming file/line/field, and nothing half-written."""

import json
import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from openseek_nanochat import events
from openseek_nanochat.convert.spec import ConvertSpec
from openseek_nanochat.errors import InputError
from openseek_nanochat.paths import PathPolicyError

from convertutil import read_docs, run_spec


def files(*paths, **kw):
    return {"type": "files", "paths": [str(p) for p in paths], **kw}


def write_jsonl(path, records, bad_line_at=None, bad="{not json"):
    lines = [json.dumps(r) for r in records]
    if bad_line_at is not None:
        lines.insert(bad_line_at - 1, bad)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_missing_file_and_empty_glob(data_dir, datasets):
    with pytest.raises(PathPolicyError, match=r"no such file: '.*/nope\.jsonl'"):
        run_spec({"sources": [files(data_dir / "nope.jsonl")], "output_dir": str(datasets / "o")})
    with pytest.raises(PathPolicyError, match=r"no file matches '.*/\*\.parquet'"):
        run_spec({"sources": [files(data_dir / "*.parquet")], "output_dir": str(datasets / "o")})
    assert not (datasets / "o").exists()


def test_paths_outside_the_roots_are_refused(data_dir, tmp_path, monkeypatch, datasets):
    monkeypatch.setenv("OPENSEEK_NANOCHAT_INPUT_ROOTS", str(data_dir))
    outside = write_jsonl(tmp_path / "outside.jsonl", [{"text": "x"}])
    with pytest.raises(PathPolicyError, match="outside the allowed input roots"):
        run_spec({"sources": [files(outside)], "output_dir": str(datasets / "o")})
    # A symlink inside the roots that points outside does not escape either.
    os.symlink(outside, data_dir / "link.jsonl")
    with pytest.raises(PathPolicyError, match="outside the allowed input roots"):
        run_spec({"sources": [files(data_dir / "link.jsonl")], "output_dir": str(datasets / "o")})
    inside = write_jsonl(data_dir / "in.jsonl", [{"text": "x"}])
    with pytest.raises(PathPolicyError, match="outside the data dir"):
        run_spec({"sources": [files(inside)], "output_dir": str(data_dir / ".." / "escape")})


def test_malformed_json_line_fails_naming_file_and_line(data_dir, datasets):
    src = write_jsonl(data_dir / "bad.jsonl", [{"text": f"doc {i}"} for i in range(5000)], bad_line_at=4321)
    with pytest.raises(InputError) as e:
        run_spec({"sources": [files(src)], "output_dir": str(datasets / "o"), "chars_per_shard": 1000})
    assert e.value.where == f"{src}:4321" and "malformed JSON" in e.value.message
    assert not list((datasets / "o").glob("**/.*.tmp"))


def test_malformed_first_line_is_reported_at_submit(data_dir, datasets):
    src = write_jsonl(data_dir / "bad.jsonl", [{"text": "a"}], bad_line_at=1)
    with pytest.raises(InputError) as e:
        run_spec({"sources": [files(src)], "output_dir": str(datasets / "o")})
    assert e.value.where == f"{src}:1"


def test_skip_policy_drops_and_counts_malformed_lines(data_dir, datasets):
    records = [{"text": f"doc {i}"} for i in range(3000)]
    src = write_jsonl(data_dir / "bad.jsonl", records, bad_line_at=2500)
    manifest = run_spec({"sources": [files(src)], "output_dir": str(datasets / "o"), "on_error": "skip"})
    assert sorted(read_docs(datasets / "o")) == sorted(r["text"] for r in records)
    assert manifest["sources"][0]["skipped"]["malformed"] == 1
    assert manifest["totals"]["skipped"]["malformed"] == 1


def test_wrong_column_names_the_columns_that_exist(shared_data, datasets):
    with pytest.raises(
        InputError,
        match="text_column is 'text', but the data has no such column; its columns are: 'question', 'answer'",
    ) as e:
        run_spec({"sources": [files(shared_data / "jsonl/gsm8k.jsonl")], "output_dir": str(datasets / "o")})
    assert e.value.where.endswith("gsm8k.jsonl")
    with pytest.raises(InputError, match="text_template uses 'solution'"):
        run_spec(
            {
                "sources": [files(shared_data / "jsonl/gsm8k.jsonl", text_template="{question} {solution}")],
                "output_dir": str(datasets / "o"),
            }
        )


def test_empty_result_is_an_error_and_writes_no_shard(data_dir, datasets):
    src = write_jsonl(data_dir / "empty.jsonl", [{"text": "  "}, {"text": ""}, {"text": None}, {"text": "tiny"}])
    with pytest.raises(InputError, match=r"only 0 document\(s\) after filtering"):
        run_spec({"sources": [files(src)], "output_dir": str(datasets / "o"), "min_chars": 10})
    assert not list((datasets / "o").glob("*.parquet")) and not list((datasets / "o").glob("**/.*.tmp"))


def test_unreadable_parquet_and_invalid_utf8_text(data_dir, datasets):
    (data_dir / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError, match="cannot read as parquet") as e:
        run_spec({"sources": [files(data_dir / "broken.parquet")], "output_dir": str(datasets / "o")})
    assert e.value.where == str(data_dir / "broken.parquet")
    (data_dir / "latin1.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(InputError, match="not valid UTF-8"):
        run_spec({"sources": [files(data_dir / "latin1.txt")], "output_dir": str(datasets / "o2")})


def test_changed_spec_or_inputs_are_refused_not_mixed(data_dir, datasets):
    src = write_jsonl(data_dir / "a.jsonl", [{"text": f"document number {i}"} for i in range(300)])
    spec = {"sources": [files(src)], "output_dir": str(datasets / "o")}
    run_spec(spec)
    with pytest.raises(InputError, match="holds a conversion of a different spec"):
        run_spec({**spec, "seed": 1})
    os.utime(src, ns=(1, 1))
    with pytest.raises(InputError, match="the input files changed since"):
        run_spec(spec)


def test_spec_validation_messages():
    with pytest.raises(ValidationError, match="text_colum\n  Extra inputs are not permitted"):
        ConvertSpec.model_validate({"sources": [{"type": "files", "paths": ["a"], "text_colum": "x"}]})
    with pytest.raises(ValidationError, match="sources\n  List should have at least 1 item"):
        ConvertSpec.model_validate({"sources": []})
    with pytest.raises(ValidationError, match="give exactly one of 'prefixes', 'data_path' or 'openseek_config'"):
        ConvertSpec.model_validate({"sources": [{"type": "megatron", "tokenizer": {"type": "qwen", "path": "q"}}]})
    with pytest.raises(ValidationError, match=r"data_path\[1\] should be a prefix path"):
        ConvertSpec.model_validate(
            {"sources": [{"type": "megatron", "data_path": [1.0, 2.0], "tokenizer": {"type": "qwen", "path": "q"}}]}
        )
    with pytest.raises(ValidationError, match="text_template field {x:>3} is not supported"):
        ConvertSpec.model_validate({"sources": [{"type": "files", "paths": ["a"], "text_template": "{x:>3}"}]})


def test_cli_prints_an_error_event_and_exits_nonzero(data_dir, tmp_path, datasets):
    src = write_jsonl(data_dir / "bad.jsonl", [{"text": "ok"}] * 10, bad_line_at=7)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"sources": [files(src)], "output_dir": str(datasets / "o")}))
    proc = subprocess.run(
        [sys.executable, "-m", "openseek_nanochat.cli", "convert", str(spec), "--events"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    errors = [e for e in map(events.parse, proc.stdout.splitlines()) if e and e["type"] == "error"]
    assert errors == [
        {
            **errors[0],
            "message": "malformed JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
            "where": f"{src}:7",
        }
    ]


def test_cli_flags_of_the_openseek_example(data_dir, shared_data):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "openseek_nanochat.cli",
            "convert",
            "--dataset",
            str(shared_data / "jsonl/gsm8k.jsonl"),
            "--num-shards",
            "3",
            "--shard-size",
            "100000",
            "--text-column",
            "question",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((data_dir / "datasets" / "gsm8k.jsonl" / "manifest.json").read_text())
    assert manifest["spec"]["max_shards"] == 3 and manifest["spec"]["chars_per_shard"] == 100_000
    assert len(manifest["shards"]) == 3 and "wrote 3 shards (2 train + 1 val)" in proc.stdout


def test_unreachable_hub_dataset_is_a_clear_error(data_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="the Hugging Face hub is unreachable") as e:
        run_spec({"sources": [{"type": "hf", "dataset": "BAAI/OpenSeek-Pretrain-100B"}], "name": "hub"})
    assert e.value.where == "BAAI/OpenSeek-Pretrain-100B"
