"""The nanochat-compatible loaders: nanochat's batches token for token, its shard layout, striding and resume."""

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from openseek_nanochat.train import dataloader
from openseek_nanochat.train import tokenizer as tok
from openseek_nanochat.train.nanochat import layout

from conftest import SHARED_DATA
from training_data import shakespeare_docs, write_shards

NANOCHAT_DIR = os.environ.get("NANOCHAT_DIR")


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """$NANOCHAT_BASE_DIR with base_data_climbmix/ (4 train shards + val, row groups of 40 docs) and tokenizer/."""
    base = tmp_path_factory.mktemp("nanochat_base")
    docs = shakespeare_docs(SHARED_DATA)
    write_shards(base / layout.DATA_SUBDIR, docs, num_shards=5, row_group_size=40, val_docs=200)
    tok.save(tok.train_encoding(iter(docs[:600]), 1024), base / "tokenizer")
    return base


@pytest.fixture
def nanochat_env(base_dir, monkeypatch):
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(base_dir))
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    return base_dir


def as_rank(monkeypatch, rank, world_size):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", str(world_size))


# --- a reference: nanochat's algorithm as plainly as it can be written (linear scans, list pops) ---


def reference_document_batches(paths, rank, world_size, resume, batch_size):
    resume_pq = resume["pq_idx"] if resume else 0
    resume_rg = resume["rg_idx"] if resume else None
    epoch = resume.get("epoch", 1) if resume else 1
    first_pass = True
    while True:
        pq_idx = resume_pq if first_pass else 0
        while pq_idx < len(paths):
            pf = pq.ParquetFile(paths[pq_idx])
            if first_pass and resume_rg is not None and pq_idx == resume_pq:
                rg_idx = (resume_rg // world_size + 1) * world_size + rank
                resume_rg = None
                if rg_idx >= pf.num_row_groups:
                    pq_idx += 1
                    continue
            else:
                rg_idx = rank
            while rg_idx < pf.num_row_groups:
                texts = pf.read_row_group(rg_idx).column("text").to_pylist()
                for i in range(0, len(texts), batch_size):
                    yield texts[i : i + batch_size], (pq_idx, rg_idx, epoch)
                rg_idx += world_size
            pq_idx += 1
        first_pass = False
        epoch += 1


def reference_bestfit(tokenizer, B, T, paths, rank=0, world_size=1, resume=None, batch_size=128, buffer_size=1000):
    batches = reference_document_batches(paths, rank, world_size, resume, batch_size)
    bos = tokenizer.get_bos_token_id()
    docs = []
    state = (0, 0, 1)
    while True:
        rows = []
        for _ in range(B):
            row = []
            while len(row) < T + 1:
                while len(docs) < buffer_size:
                    texts, state = next(batches)
                    docs.extend(tokenizer.encode(texts, prepend=bos))
                room = T + 1 - len(row)
                best = -1
                for i, doc in enumerate(docs):  # the first of the longest documents that fit
                    if len(doc) <= room and (best < 0 or len(doc) > len(docs[best])):
                        best = i
                if best < 0:  # none fits: crop the first of the shortest
                    best = min(range(len(docs)), key=lambda i: len(docs[i]))
                row.extend(docs.pop(best)[:room])
            rows.append(row)
        rows = torch.tensor(rows)
        yield rows[:, :-1], rows[:, 1:], {"pq_idx": state[0], "rg_idx": state[1], "epoch": state[2]}


def take(loader, n):
    """n batches, copied: the loaders reuse their tensors."""
    out = []
    for _ in range(n):
        x, y, *state = next(loader)
        out.append((x.clone(), y.clone(), *state))
    return out


NANOCHAT_KEYS = ("pq_idx", "rg_idx", "epoch")


def assert_same_batches(ours, reference):
    assert len(ours) == len(reference)
    for i, (a, b) in enumerate(zip(ours, reference)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), f"batch {i} differs"
        if len(a) > 2 and len(b) > 2:
            assert {k: a[2][k] for k in NANOCHAT_KEYS} == {k: b[2][k] for k in NANOCHAT_KEYS}, f"batch {i} state"


@pytest.mark.parametrize(
    "split,B,T,buffer_size,batch_size",
    [
        ("train", 4, 256, 100, 16),
        ("train", 2, 1024, 300, 128),  # long rows: many documents per row
        ("val", 3, 64, 50, 7),  # short rows: nearly every document is cropped
    ],
)
def test_bestfit_matches_reference(nanochat_env, split, B, T, buffer_size, batch_size):
    tokenizer = tok.get_tokenizer()
    paths = dataloader.split_paths(split)
    ours = dataloader.tokenizing_distributed_data_loader_with_state_bos_bestfit(
        tokenizer, B, T, split, device="cpu", buffer_size=buffer_size, tokenizer_batch_size=batch_size
    )
    ref = reference_bestfit(tokenizer, B, T, paths, buffer_size=buffer_size, batch_size=batch_size)
    assert_same_batches(take(ours, 25), take(ref, 25))


def test_bestfit_rows_are_bos_aligned_and_full(nanochat_env):
    tokenizer = tok.get_tokenizer()
    bos = tokenizer.get_bos_token_id()
    loader = dataloader.tokenizing_distributed_data_loader_bos_bestfit(
        tokenizer, 4, 128, "train", device="cpu", buffer_size=64
    )
    for x, y in take(loader, 20):
        assert x.shape == y.shape == (4, 128) and x.dtype == torch.long
        assert (x[:, 0] == bos).all()  # every row starts a document
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
        assert ((x >= 0) & (x < tokenizer.get_vocab_size())).all()  # no padding or ignore ids


def test_bestfit_packs_longest_fitting_document_first(tmp_path):
    """A hand-checked case. Documents of 5, 3, 3 and 9 tokens (BOS included), rows of 8: the first row takes the 5,
    then the earlier of the two 3s; the second takes the other 3, then, as nothing fits its last 5 tokens, the 9
    cropped to 5."""

    class Chars:  # one token per character, BOS = 0
        def get_bos_token_id(self):
            return 0

        def encode(self, text, prepend=None, num_threads=None):
            return [prepend] + [ord(c) for c in text]

    data = write_shards(
        tmp_path / "shards", ["abcd", "ef", "gh", "ijklmnop", "val"], num_shards=2, row_group_size=10, val_docs=1
    )
    loader = dataloader.tokenizing_distributed_data_loader_bos_bestfit(
        Chars(), 1, 7, "train", device="cpu", buffer_size=1, data_dir=data
    )
    rows = []
    for x, y in take(loader, 2):
        rows.append(x[0].tolist() + y[0, -1:].tolist())
    assert rows == [[0, *map(ord, "abcd"), 0, *map(ord, "ef")], [0, *map(ord, "gh"), 0, *map(ord, "ijkl")]]


def test_exact_resume_continues_with_the_same_batches(nanochat_env):
    tokenizer = tok.get_tokenizer()
    args = (tokenizer, 2, 256, "train")
    kwargs = dict(device="cpu", buffer_size=80, tokenizer_batch_size=16)
    straight = take(dataloader.tokenizing_distributed_data_loader_with_state_bos_bestfit(*args, **kwargs), 30)
    state = json.loads(json.dumps(straight[11][2]))  # as a checkpoint's meta stores it
    resumed = take(
        dataloader.tokenizing_distributed_data_loader_with_state_bos_bestfit(*args, resume_state_dict=state, **kwargs),
        18,
    )
    assert_same_batches(resumed, straight[12:])


def test_nanochat_state_resumes_like_nanochat(nanochat_env):
    """Given only nanochat's keys, resume from the next row group in this rank's stride, as nanochat does."""
    tokenizer = tok.get_tokenizer()
    paths = dataloader.split_paths("train")
    for state in ({"pq_idx": 1, "rg_idx": 2, "epoch": 3}, {"pq_idx": 0, "rg_idx": 10**6, "epoch": 1}):
        ours = dataloader.tokenizing_distributed_data_loader_with_state_bos_bestfit(
            tokenizer, 2, 128, "train", device="cpu", resume_state_dict=state, buffer_size=60, tokenizer_batch_size=20
        )
        ref = reference_bestfit(tokenizer, 2, 128, paths, resume=state, buffer_size=60, batch_size=20)
        assert_same_batches(take(ours, 12), take(ref, 12))


def test_ranks_stride_row_groups(nanochat_env, monkeypatch):
    tokenizer = tok.get_tokenizer()
    paths = dataloader.split_paths("train")
    seen = {}
    for rank in (0, 1):
        as_rank(monkeypatch, rank, 2)
        ours = take(
            dataloader.tokenizing_distributed_data_loader_with_state_bos_bestfit(
                tokenizer, 2, 128, "train", device="cpu", buffer_size=60, tokenizer_batch_size=20
            ),
            15,
        )
        assert_same_batches(
            ours,
            take(
                reference_bestfit(tokenizer, 2, 128, paths, rank=rank, world_size=2, buffer_size=60, batch_size=20), 15
            ),
        )
        origins = {tuple(o[1:3]) for _, _, state in ours for o in state["buffer"]}
        assert origins and all(rg % 2 == rank for _, rg in origins)
        seen[rank] = origins
    assert not seen[0] & seen[1]


def test_exact_state_from_another_rank_falls_back_to_nanochat_resume(nanochat_env, monkeypatch, capsys):
    tokenizer = tok.get_tokenizer()
    state = take(
        dataloader.tokenizing_distributed_data_loader_with_state_bos_bestfit(
            tokenizer, 2, 128, "train", device="cpu", buffer_size=60
        ),
        3,
    )[-1][2]
    as_rank(monkeypatch, 1, 2)
    ours = dataloader.tokenizing_distributed_data_loader_with_state_bos_bestfit(
        tokenizer, 2, 128, "train", device="cpu", resume_state_dict=state, buffer_size=60
    )
    ref = reference_bestfit(tokenizer, 2, 128, dataloader.split_paths("train"), 1, 2, resume=state, buffer_size=60)
    assert_same_batches(take(ours, 5), take(ref, 5))
    assert "resuming from the next row group" in capsys.readouterr().err


def test_shard_discovery(nanochat_env, monkeypatch, tmp_path):
    shards = dataloader.list_parquet_files()
    assert [Path(p).name for p in shards] == [f"shard_{i:05d}.parquet" for i in range(5)]
    assert dataloader.split_paths("val") == shards[-1:] and dataloader.split_paths("train") == shards[:-1]
    # nanochat's fallback for an old base dir: base_data/
    monkeypatch.setenv("NANOCHAT_BASE_DIR", str(tmp_path))
    (tmp_path / "base_data").mkdir()
    (tmp_path / "base_data" / "shard_00000.parquet").write_bytes(b"")
    (tmp_path / "base_data" / "shard_00001.parquet.tmp").write_bytes(b"")
    assert dataloader.list_parquet_files() == [str(tmp_path / "base_data" / "shard_00000.parquet")]
    with pytest.raises(ValueError, match="nothing to train on"):
        dataloader.split_paths("train")


def test_a_rank_without_row_groups_fails_instead_of_hanging(nanochat_env, monkeypatch):
    """The val shard has 5 row groups; rank 5 of 6 has none of its own (nanochat would spin forever)."""
    as_rank(monkeypatch, 5, 6)
    loader = dataloader.tokenizing_distributed_data_loader_bos_bestfit(tok.get_tokenizer(), 1, 64, "val", device="cpu")
    with pytest.raises(ValueError, match="rank 5 of 6 gets no documents"):
        next(loader)


# --- against nanochat itself, when a checkout is at hand ---


@pytest.fixture
def nanochat_loader(nanochat_env, monkeypatch):
    if not NANOCHAT_DIR:
        pytest.skip("set NANOCHAT_DIR to a nanochat checkout to compare with nanochat's own loader")
    monkeypatch.syspath_prepend(NANOCHAT_DIR)
    import nanochat.dataloader
    import nanochat.dataset

    # nanochat reads its data dir at import; point it at this test's shards
    monkeypatch.setattr(nanochat.dataset, "DATA_DIR", str(nanochat_env / layout.DATA_SUBDIR))
    return nanochat.dataloader


@pytest.mark.parametrize(
    "split,B,T,buffer_size", [("train", 4, 256, 1000), ("train", 2, 1024, 200), ("val", 3, 64, 50)]
)
def test_bestfit_matches_nanochat(nanochat_loader, split, B, T, buffer_size):
    from nanochat.tokenizer import get_tokenizer

    nano = nanochat_loader.tokenizing_distributed_data_loader_with_state_bos_bestfit(
        get_tokenizer(), B, T, split, device="cpu", buffer_size=buffer_size
    )
    ours = dataloader.tokenizing_distributed_data_loader_with_state_bos_bestfit(
        tok.get_tokenizer(), B, T, split, device="cpu", buffer_size=buffer_size
    )
    assert_same_batches(take(ours, 20), take(nano, 20))


def test_nanochat_resumes_from_our_state(nanochat_loader, monkeypatch):
    """Our state dicts keep nanochat's meaning: nanochat resumes from them as from its own."""
    from nanochat.tokenizer import get_tokenizer

    as_rank(monkeypatch, 1, 2)
    state = take(
        dataloader.tokenizing_distributed_data_loader_with_state_bos_bestfit(
            tok.get_tokenizer(), 2, 128, "train", device="cpu", buffer_size=60
        ),
        4,
    )[-1][2]
    nano_state = take(
        nanochat_loader.tokenizing_distributed_data_loader_with_state_bos_bestfit(
            get_tokenizer(), 2, 128, "train", device="cpu", buffer_size=60
        ),
        4,
    )[-1][2]
    assert {k: state[k] for k in NANOCHAT_KEYS} == nano_state
    nano = nanochat_loader.tokenizing_distributed_data_loader_with_state_bos_bestfit(
        get_tokenizer(), 2, 128, "train", device="cpu", resume_state_dict=state, buffer_size=60
    )
    ours = dataloader.tokenizing_distributed_data_loader_with_state_bos_bestfit(
        tok.get_tokenizer(), 2, 128, "train", device="cpu", resume_state_dict=nano_state, buffer_size=60
    )
    assert_same_batches(take(ours, 8), take(nano, 8))
