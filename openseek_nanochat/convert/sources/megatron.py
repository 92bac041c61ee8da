"""Megatron indexed datasets (`<prefix>.bin` + `<prefix>.idx`), detokenized back to text.

Prefixes: each pattern names parts by prefix; a trailing `.idx` or `.bin` is ignored, so
`/data/arxiv/007_text_document`, `/data/arxiv/007_text_document.bin` and `/data/arxiv/*.idx` all work. A glob is
matched against the `.idx` files (`/data/arxiv/*` means every part in the folder), sorted, and every index found needs
its `.bin` beside it.

`prefixes` become one source reading its parts in order; `data_path` (Megatron's `w1, prefix1, w2, prefix2, ...`)
becomes one source per entry, weighted spec.weight * w_i / sum(w); `openseek_config` takes the data_path (and the
tokenizer) from a training YAML (openseek_config.py), and names every missing part at once. Cursor:
{"part": k, "doc": i}, the first document of a batch.

Decoding runs on as many threads as the conversion has cores (cores.py), batches ahead of the consumer: the work
(page faults on the memory map, Arrow's take, UTF-8 validation) happens outside the GIL, so it scales with cores and
overlaps with whatever the consumer does with the previous batch; on one core each batch is decoded when it is asked
for. All sources share one pool, and the sources of one spec share one read-ahead budget (ReadAhead): a data_path of
84 parts read side by side holds about as much text as one part does.
"""

import functools
import glob
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from openseek_nanochat.convert import cores
from openseek_nanochat.convert.sources.base import Batch, file_fingerprint, run_of
from openseek_nanochat.convert.sources.detok import Detokenizer
from openseek_nanochat.convert.sources.megatron_index import MegatronIndex, prefix_paths
from openseek_nanochat.convert.sources.openseek_config import read_openseek_config
from openseek_nanochat.convert.sources.tokenizer_forms import load_tokenizer
from openseek_nanochat.convert.spec import MegatronSource, MegatronTokenizerSpec, weighted_prefixes
from openseek_nanochat.errors import InputError
from openseek_nanochat.paths import GLOB_SECONDS, check_input_path, glob_inputs
from openseek_nanochat.settings import Settings

BATCH_TOKENS = 1 << 20  # about 3-4 MB of text with the Qwen vocabulary, English or Chinese
# Tokens all the sources of one spec hold decoded ahead of the consumer, and the most a batch of each may hold when many
# are read side by side: memory flat in the number of parts. Batches never get smaller than MIN_BATCH_TOKENS, where
# the cost per batch would start to show. Measured on the 38-part OpenSeek miniature (benchmarks/convert_scale.py):
# 16M tokens (batches of ~440K tokens a part) converts 5-15% faster than 4M for ~130 MB more peak memory; 32M
# gained little more and passed 1.2x the peak of one part.
READ_AHEAD_TOKENS = 16 << 20
MIN_BATCH_TOKENS = 1 << 13
BATCH_DOCS = 16_384  # bounds batches of tiny documents, and how far ahead a batch is planned
MISSING_SHOWN = 3  # missing parts named in the error; the rest are counted


@functools.cache
def decode_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="megatron-decode")


def expand_prefixes(patterns: list[str], settings: Settings) -> list[str]:
    """Part prefixes in order (see the module doc), both files of each checked against the input roots."""
    prefixes = []
    deadline = time.monotonic() + GLOB_SECONDS
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if pattern.endswith((".idx", ".bin")):
            pattern = pattern[:-4]
        if glob.has_magic(pattern):
            found = [m[:-4] for m in glob_inputs(pattern + ".idx", settings, deadline)]
            if not found:
                raise InputError(f"no Megatron index matches {pattern + '.idx'!r}", pattern)
        else:
            found = [pattern]
        for prefix in found:
            for path in prefix_paths(prefix):
                # Checked resolved, opened as named: a part symlinked into a cache keeps its .bin/.idx pairing.
                check_input_path(path, settings)
        prefixes.extend(os.path.abspath(p) for p in found)
    return prefixes


def batch_ranges(index: MegatronIndex, doc: int = 0, batch_tokens: int | None = None) -> Iterator[tuple[int, int, int]]:
    """Runs of whole documents from `doc` on, each about `batch_tokens` (default BATCH_TOKENS) tokens, at least one
    document and at most BATCH_DOCS: (start, stop, tokens).

    A batch looks only as far ahead as it needs: from twice the last batch's documents, four times more while the
    budget is not reached. Planning BATCH_DOCS ahead for every batch cost more than decoding it when many parts
    share the read-ahead budget (1,000 parts: batches of ~20 documents, each planned 16,384 ahead)."""
    batch_tokens = batch_tokens or BATCH_TOKENS
    guess = 64
    while doc < index.num_documents:
        cap = min(index.num_documents, doc + BATCH_DOCS)
        ahead = min(cap, doc + guess)
        ends = index.document_offsets(doc, ahead)
        while ends[-1] <= batch_tokens and ahead < cap:
            ahead = min(cap, doc + 4 * (ahead - doc))
            ends = index.document_offsets(doc, ahead)
        count = max(1, int(np.searchsorted(ends[1:], batch_tokens, side="right")))
        yield doc, doc + count, int(ends[count])
        doc += count
        guess = 2 * count + 1


class ReadAhead:
    """The read-ahead budget of all the sources one spec builds (a data_path makes one source per part).

    Each source's batches hold READ_AHEAD_TOKENS / sources tokens (within MIN_BATCH_TOKENS..BATCH_TOKENS), so the
    batches the consumer holds, one per source, add up to about the budget whatever the number of parts; and all of
    them together decode at most that much ahead, each source `ahead` batches past the one asked for: one each when
    many parts are read in turn, so every part's next batch is decoding while the consumer takes from the others. A
    source finding the budget spent still reads: one batch at a time, when the consumer asks for it, so no source ever
    waits on another. Batches never move a document (blocks are sized by the stream itself, mixture.py); their size
    depends only on the spec (never on the machine), so the manifest's counts of what was read (`stats`) do too. How
    far ahead batches decode grows with the cores (`threads`), a full batch per thread.
    """

    def __init__(self, sources: int = 1, threads: int | None = None):
        sources, threads = max(1, sources), threads or cores.current()
        self.batch_tokens = int(np.clip(READ_AHEAD_TOKENS // sources, MIN_BATCH_TOKENS, BATCH_TOKENS))
        # Past READ_AHEAD_TOKENS / MIN_BATCH_TOKENS parts, one batch ahead each: memory grows MIN_BATCH_TOKENS a part.
        # READ_AHEAD_TOKENS serves 4 threads; more cores, a proportionally larger budget.
        self.budget = max(READ_AHEAD_TOKENS * max(1, threads // 4), sources * self.batch_tokens)
        self.threads = threads
        self.ahead = int(np.clip(self.budget // (sources * self.batch_tokens), 1, threads))
        self.in_flight = 0
        self.lock = threading.Lock()

    def take(self, tokens: int, force: bool) -> bool:
        with self.lock:
            if not force and self.in_flight + tokens > self.budget:
                return False
            self.in_flight += tokens
            return True

    def release(self, tokens: int) -> None:
        with self.lock:
            self.in_flight -= tokens


class MegatronTextSource:
    def __init__(
        self,
        name: str,
        weight: float,
        prefixes: list[str],
        detokenizer: Detokenizer,
        files: list[str],
        read_ahead: ReadAhead | None = None,
    ):
        self.name = name
        self.weight = weight
        self.prefixes = prefixes
        self.detokenizer = detokenizer
        self.files = files  # the tokenizer's files and any config read: a change to one is another input
        self.read_ahead = read_ahead or ReadAhead()

    def _open(self, prefix: str) -> MegatronIndex:
        index = MegatronIndex(prefix)
        if index.dtype.kind == "f":
            raise InputError(f"the tokens are {index.dtype.name} values, not token ids", str(index.idx_path))
        return index

    def check(self) -> None:
        for prefix in self.prefixes:
            self._open(prefix)

    def fingerprint(self) -> list[dict]:
        parts = [file_fingerprint(path) for prefix in self.prefixes for path in prefix_paths(prefix)]
        return parts + [file_fingerprint(path) for path in self.files]

    def provenance_items(self) -> list[dict]:
        return [{"prefix": prefix, "pos": "doc"} for prefix in self.prefixes]

    def read(self, cursor: dict | None = None) -> Iterator[Batch]:
        start_part, start_doc = (cursor["part"], cursor["doc"]) if cursor else (0, 0)
        indexes = [self._open(prefix) for prefix in self.prefixes]
        docs_before = np.cumsum([0] + [index.num_documents for index in indexes])
        total = max(int(docs_before[-1]), 1)
        budget = self.read_ahead
        ranges = (
            (part, *run)
            for part in range(start_part, len(indexes))
            for run in batch_ranges(indexes[part], start_doc if part == start_part else 0, budget.batch_tokens)
        )
        if budget.threads == 1:  # one core: decode each batch when it is asked for
            for part, start, stop, _ in ranges:
                yield self._decode(part, indexes[part], start, stop, (docs_before[part] + stop) / total)
            return
        pool = decode_pool(budget.threads)
        pending: deque = deque()  # (future, tokens)
        following = next(ranges, None)
        try:
            while True:
                # Queue what the budget allows; with nothing queued, the batch asked for now, budget or not.
                while following and len(pending) <= budget.ahead and budget.take(following[3], not pending):
                    part, start, stop, tokens = following
                    progress = (docs_before[part] + stop) / total
                    pending.append((pool.submit(self._decode, part, indexes[part], start, stop, progress), tokens))
                    following = next(ranges, None)
                if not pending:
                    return
                future, tokens = pending[0]
                try:
                    batch = future.result()
                finally:
                    pending.popleft()
                    budget.release(tokens)
                yield batch
        finally:  # the consumer may stop early: drop the batches queued ahead for it
            for future, tokens in pending:
                future.cancel()
                budget.release(tokens)

    def _decode(self, part: int, index: MegatronIndex, start: int, stop: int, progress: float) -> Batch:
        tokens, offsets = index.read_documents(start, stop)
        vocab_size = self.detokenizer.vocab_size
        # One pass: read as unsigned, a negative id is past every vocabulary too.
        unsigned = tokens.view(np.dtype(f"u{tokens.dtype.itemsize}")) if tokens.dtype.kind == "i" else tokens
        if len(tokens) and unsigned.max() >= vocab_size:
            at = int(np.flatnonzero((tokens < 0) | (tokens >= vocab_size))[0])
            doc = start + int(np.searchsorted(offsets, at, side="right")) - 1
            raise InputError(
                f"document {doc}: token id {int(tokens[at])} is outside the tokenizer's vocabulary "
                f"(0..{vocab_size - 1}); was this part made with another tokenizer?",
                str(index.bin_path),
            )
        decoded = self.detokenizer.decode(tokens, offsets)
        items, positions = run_of(part, start, stop - start)
        return Batch(
            items=items,
            positions=positions,
            cursor={"part": part, "doc": start},
            texts=decoded.texts,
            progress=float(progress),
            stats={"decode_replacements": decoded.replacements, "tokens": len(tokens)},
        )


def check_parts_exist(prefixes: list[str], config: str) -> None:
    """All at once: a config pointed at the wrong base dir misses every part, and should say so in one message."""
    missing = [p for p in prefixes if not all(os.path.isfile(path) for path in prefix_paths(p))]
    if missing:
        shown = ", ".join(missing[:MISSING_SHOWN]) + (", ..." if len(missing) > MISSING_SHOWN else "")
        raise InputError(
            f"{len(missing)} of the {len(prefixes)} parts its data_path names are missing (no .idx and .bin): {shown}",
            config,
        )


def build_megatron_sources(spec: MegatronSource, settings: Settings) -> list[MegatronTextSource]:
    data_path, tokenizer, files = spec.data_path, spec.tokenizer, []
    if spec.openseek_config is not None:
        config = read_openseek_config(spec, settings)
        data_path, files = config.data_path, config.files
        if tokenizer is None:
            if config.tokenizer is None:
                raise InputError("names no data.tokenizer: give the source a 'tokenizer'", spec.openseek_config)
            tokenizer = MegatronTokenizerSpec.model_validate(config.tokenizer)
    detokenizer, tokenizer_files = load_tokenizer(tokenizer, settings)  # loaded once, shared by every part
    files = tokenizer_files + files
    if spec.prefixes is not None:
        name = spec.prefixes[0] if len(spec.prefixes) == 1 else f"{spec.prefixes[0]} (+{len(spec.prefixes) - 1} more)"
        return [
            MegatronTextSource(
                name, spec.weight, expand_prefixes(spec.prefixes, settings), detokenizer, files, ReadAhead()
            )
        ]
    try:
        pairs = weighted_prefixes(data_path)
    except ValueError as e:
        raise InputError(str(e), spec.openseek_config) from None
    expanded = [expand_prefixes([prefix], settings) for _, prefix in pairs]
    if spec.openseek_config is not None:
        check_parts_exist([p for found in expanded for p in found], spec.openseek_config)
    total = sum(weight for weight, _ in pairs)
    read_ahead = ReadAhead(len(pairs))  # the parts are read side by side: one budget for all
    return [
        MegatronTextSource(prefix, spec.weight * weight / total, found, detokenizer, files, read_ahead)
        for (weight, prefix), found in zip(pairs, expanded)
    ]
