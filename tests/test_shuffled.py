"""A block's shuffled rows gathered a piece at a time are exactly the rows a take of the whole block gives: the same
values in the same order, one chunk per column per piece (the chunk layout fixes the shard's bytes)."""

import numpy as np
import pyarrow as pa
import pytest

from openseek_nanochat.convert import mixture
from openseek_nanochat.convert.mixture import Shuffled


def block(chunks: int, rows_per_chunk: int, text_type: pa.DataType) -> pa.Table:
    """A block's table as the mixture builds it: text in `chunks` chunks (some empty, documents of any length,
    non-ASCII too); item and pos chunked otherwise; source and chars in one chunk."""
    rng = np.random.default_rng(chunks)
    texts, n = [], 0
    for c in range(chunks):
        size = 0 if c % 5 == 3 else rows_per_chunk
        texts.append(pa.array([f"{n + i}:" + "é✓x" * int(rng.integers(0, 50)) for i in range(size)], text_type))
        n += size
    items = pa.chunked_array([pa.array(np.arange(n, dtype=np.int32) % 7)])
    positions = pa.chunked_array([pa.array(np.arange(k, min(n, k + 33), dtype=np.int64)) for k in range(0, n, 33)])
    table = pa.table([pa.chunked_array(texts, text_type), items, positions], names=["text", "item", "pos"])
    lengths = np.array([len(t) for t in table.column("text").to_pylist()], np.int64)
    return table.append_column("source", pa.array(np.arange(n, dtype=np.int16) % 3)).append_column(
        "chars", pa.array(lengths)
    )


@pytest.mark.parametrize(
    ("chunks", "text_type"),
    [(1, pa.string()), (9, pa.string()), (9, pa.large_string()), (mixture.GATHER_MAX_CHUNKS + 5, pa.string())],
)
def test_pieces_are_the_rows_of_a_whole_take(chunks, text_type):
    table = block(chunks, 40, text_type)
    order = np.random.default_rng(1).permutation(table.num_rows)
    whole = table.combine_chunks().take(order)
    shuffled = Shuffled(table, order, whole.column("chars").to_numpy())
    assert shuffled.rows().equals(whole)
    cuts = [0, 1, 17, 17, 100, table.num_rows // 2, table.num_rows - 1, table.num_rows]
    for start, stop in zip(cuts, cuts[1:]):
        piece = shuffled.slice(start, stop - start)
        rows = piece.rows()
        assert rows.equals(whole.slice(start, stop - start)), (start, stop)
        assert [column.num_chunks for column in rows.columns] == [1] * 5
        assert rows.schema == whole.schema
        assert piece.chars.tolist() == whole.column("chars").to_pylist()[start:stop]
    rest = shuffled.slice(table.num_rows // 3)  # to the end, as a resumed block is cut
    assert rest.rows().equals(whole.slice(table.num_rows // 3))
