"""Best-fit loader throughput: this project's loader against nanochat's algorithm, same shards, same batches.

    .venv/bin/python benchmarks/loader.py [--docs mixed|long] [--batches 60] [--repeats 3]

"nanochat-scan" is nanochat's best-fit loader re-implemented step for step: tokenize each batch of 128 documents
through tiktoken's thread pool (4 threads) in the training thread, then for every document placed scan the whole
1000-document buffer in Python and copy the document into the row with torch.tensor. With NANOCHAT_DIR set to a
nanochat checkout, nanochat's own loader is measured as well. Every loader must yield identical batches.

The corpus is built from ../shared/data (Shakespeare and the JSONL question sets), in nanochat's shard layout, with a
nanochat-size tokenizer (32,768 tokens) trained on it. `--docs long` glues documents into ~6,000-character ones
(web-page sized); `mixed` keeps them as they are (a few dozen to a few thousand characters).
"""

import argparse
import hashlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()

from openseek_nanochat.train import dataloader  # noqa: E402
from openseek_nanochat.train import tokenizer as tok  # noqa: E402
from openseek_nanochat.train.nanochat import layout  # noqa: E402


def corpus_docs(kind: str, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    speeches = (SHARED_DATA / "tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n")
    docs, i = [], 0
    while i < len(speeches):
        n = rng.choice([1, 2, 3, 5, 8, 12])
        docs.append("\n\n".join(speeches[i : i + n]))
        i += n
    for path in sorted((SHARED_DATA / "jsonl").glob("*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            docs.append(
                "\n".join(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in record.values())
            )
    rng.shuffle(docs)
    if kind == "long":
        glued, current = [], []
        for doc in docs:
            current.append(doc)
            if sum(map(len, current)) >= rng.randint(2000, 10000):
                glued.append("\n\n".join(current))
                current = []
        docs = glued
    return docs


def make_base_dir(root: Path, kind: str, vocab_size: int = 32768) -> Path:
    """$NANOCHAT_BASE_DIR: base_data_climbmix/ (4 train shards + val, row groups of 256 docs) and tokenizer/."""
    docs = corpus_docs(kind)
    data = root / layout.DATA_SUBDIR
    data.mkdir(parents=True)
    val = max(256, len(docs) // 20)
    train = docs[:-val]
    per_shard = -(-len(train) // 4)
    for i, part in enumerate([train[j : j + per_shard] for j in range(0, len(train), per_shard)] + [docs[-val:]]):
        pq.write_table(pa.table({"text": part}), data / f"shard_{i:05d}.parquet", row_group_size=256)
    tok.save(tok.train_encoding(iter(docs), vocab_size), root / layout.TOKENIZER_SUBDIR)
    return root


def nanochat_scan_loader(tokenizer, B, T, split, tokenizer_threads=4, tokenizer_batch_size=128, buffer_size=1000):
    """nanochat's best-fit loader, written out: linear scans, list pops, a tensor per document (single rank)."""
    paths = dataloader.split_paths(split)

    def document_batches():
        epoch = 1
        while True:
            for pq_idx, path in enumerate(paths):
                pf = pq.ParquetFile(path)
                for rg_idx in range(pf.num_row_groups):
                    texts = pf.read_row_group(rg_idx).column("text").to_pylist()
                    for i in range(0, len(texts), tokenizer_batch_size):
                        yield texts[i : i + tokenizer_batch_size], (pq_idx, rg_idx, epoch)
            epoch += 1

    batches = document_batches()
    bos = tokenizer.get_bos_token_id()
    docs, row_buffer = [], torch.empty((B, T + 1), dtype=torch.long)
    while True:
        for r in range(B):
            pos = 0
            while pos < T + 1:
                while len(docs) < buffer_size:
                    texts, _ = next(batches)
                    docs.extend(tokenizer.encode(texts, prepend=bos, num_threads=tokenizer_threads))
                room = T + 1 - pos
                best, best_len = -1, 0
                for i, doc in enumerate(docs):
                    if best_len < len(doc) <= room:
                        best, best_len = i, len(doc)
                if best < 0:
                    doc = docs.pop(min(range(len(docs)), key=lambda i: len(docs[i])))[:room]
                else:
                    doc = docs.pop(best)
                row_buffer[r, pos : pos + len(doc)] = torch.tensor(doc, dtype=torch.long)
                pos += len(doc)
        yield row_buffer[:, :-1].clone(), row_buffer[:, 1:].clone()


def measure(make_loader, batches: int) -> tuple[float, list[str]]:
    """Seconds for `batches` batches after the first (which fills the buffer), and a digest of every batch."""
    loader = make_loader()
    digests = []

    def take():
        x, y = next(loader)[:2]
        digests.append(hashlib.blake2b(x.numpy().tobytes() + y.numpy().tobytes(), digest_size=16).hexdigest())

    take()
    t0 = time.perf_counter()
    for _ in range(batches):
        take()
    seconds = time.perf_counter() - t0
    loader.close()
    return seconds, digests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", choices=["mixed", "long"], default="mixed")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("-B", type=int, default=8)
    parser.add_argument("-T", type=int, default=2048)
    args = parser.parse_args()
    B, T = args.B, args.T

    with tempfile.TemporaryDirectory() as tmp:
        base = make_base_dir(Path(tmp), args.docs)
        os.environ["NANOCHAT_BASE_DIR"] = str(base)
        tokenizer = tok.get_tokenizer()
        loaders = {
            "openseek": lambda: dataloader.tokenizing_distributed_data_loader_bos_bestfit(
                tokenizer, B, T, "train", device="cpu"
            ),
            "nanochat-scan": lambda: nanochat_scan_loader(tokenizer, B, T, "train"),
        }
        if os.environ.get("NANOCHAT_DIR"):
            sys.path.insert(0, os.environ["NANOCHAT_DIR"])
            import nanochat.dataloader
            import nanochat.dataset
            from nanochat.tokenizer import get_tokenizer

            nanochat.dataset.DATA_DIR = str(base / layout.DATA_SUBDIR)
            nanochat_tokenizer = get_tokenizer()
            loaders["nanochat"] = lambda: nanochat.dataloader.tokenizing_distributed_data_loader_bos_bestfit(
                nanochat_tokenizer, B, T, "train", device="cpu"
            )

        train_docs = sum(pq.ParquetFile(p).metadata.num_rows for p in dataloader.split_paths("train"))
        sample = [
            len(d)
            for d in tokenizer.encode(pq.read_table(dataloader.split_paths("train")[0]).column("text").to_pylist())
        ]
        print(
            f"corpus '{args.docs}': {train_docs:,} train docs, median {statistics.median(sample):.0f} tokens/doc "
            f"(vocab {tokenizer.get_vocab_size():,}); B={B} T={T}, {args.batches} batches x {args.repeats} repeats"
        )
        times = {name: [] for name in loaders}
        digests = {}
        for _ in range(args.repeats):
            for name, make in loaders.items():  # interleaved, so machine noise hits every loader alike
                seconds, digests[name] = measure(make, args.batches)
                times[name].append(seconds)
        reference = digests["openseek"]
        for name, d in digests.items():
            assert d == reference, f"{name} yields different batches than openseek"
        print(f"identical batches: {', '.join(digests)} ({args.batches + 1} batches each)")
        best = {name: args.batches * B / min(ts) for name, ts in times.items()}
        median = {name: args.batches * B / statistics.median(ts) for name, ts in times.items()}
        for name in times:
            print(
                f"{name:14s} {best[name]:8.1f} rows/s {best[name] * T / 1e6:7.3f} M tokens/s  "
                f"(best of {args.repeats}; median {median[name]:.1f} rows/s)"
            )
        for name in times:
            if name != "openseek":
                print(
                    f"speedup vs {name}: {best['openseek'] / best[name]:.2f}x (best), "
                    f"{median['openseek'] / median[name]:.2f}x (median)"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
