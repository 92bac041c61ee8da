"""Weighted mixtures: exact shares under a budget (with epochs), every document once without one."""

import collections

import pyarrow as pa
import pytest

from openseek_nanochat.convert.mixture import SourceReader
from openseek_nanochat.convert.sources.base import Batch

from convertutil import jsonl_records, read_docs, run_spec


def three_sources(shared_data, weights):
    return [
        {
            "type": "files",
            "paths": [str(shared_data / "jsonl/gsm8k.jsonl")],
            "text_column": "answer",
            "weight": weights[0],
        },
        {
            "type": "files",
            "paths": [str(shared_data / "jsonl/math500.jsonl")],
            "text_column": "problem",
            "weight": weights[1],
        },
        {
            "type": "files",
            "paths": [str(shared_data / "jsonl/cmath.jsonl")],
            "text_column": "question",
            "weight": weights[2],
        },
    ]


def test_char_budget_gives_each_source_its_weight_share(shared_data, datasets):
    sizes = [
        sum(len(r[c]) for r in jsonl_records(shared_data / f"jsonl/{n}.jsonl"))
        for n, c in (("gsm8k", "answer"), ("math500", "problem"), ("cmath", "question"))
    ]
    budget = 1_000_000
    assert sizes[1] < budget / 5 and sizes[2] < budget / 5, "the small parts must run out and repeat"
    manifest = run_spec(
        {
            "sources": three_sources(shared_data, [3, 1, 1]),
            "output_dir": str(datasets / "mix"),
            "max_chars": budget,
            "chars_per_shard": 200_000,
            "val_docs": 50,
        }
    )
    shares = [s["share_chars"] for s in manifest["sources"]]
    assert shares == pytest.approx([0.6, 0.2, 0.2], abs=0.02)
    # A source read k times over holds between k-1 and k of its own sizes in the output (val docs included).
    for source, size in zip(manifest["sources"], sizes):
        assert source["epochs"] == -(-source["chars"] // size), source
    assert [s["epochs"] for s in manifest["sources"]][1:] == [3, 8]
    assert budget <= manifest["totals"]["chars"] < budget + 5_000


def test_doc_budget_shares_by_documents(shared_data, datasets):
    manifest = run_spec(
        {
            "sources": three_sources(shared_data, [2, 1, 1]),
            "output_dir": str(datasets / "mix"),
            "max_docs": 4000,
            "val_docs": 40,
        }
    )
    assert [s["share_docs"] for s in manifest["sources"]] == pytest.approx([0.5, 0.25, 0.25], abs=0.02)
    assert manifest["totals"]["docs"] == 4000


def test_without_budget_every_document_once_whatever_the_weights(shared_data, datasets):
    manifest = run_spec(
        {
            "sources": three_sources(shared_data, [10, 1, 0.1]),
            "output_dir": str(datasets / "all"),
            "shuffle_buffer": 500,
        }
    )
    expected = (
        [r["answer"] for r in jsonl_records(shared_data / "jsonl/gsm8k.jsonl")]
        + [r["problem"] for r in jsonl_records(shared_data / "jsonl/math500.jsonl")]
        + [r["question"] for r in jsonl_records(shared_data / "jsonl/cmath.jsonl")]
    )
    assert collections.Counter(read_docs(datasets / "all")) == collections.Counter(expected)
    assert [s["epochs"] for s in manifest["sources"]] == [1, 1, 1]


class _Batches:
    """A source that yields the given batches of text as they are: what a reader gets from any real source."""

    name, weight = "stand-in", 1.0

    def __init__(self, *batches: list):
        self.batches = batches

    def read(self, cursor=None):
        for i, texts in enumerate(self.batches):
            yield Batch(cursor={"batch": i}, texts=pa.array(texts, pa.string()))


@pytest.mark.parametrize("with_nulls", [True, False])
def test_reader_drops_null_empty_blank_and_short_documents(with_nulls):
    # Nulls count as empty documents; a batch without them takes the same path minus the fill.
    first = [None, "", "  \n", "ok", "a longer one"] if with_nulls else ["", "  \n", "ok", "a longer one"]
    reader = SourceReader(_Batches(first, ["x" * 5, "\t", "kept too"]), min_chars=3)
    parts, lengths, docs, chars = reader.take(100, by_chars=False, repeat=False)
    texts = [text for part in parts for text in part.column("text").to_pylist()]
    assert texts == ["a longer one", "xxxxx", "kept too"]
    assert [n for piece in lengths for n in piece.tolist()] == [12, 5, 8] and (docs, chars) == (3, 25)
    assert reader.skipped == {"empty": 3 + with_nulls, "short": 1}
