"""A streaming HF source resumes from the stream's own state: every cursor gives exactly the rest of the documents,
and a resume deep into the dataset opens none of the files wholly before it."""

import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import openseek_nanochat.convert.sources.hf as hf
from openseek_nanochat.convert.sources.hf import HFTextSource
from openseek_nanochat.convert.spec import HFSource
from openseek_nanochat.settings import get_settings

FILES, ROWS = 4, 700
TEXTS = [[f"file {k} row {i}: " + "word " * (i % 11) for i in range(ROWS)] for k in range(FILES)]
OPENED: list[str] = []  # paths opened while `WATCHING` holds a folder


def _record_opens(event: str, args: tuple) -> None:
    if WATCHING and event == "open" and isinstance(args[0], str) and args[0].startswith(WATCHING[0]):
        OPENED.append(args[0])


WATCHING: list[str] = []
sys.addaudithook(_record_opens)  # audit hooks stay for the process: this one records only while a test watches


@pytest.fixture(autouse=True)
def small_batches(monkeypatch):
    monkeypatch.setattr(hf, "ROWS_PER_BATCH", 256)  # batches that straddle files


@pytest.fixture
def dataset(data_dir):
    folder = data_dir / "hf"
    (folder / "data").mkdir(parents=True)
    for k in range(FILES):
        pq.write_table(pa.table({"text": TEXTS[k]}), folder / "data" / f"train-{k:05d}-of-{FILES:05d}.parquet")
    return folder


def source(folder, streaming=True) -> HFTextSource:
    return HFTextSource(HFSource(dataset=str(folder), streaming=streaming), get_settings())


def texts(batches) -> list[str]:
    return [t for b in batches for t in b.texts.to_pylist()]


@pytest.mark.parametrize("streaming", [True, False])
def test_every_cursor_gives_exactly_the_rest(dataset, streaming):
    everything = [t for file in TEXTS for t in file]
    batches = list(source(dataset, streaming).read())
    assert texts(batches) == everything and len(batches) > FILES
    done = 0
    for batch in batches:
        assert batch.cursor["row"] == done and ("stream" in batch.cursor) == streaming
        assert texts(source(dataset, streaming).read(batch.cursor)) == everything[done:]
        done += len(batch.texts)


def test_a_resume_in_the_last_file_opens_no_file_wholly_before_it(dataset):
    batches = list(source(dataset).read())
    last_file_starts = (FILES - 1) * ROWS
    cursor = next(b.cursor for b in batches if b.cursor["row"] >= last_file_starts + 256)
    WATCHING.append(str(dataset))
    try:
        rest = texts(source(dataset).read(cursor))
    finally:
        WATCHING.clear()
    assert rest == [t for file in TEXTS for t in file][cursor["row"] :]
    opened = [path.rsplit("/", 1)[1] for path in OPENED if path.endswith(".parquet")]
    name = [f"train-{k:05d}-of-{FILES:05d}.parquet" for k in range(FILES)]
    # The first file is opened once for its schema (the builder's features), not read; the files the cursor is past
    # are not opened at all. The one before the cursor's may be: datasets goes back to the chunk it was rebatching.
    assert opened.count(name[0]) == 1 and name[1] not in opened and name[FILES - 1] in opened, opened


def test_a_cursor_without_the_streams_state_still_resumes(dataset):
    # manifests written before streams recorded their state hold {"row": n} only
    everything = [t for file in TEXTS for t in file]
    assert texts(source(dataset).read({"row": 1000})) == everything[1000:]
