"""Weighted mixtures: exact shares under a budget (with epochs), every document once without one."""

import collections

import pytest

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
