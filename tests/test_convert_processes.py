"""Every core busy, same bytes: a conversion on 1, 2 or 3 cores (`processes`) writes the same shards and the same
manifest, a run interrupted with one count and resumed with another ends as an uninterrupted one, and neither a failed
nor a finished run leaves a thread or a temp file behind."""

import json
import shutil
import subprocess
import sys
import threading
import time
import types

import pytest

from openseek_nanochat.convert import manifest as manifest_module
from openseek_nanochat.convert import shard_file
from openseek_nanochat.convert.spec import ConvertSpec

from convertutil import run_spec, shard_bytes
from serverutil import shakespeare_jsonl
from test_convert_resume import Crash, crash_after


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    """The manifest's `updated_at` is the only thing in it that depends on when a run happened: fixed, so manifests
    compare byte for byte."""
    monkeypatch.setattr(manifest_module, "time", types.SimpleNamespace(time=lambda: 0.0))


@pytest.fixture
def jsonl_spec(shared_data, data_dir):
    # Two sources mixed and shuffled in blocks smaller than shards and shards smaller than blocks: ~15 train shards.
    corpus = shakespeare_jsonl(data_dir / "shakespeare.jsonl", copies=2)
    return {
        "sources": [
            {"type": "files", "paths": [str(corpus)]},
            {
                "type": "files",
                "paths": [str(shared_data / "jsonl/gsm8k.jsonl")],
                "text_template": "{question}\n{answer}",
                "weight": 0.5,
            },
        ],
        "chars_per_shard": 200_000,
        "row_group_size": 64,
        "shuffle_buffer": 5000,
    }  # val_docs left to its default, which depends on the number of documents written


@pytest.fixture
def megatron_spec(shared_data):
    folder = shared_data / "megatron"
    return {
        "sources": [
            {
                "type": "megatron",
                "data_path": [
                    2.0,
                    str(folder / "shakespeare_text_document"),
                    1.0,
                    str(folder / "cmath_text_document"),
                    1.0,
                    str(folder / "math500_text_document"),
                ],
                "tokenizer": {"type": "qwen", "path": str(shared_data / "qwen.tiktoken")},
            }
        ],
        "chars_per_shard": 100_000,
        "row_group_size": 32,
        "shuffle_buffer": 1000,
        "val_docs": 50,
    }


def files_of(folder) -> dict[str, bytes]:
    """Every shard and the manifest, as bytes."""
    return {**shard_bytes(folder), "manifest.json": (folder / "manifest.json").read_bytes()}


def convert_as(spec: dict, datasets, name: str, **kwargs) -> dict[str, bytes]:
    """Convert into one fixed output dir (the manifest names it), then keep what was written as `name`."""
    out = datasets / "out"
    run_spec({**spec, "output_dir": str(out)}, **kwargs)
    files = files_of(out)
    shutil.move(out, datasets / name)
    return files


def helper_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("shard-lane", "prefetch", "megatron-decode"))]


def no_lanes_left() -> bool:
    """No shard lane outlives its run (a lane's thread ends just after it hands its shard over: give it a moment)."""
    deadline = time.time() + 5
    while any(name.startswith("shard-lane") for name in helper_threads()) and time.time() < deadline:
        time.sleep(0.01)
    return not any(name.startswith("shard-lane") for name in helper_threads())


@pytest.mark.parametrize("kind", ["jsonl", "megatron"])
def test_same_bytes_in_1_2_and_3_processes(kind, jsonl_spec, megatron_spec, datasets):
    spec = jsonl_spec if kind == "jsonl" else megatron_spec
    outputs = {n: convert_as({**spec, "processes": n}, datasets, f"p{n}") for n in (1, 2, 3)}
    assert len(outputs[1]) > 6  # several train shards, a val shard and the manifest
    assert outputs[2] == outputs[1]
    assert outputs[3] == outputs[1]
    assert no_lanes_left()


def test_same_bytes_when_stopped_by_max_shards(jsonl_spec, datasets):
    spec = {**jsonl_spec, "max_shards": 5}
    one = convert_as({**spec, "processes": 1}, datasets, "p1")
    three = convert_as({**spec, "processes": 3}, datasets, "p3")
    assert len(one) == 11 and three == one  # 5 shards, their 5 provenance sidecars, the manifest


@pytest.mark.parametrize(("before", "after"), [(1, 3), (3, 1), (2, 2)])
@pytest.mark.parametrize("crash_at", [1, 6])
def test_resume_with_another_number_of_processes(jsonl_spec, datasets, before, after, crash_at):
    clean = convert_as({**jsonl_spec, "processes": 2}, datasets, "clean")
    out = datasets / "out"
    with pytest.raises(Crash):
        run_spec({**jsonl_spec, "processes": before, "output_dir": str(out)}, on_progress=crash_after(crash_at))
    partial = json.loads((out / "manifest.json").read_text())
    assert not partial["complete"] and len(partial["shards"]) == crash_at
    assert not list(out.glob("**/.*.tmp")), "a shard or sidecar in flight when the run failed was left behind"
    assert no_lanes_left()
    run_spec({**jsonl_spec, "processes": after, "output_dir": str(out)})
    assert files_of(out) == clean


def test_processes_is_not_in_the_fingerprint(jsonl_spec):
    one = ConvertSpec.model_validate({**jsonl_spec, "processes": 1})
    many = ConvertSpec.model_validate({**jsonl_spec, "processes": 7})
    assert "processes" not in one.fingerprint_fields()
    assert one.fingerprint_fields() == many.fingerprint_fields() == ConvertSpec(**jsonl_spec).fingerprint_fields()


def test_processes_below_one_is_refused(jsonl_spec):
    with pytest.raises(ValueError, match="processes\n  Input should be greater than or equal to 1"):
        ConvertSpec.model_validate({**jsonl_spec, "processes": 0})


def test_cli_processes_flag(jsonl_spec, datasets, tmp_path):
    expected = convert_as({**jsonl_spec, "processes": 1}, datasets, "p1")
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({**jsonl_spec, "output_dir": str(datasets / "out")}))
    command = [sys.executable, "-m", "openseek_nanochat.cli", "convert", str(spec_file), "--events"]
    refused = subprocess.run(command + ["--processes", "0"], capture_output=True, text=True)
    assert refused.returncode == 2 and "processes" in refused.stderr and "greater than or equal to 1" in refused.stderr
    done = subprocess.run(command + ["--processes", "3"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    written = files_of(datasets / "out")
    # Only the manifest's clock differs (a separate process, not fixed by this test's fixture).
    manifest, expected_manifest = json.loads(written.pop("manifest.json")), json.loads(expected.pop("manifest.json"))
    assert written == expected
    assert {**manifest, "updated_at": 0} == {**expected_manifest, "updated_at": 0}


def test_one_core_runs_in_the_calling_thread(jsonl_spec, datasets):
    """processes=1 is the serial baseline: no reader thread, no lane, no Arrow pool of more than one thread."""
    import pyarrow as pa

    arrow_before, before, seen = pa.cpu_count(), set(threading.enumerate()), []
    run_spec(
        {**jsonl_spec, "processes": 1, "output_dir": str(datasets / "one")},
        on_progress=lambda event: seen.append((set(threading.enumerate()) - before, pa.cpu_count())),
    )
    assert len(seen) > 5 and all(started == set() and arrow == 1 for started, arrow in seen)
    assert pa.cpu_count() == arrow_before  # Arrow's pool is given back as it was


def test_a_run_allocates_from_jemalloc_unless_told_otherwise(jsonl_spec, datasets, monkeypatch):
    """Arrow's memory comes from jemalloc during a run (less peak memory, cores.py) and the process's allocator is
    given back after; a user who chose one with ARROW_DEFAULT_MEMORY_POOL keeps it."""
    import pyarrow as pa

    before, seen = pa.default_memory_pool().backend_name, []
    run_spec(
        {**jsonl_spec, "output_dir": str(datasets / "jemalloc")},
        on_progress=lambda event: seen.append(pa.default_memory_pool().backend_name),
    )
    assert before != "jemalloc" and seen and set(seen) == {"jemalloc"}
    assert pa.default_memory_pool().backend_name == before
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", before)
    seen.clear()
    run_spec(
        {**jsonl_spec, "output_dir": str(datasets / "chosen")},
        on_progress=lambda event: seen.append(pa.default_memory_pool().backend_name),
    )
    assert seen and set(seen) == {before}
    assert shard_bytes(datasets / "jemalloc") == shard_bytes(datasets / "chosen")


def test_a_failing_lane_fails_the_run_and_leaves_nothing(jsonl_spec, datasets, monkeypatch):
    """A row group that cannot be written on a lane's thread (here: a full disk halfway through) fails the run with
    that error; the shards in flight are removed, the published ones stay, and the next run finishes the same bytes."""
    real_write, calls, fail_at = shard_file.ShardFile.write, [], []

    def write(self, text, origin):
        calls.append(threading.current_thread().name)
        if fail_at and len(calls) == fail_at[0]:
            raise OSError(28, "No space left on device")
        return real_write(self, text, origin)

    monkeypatch.setattr(shard_file.ShardFile, "write", write)
    clean = convert_as({**jsonl_spec, "processes": 1}, datasets, "clean")
    fail_at.append(len(calls) // 2)
    calls.clear()
    out = datasets / "out"
    with pytest.raises(OSError, match="No space left on device"):
        run_spec({**jsonl_spec, "processes": 3, "output_dir": str(out)})
    assert all(name.startswith("shard-lane") for name in calls)  # written on lanes, not in the caller's thread
    assert not list(out.glob("**/.*.tmp")) and no_lanes_left()
    partial = json.loads((out / "manifest.json").read_text())
    assert not partial["complete"] and 2 <= len(partial["shards"]) < (len(clean) - 1) // 2
    monkeypatch.setattr(shard_file.ShardFile, "write", real_write)
    run_spec({**jsonl_spec, "processes": 2, "output_dir": str(out)})
    assert files_of(out) == clean
