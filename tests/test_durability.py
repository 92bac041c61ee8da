"""Durability: a train job takes only a whole dataset (a complete manifest that lists exactly the shards there are, at
their sizes), nanochat's extra_args only flags of the checkout's base_train with their values, and every rename into
a dataset (shards, manifest) or of a tokenizer or checkpoint file is followed by a flush of its folder."""

import json
import os
import stat
import textwrap
import threading
from pathlib import Path

import pytest

from openseek_nanochat import atomic
from openseek_nanochat.train.nanochat import preflight
from openseek_nanochat.train.nanochat.command import SPEC_FLAGS

from convertutil import run_spec
from serverutil import SHARED_DATA, start_server
from training_data import shakespeare_docs, write_shards


class Crash(Exception):
    pass


def fake_checkout(root: Path) -> Path:
    """Enough of a nanochat checkout for the preflight: base_train's add_argument calls, of each kind nanochat uses."""
    (root / "scripts").mkdir(parents=True)
    (root / "nanochat").mkdir()
    (root / "nanochat" / "__init__.py").write_text("")
    flags = "".join(f'parser.add_argument("{flag}", type=str)\n' for flag in SPEC_FLAGS)
    (root / "scripts" / "base_train.py").write_text(
        "import argparse\nimport pyarrow\nparser = argparse.ArgumentParser()\n"
        + flags
        + textwrap.dedent(
            """
            parser.add_argument("--resume-from-step", type=int, default=-1)
            parser.add_argument("--core-metric-every", type=int, default=2000)
            parser.add_argument("--window-pattern", type=str, default="SSSL")
            parser.add_argument("--fp8", action="store_true", help="FP8 training")
            """
        )
    )
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("durability")
    checkout = fake_checkout(root / "nanochat")
    with start_server(root / "data", env={"OPENSEEK_NANOCHAT_NANOCHAT_DIR": str(checkout)}) as server:
        yield server


@pytest.fixture(scope="module")
def whole(server) -> Path:
    """A dataset as a finished conversion leaves it (here: shards and the least manifest a train job accepts)."""
    return write_shards(
        server.data_dir / "datasets" / "whole",
        shakespeare_docs(SHARED_DATA),
        num_shards=3,
        row_group_size=64,
        val_docs=128,
    )


def copy_of(dataset: Path, to: Path) -> Path:
    to.mkdir(parents=True)
    for path in dataset.iterdir():
        (to / path.name).write_bytes(path.read_bytes())
    return to


def submit(server, dataset: Path, **fields):
    return server.client.post("/jobs/train", json={"dataset": str(dataset), "num_iterations": 10, **fields})


def refusal(server, dataset: Path, **fields) -> dict:
    response = submit(server, dataset, **fields)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    return error


# --- a train job takes only a whole dataset ---------------------------------------------------------------------------


def test_a_dataset_whose_conversion_is_unfinished_is_refused(server, monkeypatch):
    out = server.data_dir / "datasets" / "unfinished"
    monkeypatch.setenv("OPENSEEK_NANOCHAT_DATA_DIR", str(server.data_dir))
    monkeypatch.setenv("OPENSEEK_NANOCHAT_INPUT_ROOTS", str(SHARED_DATA))

    def crash(progress):
        if progress["shards"] >= 3:
            raise Crash()

    spec = {
        "sources": [
            {
                "type": "files",
                "paths": [str(SHARED_DATA / "jsonl/gsm8k.jsonl")],
                "text_template": "{question}\n{answer}",
            }
        ],
        "output_dir": str(out),
        "chars_per_shard": 40_000,
        "row_group_size": 16,
        "val_docs": 40,
    }
    with pytest.raises(Crash):
        run_spec(spec, on_progress=crash)
    assert json.loads((out / "manifest.json").read_text())["complete"] is False
    error = refusal(server, out)
    assert error["loc"] == ["body", "dataset"]
    assert error["msg"] == (
        f"{out} holds an unfinished conversion (manifest.json says complete: false): finish (or "
        "re-run) the convert job first"
    )


def test_shards_without_a_manifest_are_refused(server, whole):
    bare = copy_of(whole, server.data_dir / "datasets" / "bare")
    (bare / "manifest.json").unlink()
    error = refusal(server, bare)
    assert error["loc"] == ["body", "dataset"]
    assert error["msg"] == (
        f"{bare} has no readable manifest.json: a dataset is the output of a finished convert "
        "job, whose manifest lists its shards"
    )


def test_a_shard_cut_short_or_not_in_the_manifest_is_refused(server, whole):
    cut = copy_of(whole, server.data_dir / "datasets" / "cut")
    size = (cut / "shard_00001.parquet").stat().st_size
    os.truncate(cut / "shard_00001.parquet", size - 100)
    error = refusal(server, cut)
    assert error["loc"] == ["body", "dataset"]
    assert error["msg"] == (
        f"shard_00001.parquet in {cut} has {size - 100:,} bytes, but its manifest says "
        f"{size:,}: the shard was changed or cut short"
    )
    extra = copy_of(whole, server.data_dir / "datasets" / "extra")
    (extra / "shard_00003.parquet").write_bytes((extra / "shard_00002.parquet").read_bytes())
    assert refusal(server, extra)["msg"] == (
        f"{extra}'s manifest.json lists 3 shard(s) but the folder holds 4 (shard_00003.parquet is not in the manifest)"
    )


def test_a_whole_dataset_is_accepted(server, whole):
    response = submit(server, whole)
    assert response.status_code == 202, response.text
    server.client.post(f"/jobs/{response.json()['id']}/cancel")


# --- nanochat's extra_args --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra_args, message",
    [
        (
            ["--window-pattern", "L", "stray"],
            "'stray' is neither a flag of this checkout's scripts/base_train.py nor the value of the flag before it",
        ),
        (
            ["--fp8", "yes"],
            "'yes' is neither a flag of this checkout's scripts/base_train.py nor the value of the flag before it",
        ),
        (["--fp8=yes"], "--fp8 takes no value (it is a switch): give --fp8 alone"),
        (["--window-pattern"], "--window-pattern takes a value: give --window-pattern=VALUE or --window-pattern VALUE"),
        (
            ["--window-pattern", "--fp8"],
            "--window-pattern takes a value: give --window-pattern=VALUE or --window-pattern VALUE",
        ),
        (["L"], "'L' is neither a flag of this checkout's scripts/base_train.py nor the value of the flag before it"),
        (["-x"], "'-x' is neither a flag of this checkout's scripts/base_train.py nor the value of the flag before it"),
    ],
)
def test_extra_args_words_that_are_not_flags_or_their_values_are_refused(server, whole, extra_args, message):
    error = refusal(server, whole, backend="nanochat", extra_args=extra_args)
    assert error["loc"] == ["body", "extra_args"]
    assert error["msg"] == message


def test_extra_args_flags_with_their_values_are_accepted(server, whole):
    extra_args = ["--window-pattern", "L", "--fp8", "--core-metric-every", "-1", "--window-pattern=SL"]
    response = submit(server, whole, backend="nanochat", extra_args=extra_args)
    assert response.status_code == 202, response.text
    assert response.json()["spec"]["extra_args"] == extra_args
    server.client.post(f"/jobs/{response.json()['id']}/cancel")


def test_how_many_values_each_flag_takes_is_read_from_base_train(tmp_path):
    checkout = tmp_path / "nanochat"
    (checkout / "scripts").mkdir(parents=True)
    (checkout / "scripts" / "base_train.py").write_text(
        textwrap.dedent(
            """
        import argparse
        parser = argparse.ArgumentParser()
        parser.add_argument("--lr", "--learning-rate", type=float)
        parser.add_argument("--fp8", action="store_true")
        parser.add_argument("--verbose", action="count")
        parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
        parser.add_argument("--layers", nargs="+", type=int)
        parser.add_argument("--pair", nargs=2)
        parser.add_argument("--maybe", nargs="?")
        """
        )
    )
    assert preflight.base_train_flags(checkout) == {
        "--lr": (1, 1),
        "--learning-rate": (1, 1),
        "--fp8": (0, 0),
        "--verbose": (0, 0),
        "--compile": (0, 0),
        "--no-compile": (0, 0),
        "--layers": (1, None),
        "--pair": (2, 2),
        "--maybe": (0, 1),
    }


# --- every rename is followed by a flush of its folder ----------------------------------------------------------------


@pytest.fixture
def renames_and_flushes(monkeypatch) -> list[tuple[int, str, object]]:
    """(thread, "rename", destination) and (thread, "flush folder", inode) / (thread, "flush file", None), in the
    order they happen (shards are flushed on threads of their own while the main thread renames)."""
    events: list[tuple[int, str, object]] = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst, **kwargs):
        real_replace(src, dst, **kwargs)
        events.append((threading.get_ident(), "rename", Path(dst)))

    def fsync(fd):
        real_fsync(fd)
        info = os.fstat(fd)
        kind = ("flush folder", info.st_ino) if stat.S_ISDIR(info.st_mode) else ("flush file", None)
        events.append((threading.get_ident(), *kind))

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    return events


def assert_each_rename_is_flushed(events: list, folder: Path) -> list[str]:
    """Each rename into `folder` is followed at once, in the thread that renamed, by a flush of the folder; returns
    the names renamed."""
    renamed = []
    for i, (thread, what, value) in enumerate(events):
        if what == "rename" and value.parent == folder:
            after = [event[1:] for event in events[i + 1 :] if event[0] == thread]
            assert after[:1] == [("flush folder", folder.stat().st_ino)], (value, after[:2])
            renamed.append(value.name)
    return renamed


def test_every_shard_and_manifest_rename_is_flushed(datasets, shared_data, renames_and_flushes):
    out = datasets / "flushed"
    spec = {
        "sources": [
            {
                "type": "files",
                "paths": [str(shared_data / "jsonl/gsm8k.jsonl")],
                "text_template": "{question}\n{answer}",
            }
        ],
        "output_dir": str(out),
        "chars_per_shard": 100_000,
        "row_group_size": 32,
        "val_docs": 40,
    }
    manifest = run_spec(spec)
    renamed = assert_each_rename_is_flushed(renames_and_flushes, out)
    assert {shard["file"] for shard in manifest["shards"]} | {"manifest.json"} == set(renamed)
    assert renamed.count("manifest.json") == len(manifest["shards"]) + 1  # at the start, after each train shard, last


def test_tokenizer_and_checkpoint_files_are_flushed_too(tmp_path, renames_and_flushes):
    # tokenizer.py writes with write_atomic, the trainer's checkpoints with save_atomic and write_json_atomic
    atomic.write_atomic(tmp_path / "tokenizer.pkl", lambda f: f.write(b"tokenizer"))
    atomic.save_atomic(tmp_path / "model_000010.pt", lambda path: path.write_bytes(b"weights"))
    atomic.write_json_atomic(tmp_path / "meta_000010.json", {"step": 10})
    renamed = assert_each_rename_is_flushed(renames_and_flushes, tmp_path)
    assert renamed == ["tokenizer.pkl", "model_000010.pt", "meta_000010.json"]
