"""One read-ahead budget for all the parts of a megatron source: batches shrink as parts grow, decoding ahead stays
within the budget however the consumer interleaves the parts, no part waits on another, and the output depends on the
spec only, never on the machine's cores (benchmarks/convert_scale.py measures the memory)."""

import pytest

import openseek_nanochat.convert.sources.megatron as megatron
from openseek_nanochat.convert.sources.megatron import BATCH_TOKENS, MIN_BATCH_TOKENS, READ_AHEAD_TOKENS, ReadAhead
from openseek_nanochat.convert.sources.megatron_index import write_megatron
from openseek_nanochat.convert.spec import MegatronSource
from openseek_nanochat.settings import get_settings

from convertutil import run_spec, shard_bytes
from test_detok import BEGIN, END, qwen_reference

PARTS = 50


def test_batches_shrink_as_parts_grow():
    one, blend, many = ReadAhead(1, threads=4), ReadAhead(84, threads=4), ReadAhead(5000, threads=4)
    assert (one.batch_tokens, one.budget, one.ahead) == (BATCH_TOKENS, READ_AHEAD_TOKENS, 4)
    assert (blend.batch_tokens, blend.budget, blend.ahead) == (READ_AHEAD_TOKENS // 84, READ_AHEAD_TOKENS, 1)
    assert 84 * blend.batch_tokens <= READ_AHEAD_TOKENS  # what the consumer holds, one batch a part
    # Past the budget's worth of smallest batches, each part still has its next one decoding.
    assert READ_AHEAD_TOKENS // 5000 < MIN_BATCH_TOKENS
    assert (many.batch_tokens, many.budget, many.ahead) == (MIN_BATCH_TOKENS, 5000 * MIN_BATCH_TOKENS, 1)
    # More cores decode further ahead, a full batch for each; the batches stay the spec's.
    wide = ReadAhead(1, threads=16)
    assert (wide.batch_tokens, wide.budget, wide.ahead) == (BATCH_TOKENS, 4 * READ_AHEAD_TOKENS, 16)
    assert ReadAhead(84, threads=16).batch_tokens == blend.batch_tokens


@pytest.fixture
def parts(shared_data, data_dir) -> tuple[list, list[list[str]]]:
    """PARTS Qwen-tokenized parts of 40 documents each, and their texts."""
    _, qwen = qwen_reference(shared_data / "qwen.tiktoken")
    lines = (shared_data / "tinyshakespeare.txt").read_text().splitlines()
    data_path, texts = [], []
    for k in range(PARTS):
        docs = [f"{k}/{i} " + " ".join(lines[(k * 40 + i) * 3 : (k * 40 + i) * 3 + 3]) for i in range(40)]
        write_megatron(data_dir / f"p{k}", [[[BEGIN, *qwen.encode(t), END]] for t in docs])
        data_path += [1.0, str(data_dir / f"p{k}")]
        texts.append(docs)
    return data_path, texts


def test_interleaved_reading_stays_within_the_budget(shared_data, parts, monkeypatch):
    """A consumer taking one batch from each part in turn, as the mixture does: the parts together never hold more
    than the budget decoded ahead (plus the one batch being asked for), and every text comes back in order."""
    monkeypatch.setattr(megatron, "READ_AHEAD_TOKENS", 6_000)
    monkeypatch.setattr(megatron, "MIN_BATCH_TOKENS", 50)
    data_path, texts = parts
    tokenizer = {"type": "qwen", "path": str(shared_data / "qwen.tiktoken")}
    sources = megatron.build_megatron_sources(MegatronSource(data_path=data_path, tokenizer=tokenizer), get_settings())
    budget = sources[0].read_ahead
    assert all(s.read_ahead is budget for s in sources) and budget.batch_tokens == 120
    peak, take = [0], budget.take

    def watched(tokens: int, force: bool) -> bool:
        taken = take(tokens, force)
        peak[0] = max(peak[0], budget.in_flight)
        assert budget.in_flight <= budget.budget + (tokens if force else 0)
        return taken

    monkeypatch.setattr(budget, "take", watched)
    readers = [s.read() for s in sources]
    got: list[list[str]] = [[] for _ in sources]
    live = list(range(len(sources)))
    while live:
        for k in list(live):
            batch = next(readers[k], None)
            if batch is None:
                live.remove(k)
            else:
                got[k].extend(batch.texts.to_pylist())
    assert got == texts
    assert budget.in_flight == 0 and peak[0] > budget.budget // 2  # the budget was used, and all given back


def test_a_consumer_that_stops_early_gives_the_budget_back(shared_data, parts, monkeypatch):
    monkeypatch.setattr(megatron, "READ_AHEAD_TOKENS", 6_000)
    monkeypatch.setattr(megatron, "MIN_BATCH_TOKENS", 50)
    data_path, _ = parts
    tokenizer = {"type": "qwen", "path": str(shared_data / "qwen.tiktoken")}
    sources = megatron.build_megatron_sources(MegatronSource(data_path=data_path, tokenizer=tokenizer), get_settings())
    readers = [s.read() for s in sources[:10]]
    for reader in readers:
        next(reader)
    assert sources[0].read_ahead.in_flight > 0
    for reader in readers:
        reader.close()
    assert sources[0].read_ahead.in_flight == 0


def blend_spec(shared_data, data_path) -> dict:
    return {
        "sources": [
            {
                "type": "megatron",
                "data_path": data_path,
                "tokenizer": {"type": "qwen", "path": str(shared_data / "qwen.tiktoken")},
            }
        ],
        "max_chars": 150_000,
        "shuffle_buffer": 500,
        "chars_per_shard": 20_000,
    }


@pytest.mark.parametrize("threads", [1, 3])
def test_the_output_does_not_depend_on_the_cores(shared_data, parts, datasets, monkeypatch, threads):
    """The batch size follows the spec, never the cores decoding (`processes`): the same shards on any machine."""
    spec = blend_spec(shared_data, parts[0])
    monkeypatch.setattr(megatron, "MIN_BATCH_TOKENS", 50)
    monkeypatch.setattr(megatron, "READ_AHEAD_TOKENS", 6_000)
    run_spec({**spec, "name": "two", "processes": 2})
    run_spec({**spec, "name": "other", "processes": threads})
    first, second = shard_bytes(datasets / "two"), shard_bytes(datasets / "other")
    assert len(first) >= 2 and first == second


def test_the_output_does_not_depend_on_the_batch_size(shared_data, parts, datasets, monkeypatch):
    """How many tokens a part decodes at a time is a speed setting: blocks are sized by the documents of the stream,
    not by what the parts happened to fetch, so any read-ahead budget writes the same shards."""
    spec = blend_spec(shared_data, parts[0])
    monkeypatch.setattr(megatron, "MIN_BATCH_TOKENS", 50)
    for name, budget in (("small", 6_000), ("large", 60_000)):
        monkeypatch.setattr(megatron, "READ_AHEAD_TOKENS", budget)
        run_spec({**spec, "name": name})
    small, large = shard_bytes(datasets / "small"), shard_bytes(datasets / "large")
    assert len(small) >= 2 and small == large
