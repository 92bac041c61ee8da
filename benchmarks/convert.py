"""Conversion throughput and memory: the project (shuffle on) against an Arrow-native ceiling, in one run.

The ceiling is the least work that produces nanochat-style shards from JSONL: Arrow's streaming JSON reader straight
into a zstd ParquetWriter, no shuffle, no manifest. Each measurement runs in a fresh process that reports its own
peak RSS (the best wall time and the highest peak of --repeat alternating runs). Two corpus sizes show whether memory
stays flat as the input grows.

    .venv/bin/python benchmarks/convert.py [--mb 200 800] [--repeat 3] [--workdir bench-data]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def make_corpus(path: Path, megabytes: int) -> None:
    """JSONL of ~3 KB documents cut from Shakespeare, each made unique by a prefix, until `megabytes` are written."""
    if path.exists() and path.stat().st_size >= megabytes * 1e6:
        return
    text = SHAKESPEARE.read_text()
    docs = [text[i : i + 3000] for i in range(0, len(text), 3000)]
    written, copy = 0, 0
    with open(path, "w") as f:
        while written < megabytes * 1e6:
            for i, doc in enumerate(docs):
                line = json.dumps({"id": f"{copy}-{i}", "text": f"[{copy}/{i}] {doc}"}) + "\n"
                f.write(line)
                written += len(line)
            copy += 1


def ceiling(corpus: str, out: str) -> None:
    import pyarrow as pa
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    from openseek_nanochat.convert.cores import run_memory_pool

    pa.set_memory_pool(run_memory_pool())  # the allocator a conversion uses: only the work differs
    os.makedirs(out, exist_ok=True)
    schema = pa.schema([pa.field("text", pa.string())])
    reader = pj.open_json(corpus, read_options=pj.ReadOptions(block_size=8 << 20))
    with pq.ParquetWriter(
        f"{out}/shard_00000.parquet",
        schema,
        compression="zstd",
        compression_level=3,
        use_dictionary=False,
        write_statistics=False,
    ) as writer:
        for batch in reader:
            writer.write_table(pa.table({"text": batch.column("text")}, schema=schema), row_group_size=1024)


def project(corpus: str, out: str) -> None:
    from openseek_nanochat.convert.run import convert
    from openseek_nanochat.convert.spec import ConvertSpec

    convert(ConvertSpec(sources=[{"type": "files", "paths": [corpus]}], output_dir=out, chars_per_shard=50_000_000))


def measure(kind: str, corpus: Path, out: Path) -> dict:
    """Run one measurement in a fresh process; return wall seconds and peak RSS in MB."""
    subprocess.run(["rm", "-rf", str(out)], check=True)
    env = {
        **os.environ,
        "OPENSEEK_NANOCHAT_DATA_DIR": str(out.parent.parent),  # out is <data dir>/datasets/<name>
        "OPENSEEK_NANOCHAT_INPUT_ROOTS": str(corpus.parent),
    }
    proc = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(corpus), str(out)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child(kind: str, corpus: str, out: str) -> None:
    # Imports happen before the clock starts, for both: the benchmark compares conversions, not interpreter start-up.
    import pyarrow.json  # noqa: F401,E401

    import openseek_nanochat.convert.run  # noqa: F401,E401

    start = time.perf_counter()
    {"ceiling": ceiling, "project": project}[kind](corpus, out)
    wall = time.perf_counter() - start
    print(json.dumps({"wall_s": wall, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, nargs="+", default=[200, 800])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, alternating; the best wall time counts")
    parser.add_argument("--workdir", default=str(REPO / "bench-data"))
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(f"{'input':>8} {'what':>8} {'wall s':>8} {'MB/s':>8} {'peak RSS MB':>12} {'vs ceiling':>11}")
    for mb in args.mb:
        corpus = work / f"corpus_{mb}mb.jsonl"
        make_corpus(corpus, mb)
        size_mb = corpus.stat().st_size / 1e6
        runs = {"ceiling": [], "project": []}
        for _ in range(args.repeat):  # alternate, so a burst of load on this shared machine hits both alike
            for kind in runs:
                runs[kind].append(measure(kind, corpus, work / "datasets" / f"out_{kind}"))
        results = {
            kind: {"wall_s": min(r["wall_s"] for r in rs), "peak_rss_mb": max(r["peak_rss_mb"] for r in rs)}
            for kind, rs in runs.items()
        }
        for kind, r in results.items():
            ratio = results["ceiling"]["wall_s"] / r["wall_s"]
            print(
                f"{size_mb:>7.0f}M {kind:>8} {r['wall_s']:>8.2f} {size_mb / r['wall_s']:>8.1f} "
                f"{r['peak_rss_mb']:>12.0f} {ratio:>10.2f}x"
            )
    print("target: project throughput >= 0.6x the ceiling (shuffle on); peak RSS <= 1.5 GB and flat as input grows")


if __name__ == "__main__":
    main()
