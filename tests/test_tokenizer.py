"""The tokenizer files are nanochat's: trained with rustbpe, read back the way nanochat reads them."""

import os
import pickle
import subprocess
import sys

import pytest
import tiktoken
import torch

from openseek_nanochat.train import tokenizer as tok

from conftest import SHARED_DATA
from training_data import shakespeare_docs, write_shards

NANOCHAT_DIR = os.environ.get("NANOCHAT_DIR")
SAMPLE = "Hello world! Numbers: 123, 4567. Contractions: I'm, you're.\nUnicode: 你好世界 🌍 café"


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"), shakespeare_docs(SHARED_DATA), 3, 100, 100)


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    stats = tok.train_from_shards(shards, out, vocab_size=1000, max_chars=400_000, doc_cap=2_000)
    return out, stats


def test_files_load_the_way_nanochat_loads_them(trained):
    out, stats = trained
    assert sorted(p.name for p in out.iterdir()) == ["token_bytes.pt", "tokenizer.pkl"]
    with open(out / "tokenizer.pkl", "rb") as f:
        enc = pickle.load(f)
    assert isinstance(enc, tiktoken.Encoding) and enc.name == "rustbpe"
    assert enc.n_vocab == stats["vocab_size"] == 1000
    assert enc.decode(enc.encode_ordinary(SAMPLE)) == SAMPLE
    # the 9 special tokens, in nanochat's order, on the top ids
    assert [enc.encode_single_token(s) for s in tok.SPECIAL_TOKENS] == list(range(991, 1000))
    assert tok.SPECIAL_TOKENS[0] == "<|bos|>" and len(tok.SPECIAL_TOKENS) == 9
    assert enc._pat_str == tok.SPLIT_PATTERN
    with open(out / "token_bytes.pt", "rb") as f:
        token_bytes = torch.load(f, map_location="cpu")
    assert token_bytes.dtype == torch.int32 and token_bytes.shape == (1000,)
    assert token_bytes[991:].tolist() == [0] * 9
    assert token_bytes[:991].tolist() == [len(enc.decode_single_token_bytes(i)) for i in range(991)]
    assert token_bytes[:256].tolist() == [1] * 256  # the raw bytes come first, each one byte (even 0x80-0xff)


def test_loader_helpers(trained, monkeypatch):
    out, _ = trained
    t = tok.load(out)
    bos = t.get_bos_token_id()
    assert bos == 991 and t.get_vocab_size() == 1000
    ids = t.encode(SAMPLE, prepend="<|bos|>", append=bos)
    assert ids[0] == ids[-1] == bos and t.decode(ids[1:-1]) == SAMPLE
    assert t.encode([SAMPLE, "ab"], prepend=bos, num_threads=2) == [
        t.encode(SAMPLE, prepend=bos),
        t.encode("ab", prepend=bos),
    ]
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(out.parent))
    (out.parent / "tokenizer").mkdir(exist_ok=True)
    tok.save(t.enc, out.parent / "tokenizer")
    assert tok.get_tokenizer().encode(SAMPLE) == t.encode(SAMPLE)
    assert torch.equal(tok.get_token_bytes(), tok.load_token_bytes(out))


def test_split_pattern_is_nanochats():
    # numbers split into runs of at most two digits, unlike GPT-4's three
    assert tok.SPLIT_PATTERN == (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|"""
        r"""\s*[\r\n]|\s+(?!\S)|\s+"""
    )


def test_text_stream_crops_documents_and_stops_after_max_chars(shards):
    counter = {}
    texts = list(tok.capped_texts(tok.train_shard_paths(shards), max_chars=25_000, doc_cap=300, counter=counter))
    assert all(len(t) <= 300 for t in texts) and any(len(t) == 300 for t in texts)
    assert sum(map(len, texts[:-1])) <= 25_000 < sum(map(len, texts))  # the document that crosses the line is kept
    assert counter == {"docs": len(texts), "chars": sum(map(len, texts))}
    assert len(tok.train_shard_paths(shards)) == 2  # the validation shard is never trained on


def test_a_vocab_the_text_cannot_fill_fails_clearly(shards, tmp_path):
    with pytest.raises(
        tok.VocabTooSmallError, match=r"supports a vocabulary of only [\d,]+ tokens, not the requested 50,000"
    ):
        tok.train_from_shards(shards, tmp_path / "t", vocab_size=50_000, max_chars=20_000)
    assert not tok.is_complete(tmp_path / "t")
    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "openseek_nanochat.train.tokenizer",
            f"--data-dir={shards}",
            f"--out-dir={tmp_path / 't'}",
            "--vocab-size=50000",
            "--max-chars=20000",
        ],
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 2 and "error: the training text supports a vocabulary of only" in cli.stderr
    with pytest.raises(ValueError, match="at least 265"):
        tok.train_encoding(iter(["abc"]), 200)


@pytest.mark.skipif(not NANOCHAT_DIR, reason="set NANOCHAT_DIR to a nanochat checkout to compare with nanochat")
def test_same_tokenizer_as_nanochats_own_training(trained, shards, monkeypatch):
    monkeypatch.syspath_prepend(NANOCHAT_DIR)
    from nanochat.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN, RustBPETokenizer

    assert (SPECIAL_TOKENS, SPLIT_PATTERN) == (tok.SPECIAL_TOKENS, tok.SPLIT_PATTERN)
    out, _ = trained
    texts = tok.capped_texts(tok.train_shard_paths(shards), max_chars=400_000, doc_cap=2_000)
    theirs = RustBPETokenizer.train_from_iterator(texts, 1000)
    ours = RustBPETokenizer.from_directory(str(out))  # nanochat reads our files
    assert ours.enc._mergeable_ranks == theirs.enc._mergeable_ranks
    assert ours.enc._special_tokens == theirs.enc._special_tokens
    assert ours.encode(SAMPLE, prepend="<|bos|>") == tok.load(out).encode(SAMPLE, prepend="<|bos|>")
