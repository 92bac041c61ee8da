"""Megatron's tokenizer arguments, pasted: each form reads a part that megatron-core's builder wrote with that
tokenizer and gives the exact texts back, through the table of token bytes wherever the tokenizer allows."""

import base64
import shutil
from pathlib import Path

import numpy as np
import pytest
import rustbpe
import sentencepiece
import tiktoken
from tokenizers import Tokenizer, models, pre_tokenizers

from openseek_nanochat.convert.sources.detok import ByteTableDetokenizer
from openseek_nanochat.convert.sources.megatron import build_megatron_sources
from openseek_nanochat.convert.sources.tokenizer_forms import PastEndDetokenizer, SentencePieceDetokenizer
from openseek_nanochat.convert.spec import MegatronSource
from openseek_nanochat.settings import get_settings

from megatronutil import write_part
from serverutil import start_server
from test_detok import BEGIN, END, QWEN_PATTERN, SAMPLE, qwen_reference, train_tokenizer

TEXTS = [
    *SAMPLE,
    "芳芳买了一本书有99页，她每天看12页。",
    "def f(x):\n    return x ** 2  # a 🦜 in code\n",
    "e",
    "   ",
    "Ἀθηναῖος and ẞ and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 — rare characters the vocabularies never saw",
]


def read_back(prefix, tokenizer: dict) -> tuple[list[str], object]:
    [source] = build_megatron_sources(MegatronSource(prefixes=[str(prefix)], tokenizer=tokenizer), get_settings())
    source.check()
    batches = list(source.read())
    assert sum(b.stats["decode_replacements"] for b in batches) == 0
    return [t for b in batches for t in b.texts.to_pylist()], source.detokenizer


def test_gpt2_bpe_with_vocab_and_merges(shared_data, data_dir):
    """GPT-2's files as Megatron ships them; preprocess_data.py --append-eod ends each document with <|endoftext|>."""
    vocab, merges = shared_data / "tokenizers" / "gpt2-vocab.json", shared_data / "tokenizers" / "gpt2-merges.txt"
    gpt2 = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    eod = gpt2.token_to_id("<|endoftext|>")
    assert eod == 50256
    prefix = write_part(data_dir / "gpt2_text_document", [[*gpt2.encode(t).ids, eod] for t in TEXTS], dtype=np.uint16)
    texts, detokenizer = read_back(
        prefix,
        {
            "tokenizer_type": "GPT2BPETokenizer",
            "vocab_file": str(vocab),
            "merge_file": str(merges),
            "vocab_size": 50257,
        },
    )
    assert texts == TEXTS
    assert type(detokenizer) is ByteTableDetokenizer


@pytest.mark.parametrize("as_folder", [True, False], ids=["folder", "tokenizer.json"])
@pytest.mark.parametrize("byte_level", [True, False], ids=["byte-level", "metaspace"])
def test_hugging_face_tokenizer(shared_data, data_dir, tmp_path, byte_level, as_folder):
    corpus = (shared_data / "tinyshakespeare.txt").read_text()[:50_000] + "\n".join(TEXTS)
    (tmp_path / "tok").mkdir()
    tokenizer = train_tokenizer(tmp_path / "tok" / "tokenizer.json", corpus, byte_level)
    eod = tokenizer.token_to_id("<|endoftext|>")
    texts = TEXTS if byte_level else [t for t in TEXTS if t.strip() == t and "  " not in t]  # Metaspace: no runs
    prefix = write_part(data_dir / "hf_text_document", [[*tokenizer.encode(t).ids, eod] for t in texts])
    model = tmp_path / "tok" if as_folder else tmp_path / "tok" / "tokenizer.json"
    back, detokenizer = read_back(prefix, {"tokenizer_type": "HuggingFaceTokenizer", "tokenizer_model": str(model)})
    assert back == texts
    assert (type(detokenizer) is ByteTableDetokenizer) == byte_level


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    """A small model trained as Llama 2's was: BPE, byte fallback, no normalization, a dummy prefix space."""
    from conftest import SHARED_DATA

    folder = tmp_path_factory.mktemp("spm")
    lines = (SHARED_DATA / "tinyshakespeare.txt").read_text()[:200_000].splitlines()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter([line for line in lines if line] + TEXTS[:2]),
        model_prefix=str(folder / "sp"),
        model_type="bpe",
        vocab_size=800,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        character_coverage=1.0,
        minloglevel=2,
    )
    return folder / "sp.model"


@pytest.mark.parametrize("kind", ["SentencePieceTokenizer", "GPTSentencePieceTokenizer", "Llama2Tokenizer"])
def test_sentencepiece_models(sentencepiece_model, data_dir, kind):
    sentencepiece_model = Path(shutil.copy(sentencepiece_model, data_dir / "tokenizer.model"))  # an input root
    sp = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
    documents = [[sp.bos_id(), *sp.encode(t), sp.eos_id()] for t in TEXTS]  # Llama 2's BOS ... EOS
    assert any(sp.is_byte(i) for d in documents for i in d)  # characters outside the vocabulary: byte pieces
    prefix = write_part(data_dir / "sp_text_document", documents)
    texts, detokenizer = read_back(prefix, {"tokenizer_type": kind, "tokenizer_model": str(sentencepiece_model)})
    assert texts == TEXTS == [sp.decode(d) for d in documents]
    assert isinstance(detokenizer, SentencePieceDetokenizer)


def test_qwen_tokenizer_fs_names_the_folder(shared_data, data_dir):
    """As OpenSeek's configs write it: tokenizer_type QwenTokenizerFS, tokenizer_path the folder of qwen.tiktoken."""
    _, qwen = qwen_reference(shared_data / "qwen.tiktoken")
    prefix = write_part(data_dir / "qwen_text_document", [[BEGIN, *qwen.encode(t), END] for t in TEXTS])
    texts, detokenizer = read_back(
        prefix,
        {
            "tokenizer_type": "QwenTokenizerFS",
            "tokenizer_path": str(shared_data),
            "vocab_size": 151851,
            "make_vocab_size_divisible_by": 64,
        },
    )
    assert texts == TEXTS
    assert type(detokenizer) is ByteTableDetokenizer


def test_any_tiktoken_ranks_file_with_specials_past_it(shared_data, data_dir, tmp_path):
    """A ranks file as Llama 3 ships one (tokenizer.model): the ids past it are special tokens, wherever they lie."""
    trainer = rustbpe.Tokenizer()
    corpus = (shared_data / "tinyshakespeare.txt").read_text()[:100_000]
    trainer.train_from_iterator(iter(corpus.splitlines()), 700, pattern=QWEN_PATTERN)
    ranks = dict(trainer.get_mergeable_ranks())
    path = tmp_path / "tokenizer.model"
    path.write_text(
        "".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in sorted(ranks.items(), key=lambda p: p[1]))
    )
    n = len(ranks)
    begin, end, far = n, n + 1, n + 250  # <|begin_of_text|>, <|end_of_text|>, a reserved special far past the file
    encoding = tiktoken.Encoding("small", pat_str=QWEN_PATTERN, mergeable_ranks=ranks, special_tokens={})
    prefix = write_part(data_dir / "tiktoken_text_document", [[begin, *encoding.encode(t), far, end] for t in TEXTS])
    texts, detokenizer = read_back(prefix, {"type": "tiktoken", "path": str(path)})
    assert texts == TEXTS
    assert isinstance(detokenizer, PastEndDetokenizer)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("api") / "data", workers=0) as server:
        yield server


@pytest.mark.parametrize(
    ("tokenizer", "message"),
    [
        (
            {"tokenizer_type": "GPT2BPETokenizer", "vocab_file": "/x/vocab.json"},
            "Value error, tokenizer_type GPT2BPETokenizer needs merge_file",
        ),
        (
            {"tokenizer_type": "QwenTokenizerFS", "tokenizer_model": "/x/tokenizer.model", "tokenizer_path": "/x"},
            "Value error, tokenizer_type QwenTokenizerFS takes no tokenizer_model",
        ),
        (
            {"vocab_file": "/x/vocab.json"},
            "a tokenizer is {'type': 'qwen' | 'hf' | 'tiktoken', 'path': ...} or Megatron's arguments "
            "{'tokenizer_type': ..., ...}",
        ),
    ],
)
def test_bad_tokenizer_arguments_are_a_422(server, tokenizer, message):
    response = server.client.post(
        "/jobs/convert",
        json={"name": "t", "sources": [{"type": "megatron", "prefixes": ["/x/part"], "tokenizer": tokenizer}]},
    )
    assert response.status_code == 422, response.text
    assert message in [error["msg"] for error in response.json()["detail"]]


def test_a_missing_sentencepiece_model_is_named(server):
    model = str(server.data_dir.parent / "missing.model")
    response = server.client.post(
        "/jobs/convert",
        json={
            "name": "t",
            "sources": [
                {
                    "type": "megatron",
                    "prefixes": ["/x/part"],
                    "tokenizer": {"tokenizer_type": "Llama2Tokenizer", "tokenizer_model": model},
                }
            ],
        },
    )
    assert response.status_code == 422, response.text
    assert [error["msg"] for error in response.json()["detail"]] == [f"{model}: no such tokenizer file"]
