"""How a Megatron part is cut into batches: by tokens, whole documents, at least one and at most BATCH_DOCS each.

The plan must not depend on how far ahead it looks (resume cursors and the read-ahead budget are in its terms), so
it is checked against the plain definition: every batch is the longest run of documents from its start whose tokens
stay within the budget (or the one document that does not fit), capped at BATCH_DOCS.
"""

import numpy as np
import pytest

from openseek_nanochat.convert.sources import megatron
from openseek_nanochat.convert.sources.megatron import batch_ranges


class LengthsIndex:
    """What batch_ranges asks of a part: its document count and the token offsets of a run of documents."""

    def __init__(self, lengths: np.ndarray):
        self.lengths = lengths
        self.num_documents = len(lengths)
        self.asked = 0  # documents whose offsets were computed

    def document_offsets(self, start: int, stop: int) -> np.ndarray:
        self.asked += stop - start
        return np.concatenate([[0], np.cumsum(self.lengths[start:stop])]).astype(np.int64)


def defined(lengths: np.ndarray, doc: int, batch_tokens: int, batch_docs: int):
    while doc < len(lengths):
        ends = np.cumsum(lengths[doc : doc + batch_docs])
        count = max(1, int(np.sum(ends <= batch_tokens)))
        yield doc, doc + count, int(ends[count - 1])
        doc += count


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("batch_tokens", [1, 50, 8192, 1 << 20])
def test_batches_follow_the_definition(monkeypatch, seed, batch_tokens):
    monkeypatch.setattr(megatron, "BATCH_DOCS", 300)
    rng = np.random.default_rng(seed)
    # documents from empty to far past the budget, in runs of tiny ones and of huge ones
    lengths = np.concatenate([rng.integers(0, 40, 2000), rng.integers(0, 20_000, 500), np.zeros(700, np.int64)])
    rng.shuffle(lengths)
    start = int(rng.integers(0, 100))
    got = list(batch_ranges(LengthsIndex(lengths), start, batch_tokens))
    assert got == list(defined(lengths, start, batch_tokens, 300))


def test_small_batches_plan_only_a_little_ahead():
    # 20,000 documents of 400 tokens, batches of 8,192 tokens (20 documents): planning BATCH_DOCS ahead for each
    # batch would compute offsets for 1,000 x 16,384 documents
    index = LengthsIndex(np.full(20_000, 400, np.int64))
    batches = list(batch_ranges(index, 0, 8192))
    assert len(batches) == 1000 and all(stop - start == 20 for start, stop, _ in batches)
    assert index.asked < 4 * 20_000
