"""The megatron source: OpenSeek's parts back to their exact texts, prefixes and data_path mixtures, restarts,
errors."""

import collections
import json

import numpy as np
import pyarrow as pa
import pytest

import openseek_nanochat.convert.sources.megatron as megatron
from openseek_nanochat.convert.sources import build_sources
from openseek_nanochat.convert.sources.megatron import build_megatron_sources
from openseek_nanochat.convert.sources.megatron_index import MegatronIndex, write_megatron
from openseek_nanochat.convert.spec import ConvertSpec, MegatronSource
from openseek_nanochat.errors import InputError
from openseek_nanochat.settings import get_settings

from convertutil import read_docs, run_spec
from test_detok import SAMPLE, train_tokenizer

PARTS = ["cmath", "math500", "shakespeare"]  # sorted, as a glob expands them
BEGIN, END = 151849, 151850


def expected(shared_data, name: str) -> list[str]:
    lines = (shared_data / "megatron" / f"{name}_text_document.expected.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in lines]


def sources(shared_data, tokenizer: dict | None = None, **fields):
    tokenizer = tokenizer or {"type": "qwen", "path": str(shared_data / "qwen.tiktoken")}
    return build_megatron_sources(MegatronSource(tokenizer=tokenizer, **fields), get_settings())


def texts(source, cursor=None) -> list[str]:
    return [text for batch in source.read(cursor) for text in batch.texts.to_pylist()]


def test_openseek_parts_come_back_exactly(shared_data, data_dir):
    [source] = sources(shared_data, prefixes=[str(shared_data / "megatron" / "*_text_document")])
    source.check()
    batches = list(source.read())
    assert [b.cursor for b in batches] == [{"part": 0, "doc": 0}, {"part": 1, "doc": 0}, {"part": 2, "doc": 0}]
    assert all(b.texts.type == pa.string() for b in batches)
    assert [text for b in batches for text in b.texts.to_pylist()] == [
        t for p in PARTS for t in expected(shared_data, p)
    ]
    assert sum(b.stats["decode_replacements"] for b in batches) == 0
    assert sum(b.stats["tokens"] for b in batches) == sum(
        MegatronIndex(shared_data / "megatron" / f"{p}_text_document").bin_size // 4 for p in PARTS
    )
    assert [round(b.progress, 3) for b in batches] == [round(600 / 1702, 3), round(1100 / 1702, 3), 1.0]


def test_data_path_makes_one_weighted_source_per_entry(shared_data, data_dir):
    prefixes = [str(shared_data / "megatron" / f"{p}_text_document") for p in PARTS]
    spec = ConvertSpec(
        sources=[
            {
                "type": "megatron",
                "weight": 2.0,
                "tokenizer": {"type": "qwen", "path": str(shared_data / "qwen.tiktoken")},
                "data_path": [3, prefixes[0], "1", prefixes[1], 1.0, prefixes[2]],
            }
        ]
    )
    built = build_sources(spec, get_settings())
    assert [(s.name, s.weight) for s in built] == [(prefixes[0], 1.2), (prefixes[1], 0.4), (prefixes[2], 0.4)]
    assert built[0].detokenizer is built[2].detokenizer  # the vocabulary is loaded once
    for source, part in zip(built, PARTS):
        assert texts(source) == expected(shared_data, part)


def test_prefix_patterns(shared_data, data_dir, tmp_path):
    folder = shared_data / "megatron"
    prefix = str(folder / "math500_text_document")
    for pattern in [prefix, prefix + ".bin", prefix + ".idx", str(folder / "math*")]:
        assert sources(shared_data, prefixes=[pattern])[0].prefixes == [prefix]
    [every] = sources(shared_data, prefixes=[str(folder / "*")])
    assert every.prefixes == [str(folder / f"{p}_text_document") for p in PARTS]
    assert every.name == str(folder / "*")
    with pytest.raises(InputError) as e:
        sources(shared_data, prefixes=[str(folder / "nothing_*")])
    assert str(e.value) == f"{folder}/nothing_*: no Megatron index matches '{folder}/nothing_*.idx'"


def test_parts_symlinked_from_a_download_cache(shared_data, data_dir, tmp_path):
    """As huggingface_hub lays out a download: readable names are links to content-addressed blobs."""
    (tmp_path / "blobs").mkdir()
    (tmp_path / "snapshot" / "zh_cc").mkdir(parents=True)
    for ext, blob in [("idx", "9f2c"), ("bin", "41ab")]:
        (tmp_path / "blobs" / blob).symlink_to(shared_data / "megatron" / f"cmath_text_document.{ext}")
        (tmp_path / "snapshot" / "zh_cc" / f"part_28_text_document.{ext}").symlink_to(tmp_path / "blobs" / blob)
    [source] = sources(shared_data, data_path=[1.0, str(tmp_path / "snapshot" / "*" / "part_*_text_document")])
    assert source.prefixes == [str(tmp_path / "snapshot" / "zh_cc" / "part_28_text_document")]
    assert texts(source) == expected(shared_data, "cmath")


def stock_megatron_documents(shared_data, name: str) -> list[list[np.ndarray]]:
    """The shared part's documents re-cut as stock Megatron writes them: no begin marker, an EOD at the end, and each
    document split into sequences of 7 tokens (the way sentence-split preprocessing stores several per document)."""
    index = MegatronIndex(shared_data / "megatron" / f"{name}_text_document")
    tokens, offsets = index.read_documents(0, index.num_documents)
    documents = []
    for a, b in zip(offsets[:-1], offsets[1:]):
        body = tokens[a + 1 : b]  # drop <|extra_203|>, keep <|extra_204|> as the EOD
        documents.append([body[i : i + 7] for i in range(0, len(body), 7)])
    return documents


def test_several_sequences_per_document_and_eod_only_documents(shared_data, data_dir, tmp_path):
    documents = stock_megatron_documents(shared_data, "cmath")
    assert all(len(doc) > 1 for doc in documents)
    eod_only = [np.array([END], np.int32)]
    write_megatron(tmp_path / "split_text_document", [eod_only] + documents[:300] + [eod_only] + documents[300:])
    [source] = sources(shared_data, prefixes=[str(tmp_path / "split_text_document")])
    original = expected(shared_data, "cmath")
    assert texts(source) == [""] + original[:300] + [""] + original[300:]  # empty documents are dropped later


def test_uint16_part_with_an_hf_tokenizer(shared_data, data_dir, tmp_path):
    corpus = (shared_data / "tinyshakespeare.txt").read_text()[:50_000]
    tokenizer = train_tokenizer(tmp_path / "tokenizer.json", corpus, byte_level=True)
    eos = tokenizer.token_to_id("<|endoftext|>")
    originals = SAMPLE + corpus[:5000].split("\n\n")
    write_megatron(tmp_path / "hf_text_document", [[tokenizer.encode(t).ids + [eos]] for t in originals], np.uint16)
    assert MegatronIndex(tmp_path / "hf_text_document").dtype == np.uint16
    [source] = sources(
        shared_data,
        tokenizer={"type": "hf", "path": str(tmp_path / "tokenizer.json")},
        prefixes=[str(tmp_path / "hf_text_document")],
    )
    assert texts(source) == originals


def test_restart_from_any_batch_cursor(shared_data, data_dir, monkeypatch):
    monkeypatch.setattr(megatron, "BATCH_TOKENS", 20_000)
    [source] = sources(shared_data, prefixes=[str(shared_data / "megatron" / p) for p in ["cmath*", "math500*"]])
    batches = list(source.read())
    assert len(batches) > 8 and {"part": 1, "doc": 0} in [b.cursor for b in batches]
    everything = [text for b in batches for text in b.texts.to_pylist()]
    assert everything == expected(shared_data, "cmath") + expected(shared_data, "math500")
    done = 0
    for batch in batches:
        assert texts(source, batch.cursor) == everything[done:]
        done += len(batch.texts)
    reader = source.read()
    next(reader)
    reader.close()  # a consumer that stops early leaves no decoding behind


def test_token_outside_the_vocabulary(shared_data, data_dir, tmp_path):
    write_megatron(tmp_path / "p", [[[BEGIN, 9707, END]], [[9707, 151_851]]])
    [source] = sources(shared_data, prefixes=[str(tmp_path / "p")])
    source.check()  # the header is fine; the ids are only seen when read
    with pytest.raises(InputError) as e:
        texts(source)
    assert str(e.value) == (
        f"{tmp_path}/p.bin: document 1: token id 151851 is outside the tokenizer's vocabulary "
        "(0..151850); was this part made with another tokenizer?"
    )


def test_negative_token_id(shared_data, data_dir, tmp_path):
    write_megatron(tmp_path / "n", [[[BEGIN, 9707, END]], [[BEGIN, 9707, END]], [[9707, -3, END]]], np.int32)
    [source] = sources(shared_data, prefixes=[str(tmp_path / "n")])
    with pytest.raises(InputError) as e:
        texts(source)
    assert str(e.value).startswith(f"{tmp_path}/n.bin: document 2: token id -3 is outside the tokenizer's vocabulary")


def test_check_validates_every_index(shared_data, data_dir, tmp_path):
    write_megatron(tmp_path / "good", [[[1, 2]]])
    write_megatron(tmp_path / "floats", [[[1.0, 2.0]]], np.float32)
    [source] = sources(shared_data, prefixes=[str(tmp_path / "good"), str(tmp_path / "floats")])
    with pytest.raises(InputError) as e:
        source.check()
    assert str(e.value) == f"{tmp_path}/floats.idx: the tokens are float32 values, not token ids"
    (tmp_path / "good.bin").write_bytes(b"\x01")
    with pytest.raises(InputError) as e:
        source.check()
    assert str(e.value) == f"{tmp_path}/good.bin: truncated .bin: the index needs at least 8 bytes, the file has 1"


def test_fingerprint_lists_both_files_of_every_part_and_the_vocabulary(shared_data, data_dir):
    [source] = sources(shared_data, prefixes=[str(shared_data / "megatron" / "*")])
    paths = [entry["path"] for entry in source.fingerprint()]
    folder = shared_data / "megatron"
    assert paths == [str(folder / f"{p}_text_document.{ext}") for p in PARTS for ext in ("idx", "bin")] + [
        str(shared_data / "qwen.tiktoken")
    ]
    assert source.fingerprint()[1]["size"] == (folder / "cmath_text_document.bin").stat().st_size


def test_conversion_holds_every_openseek_document_once(shared_data, datasets):
    tokenizer = {"type": "qwen", "path": str(shared_data / "qwen.tiktoken")}
    manifest = run_spec(
        {
            "sources": [
                {"type": "megatron", "prefixes": [str(shared_data / "megatron" / "*")], "tokenizer": tokenizer}
            ],
            "output_dir": str(datasets / "all"),
        }
    )
    everything = [t for p in PARTS for t in expected(shared_data, p)]
    assert collections.Counter(read_docs(datasets / "all")) == collections.Counter(everything)
    assert manifest["sources"][0]["stats"]["decode_replacements"] == 0


def test_data_path_mixture_under_a_character_budget(shared_data, datasets):
    """OpenSeek's blend: 3:1:1 over parts of 1.1M, 364K and 27K characters, with a budget the small ones can't fill."""
    sizes = {p: sum(map(len, expected(shared_data, p))) for p in PARTS}
    budget = 2_000_000
    data_path = [
        3,
        str(shared_data / "megatron" / "shakespeare_text_document"),
        1,
        str(shared_data / "megatron" / "math500_text_document"),
        1,
        str(shared_data / "megatron" / "cmath_text_document"),
    ]
    manifest = run_spec(
        {
            "sources": [
                {
                    "type": "megatron",
                    "data_path": data_path,
                    "tokenizer": {"type": "qwen", "path": str(shared_data / "qwen.tiktoken")},
                }
            ],
            "output_dir": str(datasets / "mix"),
            "max_chars": budget,
            "chars_per_shard": 400_000,
            "val_docs": 50,
        }
    )
    summaries = manifest["sources"]
    assert [s["share_chars"] for s in summaries] == pytest.approx([0.6, 0.2, 0.2], abs=0.02)
    # A part read k times over holds between k-1 and k of its own size in the output.
    assert [s["epochs"] for s in summaries] == [
        -(-s["chars"] // sizes[p]) for s, p in zip(summaries, ["shakespeare", "math500", "cmath"])
    ]
    assert [s["epochs"] for s in summaries] == [2, 2, 15]
    assert budget <= manifest["totals"]["chars"] < budget + 10_000
