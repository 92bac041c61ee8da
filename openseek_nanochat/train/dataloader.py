"""Pretraining loaders, drop-in for nanochat's `nanochat.dataloader`: the two it has, under its names and signatures
(`tokenizing_distributed_data_loader_with_state_bos_bestfit`, `tokenizing_distributed_data_loader_bos_bestfit`).

Shards are nanochat's: `shard_00000.parquet`, ... with a `text` column, found where nanochat looks (nanochat/layout.py:
`$NANOCHAT_BASE_DIR/base_data_climbmix`) or in `data_dir=`, listed by convert/shards.py's rule; the last shard is the
validation split. Rank r of a W-rank job reads row groups r, r+W, r+2W, ... of every shard, in order, forever (the
epoch counts the passes).

The BOS-aligned best-fit loader yields exactly nanochat's batches, token for token. nanochat scans its whole document
buffer in Python for every document it places and tokenizes in the training thread; here the buffer is bucketed by
length (a bisect finds the best fit), and a background thread reads ahead and has worker processes tokenize while
the caller packs rows (forked processes that die with their rank, procs.die_with_parent).

Resume: every batch comes with a state dict. nanochat's keys (`pq_idx`, `rg_idx`, `epoch`) mean what they mean in
nanochat, which resumes approximately (from the next row group, dropping the buffered documents). This loader adds
`rows_read` and `buffer` (where each buffered document came from) so that, resumed on the same rank and world size, it
continues with exactly the batches it would have produced; any other state resumes the nanochat way.
"""

import atexit
import multiprocessing
import os
import queue
import signal
import sys
import threading
import weakref
from array import array
from bisect import bisect_right, insort
from collections import deque
from concurrent.futures import ProcessPoolExecutor

import pyarrow.parquet as pq
import torch

from openseek_nanochat import procs
from openseek_nanochat.capacity import cpu_count
from openseek_nanochat.convert.shards import list_shards
from openseek_nanochat.train.nanochat import layout

_PREFETCH_BATCHES = 16  # tokenized document batches the reader thread may run ahead


def list_parquet_files(data_dir=None) -> list[str]:
    """The shard paths in order, validation last; the default directory is nanochat's."""
    if data_dir is None:
        data_dir = layout.base_dir() / layout.DATA_SUBDIR
        if not data_dir.exists():
            data_dir = layout.base_dir() / layout.LEGACY_DATA_SUBDIR
    return [str(path) for path in list_shards(data_dir)]


def get_dist_info() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment, like nanochat: all of RANK, LOCAL_RANK, WORLD_SIZE or none."""
    if all(k in os.environ for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")):
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def split_paths(split: str, data_dir=None) -> list[str]:
    assert split in ("train", "val"), "split must be 'train' or 'val'"
    paths = list_parquet_files(data_dir)
    if not paths:
        raise FileNotFoundError(f"no parquet shards in {data_dir or layout.base_dir() / layout.DATA_SUBDIR}")
    if split == "val":
        return paths[-1:]
    if len(paths) < 2:
        raise ValueError(f"only one shard ({paths[0]}): it is the validation shard, so there is nothing to train on")
    return paths[:-1]


def _document_batches(paths, rank, world_size, start, batch_size):
    """Endless (texts, (epoch, pq_idx, rg_idx, first_row)) in nanochat's order, from `start` = (epoch, pq, rg, row)."""
    epoch, pq_idx, rg_idx, row = start
    whole_pass = (pq_idx, rg_idx, row) == (0, rank, 0)
    while True:
        docs_this_pass = 0
        while pq_idx < len(paths):
            pf = pq.ParquetFile(paths[pq_idx])
            while rg_idx < pf.num_row_groups:
                texts = pf.read_row_group(rg_idx, columns=["text"]).column("text").to_pylist()
                for i in range(row, len(texts), batch_size):
                    yield texts[i : i + batch_size], (epoch, pq_idx, rg_idx, i)
                docs_this_pass += len(texts) - row
                rg_idx += world_size
                row = 0
            pq_idx += 1
            rg_idx = rank
        if whole_pass and docs_this_pass == 0:
            # nanochat would loop here forever
            raise ValueError(
                f"rank {rank} of {world_size} gets no documents from {len(paths)} shard(s) ending {paths[-1]}: "
                f"every rank needs a row group of its own (rank r reads row groups r, r+{world_size}, ...)"
            )
        epoch += 1
        pq_idx, rg_idx, row = 0, rank, 0
        whole_pass = True


def _nanochat_start(resume_state_dict, rank, world_size):
    """Where nanochat restarts: the row group after the saved one (in this rank's stride), dropping the rest."""
    if resume_state_dict is None:
        return 1, 0, rank, 0
    epoch = resume_state_dict.get("epoch", 1)
    base_idx = resume_state_dict["rg_idx"] // world_size + 1
    return epoch, resume_state_dict["pq_idx"], base_idx * world_size + rank, 0


def _is_exact_state(state, rank, world_size, split) -> bool:
    if state is None or "buffer" not in state:
        return False
    if (state.get("rank"), state.get("world_size"), state.get("split")) == (rank, world_size, split):
        return True
    print(
        f"dataloader: state saved by rank {state.get('rank')} of {state.get('world_size')} ({state.get('split')}) "
        f"used by rank {rank} of {world_size} ({split}): resuming from the next row group instead",
        file=sys.stderr,
    )
    return False


def _tokenize(tokenizer, texts, bos):
    """BOS + tokens per document."""
    return [tokenizer.encode(text, prepend=bos) for text in texts]


def _tokenizer_processes(tokenizer_threads: int) -> int:
    """How many processes tokenize for one loader: as many as asked, at most this rank's share of the CPUs."""
    share = cpu_count() // int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(1, min(tokenizer_threads, share))


_worker_tokenizer = None  # set in each tokenizer process


def _start_worker(tokenizer, rank_pid):
    global _worker_tokenizer
    _worker_tokenizer = tokenizer
    procs.die_with_parent(rank_pid, signal.SIGKILL)  # with the reader thread that forked us: a killed rank leaves none


def _worker_tokenize(texts, bos):
    return _tokenize(_worker_tokenizer, texts, bos)


class _Reader:
    """A thread that reads document batches and has them tokenized ahead of the packer, in order.

    nanochat tokenizes in the training thread through tiktoken's thread pool, but tiktoken holds the GIL while it
    encodes, so those threads take turns. Here forked processes tokenize (the tokenizer object is inherited, nothing
    is pickled but texts and ids) while the caller packs; several batches are in flight at once. Where fork is not
    available, the thread tokenizes itself. `get()` re-raises the thread's error, if any.
    """

    def __init__(self, batches, tokenizer, processes):
        self.queue = queue.Queue(maxsize=_PREFETCH_BATCHES)
        self.stop = threading.Event()
        bos = tokenizer.get_bos_token_id()
        use_processes = "fork" in multiprocessing.get_all_start_methods()

        def work():
            pool = None
            try:
                if not use_processes:
                    for texts, position in batches:
                        if not self._put((_tokenize(tokenizer, texts, bos), position)):
                            return
                    return
                pool = ProcessPoolExecutor(
                    processes, multiprocessing.get_context("fork"), _start_worker, (tokenizer, os.getpid())
                )
                in_flight = deque()
                for texts, position in batches:
                    in_flight.append((pool.submit(_worker_tokenize, texts, bos), position))
                    if len(in_flight) > 2 * processes:
                        future, position = in_flight.popleft()
                        if not self._put((future.result(), position)):
                            return
            except BaseException as e:  # handed to the consumer, which raises it
                self._put(e)
            finally:
                if pool is not None:  # before this thread ends: its end kills the workers
                    pool.shutdown(wait=True, cancel_futures=True)

        self.thread = threading.Thread(target=work, name="openseek-dataloader", daemon=True)
        self.thread.start()
        _live_readers.add(self)

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def get(self):
        item = self.queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self):
        """Stop and wait: a daemon thread killed inside pyarrow at interpreter exit aborts the process."""
        self.stop.set()
        if self.thread is not threading.current_thread():
            self.thread.join()


_live_readers = weakref.WeakSet()


@atexit.register
def _close_live_readers():
    for reader in list(_live_readers):
        reader.close()


class _BestFitBuffer:
    """Documents bucketed by length; picks what nanochat's linear scan picks, in O(log n).

    nanochat keeps a list in arrival order and takes the first longest document that fits the row, or else the
    first shortest one (to crop). Within a length bucket documents stay in arrival order, so the front of a bucket is
    exactly the document nanochat's scan would find first.
    """

    def __init__(self):
        self.lengths = []  # sorted distinct lengths present
        self.buckets = {}  # length -> deque of (tokens, seq), oldest first
        self.origins = {}  # seq -> (epoch, pq_idx, rg_idx, row) for every buffered document, in arrival order
        self.seq = 0

    def __len__(self):
        return len(self.origins)

    def add(self, tokens, origin):
        n = len(tokens)
        bucket = self.buckets.get(n)
        if bucket is None:
            bucket = self.buckets[n] = deque()
            insort(self.lengths, n)
        bucket.append((tokens, self.seq))
        self.origins[self.seq] = origin
        self.seq += 1

    def take(self, room):
        """The longest document of at most `room` tokens, else the shortest document (the caller crops it)."""
        i = bisect_right(self.lengths, room) - 1
        if i < 0:
            i = 0
        n = self.lengths[i]
        bucket = self.buckets[n]
        tokens, seq = bucket.popleft()
        if not bucket:
            del self.buckets[n]
            del self.lengths[i]
        del self.origins[seq]
        return tokens


class _ToDevice:
    """Moves (B, T+1) rows to the device as (inputs, targets), into the same device tensors every time (as nanochat).

    On CUDA the copy is asynchronous from pinned memory. Two pinned buffers take turns, and a buffer is refilled only
    once its previous copy has finished, so a batch still queued for the GPU is never overwritten by the next one.
    """

    def __init__(self, B, T, device):
        device = torch.device(device)
        self.cuda = device.type == "cuda"
        self.on_device = torch.empty((2, B, T), dtype=torch.long, device=device)
        self.staging = [torch.empty((2, B, T), dtype=torch.long, pin_memory=True) for _ in range(2 if self.cuda else 0)]
        self.copied = [None, None]  # the CUDA event of each staging buffer's last copy
        self.turn = 0

    def __call__(self, rows):
        if not self.cuda:
            self.on_device[0].copy_(rows[:, :-1])
            self.on_device[1].copy_(rows[:, 1:])
            return self.on_device[0], self.on_device[1]
        self.turn = 1 - self.turn
        staging, copied = self.staging[self.turn], self.copied[self.turn]
        if copied is not None:
            copied.synchronize()
        staging[0].copy_(rows[:, :-1])
        staging[1].copy_(rows[:, 1:])
        self.on_device.copy_(staging, non_blocking=True)
        self.copied[self.turn] = torch.cuda.Event()
        self.copied[self.turn].record()
        return self.on_device[0], self.on_device[1]


def tokenizing_distributed_data_loader_with_state_bos_bestfit(
    tokenizer,
    B,
    T,
    split,
    tokenizer_threads=4,
    tokenizer_batch_size=128,
    device="cuda",
    resume_state_dict=None,
    buffer_size=1000,
    *,
    data_dir=None,
):
    """Yields (inputs, targets, state_dict): (B, T) tensors on `device`, every row starting with BOS, no padding.

    Each row is filled from a buffer of at least `buffer_size` tokenized documents: the longest document that fits,
    again and again; when none fits, the shortest document is cropped to fill the row exactly.
    The tensors are reused for the next batch (as nanochat's are): use or copy them before asking for the next one.
    `tokenizer_threads` is the number of tokenizer processes here, at most this rank's share of the CPUs.
    `data_dir` (not in nanochat) reads the shards from there instead of $NANOCHAT_BASE_DIR/base_data_climbmix.
    """
    rank, world_size = get_dist_info()
    paths = split_paths(split, data_dir)
    row_capacity = T + 1
    buffer = _BestFitBuffer()
    exact = _is_exact_state(resume_state_dict, rank, world_size, split)
    if exact:
        s = resume_state_dict
        start = (s["epoch"], s["pq_idx"], s["rg_idx"], s["rows_read"])
        _refill_saved_buffer(buffer, s["buffer"], paths, tokenizer)
        pq_idx, rg_idx, epoch, rows_read = s["pq_idx"], s["rg_idx"], s["epoch"], s["rows_read"]
    else:
        start = _nanochat_start(resume_state_dict, rank, world_size)
        pq_idx, rg_idx, epoch, rows_read = 0, 0, 1, 0
    reader = _Reader(
        _document_batches(paths, rank, world_size, start, tokenizer_batch_size),
        tokenizer,
        _tokenizer_processes(tokenizer_threads),
    )

    to_device = _ToDevice(B, T, device)
    try:
        while True:
            tokens = []  # the B rows, back to back
            for _ in range(B):
                room = row_capacity
                while room:
                    # nanochat tops the buffer up before every pick; the picks depend on it, so do the same
                    while len(buffer) < buffer_size:
                        token_lists, (epoch, pq_idx, rg_idx, first_row) = reader.get()
                        for j, doc in enumerate(token_lists):
                            buffer.add(doc, (epoch, pq_idx, rg_idx, first_row + j))
                        rows_read = first_row + len(token_lists)
                    doc = buffer.take(room)
                    if len(doc) <= room:
                        tokens.extend(doc)
                        room -= len(doc)
                    else:
                        tokens.extend(doc[:room])
                        room = 0
            # array('q') converts a list of ints ~4x faster than torch.tensor does
            rows = torch.frombuffer(array("q", tokens), dtype=torch.long).view(B, row_capacity)
            inputs, targets = to_device(rows)
            state_dict = {
                "pq_idx": pq_idx,
                "rg_idx": rg_idx,
                "epoch": epoch,
                "rows_read": rows_read,
                "buffer": list(buffer.origins.values()),
                "rank": rank,
                "world_size": world_size,
                "split": split,
            }
            yield inputs, targets, state_dict
    finally:
        reader.close()


def _refill_saved_buffer(buffer, origins, paths, tokenizer):
    """Re-read and re-tokenize the documents a saved state had buffered, in their original order."""
    tables = {}
    texts = []
    for _epoch, pq_idx, rg_idx, row in origins:
        key = (pq_idx, rg_idx)
        if key not in tables:
            tables[key] = pq.ParquetFile(paths[pq_idx]).read_row_group(rg_idx, columns=["text"]).column("text")
        texts.append(tables[key][row].as_py())
    token_lists = _tokenize(tokenizer, texts, tokenizer.get_bos_token_id())
    for doc, origin in zip(token_lists, origins):
        buffer.add(doc, tuple(origin))


def tokenizing_distributed_data_loader_bos_bestfit(*args, **kwargs):
    """The best-fit loader without the state dicts."""
    for inputs, targets, _ in tokenizing_distributed_data_loader_with_state_bos_bestfit(*args, **kwargs):
        yield inputs, targets
