"""How long a resume takes to reach its cursor: the time to the first batch after a cursor near the end of the input,
against the time to read the whole input, in one run.

- JSONL: the cursor's byte offset (a plain file is seeked) against parsing every line before it.
- A streaming Hugging Face dataset of parquet files: the stream's own state (datasets skips the files before the
  cursor's) against `skip(rows)` (every row before the cursor read and dropped, as cursors of {"row": n} only do).

    .venv/bin/python benchmarks/resume.py [--mb 200] [--files 40] [--workdir bench-data]
"""

import argparse
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from convert import make_corpus  # benchmarks/convert.py: the JSONL corpus every conversion benchmark reads

from openseek_nanochat.convert.sources.files import FilesTextSource
from openseek_nanochat.convert.sources.hf import HFTextSource
from openseek_nanochat.convert.spec import FilesSource, HFSource
from openseek_nanochat.settings import get_settings


def timed(batches) -> tuple[float, int]:
    """Seconds to the first batch, and its first row."""
    started = time.perf_counter()
    batch = next(iter(batches))
    return time.perf_counter() - started, batch.cursor["row"]


def last_cursor(batches) -> dict:
    cursor = None
    for batch in batches:
        cursor = batch.cursor
    return cursor


def jsonl(work: Path, megabytes: int) -> list[tuple[str, float]]:
    corpus = work / f"corpus-{megabytes}mb.jsonl"
    make_corpus(corpus, megabytes)
    source = FilesTextSource(FilesSource(paths=[str(corpus)]), get_settings())
    started = time.perf_counter()
    cursor = last_cursor(source.read())
    whole = time.perf_counter() - started
    by_offset, row = timed(source.read(cursor))
    assert row == cursor["row"]
    return [(f"JSONL {megabytes} MB: read whole", whole), ("  resume at the last batch, by byte offset", by_offset)]


def hf(work: Path, files: int) -> list[tuple[str, float]]:
    folder = work / f"hf-{files}-files"
    if not folder.exists():
        (folder / "data").mkdir(parents=True)
        text = (Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare.txt").read_text()
        rows = [text[i : i + 2000] for i in range(0, len(text), 2000)] * 20
        for k in range(files):
            pq.write_table(pa.table({"text": rows}), folder / "data" / f"train-{k:05d}-of-{files:05d}.parquet")
    source = HFTextSource(HFSource(dataset=str(folder)), get_settings())
    started = time.perf_counter()
    cursor = last_cursor(source.read())
    whole = time.perf_counter() - started
    by_state, row = timed(source.read(cursor))
    by_skip, skip_row = timed(source.read({"row": cursor["row"]}))
    assert row == skip_row == cursor["row"]
    return [
        (f"HF streaming, {files} parquet files: read whole", whole),
        ("  resume at the last batch, by the stream's state", by_state),
        ("  resume at the last batch, by skipping rows", by_skip),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--workdir", default="bench-data")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OPENSEEK_NANOCHAT_DATA_DIR", str(work / "data"))
    os.environ.setdefault("OPENSEEK_NANOCHAT_INPUT_ROOTS", str(work))
    rows = jsonl(work, args.mb) + hf(work, args.files)
    print(f"{'':58} {'seconds':>8}")
    for name, seconds in rows:
        print(f"{name:58} {seconds:8.2f}")


if __name__ == "__main__":
    main()
