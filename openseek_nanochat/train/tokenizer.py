"""nanochat-format BPE tokenizer: trained with rustbpe on the train shards, used through tiktoken.

A tokenizer directory holds exactly what nanochat's `scripts.tok_train` writes, so any nanochat checkout can use it:
  tokenizer.pkl    a pickled `tiktoken.Encoding` (name "rustbpe"): the learned merges, then the 9 special tokens
  token_bytes.pt   an int32 tensor with the byte length of every token id, 0 for the special tokens (for bits per byte)
Both are written atomically, token_bytes.pt first: a directory with tokenizer.pkl is complete. `get_tokenizer` and
`get_token_bytes` read nanochat's own tokenizer dir (nanochat/layout.py), as nanochat's functions of those names do.

Run as `python -m openseek_nanochat.train.tokenizer --data-dir SHARDS --out-dir DIR --vocab-size N` (a train job does).
"""

import argparse
import pickle
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from openseek_nanochat.atomic import write_atomic
from openseek_nanochat.convert.shards import list_shards
from openseek_nanochat.train.nanochat import layout

# nanochat's special tokens, in nanochat's order; they take the top ids, right after the learned merges.
SPECIAL_TOKENS = [
    "<|bos|>",
    "<|user_start|>",
    "<|user_end|>",
    "<|assistant_start|>",
    "<|assistant_end|>",
    "<|python_start|>",
    "<|python_end|>",
    "<|output_start|>",
    "<|output_end|>",
]
BOS = "<|bos|>"

# nanochat's split pattern: GPT-4's, but numbers split into runs of at most 2 digits.
SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

TOKENIZER_FILE = "tokenizer.pkl"
TOKEN_BYTES_FILE = "token_bytes.pt"


class VocabTooSmallError(ValueError):
    """rustbpe stopped before the requested vocabulary: the corpus has too few distinct pairs to merge."""


class Tokenizer:
    """A tiktoken encoding with the helpers nanochat's loaders and trainer call (same names as nanochat's)."""

    def __init__(self, enc):
        self.enc = enc
        self.bos_token_id = enc.encode_single_token(BOS)

    def get_vocab_size(self) -> int:
        return self.enc.n_vocab

    def get_bos_token_id(self) -> int:
        return self.bos_token_id

    def get_special_tokens(self) -> set[str]:
        return self.enc.special_tokens_set

    def encode_special(self, text: str) -> int:
        return self.enc.encode_single_token(text)

    def encode(self, text, prepend=None, append=None, num_threads=8):
        """One string -> ids; a list of strings -> a list of id lists (tiktoken's batch encoder)."""
        if isinstance(text, str):
            rows = [self.enc.encode_ordinary(text)]
        elif isinstance(text, list):
            rows = self.enc.encode_ordinary_batch(text, num_threads=num_threads)
        else:
            raise TypeError(f"encode takes a str or a list of str, got {type(text).__name__}")
        if prepend is not None:
            prepend_id = prepend if isinstance(prepend, int) else self.encode_special(prepend)
            for row in rows:
                row.insert(0, prepend_id)
        if append is not None:
            append_id = append if isinstance(append, int) else self.encode_special(append)
            for row in rows:
                row.append(append_id)
        return rows[0] if isinstance(text, str) else rows

    __call__ = encode

    def decode(self, ids) -> str:
        return self.enc.decode(ids)

    def decode_single_token_bytes(self, token_id: int) -> bytes:
        return self.enc.decode_single_token_bytes(token_id)

    def id_to_token(self, token_id: int) -> str:
        return self.enc.decode([token_id])


def build_encoding(mergeable_ranks: dict[bytes, int], pattern: str = SPLIT_PATTERN):
    import tiktoken

    offset = len(mergeable_ranks)
    special_tokens = {name: offset + i for i, name in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding(
        name="rustbpe", pat_str=pattern, mergeable_ranks=mergeable_ranks, special_tokens=special_tokens
    )


def train_encoding(texts, vocab_size: int):
    """Train BPE on an iterator of strings; the encoding has exactly `vocab_size` ids or this raises."""
    import rustbpe

    merges_wanted = vocab_size - len(SPECIAL_TOKENS)
    if merges_wanted < 256:
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (256 bytes + 9 special tokens)")
    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(texts, merges_wanted, pattern=SPLIT_PATTERN)
    ranks = {bytes(token): rank for token, rank in trainer.get_mergeable_ranks()}
    if len(ranks) < merges_wanted:
        reached = len(ranks) + len(SPECIAL_TOKENS)
        raise VocabTooSmallError(
            f"the training text supports a vocabulary of only {reached:,} tokens, not the requested {vocab_size:,}: "
            f"ask for vocab_size <= {reached:,}, or give more text (max_chars, more shards)"
        )
    return build_encoding(ranks, trainer.get_pattern())


def token_byte_lengths(enc) -> list[int]:
    """Bytes per token id; 0 for special tokens so bits-per-byte ignores them.

    Raw bytes, not decoded text: a lone byte >= 0x80 is not valid UTF-8 and would decode to a 3-byte replacement char.
    """
    special_ids = {enc.encode_single_token(s) for s in enc.special_tokens_set}
    return [0 if i in special_ids else len(enc.decode_single_token_bytes(i)) for i in range(enc.n_vocab)]


def save(enc, tokenizer_dir) -> None:
    """Write token_bytes.pt, then tokenizer.pkl: a directory with tokenizer.pkl is complete."""
    import torch

    tokenizer_dir = Path(tokenizer_dir)
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    token_bytes = torch.tensor(token_byte_lengths(enc), dtype=torch.int32)
    write_atomic(tokenizer_dir / TOKEN_BYTES_FILE, lambda f: torch.save(token_bytes, f))
    write_atomic(tokenizer_dir / TOKENIZER_FILE, lambda f: pickle.dump(enc, f))


def is_complete(tokenizer_dir) -> bool:
    return (Path(tokenizer_dir) / TOKENIZER_FILE).is_file() and (Path(tokenizer_dir) / TOKEN_BYTES_FILE).is_file()


def load(tokenizer_dir) -> Tokenizer:
    """Read tokenizer.pkl the way nanochat's get_tokenizer does (unpickle the tiktoken.Encoding)."""
    with open(Path(tokenizer_dir) / TOKENIZER_FILE, "rb") as f:
        return Tokenizer(pickle.load(f))


def load_token_bytes(tokenizer_dir, device="cpu"):
    import torch

    with open(Path(tokenizer_dir) / TOKEN_BYTES_FILE, "rb") as f:
        return torch.load(f, map_location=device)


def nanochat_tokenizer_dir() -> Path:
    """Where nanochat looks: <nanochat's base dir>/tokenizer."""
    return layout.base_dir() / layout.TOKENIZER_SUBDIR


def get_tokenizer() -> Tokenizer:
    return load(nanochat_tokenizer_dir())


def get_token_bytes(device="cpu"):
    return load_token_bytes(nanochat_tokenizer_dir(), device)


def train_shard_paths(data_dir) -> list[Path]:
    """The train shards of a nanochat shard dir: every shard but the last (the validation shard)."""
    paths = list_shards(data_dir)
    if len(paths) < 2:
        raise ValueError(f"{data_dir}: need at least 2 parquet shards (train shards, then the validation shard last)")
    return paths[:-1]


def capped_texts(paths, max_chars: int, doc_cap: int, counter: dict | None = None):
    """nanochat's tok_train text stream: documents cropped to doc_cap chars, stop once more than max_chars were seen."""
    counter = counter if counter is not None else {}
    counter.setdefault("docs", 0)
    counter.setdefault("chars", 0)
    for path in paths:
        pf = pq.ParquetFile(path)
        for rg_idx in range(pf.num_row_groups):
            for text in pf.read_row_group(rg_idx, columns=["text"]).column("text").to_pylist():
                text = text[:doc_cap]
                counter["docs"] += 1
                counter["chars"] += len(text)
                yield text
                if counter["chars"] > max_chars:
                    return


def train_from_shards(data_dir, out_dir, vocab_size: int, max_chars: int = 2_000_000_000, doc_cap: int = 10_000):
    counter: dict = {}
    t0 = time.time()
    enc = train_encoding(capped_texts(train_shard_paths(data_dir), max_chars, doc_cap, counter), vocab_size)
    save(enc, out_dir)
    return {"vocab_size": enc.n_vocab, "docs": counter["docs"], "chars": counter["chars"], "seconds": time.time() - t0}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Train a nanochat-format BPE tokenizer on the train shards")
    parser.add_argument("--data-dir", required=True, help="shard dir (the last shard is validation and is not used)")
    parser.add_argument("--out-dir", required=True, help="where tokenizer.pkl and token_bytes.pt go")
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--max-chars", type=int, default=2_000_000_000)
    parser.add_argument("--doc-cap", type=int, default=10_000)
    args = parser.parse_args(argv)
    print(f"training tokenizer: vocab_size={args.vocab_size:,} max_chars={args.max_chars:,} doc_cap={args.doc_cap:,}")
    try:
        stats = train_from_shards(args.data_dir, args.out_dir, args.vocab_size, args.max_chars, args.doc_cap)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)  # the train job turns this line into the job's error
        return 2
    print(
        f"tokenizer: {stats['vocab_size']:,} tokens from {stats['docs']:,} docs, {stats['chars']:,} chars "
        f"in {stats['seconds']:.1f}s -> {args.out_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
