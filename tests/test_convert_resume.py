"""Resume: an interrupted conversion, re-run, ends byte-identical to an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from openseek_nanochat.atomic import readable_json

from convertutil import run_spec, shard_bytes
from serverutil import shakespeare_jsonl


class Crash(Exception):
    pass


def crash_after(shards: int):
    def on_progress(p):
        if p["shards"] >= shards:
            raise Crash()

    return on_progress


@pytest.fixture
def mixed_spec(shared_data):
    # 16 shards; crashing at 15 stops after the last train shard, before the val shard. Two sources, blocks smaller
    # than shards and shards smaller than blocks both occur, a char budget with epochs.
    return {
        "sources": [
            {
                "type": "files",
                "paths": [str(shared_data / "jsonl/gsm8k.jsonl")],
                "text_template": "{question}\n{answer}",
            },
            {
                "type": "files",
                "paths": [str(shared_data / "jsonl/cmath.jsonl")],
                "text_column": "question",
                "weight": 0.5,
            },
        ],
        "chars_per_shard": 40_000,
        "row_group_size": 32,
        "shuffle_buffer": 150,
        "val_docs": 40,
    }


@pytest.mark.parametrize("crash_at", [1, 3, 7, 15])
def test_resume_after_crash_is_byte_identical(mixed_spec, datasets, crash_at):
    clean = run_spec({**mixed_spec, "output_dir": str(datasets / "clean")})
    assert len(clean["shards"]) > crash_at
    out = datasets / "crashed"
    with pytest.raises(Crash):
        run_spec({**mixed_spec, "output_dir": str(out)}, on_progress=crash_after(crash_at))
    partial = json.loads((out / "manifest.json").read_text())
    assert not partial["complete"] and len(partial["shards"]) == crash_at and partial["resume"]["stream_docs"] > 0
    assert not list(out.glob("**/.*.tmp"))
    resumed = run_spec({**mixed_spec, "output_dir": str(out)})
    assert shard_bytes(out) == shard_bytes(datasets / "clean")
    assert resumed["shards"] == clean["shards"] and resumed["sources"] == clean["sources"]


def test_resume_with_budget_and_epochs(shared_data, datasets):
    spec = {
        "sources": [
            {"type": "files", "paths": [str(shared_data / "jsonl/cmath.jsonl")], "text_column": "question"},
            {
                "type": "files",
                "paths": [str(shared_data / "jsonl/math500.jsonl")],
                "text_column": "problem",
                "weight": 3,
            },
        ],
        "max_chars": 400_000,
        "chars_per_shard": 30_000,
        "row_group_size": 16,
        "shuffle_buffer": 100,
        "val_docs": 30,
    }
    clean = run_spec({**spec, "output_dir": str(datasets / "clean")})
    assert clean["sources"][1]["epochs"] > 1
    with pytest.raises(Crash):
        run_spec({**spec, "output_dir": str(datasets / "crashed")}, on_progress=crash_after(5))
    resumed = run_spec({**spec, "output_dir": str(datasets / "crashed")})
    assert shard_bytes(datasets / "crashed") == shard_bytes(datasets / "clean")
    assert resumed["sources"] == clean["sources"]


def test_sigkill_mid_run_then_rerun_is_byte_identical(shared_data, data_dir, tmp_path, datasets):
    paragraphs = [p for p in (shared_data / "tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
    big = data_dir / "big.jsonl"
    with open(big, "w") as f:
        for copy in range(6):
            for i, p in enumerate(paragraphs):
                f.write(json.dumps({"text": f"[{copy}:{i}] {p}"}) + "\n")
    spec = {
        "sources": [{"type": "files", "paths": [str(big)]}],
        "chars_per_shard": 100_000,
        "row_group_size": 16,
        "shuffle_buffer": 2000,
    }
    (tmp_path / "clean.json").write_text(json.dumps({**spec, "output_dir": str(datasets / "clean")}))
    (tmp_path / "killed.json").write_text(json.dumps({**spec, "output_dir": str(datasets / "killed")}))
    command = [sys.executable, "-m", "openseek_nanochat.cli", "convert", "--events"]
    subprocess.run(command + [str(tmp_path / "clean.json")], check=True, capture_output=True)

    proc = subprocess.Popen(command + [str(tmp_path / "killed.json")], stdout=subprocess.DEVNULL, env=os.environ)
    manifest = datasets / "killed" / "manifest.json"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if len(json.loads(manifest.read_text())["shards"]) >= 3:
                break
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = json.loads(manifest.read_text())
    assert not partial["complete"], "the conversion finished before it could be killed"
    subprocess.run(command + [str(tmp_path / "killed.json")], check=True, capture_output=True)
    assert shard_bytes(datasets / "killed") == shard_bytes(datasets / "clean")
    assert not list((datasets / "killed").glob("**/.*.tmp"))


@pytest.mark.parametrize("streaming", [True, False])
def test_resume_of_a_local_hf_dataset(shared_data, data_dir, streaming, datasets):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds_dir = data_dir / "hf"
    ds_dir.mkdir()
    records = [json.loads(line) for line in (shared_data / "jsonl/gsm8k.jsonl").read_text().splitlines()]
    pq.write_table(pa.table({"q": [r["question"] for r in records]}), ds_dir / "train.parquet")
    spec = {
        "sources": [{"type": "hf", "dataset": str(ds_dir), "text_column": "q", "streaming": streaming}],
        "chars_per_shard": 20_000,
        "row_group_size": 16,
        "shuffle_buffer": 300,
        "val_docs": 10,
    }
    run_spec({**spec, "output_dir": str(datasets / "clean")})
    with pytest.raises(Crash):
        run_spec({**spec, "output_dir": str(datasets / "crashed")}, on_progress=crash_after(2))
    run_spec({**spec, "output_dir": str(datasets / "crashed")})
    assert shard_bytes(datasets / "crashed") == shard_bytes(datasets / "clean")


def as_earlier_version(out, complete: bool, version: int = 1) -> None:
    """The folder as an earlier manifest format left it: /1 had no provenance sidecars; /2 sized blocks by what the
    sources had fetched."""
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.update(format=f"openseek-nanochat.convert/{version}", complete=complete)
    (out / "manifest.json").write_text(json.dumps(manifest))
    if version == 1:
        for sidecar in (out / "provenance").iterdir():
            sidecar.unlink()
        (out / "provenance").rmdir()


def files_in(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_dataset_finished_by_the_earlier_format_is_still_finished(mixed_spec, datasets):
    spec = {**mixed_spec, "output_dir": str(datasets / "old")}
    run_spec(spec)
    as_earlier_version(datasets / "old", complete=True)
    before = files_in(datasets / "old")
    assert run_spec(spec)["format"] == "openseek-nanochat.convert/1"  # nothing to do, nothing rewritten
    assert files_in(datasets / "old") == before


@pytest.mark.parametrize("version", [1, 2])
def test_an_unfinished_conversion_of_an_earlier_format_is_refused_with_the_reason(mixed_spec, datasets, version):
    from openseek_nanochat.errors import InputError

    spec = {**mixed_spec, "output_dir": str(datasets / "old")}
    with pytest.raises(Crash):
        run_spec(spec, on_progress=crash_after(3))
    as_earlier_version(datasets / "old", complete=False, version=version)
    before = files_in(datasets / "old")
    refusal = rf"an earlier version \(openseek-nanochat.convert/{version}\), which this one cannot resume"
    with pytest.raises(InputError, match=refusal):
        run_spec(spec)
    assert files_in(datasets / "old") == before  # refused before anything was touched


def test_automatic_val_docs_are_one_percent_of_all_documents_after_any_crash(data_dir, datasets):
    # Without val_docs the validation shard holds 1% of every document written, counted the same way by a clean run
    # and by one resumed after its last train shard (the train shard still filling when the stream ends counts too).
    # More documents than the 10,000 held back for validation, so train shards are written before the stream ends.
    corpus = shakespeare_jsonl(data_dir / "shakespeare.jsonl", copies=2)
    spec = {
        "sources": [{"type": "files", "paths": [str(corpus)]}],
        "chars_per_shard": 200_000,
        "row_group_size": 64,
        "shuffle_buffer": 5000,
    }
    clean = run_spec({**spec, "output_dir": str(datasets / "clean")})
    train_shards = sum(s["split"] == "train" for s in clean["shards"])
    assert clean["totals"]["docs"] == 2 * 7222 and train_shards > 3
    assert clean["shards"][-1]["split"] == "val" and clean["shards"][-1]["rows"] == 2 * 7222 // 100
    assert_resumes_as(clean, spec, datasets, crash_points=(1, train_shards))


def test_max_shards_holds_when_the_stream_is_shorter_than_the_holdback(mixed_spec, datasets):
    # Fewer documents than the automatic validation holdback (10,000): the stream ends before any is written, and
    # the limit still holds, in a clean run and in one resumed after each shard.
    spec = {key: value for key, value in mixed_spec.items() if key != "val_docs"} | {"max_shards": 4}
    clean = run_spec({**spec, "output_dir": str(datasets / "clean")})
    assert [s["split"] for s in clean["shards"]] == ["train"] * 3 + ["val"]
    train_docs = sum(s["rows"] for s in clean["shards"][:3])
    assert clean["shards"][-1]["rows"] == train_docs // 100  # 1% of what the train shards hold
    assert_resumes_as(clean, spec, datasets, crash_points=(1, 3))


def assert_resumes_as(clean: dict, spec: dict, datasets, crash_points) -> None:
    """A run of `spec` stopped after each of `crash_points` shards and resumed ends byte-identical to `clean` (written
    to datasets/clean)."""
    for crash_at in crash_points:
        out = datasets / f"crashed_{crash_at}"
        with pytest.raises(Crash):
            run_spec({**spec, "output_dir": str(out)}, on_progress=crash_after(crash_at))
        resumed = run_spec({**spec, "output_dir": str(out)})
        assert shard_bytes(out) == shard_bytes(datasets / "clean"), f"crash after shard {crash_at}"
        assert resumed["shards"] == clean["shards"]


def test_the_manifest_after_every_shard_says_exactly_what_its_shards_sum_to(mixed_spec, datasets):
    # The manifest is rewritten at every shard from records encoded once and totals summed as they come, also after
    # a resume: each version on disk is the canonical layout of what it says, and its totals are its shards' sums.
    out = datasets / "out"
    versions = []

    def check(_progress):
        text = (out / "manifest.json").read_text()
        manifest = json.loads(text)
        assert text == readable_json(manifest)
        shards, totals = manifest["shards"], manifest["totals"]
        assert totals["shards"] == len(shards) and totals["docs"] == sum(s["rows"] for s in shards)
        assert totals["chars"] == sum(s["chars"] for s in shards) and totals["bytes"] == sum(s["bytes"] for s in shards)
        assert totals["train_shards"] == sum(s["split"] == "train" for s in shards)
        bins = range(len(totals["length_bins"]))
        assert totals["length_hist"] == [sum(s["length_hist"][i] for s in shards) for i in bins]
        versions.append(len(shards))

    with pytest.raises(Crash):
        run_spec({**mixed_spec, "output_dir": str(out)}, on_progress=lambda p: (check(p), crash_after(3)(p)))
    final = run_spec({**mixed_spec, "output_dir": str(out)}, on_progress=check)
    check(None)
    assert set(range(1, len(final["shards"]) + 1)) <= set(versions) and len(final["shards"]) > 10
    assert final["totals"]["val_docs"] == final["shards"][-1]["rows"] == 40
