"""Weighted interleaving and shuffling of sources into one deterministic document stream.

The stream is produced in blocks of about `shuffle_buffer` documents. Each block takes from every source its share
(by documents, or by characters when the budget is `max_chars`), carrying any rounding into the next block so shares
stay exact over the run; then the block is permuted with an RNG seeded by (seed, block index). Memory is bounded by
one block, and the state at a block boundary is tiny (per source: cursor, offset, epoch, counters), which is what
makes a conversion resumable: `DocStream.blocks(snapshot)` regenerates the stream from any recorded block.

Without a budget every document of every source appears exactly once; weights only shape the interleaving. With a
budget, a source that runs out starts a new epoch, as Megatron's blended datasets do.

Each document keeps its provenance through the shuffle: a block is a table whose rows carry, beside the text, the
source index, and the item and position the source gave it (base.py), permuted together.
"""

import copy
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from openseek_nanochat.convert.sources import TextSource
from openseek_nanochat.errors import InputError

# At most about this much text in one block, however long the documents: bounds memory (a block, the one being
# prefetched and the ring's share of older ones are alive at once) and keeps a block's text under Arrow's 2 GB.
BLOCK_CHARS_CAP = 64_000_000
FIRST_BLOCK_CHARS = 8_000_000
# Gathering a row group's text from a block in many chunks (many parts read side by side): below this many rows per
# chunk touched, its documents are copied one by one (about 1.3 us each, in the calling thread) rather than taken by a
# take per chunk (about 35 us each) and a second take to put them back in order. Measured crossover: ~27.
COPY_ROWS_PER_CHUNK = 24


DOCS_SCHEMA = pa.schema([("text", pa.string()), ("item", pa.int32()), ("pos", pa.int64())])
SMALL_SCHEMA = pa.schema([("item", pa.int32()), ("pos", pa.int64()), ("source", pa.int16())])


def _empty_docs() -> pa.Table:
    return DOCS_SCHEMA.empty_table()


def _to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return values.to_numpy(zero_copy_only=False)


class SourceReader:
    """One source's documents in order, empties and short ones dropped, across epochs when asked."""

    def __init__(self, source: TextSource, min_chars: int):
        self.source = source
        self.min_chars = min_chars
        self.epoch = 0
        self.cursor: dict | None = None  # cursor of the held batch
        self.offset = 0  # documents of the held batch already taken
        self.exhausted = False
        self.skipped: Counter = Counter()
        self.stats: Counter = Counter()
        self.seen_docs = 0  # kept documents fetched (whole batches): whether the source ever had one
        self._progress_span = (0.0, 0.0)  # the source's progress before and after the held batch
        self._iter = None
        self._docs = _empty_docs()  # the held batch's kept documents: text, item, pos
        self._lengths = np.zeros(0, np.int64)
        self._count_next = True  # False for the re-fetch of the held batch after a restore
        self._docs_this_epoch = 0

    # -- state ----------------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "epoch": self.epoch,
            "cursor": self.cursor,
            "offset": self.offset,
            "exhausted": self.exhausted,
            "skipped": dict(self.skipped),
            "stats": dict(self.stats),
            "seen_docs": self.seen_docs,
            "progress_span": self._progress_span,
        }

    def restore(self, state: dict) -> None:
        self.epoch, self.cursor, self.offset = state["epoch"], state["cursor"], state["offset"]
        self.exhausted = state["exhausted"]
        self.skipped, self.stats = Counter(state["skipped"]), Counter(state["stats"])
        self.seen_docs = state["seen_docs"]
        self._progress_span = tuple(state["progress_span"])
        self._docs_this_epoch = 1 if self.seen_docs else 0  # only a source that never had a document can't repeat
        if self.cursor is not None and not self.exhausted:
            self._iter = iter(self.source.read(self.cursor))
            self._count_next = False
            offset, span = self.offset, self._progress_span
            self._fetch()
            self.offset, self._progress_span = offset, span

    # -- reading --------------------------------------------------------------------------------------------------
    def _fetch(self) -> bool:
        """Hold the next batch with at least one document; False at the end of the epoch."""
        if self._iter is None:
            self._iter = iter(self.source.read(None))
        while True:
            try:
                batch = next(self._iter)
            except StopIteration:
                return False
            texts = batch.texts
            # Two Arrow kernels over the text, the rest in numpy: with many parts read side by side, batches are
            # small and the cost of each call (not of the work) is what adds up.
            lengths, spaces = pc.utf8_length(texts), pc.utf8_is_space(texts)
            if texts.null_count:  # a null document is an empty one
                lengths, spaces = pc.fill_null(lengths, 0), pc.fill_null(spaces, True)
            lengths = _to_numpy(lengths).astype(np.int64)
            empty = (lengths == 0) | _to_numpy(spaces)
            short = (lengths < self.min_chars) & ~empty
            keep = ~(empty | short)
            dropped = len(keep) - int(np.count_nonzero(keep))
            docs = pa.table(
                [texts, pa.array(batch.items, pa.int32()), pa.array(batch.positions, pa.int64())],
                names=["text", "item", "pos"],
            )
            kept, kept_lengths = (docs.filter(pa.array(keep)), lengths[keep]) if dropped else (docs, lengths)
            if kept.schema != DOCS_SCHEMA:
                kept = kept.cast(DOCS_SCHEMA)
            if self._count_next and self.epoch == 0:
                for reason, n in batch.skipped.items():
                    self.skipped[reason] += n
                for key, n in batch.stats.items():
                    self.stats[key] += n
                self.skipped["empty"] += int(np.count_nonzero(empty))
                self.skipped["short"] += int(np.count_nonzero(short))
            if self._count_next:
                self.seen_docs += kept.num_rows
            self._count_next = True
            if batch.progress is not None:
                self._progress_span = (self._progress_span[1], batch.progress)
            self.cursor, self.offset = batch.cursor, 0
            self._docs, self._lengths = kept, kept_lengths
            if kept.num_rows:
                self._docs_this_epoch += kept.num_rows
                return True

    @property
    def progress(self) -> float:
        """The fraction of the source taken, interpolated through the held batch (a batch can be a whole file)."""
        before, after = self._progress_span
        held = self._docs.num_rows
        return after if not held else before + (after - before) * min(self.offset, held) / held

    def _new_epoch(self) -> None:
        if self._docs_this_epoch == 0:
            raise InputError("has no documents to repeat", self.source.name)
        self.epoch += 1
        self._iter, self._docs_this_epoch = None, 0
        self.exhausted = False

    def take(self, quota: int, by_chars: bool, repeat: bool) -> tuple[list[pa.Table], list[np.ndarray], int, int]:
        """Documents until `quota` units (docs, or chars: the last one may cross it).

        Returns (tables of text, item, pos; their lengths in chars; docs; chars)."""
        parts, part_lengths, docs, chars = [], [], 0, 0
        while (chars if by_chars else docs) < quota:
            if self.offset >= self._docs.num_rows:
                if self.exhausted or not self._fetch():
                    self.exhausted = True
                    if not repeat:
                        break
                    self._new_epoch()
                    continue
            lengths = self._lengths[self.offset :]
            if by_chars:
                n = int(np.searchsorted(np.cumsum(lengths), quota - chars, side="left")) + 1
            else:
                n = quota - docs
            n = min(n, len(lengths))
            parts.append(self._docs.slice(self.offset, n))
            part_lengths.append(lengths[:n])
            docs, chars = docs + n, chars + int(lengths[:n].sum())
            self.offset += n
        return parts, part_lengths, docs, chars

    def first_length(self) -> int | None:
        """The length of the source's first document (None if it has none): peeked, for the first block's size."""
        if not self.seen_docs and not self.exhausted:
            self._fetch()
        return int(self._lengths[0]) if self.seen_docs else None


class Shuffled:
    """Rows of a block in their shuffled order, gathered a piece at a time as the shards take them (Rows).

    The gather copies every document once. Done for a whole block at once it needs a second block-sized buffer, fresh
    memory each block (the page faults cost more than the copy itself); done a row group at a time, each piece is
    small and its memory is reused by the next. Arrow's take over a chunked string column would concatenate every
    chunk first, on every call, so a block's text is gathered from its chunks directly (gather_text).
    """

    def __init__(self, table: pa.Table, order: np.ndarray, chars: np.ndarray):
        self.text = table.column("text")
        self.starts = np.cumsum([0] + [len(chunk) for chunk in self.text.chunks[:-1]])  # each chunk's first row
        self.rest = table.drop_columns(["text"]).combine_chunks()  # item, pos, source: a few bytes a row
        self.order = order  # rows of `table`, in stream order
        self.chars = chars  # each row's length, in stream order
        # Where each row's bytes lie (first, past the last, in its chunk's data) and each chunk's data, for _copy_rows:
        # made once a block, shared by every piece cut from it.
        self.bytes_at = _bytes_at(self.text) if self.text.num_chunks > 1 else None

    @property
    def num_rows(self) -> int:
        return len(self.order)

    def slice(self, offset: int, length: int | None = None) -> "Shuffled":
        stop = None if length is None else offset + length
        piece = copy.copy(self)
        piece.order, piece.chars = self.order[offset:stop], self.chars[offset:stop]
        return piece

    def small_columns(self) -> pa.Table:
        """item, pos and source of the rows, gathered (a few bytes a row)."""
        return self.rest.take(self.order)

    def gather_text(self) -> pa.Array:
        """The rows' text, one array: the one big copy, left to whoever writes it. From one chunk, Arrow's take; from
        many, whichever of two ways costs less for how the rows spread over them."""
        if not len(self.order):
            return pa.array([], self.text.type)
        if self.text.num_chunks == 1:
            return self.text.chunk(0).take(self.order)
        chunk_of = np.searchsorted(self.starts, self.order, side="right") - 1
        touched = int(np.count_nonzero(np.bincount(chunk_of, minlength=self.text.num_chunks)))
        if len(self.order) < COPY_ROWS_PER_CHUNK * touched and self.text.null_count == 0:
            return self._copy_rows(chunk_of)
        # Take from each chunk the rows it holds, in one run per chunk, then put the rows back in order.
        by_chunk = np.argsort(chunk_of, kind="stable")
        rows, chunks = self.order[by_chunk], chunk_of[by_chunk]
        cuts = np.flatnonzero(np.diff(chunks)) + 1
        pieces = [
            self.text.chunk(int(chunks[a])).take(rows[a:b] - self.starts[chunks[a]])
            for a, b in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(rows)])))
        ]
        back = np.empty_like(by_chunk)
        back[by_chunk] = np.arange(len(by_chunk))
        return pa.concat_arrays(pieces).take(back)

    def _copy_rows(self, chunk_of: np.ndarray) -> pa.Array:
        """The rows' bytes copied one document at a time, straight from each chunk's data into the result: one copy,
        made holding the GIL (a few milliseconds a row group)."""
        first, past, data = self.bytes_at
        first, past = first[self.order], past[self.order]
        offsets = np.zeros(len(self.order) + 1, np.int64)
        np.cumsum(past - first, out=offsets[1:])
        joined = b"".join([data[c][a:b] for c, a, b in zip(chunk_of.tolist(), first.tolist(), past.tolist())])
        kind, width = (pa.string(), np.int32) if offsets[-1] < 2**31 else (pa.large_string(), np.int64)
        return pa.Array.from_buffers(
            kind, len(self.order), [None, pa.py_buffer(offsets.astype(width)), pa.py_buffer(joined)]
        )


def _bytes_at(text: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray, list[memoryview]]:
    bounds = [_string_offsets(chunk) for chunk in text.chunks]
    first = np.concatenate([b[:-1] for b in bounds])
    past = np.concatenate([b[1:] for b in bounds])
    return first, past, [memoryview(chunk.buffers()[2] or b"") for chunk in text.chunks]


def _string_offsets(chunk: pa.Array) -> np.ndarray:
    """A string chunk's value offsets into its data buffer, one per row and one past the end (a sliced chunk's
    offsets are a window of its buffer's)."""
    if not len(chunk):
        return np.zeros(1, np.int64)
    width = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
    offsets = np.frombuffer(chunk.buffers()[1], width)
    return offsets[chunk.offset : chunk.offset + len(chunk) + 1].astype(np.int64)


class Rows:
    """Documents of the stream in order, still pieces of shuffled blocks: what the shard writer cuts into row groups.

    A row group's small columns are gathered where it is cut; its text only when `text()` is called, by the thread
    that compresses it (shard_lanes.py), so the one copy of every document is spread over the cores that write. The
    text comes in one chunk per non-empty piece, as a slice of the gathered blocks would (the chunks fix the bytes).
    """

    def __init__(self, pieces: list[Shuffled]):
        self.pieces = [piece for piece in pieces if piece.num_rows]
        self.num_rows = sum(piece.num_rows for piece in self.pieces)

    @staticmethod
    def join(parts: list["Rows"]) -> "Rows":
        return Rows([piece for part in parts for piece in part.pieces])

    def slice(self, offset: int, length: int | None = None) -> "Rows":
        stop = self.num_rows if length is None else min(self.num_rows, offset + length)
        pieces, start = [], 0
        for piece in self.pieces:
            end = start + piece.num_rows
            if end > offset and start < stop:
                first = max(offset, start) - start
                pieces.append(piece.slice(first, min(stop, end) - start - first))
            start = end
        return Rows(pieces)

    def small_columns(self) -> pa.Table:
        """item, pos and source, gathered."""
        if not self.pieces:
            return SMALL_SCHEMA.empty_table()
        return pa.concat_tables([piece.small_columns() for piece in self.pieces])

    def chars(self) -> np.ndarray:
        return np.concatenate([piece.chars for piece in self.pieces]) if self.pieces else np.zeros(0, np.int64)

    def text(self) -> pa.ChunkedArray:
        """The text, gathered: one chunk per piece, as `pa.string()`."""
        return pa.chunked_array([piece.gather_text().cast(pa.string()) for piece in self.pieces], pa.string())


@dataclass
class Block:
    index: int
    snapshot: dict  # the stream state just before this block; DocStream.blocks(snapshot) regenerates from here
    table: Shuffled


class DocStream:
    def __init__(
        self,
        sources: list[TextSource],
        *,
        min_chars: int,
        shuffle: bool,
        block_docs: int,
        seed: int,
        max_docs: int | None = None,
        max_chars: int | None = None,
    ):
        self.readers = [SourceReader(s, min_chars) for s in sources]
        weights = np.array([s.weight for s in sources], dtype=np.float64)
        self.weights = weights / weights.sum()
        self.shuffle, self.block_docs, self.seed = shuffle, block_docs, seed
        self.max_docs, self.max_chars = max_docs, max_chars
        self.by_chars = max_chars is not None
        self.repeat = max_docs is not None or max_chars is not None
        self.emitted = np.zeros(len(sources), dtype=np.int64)  # units per source, for the shares
        self.stream_docs = 0
        self.stream_chars = 0

    def snapshot(self, block_index: int) -> dict:
        return {
            "block": block_index,
            "stream_docs": self.stream_docs,
            "stream_chars": self.stream_chars,
            "progress": self.progress(),
            "emitted": self.emitted.tolist(),
            "readers": [r.state() for r in self.readers],
        }

    def restore(self, snapshot: dict) -> None:
        self.stream_docs, self.stream_chars = snapshot["stream_docs"], snapshot["stream_chars"]
        self.emitted = np.array(snapshot["emitted"], dtype=np.int64)
        for reader, state in zip(self.readers, snapshot["readers"]):
            reader.restore(state)

    def progress(self) -> float | None:
        if self.max_chars:
            return min(1.0, self.stream_chars / self.max_chars)
        if self.max_docs:
            return min(1.0, self.stream_docs / self.max_docs)
        known = [r.progress for r in self.readers]
        return float(np.dot(self.weights, known)) if known else None

    def _mean_length(self) -> float:
        """The document length blocks are sized by: the mean of the stream so far; before the first block, the mean of
        the sources' first documents, by weight. Never what sources happen to have fetched: how a source batches its
        reads is a speed setting, and must not move a block boundary."""
        if self.stream_docs:
            return self.stream_chars / self.stream_docs
        firsts = [(weight, reader.first_length()) for weight, reader in zip(self.weights, self.readers)]
        known = [(weight, length) for weight, length in firsts if length]
        if not known:
            return 1.0
        weights, lengths = zip(*known)
        return float(np.average(lengths, weights=weights))

    def _block_units(self, index: int) -> int:
        """The next block's size: `block_docs` documents, fewer when documents are long (memory stays bounded).

        The first blocks are smaller (8M, 16M, 32M chars, then the cap): shards start being written while the
        next block is read, instead of after a whole large block."""
        mean = self._mean_length()
        cap = min(BLOCK_CHARS_CAP, FIRST_BLOCK_CHARS << min(index, 8))
        docs = min(self.block_docs, max(1, int(cap / mean)))
        if not self.by_chars:
            return docs if self.max_docs is None else min(docs, self.max_docs - self.stream_docs)
        return min(max(1, int(docs * mean)), self.max_chars - self.stream_chars)

    def _budget_left(self) -> bool:
        if self.max_docs is not None and self.stream_docs >= self.max_docs:
            return False
        if self.max_chars is not None and self.stream_chars >= self.max_chars:
            return False
        return True

    def blocks(self, start: dict | None = None):
        if start is not None:
            self.restore(start)
        index = start["block"] if start is not None else 0
        while self._budget_left():
            snapshot = self.snapshot(index)
            active = np.array([not r.exhausted or self.repeat for r in self.readers])
            if not active.any():
                return
            weights = np.where(active, self.weights, 0.0)
            weights /= weights.sum()
            units = self._block_units(index)
            target = weights * (self.emitted[active].sum() + units)
            quotas = np.maximum(0, np.ceil(target - self.emitted)).astype(np.int64)
            parts, lengths, source_ids, took = [], [], [], np.zeros(len(self.readers), dtype=np.int64)
            for i, reader in enumerate(self.readers):
                if quotas[i] <= 0 or not active[i]:
                    continue
                arrays, part_lengths, docs, chars = reader.take(int(quotas[i]), self.by_chars, self.repeat)
                parts.extend(arrays)
                lengths.extend(part_lengths)
                source_ids.append(np.full(docs, i, dtype=np.int16))
                took[i] = chars if self.by_chars else docs
            self.emitted += took
            if not parts:
                if all(r.exhausted for r in self.readers) and not self.repeat:
                    return
                continue
            table = pa.concat_tables(parts)
            if table.column("text").nbytes >= 2**31 - 2**24:  # a freak block of huge documents: 64-bit offsets
                table = table.set_column(0, "text", table.column("text").cast(pa.large_string()))
            sources, chars = np.concatenate(source_ids), np.concatenate(lengths)  # lengths ride along in numpy
            table = table.append_column("source", pa.array(sources))
            order = self._order(index, sources)
            block = self._cut_at_budget(Shuffled(table, order, chars[order]))
            self.stream_docs += block.num_rows
            self.stream_chars += int(block.chars.sum())
            yield Block(index, snapshot, block)
            index += 1

    def _order(self, block_index: int, sources: np.ndarray) -> np.ndarray:
        if self.shuffle:
            return np.random.default_rng([self.seed, block_index]).permutation(len(sources))
        # No shuffle: keep each source's order and spread sources evenly through the block.
        position = np.zeros(len(sources), dtype=np.float64)
        for i in np.unique(sources):
            mask = sources == i
            position[mask] = (np.arange(mask.sum()) + 0.5) / mask.sum()
        return np.argsort(position, kind="stable")

    def _cut_at_budget(self, block: Shuffled) -> Shuffled:
        keep = block.num_rows
        if self.max_docs is not None:
            keep = min(keep, self.max_docs - self.stream_docs)
        if self.max_chars is not None:
            cumulative = np.cumsum(block.chars)
            keep = min(keep, int(np.searchsorted(cumulative, self.max_chars - self.stream_chars, side="left")) + 1)
        return block.slice(0, keep) if keep < block.num_rows else block
