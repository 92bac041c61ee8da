"""Detokenizers: OpenSeek's Qwen vocabulary and HF tokenizer.json files, whole-document UTF-8, markers removed."""

import functools
from pathlib import Path

import numpy as np
import pytest
import tiktoken
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from openseek_nanochat.convert.sources.detok import (
    QWEN_SPECIAL_TOKENS,
    ByteTableDetokenizer,
    TokenizersDetokenizer,
    _ranks_line_by_line,
    load_detokenizer,
    load_hf,
    qwen_token_bytes,
    tiktoken_ranks,
)
from openseek_nanochat.convert.spec import HFTokenizerSpec, QwenTokenizerSpec
from openseek_nanochat.errors import InputError
from openseek_nanochat.paths import PathPolicyError
from openseek_nanochat.settings import get_settings

QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
EOT, IM_START, IM_END, BEGIN, END = 151643, 151644, 151645, 151849, 151850


@functools.cache
def qwen_reference(vocabulary: Path) -> tuple[list[bytes], tiktoken.Encoding]:
    """OpenSeek's vocabulary as the detokenizer reads it, and as tiktoken: the reference it must agree with."""
    token_bytes = qwen_token_bytes(vocabulary)
    base = len(token_bytes) - len(QWEN_SPECIAL_TOKENS)
    encoding = tiktoken.Encoding(
        "qwen",
        pat_str=QWEN_PATTERN,
        mergeable_ranks={token: rank for rank, token in enumerate(token_bytes[:base])},
        special_tokens={token: base + i for i, token in enumerate(QWEN_SPECIAL_TOKENS)},
    )
    return token_bytes, encoding


@pytest.fixture
def qwen_bytes(shared_data) -> list[bytes]:
    return qwen_reference(shared_data / "qwen.tiktoken")[0]


@pytest.fixture
def qwen(shared_data) -> tiktoken.Encoding:
    return qwen_reference(shared_data / "qwen.tiktoken")[1]


def as_batch(documents: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(d) for d in documents])
    return np.array([t for d in documents for t in d], np.int32), offsets


def test_qwen_vocabulary_matches_tiktoken(qwen_bytes, qwen):
    assert len(qwen_bytes) == 151_851 and qwen.n_vocab == 151_851
    assert qwen_bytes[:151_643] == [qwen.decode_single_token_bytes(i) for i in range(151_643)]
    assert qwen.encode_single_token("<|extra_203|>") == BEGIN and qwen.encode_single_token("<|extra_204|>") == END
    assert set(qwen_bytes[151_643:]) == {b""}


def test_qwen_documents_decode_exactly_with_markers_removed(qwen_bytes, qwen):
    texts = [
        "Hello, world!\n",
        "芳芳买了一本书有99页",
        "a parrot 🦜 and 𝔘 split across tokens",
        "",
        "  tabs\tand  spaces ",
    ]
    documents = [[BEGIN, *qwen.encode(t), END] for t in texts]
    documents.append([END])  # stock Megatron: an EOD and nothing else
    documents.append([IM_START, *qwen.encode("user"), IM_END, EOT])
    decoded = ByteTableDetokenizer(qwen_bytes).decode(*as_batch(documents))
    assert decoded.texts.to_pylist() == texts + ["", "user"]
    assert decoded.replacements == 0
    assert len(qwen.encode("🦜")) == 2  # one character, two tokens: decoding token by token would break it


class RecordingTable:
    """A token table that counts the takes made from it."""

    def __init__(self, table):
        self.table, self.takes = table, 0

    def take(self, indices):
        self.takes += 1
        return self.table.take(indices)


def test_batches_decode_through_32_bit_offsets_unless_their_bytes_could_pass_2_gb(qwen_bytes, qwen):
    texts = ["Hello, world!\n", "芳芳买了一本书有99页", "a parrot 🦜 and 𝔘 split across tokens", ""]
    batch = as_batch([[BEGIN, *qwen.encode(t), END] for t in texts])
    usual, huge = ByteTableDetokenizer(qwen_bytes), ByteTableDetokenizer(qwen_bytes)
    huge.longest = 2**31 // len(batch[0]) + 1  # as if a token could be that long: this batch could reach 2 GB
    for detokenizer in (usual, huge):
        detokenizer.table = RecordingTable(detokenizer.table)  # the 64-bit one
        assert detokenizer.decode(*batch).texts.to_pylist() == texts
    assert (usual.table.takes, huge.table.takes) == (0, 1)


def test_invalid_utf8_is_replaced_and_counted(qwen_bytes, qwen):
    parrot = qwen.encode("🦜")
    documents = [
        [BEGIN, *qwen.encode("ok "), parrot[0], END],  # a character cut off at the end of the document
        [*qwen.encode("a literal \ufffd is text, not an error")],
        [parrot[1], *qwen.encode(" and "), parrot[1]],  # two stray continuation bytes
        [*qwen.encode("intact")],
    ]
    decoded = ByteTableDetokenizer(qwen_bytes).decode(*as_batch(documents))
    assert decoded.texts.to_pylist() == [
        "ok \ufffd",
        "a literal \ufffd is text, not an error",
        "\ufffd and \ufffd",
        "intact",
    ]
    assert decoded.replacements == 3


def test_malformed_vocabulary_files(tmp_path):
    path = tmp_path / "bad.tiktoken"
    path.write_text("IQ== 0\nnot-base64! 1\n")
    with pytest.raises(InputError) as e:
        qwen_token_bytes(path)
    assert str(e.value) == f"{path}:2: expected a base64 token and its rank"
    path.write_text("IQ== 0\nIg== 2\n")
    with pytest.raises(InputError) as e:
        qwen_token_bytes(path)
    assert str(e.value) == f"{path}: not a tiktoken vocabulary: rank 1 is missing (ranks must be 0..n-1)"
    path.write_text("IQ== 0\nIg== 0\n")
    with pytest.raises(InputError) as e:
        qwen_token_bytes(path)
    assert str(e.value) == f"{path}: not a tiktoken vocabulary: rank 0 appears twice (ranks must be 0..n-1)"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("IQ== 0\nIg== 1\n", [b"!", b'"']),  # as tiktoken writes it: read in bulk
        ("\nIQ== 0\r\n\n  Ig==\t1  \n\n", [b"!", b'"']),  # blank lines, CRLF, spaces and tabs
        ("Ig== 1\nIQ== 0\n", [b"!", b'"']),  # ranks out of order: read line by line, sorted
        ("", []),
        ("IQ== 0 Ig== 1\n", "1: expected a base64 token and its rank"),  # two on one line: right count, wrong shape
        ("IQ== 0 MTIz\n1\n", "1: expected a base64 token and its rank"),
        ("IQ== 0\nIg==\n", "2: expected a base64 token and its rank"),
        ("IQ== 0\nIQ 1\n", "2: expected a base64 token and its rank"),  # unpadded base64
    ],
)
def test_vocabulary_files_read_in_bulk_or_line_by_line(tmp_path, text, expected):
    path = tmp_path / "ranks.tiktoken"
    path.write_text(text)
    if isinstance(expected, list):
        assert tiktoken_ranks(path) == expected
        return
    with pytest.raises(InputError) as e:
        tiktoken_ranks(path)
    assert str(e.value) == f"{path}:{expected}"


def test_qwen_vocabulary_reads_the_same_in_bulk_as_line_by_line(shared_data):
    path = shared_data / "qwen.tiktoken"
    ranks = tiktoken_ranks(path)
    assert len(ranks) == 151_643 and ranks == _ranks_line_by_line(path.read_bytes(), path)
    assert qwen_token_bytes(path) == ranks + [b""] * len(QWEN_SPECIAL_TOKENS)


SAMPLE = [
    "First Citizen:\nBefore we proceed any further, hear me speak.\n",
    "Café, naïve façade — and 中文 with an emoji 🦜 the training text never saw.",
    "  leading spaces,\ttabs\n\nand blank lines  ",
]


def train_tokenizer(path, corpus: str, byte_level: bool) -> Tokenizer:
    """A small BPE tokenizer.json: byte-level (GPT-2 style) or Metaspace (SentencePiece style)."""
    tokenizer = Tokenizer(models.BPE(unk_token=None if byte_level else "<unk>"))
    if byte_level:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
        tokenizer.decoder = decoders.Metaspace(prepend_scheme="never")
        alphabet = sorted(set("".join(SAMPLE)))
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>", "<unk>"], initial_alphabet=alphabet)
    tokenizer.train_from_iterator(corpus.splitlines(keepends=True), trainer)
    tokenizer.add_tokens(["<keep>"])  # an added token that is not special is text
    tokenizer.save(str(path))
    return tokenizer


@pytest.mark.parametrize("byte_level", [True, False], ids=["byte-level", "metaspace"])
def test_hf_tokenizers_decode_whole_documents(tmp_path, shared_data, byte_level):
    corpus = (shared_data / "tinyshakespeare.txt").read_text()[:50_000]
    tokenizer = train_tokenizer(tmp_path / "tokenizer.json", corpus, byte_level)
    eos = tokenizer.token_to_id("<|endoftext|>")
    texts = SAMPLE + ["keep <keep> this"]
    documents = [tokenizer.encode(t).ids + [eos] for t in texts] + [[eos]]
    detokenizer = load_hf(tmp_path / "tokenizer.json")
    assert isinstance(detokenizer, ByteTableDetokenizer if byte_level else TokenizersDetokenizer)
    assert detokenizer.vocab_size == tokenizer.get_vocab_size(with_added_tokens=True)
    tokens, offsets = as_batch(documents)
    decoded = detokenizer.decode(tokens.astype(np.uint16), offsets)
    assert decoded.texts.to_pylist() == texts + [""]
    assert decoded.replacements == 0


def test_byte_level_table_agrees_with_tokenizers_on_broken_utf8(tmp_path, shared_data):
    corpus = (shared_data / "tinyshakespeare.txt").read_text()[:20_000]
    tokenizer = train_tokenizer(tmp_path / "tokenizer.json", corpus, byte_level=True)
    rng = np.random.default_rng(0)
    documents = [rng.integers(0, tokenizer.get_vocab_size(), 50).tolist() for _ in range(20)]
    decoded = load_hf(tmp_path / "tokenizer.json").decode(*as_batch(documents))
    assert decoded.texts.to_pylist() == tokenizer.decode_batch(documents, skip_special_tokens=True)


def test_tokenizer_files_are_checked(tmp_path, data_dir):
    settings = get_settings()
    with pytest.raises(InputError) as e:
        load_detokenizer(QwenTokenizerSpec(path=str(data_dir / "missing.tiktoken")), settings)
    assert str(e.value) == f"{data_dir}/missing.tiktoken: no such tokenizer file"
    (data_dir / "tokenizer.json").write_text('{"model": "not really"}')
    with pytest.raises(InputError) as e:
        load_detokenizer(HFTokenizerSpec(path=str(data_dir / "tokenizer.json")), settings)
    assert str(e.value).startswith(f"{data_dir}/tokenizer.json: not a tokenizer.json the tokenizers library can load: ")
    with pytest.raises(PathPolicyError):
        load_detokenizer(QwenTokenizerSpec(path="/etc/hostname"), settings)
