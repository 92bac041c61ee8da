"""Megatron indexed datasets (`<prefix>.bin` + `<prefix>.idx`), detokenized back to text.

Prefixes: each pattern names parts by prefix; a trailing `.idx` or `.bin` is ignored, so
`/data/arxiv/007_text_document`, `/data/arxiv/007_text_document.bin` and `/data/arxiv/*.idx` all work. A glob is
matched against the `.idx` files (`/data/arxiv/*` means every part in the folder), sorted, and every index found needs
its `.bin` beside it.

`prefixes` become one source reading its parts in order; `data_path` (Megatron's `w1, prefix1, w2, prefix2, ...`)
becomes one source per entry, weighted spec.weight * w_i / sum(w). Cursor: {"part": k, "doc": i}, the first document
of a batch. Batches hold about BATCH_TOKENS tokens of whole documents.

Decoding runs on DECODE_THREADS threads, DECODE_THREADS batches ahead of the consumer: the work (page faults on the
memory map, Arrow's take, UTF-8 validation) happens outside the GIL, so it scales with cores and overlaps with whatever
the consumer does with the previous batch. All sources share one pool, so a data_path of 84 parts read side by side
holds at most 84 * (DECODE_THREADS + 1) batches, not 84 pools' worth of threads.
"""

import functools
import glob
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from openseek_nanochat.convert.sources.base import Batch, file_fingerprint
from openseek_nanochat.convert.sources.detok import Detokenizer, load_detokenizer
from openseek_nanochat.convert.sources.megatron_index import MegatronIndex, prefix_paths
from openseek_nanochat.convert.spec import MegatronSource, weighted_prefixes
from openseek_nanochat.errors import InputError
from openseek_nanochat.paths import check_input_path, glob_inputs
from openseek_nanochat.settings import Settings

BATCH_TOKENS = 1 << 20  # about 3-4 MB of text with the Qwen vocabulary, English or Chinese
BATCH_DOCS = 16_384  # bounds batches of tiny documents, and how far ahead a batch is planned
DECODE_THREADS = min(4, os.cpu_count() or 1)


@functools.cache
def decode_pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="megatron-decode")


def expand_prefixes(patterns: list[str], settings: Settings) -> list[str]:
    """Part prefixes in order (see the module doc), both files of each checked against the input roots."""
    prefixes = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if pattern.endswith((".idx", ".bin")):
            pattern = pattern[:-4]
        if glob.has_magic(pattern):
            found = [m[:-4] for m in glob_inputs(pattern + ".idx", settings)]  # walked safely (paths.py)
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


def batch_ranges(index: MegatronIndex, doc: int = 0) -> Iterator[tuple[int, int]]:
    """Runs of whole documents from `doc` on, each about BATCH_TOKENS tokens (at least one document)."""
    while doc < index.num_documents:
        ahead = min(index.num_documents, doc + BATCH_DOCS)
        ends = index.document_offsets(doc, ahead)[1:]
        stop = doc + max(1, int(np.searchsorted(ends, BATCH_TOKENS, side="right")))
        yield doc, stop
        doc = stop


class MegatronTextSource:
    def __init__(self, name: str, weight: float, prefixes: list[str], detokenizer: Detokenizer, tokenizer_path: str):
        self.name = name
        self.weight = weight
        self.prefixes = prefixes
        self.detokenizer = detokenizer
        self.tokenizer_path = tokenizer_path

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
        return parts + [file_fingerprint(self.tokenizer_path)]

    def read(self, cursor: dict | None = None) -> Iterator[Batch]:
        start_part, start_doc = (cursor["part"], cursor["doc"]) if cursor else (0, 0)
        indexes = [self._open(prefix) for prefix in self.prefixes]
        docs_before = np.cumsum([0] + [index.num_documents for index in indexes])
        total = max(int(docs_before[-1]), 1)
        pool = decode_pool(DECODE_THREADS)
        pending: deque = deque()
        try:
            for part in range(start_part, len(indexes)):
                first = start_doc if part == start_part else 0
                for start, stop in batch_ranges(indexes[part], first):
                    progress = (docs_before[part] + stop) / total
                    pending.append(pool.submit(self._decode, part, indexes[part], start, stop, progress))
                    if len(pending) > DECODE_THREADS:
                        yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # the consumer may stop early: drop the batches queued ahead for it
            for future in pending:
                future.cancel()

    def _decode(self, part: int, index: MegatronIndex, start: int, stop: int, progress: float) -> Batch:
        tokens, offsets = index.read_documents(start, stop)
        vocab_size = self.detokenizer.vocab_size
        if len(tokens) and (tokens.min() < 0 or tokens.max() >= vocab_size):
            at = int(np.flatnonzero((tokens < 0) | (tokens >= vocab_size))[0])
            doc = start + int(np.searchsorted(offsets, at, side="right")) - 1
            raise InputError(f"document {doc}: token id {int(tokens[at])} is outside the tokenizer's vocabulary "
                             f"(0..{vocab_size - 1}); was this part made with another tokenizer?", str(index.bin_path))
        decoded = self.detokenizer.decode(tokens, offsets)
        return Batch(cursor={"part": part, "doc": start}, texts=decoded.texts, progress=float(progress),
                     stats={"decode_replacements": decoded.replacements, "tokens": len(tokens)})


def build_megatron_sources(spec: MegatronSource, settings: Settings) -> list[MegatronTextSource]:
    detokenizer = load_detokenizer(spec.tokenizer, settings)  # loaded once, shared by every part
    tokenizer_path = str(check_input_path(spec.tokenizer.path, settings))
    if spec.prefixes is not None:
        name = spec.prefixes[0] if len(spec.prefixes) == 1 else f"{spec.prefixes[0]} (+{len(spec.prefixes) - 1} more)"
        return [MegatronTextSource(name, spec.weight, expand_prefixes(spec.prefixes, settings), detokenizer,
                                   tokenizer_path)]
    pairs = weighted_prefixes(spec.data_path)
    total = sum(weight for weight, _ in pairs)
    return [MegatronTextSource(prefix, spec.weight * weight / total, expand_prefixes([prefix], settings), detokenizer,
                               tokenizer_path)
            for weight, prefix in pairs]
