"""Inputs are checked at the door without leaking, hanging or bloating the API: globs and links against the input
roots, tokenizer file sizes, local Hugging Face datasets (their README's data_files, their caches)."""

import json
import os
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest

from openseek_nanochat import paths
from openseek_nanochat.convert.sources import hf
from openseek_nanochat.convert.spec import HFSource
from openseek_nanochat.errors import InputError
from openseek_nanochat.paths import PathPolicyError
from openseek_nanochat.settings import Settings

from serverutil import start_server, start_worker, stop_process, wait_for_state

OUTSIDE = "is outside the allowed input roots"
ESCAPING_DATA_FILES = (
    "data_files of split 'train' names a file outside the allowed input roots (see README.md `configs`)"
)


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A folder outside every input root, holding a file the service must never read."""
    folder = tmp_path_factory.mktemp("outside")
    (folder / "secret.jsonl").write_text(json.dumps({"text": "SECRET from outside"}) + "\n")
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """No workers (a test starts one when it needs a job to run); HOME and HF_HOME point at a folder of their own, so
    a test sees anything written there."""
    home = tmp_path_factory.mktemp("home")
    with start_server(tmp_path_factory.mktemp("inputs") / "data", workers=0, env=home_env(home)) as server:
        server.home = home
        yield server


def home_env(home: Path) -> dict[str, str]:
    return {"HOME": str(home), "HF_HOME": str(home / ".cache" / "huggingface")}


@pytest.fixture
def root(server) -> Path:
    return server.data_dir.parent  # an input root (serverutil's service_env)


def submit(server, *sources: dict, timeout: float = 60, **spec) -> httpx.Response:
    return server.client.post("/jobs/convert", json={"sources": list(sources), **spec}, timeout=timeout)


def files_source(*patterns) -> dict:
    return {"type": "files", "paths": [str(p) for p in patterns]}


def error_of(response: httpx.Response) -> str:
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    return error["msg"]


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if not p.is_dir()]


def run_queued_job(server, job_id: str, state: str) -> dict:
    worker = start_worker(server.data_dir, env=home_env(server.home))
    try:
        return wait_for_state(server.client, job_id, state, timeout=90)
    finally:
        stop_process(worker)


# --- globs -----------------------------------------------------------------------------------------------------------


def test_a_glob_outside_the_roots_names_only_the_pattern(server, root):
    up = f"{root}{'/..' * len(root.parts)}/"  # root/../../..: the filesystem's root
    msg = error_of(submit(server, files_source(up + "etc/*")))
    assert msg.startswith(f"input path {up + 'etc/*'!r} {OUTSIDE}")
    assert not [name for name in os.listdir("/etc") if f"/etc/{name}" in msg]

    def message(pattern: str) -> str:
        return error_of(submit(server, files_source(up + pattern))).replace(repr(up + pattern), "PATTERN")

    # The answer is the same whether what the pattern names exists or not.
    for existing, missing in [
        ("etc/hostname", "etc/no-such-file"),
        ("etc/host*", "etc/no-such-*"),
        ("etc/**/*.conf", "no-such-dir/**/*.conf"),
    ]:
        assert message(existing) == message(missing)


def test_double_star_does_not_follow_folder_links(server, root):
    tree = root / "loop"
    write_jsonl(tree / "a" / "one.jsonl", ["one 1", "one 2", "one 3"])
    write_jsonl(tree / "a" / "b" / "two.jsonl", ["two 1", "two 2", "two 3"])
    os.symlink("../..", tree / "a" / "b" / "up")  # back to the top: a loop
    os.symlink(".", tree / "a" / "self")
    started = time.monotonic()
    response = submit(server, files_source(tree / "**" / "*.jsonl"), name="loop", val_docs=1, timeout=30)
    assert response.status_code == 202, response.text
    assert time.monotonic() - started < 10
    run_queued_job(server, response.json()["id"], "succeeded")
    out = server.data_dir / "datasets" / "loop"
    docs = [d for shard in sorted(out.glob("*.parquet")) for d in pq.read_table(shard).column("text").to_pylist()]
    assert sorted(docs) == ["one 1", "one 2", "one 3", "two 1", "two 2", "two 3"]


def test_double_star_over_a_big_tree_with_links_answers_in_time(server, root):
    tree = root / "big"
    for i in range(40):
        for j in range(40):
            (tree / f"d{i}" / f"e{j}").mkdir(parents=True)
            (tree / f"d{i}" / f"e{j}" / "x.txt").write_text("x")
        for k in range(3):
            os.symlink("..", tree / f"d{i}" / f"up{k}")  # each folder leads back to the top three ways
    pattern = str(tree / "**" / "*.nomatch")
    started = time.monotonic()
    assert error_of(submit(server, files_source(pattern), timeout=30)) == f"no file matches {pattern!r}"
    assert time.monotonic() - started < 10  # the walk's own time limit


def test_a_link_out_of_the_roots_is_named_not_its_target(server, root, outside):
    links = root / "links"
    links.mkdir()
    os.symlink(outside / "secret.jsonl", links / "evil.jsonl")
    os.symlink(outside, links / "d")
    for pattern, link in [
        (links / "*.jsonl", links / "evil.jsonl"),
        (links / "*" / "*.jsonl", links / "d"),
        (links / "d" / "*.jsonl", None),
    ]:
        msg = error_of(submit(server, files_source(pattern)))
        assert msg.startswith(f"input path {str(link or pattern)!r} {OUTSIDE}"), msg
        assert str(outside) not in msg and "secret" not in msg.replace(str(pattern), "")


def test_glob_caps(tmp_path, monkeypatch):
    """Too many matches, too deep, too long: each a clear error naming the pattern (the caps are constants, so this
    part runs in process)."""
    settings = Settings(data_dir=tmp_path, input_roots=str(tmp_path))
    for i in range(5):
        write_jsonl(tmp_path / "many" / f"{i}.jsonl", ["x"])
    deep = tmp_path / "deep" / Path(*["d"] * 8)
    write_jsonl(deep / "x.jsonl", ["x"])
    pattern = str(tmp_path / "many" / "*.jsonl")
    assert len(paths.expand_input_globs([pattern], settings)) == 5
    monkeypatch.setattr(paths, "MAX_GLOB_MATCHES", 4)
    with pytest.raises(PathPolicyError, match=r"matches more than 4 files; narrow it or split the source"):
        paths.expand_input_globs([pattern], settings)
    monkeypatch.setattr(paths, "MAX_GLOB_DEPTH", 5)
    deep_pattern = str(tmp_path / "deep" / "**" / "*.jsonl")
    with pytest.raises(PathPolicyError, match=r"reaches more than 5 folders deep"):
        paths.expand_input_globs([deep_pattern], settings)
    monkeypatch.setattr(paths, "GLOB_SECONDS", 0.0)
    with pytest.raises(PathPolicyError, match=r"expanding the paths took more than 0 s \(at '.*\*\.nomatch'\)"):
        paths.expand_input_globs([str(tmp_path / "**" / "*.nomatch")], settings)


# --- files read at submit --------------------------------------------------------------------------------------------


def peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


def test_a_huge_tokenizer_file_is_refused_unread(server, root):
    def megatron(tokenizer: Path) -> dict:
        tokenizer_spec = {"type": "hf", "path": str(tokenizer)}
        return {"type": "megatron", "prefixes": [str(root / "none")], "tokenizer": tokenizer_spec}

    small = root / "small-tokenizer.json"
    small.write_text("{")
    error_of(submit(server, megatron(small)))  # loads what a tokenizer check needs, once
    big = root / "big-tokenizer.json"
    with open(big, "wb") as f:
        f.truncate(100 << 20)
    before = peak_rss(server.process.pid)
    msg = error_of(submit(server, megatron(big)))
    assert msg == f"{big}: tokenizer.path names a 100 MiB file; a tokenizer file may be at most 64 MiB"
    assert peak_rss(server.process.pid) - before < 20 << 20


# --- local Hugging Face datasets -------------------------------------------------------------------------------------


def test_a_non_streaming_hf_dataset_builds_no_cache_at_submit(server, root):
    dataset = root / "hf_plain"
    write_jsonl(dataset / "train.jsonl", [f"document {i} " + "word " * 40 for i in range(100_000)])
    started = time.monotonic()
    response = submit(server, {"type": "hf", "dataset": str(dataset), "streaming": False}, name="hf_plain")
    assert response.status_code == 202, response.text
    assert time.monotonic() - started < 20
    assert files_under(server.home) == []
    assert not list(server.data_dir.rglob("*.arrow"))
    # The job builds the Arrow cache, under the data dir.
    run_queued_job(server, response.json()["id"], "succeeded")
    assert files_under(server.home) == []
    caches = {p.relative_to(server.data_dir).parts[:3] for p in server.data_dir.rglob("*.arrow")}
    assert caches == {("cache", "hf", "datasets")}


def test_the_hf_check_has_a_time_limit(tmp_path, monkeypatch):
    """The submit-time check of an hf source runs in a child process that is killed at the limit (a constant, so this
    part runs in process)."""
    write_jsonl(tmp_path / "ds" / "train.jsonl", ["x"])
    settings = Settings(data_dir=tmp_path / "data", input_roots=str(tmp_path))
    assert hf.probe(HFSource(dataset=str(tmp_path / "ds")), settings) == ["text"]
    monkeypatch.setattr(hf, "CHECK_SECONDS", 0.1)  # less than importing `datasets` takes
    with pytest.raises(InputError, match=r"^.*/ds: checking the dataset took more than 0.1 s; is the hub reachable\?$"):
        hf.probe(HFSource(dataset=str(tmp_path / "ds")), settings)


def readme(dataset: Path, data_files: str) -> None:
    (dataset / "README.md").write_text(
        f'---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: "{data_files}"\n---\n'
    )


def test_hf_data_files_outside_the_roots(server, root, outside):
    dataset = root / "hf_readme"
    write_jsonl(dataset / "inside" / "part.jsonl", [f"inside {i}" for i in range(50)])
    escape = os.path.relpath(outside, dataset) + "/*.jsonl"
    readme(dataset, escape)
    msg = error_of(submit(server, {"type": "hf", "dataset": str(dataset)}))
    assert msg == f"{dataset}: {ESCAPING_DATA_FILES}"

    # Checked again in the job: a README changed after the submit does not get the file read either.
    readme(dataset, "inside/*.jsonl")
    response = submit(server, {"type": "hf", "dataset": str(dataset)}, name="hf_readme", val_docs=1)
    assert response.status_code == 202, response.text
    readme(dataset, escape)
    job = run_queued_job(server, response.json()["id"], "failed")
    assert job["error"]["message"] == ESCAPING_DATA_FILES
    assert job["error"]["where"] == str(dataset)
    for shard in server.data_dir.rglob("*.parquet"):  # shards and their provenance sidecars
        assert "SECRET" not in str(pq.read_table(shard).to_pylist())
    assert files_under(server.home) == []
