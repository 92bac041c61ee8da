"""A block's shuffled rows gathered a piece at a time are exactly the rows a take of the whole block gives: the same
values in the same order, and the text in one chunk per non-empty piece, as slicing the gathered blocks gives (the
chunk layout fixes the shard's bytes)."""

import numpy as np
import pyarrow as pa
import pytest

from openseek_nanochat.convert import mixture
from openseek_nanochat.convert.mixture import Rows, Shuffled


def block(
    chunks: int, rows_per_chunk: int, text_type: pa.DataType, sliced: bool = False
) -> tuple[pa.Table, np.ndarray]:
    """A block's table as the mixture builds it: text in `chunks` chunks (some empty, documents of any length,
    non-ASCII and empty ones too; `sliced`: each chunk a window of a larger array, as a source's batch is taken in
    parts); item and pos chunked otherwise; source in one chunk; and the documents' lengths beside it."""
    rng = np.random.default_rng(chunks)
    texts, n = [], 0
    for c in range(chunks):
        size = 0 if c % 5 == 3 else rows_per_chunk
        values = ["" if i % 11 == 4 else f"{n + i}:" + "é✓x" * int(rng.integers(0, 50)) for i in range(size)]
        texts.append(
            pa.array(["before", *values, "after"], text_type).slice(1, size) if sliced else pa.array(values, text_type)
        )
        n += size
    items = pa.chunked_array([pa.array(np.arange(n, dtype=np.int32) % 7)])
    positions = pa.chunked_array([pa.array(np.arange(k, min(n, k + 33), dtype=np.int64)) for k in range(0, n, 33)])
    table = pa.table([pa.chunked_array(texts, text_type), items, positions], names=["text", "item", "pos"])
    lengths = np.array([len(t) for t in table.column("text").to_pylist()], np.int64)
    return table.append_column("source", pa.array(np.arange(n, dtype=np.int16) % 3)), lengths


def gathered(rows: Rows) -> pa.Table:
    small = rows.small_columns()
    return small.add_column(0, "text", rows.text())


# A row group's text is gathered from a block's chunks by a take per chunk or by copying row by row, whichever costs
# less (COPY_ROWS_PER_CHUNK); each way is tested alone.
@pytest.mark.parametrize("copy_rows_per_chunk", [0, 10**9], ids=["take", "copy"])
@pytest.mark.parametrize(
    ("chunks", "text_type", "sliced"),
    [
        (1, pa.string(), False),
        (9, pa.string(), False),
        (9, pa.string(), True),
        (9, pa.large_string(), True),
        (261, pa.string(), False),
    ],
)
def test_pieces_are_the_rows_of_a_whole_take(chunks, text_type, sliced, copy_rows_per_chunk, monkeypatch):
    monkeypatch.setattr(mixture, "COPY_ROWS_PER_CHUNK", copy_rows_per_chunk)
    table, lengths = block(chunks, 40, text_type, sliced)
    order = np.random.default_rng(1).permutation(table.num_rows)
    whole = table.combine_chunks().take(order).cast(table.schema.set(0, pa.field("text", pa.string())))
    shuffled = Shuffled(table, order, lengths[order])
    assert gathered(Rows([shuffled])).equals(whole)
    cuts = [0, 1, 17, 17, 100, table.num_rows // 2, table.num_rows - 1, table.num_rows]
    for start, stop in zip(cuts, cuts[1:]):
        rows = Rows([shuffled.slice(start, stop - start)])
        assert gathered(rows).equals(whole.slice(start, stop - start)), (start, stop)
        assert rows.text().num_chunks == (1 if stop > start else 0)
        assert rows.chars().tolist() == [len(text) for text in whole.column("text").to_pylist()[start:stop]]
    rest = Rows([shuffled.slice(table.num_rows // 3)])  # to the end, as a resumed block is cut
    assert gathered(rest).equals(whole.slice(table.num_rows // 3))


def test_rows_slice_as_arrow_slices_the_gathered_blocks():
    """Rows over several blocks (an empty piece first, as a resume can leave): any slice has the rows and the text
    chunks of the same slice of the blocks gathered and concatenated, empty chunks dropped."""
    blocks = [block(chunks, 30, pa.string()) for chunks in (3, 1, 7)]
    first = blocks[0][0]
    pieces = [Shuffled(first, np.arange(first.num_rows), np.zeros(first.num_rows, np.int64)).slice(5, 0)]
    takes = []
    for table, lengths in blocks:
        order = np.random.default_rng(table.num_rows).permutation(table.num_rows)
        pieces.append(Shuffled(table, order, lengths[order]))
        takes.append(table.combine_chunks().take(order))
    rows = Rows(pieces)
    expected = pa.concat_tables(takes)
    total = expected.num_rows
    for offset, length in [(0, total), (0, 10), (25, 100), (total - 3, 3), (40, 0), (0, None), (37, None)]:
        got = rows.slice(offset, length)
        want = expected.slice(offset, length)
        assert gathered(got).equals(want), (offset, length)
        assert [len(c) for c in got.text().chunks] == [len(c) for c in want.column("text").chunks if len(c)]
    joined = Rows.join([rows.slice(0, 50), rows.slice(50)])
    assert gathered(joined).equals(expected)
