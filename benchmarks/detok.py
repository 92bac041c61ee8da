"""Detokenization throughput of the Megatron source against tiktoken's own decode_bytes, on the same tokens.

The shared Megatron parts (real qwen.tiktoken tokens) are repeated into one part of --tokens tokens under --workdir.
Every row is measured as MB of document text out per second (the same text for every row; best of --repeat runs):

  tiktoken decode_bytes, one call     the whole token stream from a ready Python list: tiktoken's best case, with
                                      no per-document split, no UTF-8 decode and no numpy -> list conversion
  tiktoken, per document              what a tiktoken-based reader has to do: tolist, decode_bytes, UTF-8 decode
  ByteTableDetokenizer.decode         this project's decoder on the source's batches (one thread)
  MegatronTextSource.read, N threads  the whole source: index, id range check, decode, Arrow strings out

    .venv/bin/python benchmarks/detok.py [--tokens 50000000] [--repeat 3]
"""

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import tiktoken

import openseek_nanochat.convert.sources.megatron as megatron
from openseek_nanochat.capacity import cpu_count
from openseek_nanochat.convert.sources.detok import QWEN_SPECIAL_TOKENS, ByteTableDetokenizer, qwen_token_bytes
from openseek_nanochat.convert.sources.megatron_index import MegatronIndex, write_megatron

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def build_part(prefix: Path, tokens: int) -> None:
    documents = []
    for part in sorted((SHARED / "megatron").glob("*.idx")):
        index = MegatronIndex(str(part)[:-4])
        flat, offsets = index.read_documents(0, index.num_documents)
        documents += [[flat[a:b]] for a, b in zip(offsets[:-1], offsets[1:])]
    per_copy = sum(len(doc[0]) for doc in documents)
    write_megatron(prefix, documents * max(1, round(tokens / per_copy)))


def best_of(repeat: int, run) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=50_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", default=f"1,{cpu_count()}", help="decode threads to try, e.g. 1,2,4")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/openseek_nanochat_bench"))
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    prefix = args.workdir / f"qwen_{args.tokens}_text_document"
    if not prefix.with_suffix(".idx").exists():
        build_part(prefix, args.tokens)

    vocabulary = qwen_token_bytes(SHARED / "qwen.tiktoken")
    base = len(vocabulary) - len(QWEN_SPECIAL_TOKENS)
    encoding = tiktoken.Encoding(
        "qwen",
        pat_str=QWEN_PATTERN,
        mergeable_ranks={token: rank for rank, token in enumerate(vocabulary[:base])},
        special_tokens={token: base + i for i, token in enumerate(QWEN_SPECIAL_TOKENS)},
    )
    detokenizer = ByteTableDetokenizer(vocabulary)
    source = megatron.MegatronTextSource("bench", 1.0, [str(prefix)], detokenizer, [str(SHARED / "qwen.tiktoken")])
    index = MegatronIndex(prefix)
    ranges = list(megatron.batch_ranges(index))
    batches = [index.read_documents(start, stop) for start, stop, _ in ranges]  # also warms the page cache
    text_bytes = sum(pc.sum(pc.binary_length(detokenizer.decode(*batch).texts)).as_py() for batch in batches)
    all_tokens = np.concatenate([tokens for tokens, _ in batches])
    token_list = all_tokens.tolist()

    def tiktoken_per_document():
        for tokens, offsets in batches:
            ids = tokens.tolist()
            bounds = offsets.tolist()
            [encoding.decode_bytes(ids[a:b]).decode("utf-8", "replace") for a, b in zip(bounds, bounds[1:])]

    def decode_batches():
        for tokens, offsets in batches:
            detokenizer.decode(tokens, offsets)

    def read_source(threads: int):
        source.read_ahead = megatron.ReadAhead(1, threads=threads)
        for _ in source.read():
            pass

    rows = [
        ("tiktoken decode_bytes, one call", best_of(args.repeat, lambda: encoding.decode_bytes(token_list))),
        ("tiktoken, per document", best_of(args.repeat, tiktoken_per_document)),
        ("ByteTableDetokenizer.decode", best_of(args.repeat, decode_batches)),
    ]
    for threads in sorted({int(n) for n in args.threads.split(",")}):
        rows.append(
            (f"MegatronTextSource.read, {threads} thread(s)", best_of(args.repeat, lambda n=threads: read_source(n)))
        )

    baseline = text_bytes / rows[0][1]
    print(
        f"{len(all_tokens):,} tokens, {text_bytes / 1e6:.1f} MB of text, {len(ranges)} batches, best of {args.repeat}"
    )
    print(f"{'':<40} {'seconds':>8} {'MB/s':>8} {'vs tiktoken':>12}")
    for label, seconds in rows:
        speed = text_bytes / seconds
        print(f"{label:<40} {seconds:>8.2f} {speed / 1e6:>8.1f} {speed / baseline:>11.2f}x")


if __name__ == "__main__":
    main()
