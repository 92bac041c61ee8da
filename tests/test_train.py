"""The builtin trainer, the train spec and train jobs: a real 2-rank torchrun on CPU, killed and resumed."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from pydantic import ValidationError

from openseek_nanochat import events
from openseek_nanochat.errors import InputError
from openseek_nanochat.settings import get_settings
from openseek_nanochat.train import tokenizer as tok
from openseek_nanochat.train.builtin import trainer as train
from openseek_nanochat.train.builtin.model import GPT, GPTConfig, config_for_depth
from openseek_nanochat.train.builtin.optim import Muon, orthogonalize
from openseek_nanochat.train.job import prepare, run_dir_for
from openseek_nanochat.train.spec import TrainSpec

from serverutil import cli
from training_data import shakespeare_docs, write_shards

# --- the model and the optimizer ---


def test_model_is_causal_and_starts_near_uniform():
    torch.manual_seed(0)
    model = GPT(GPTConfig(sequence_len=32, vocab_size=100, n_layer=2, n_head=2, n_embd=64))
    model.init_weights()
    for block in model.blocks:  # the output projections start at zero; give them weights so every path is live
        torch.nn.init.normal_(block.attn.c_proj.weight, std=0.05)
        torch.nn.init.normal_(block.mlp.c_proj.weight, std=0.05)
    x = torch.randint(0, 100, (2, 32))
    logits = model(x)
    assert logits.shape == (2, 32, 100)  # cropped back from the padded vocabulary (128)
    changed = x.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % 100
    after = model(changed)
    assert torch.allclose(logits[:, :20], after[:, :20], atol=1e-5)  # nothing looks ahead
    assert not torch.allclose(logits[:, 20:], after[:, 20:], atol=1e-3)
    model.init_weights()
    loss = model(x, x)
    assert abs(loss.item() - math.log(100)) < 0.05  # a near-zero head: every token about equally likely
    assert model(x, x, loss_reduction="none").shape == (2, 32)


def test_depth_sets_the_width_in_whole_heads():
    c = config_for_depth(depth=3, vocab_size=1000, sequence_len=64, aspect_ratio=64, head_dim=128)
    assert (c.n_layer, c.n_embd, c.n_head) == (3, 256, 2)  # 192 rounded up to whole 128-wide heads
    c = config_for_depth(depth=12, vocab_size=1000, sequence_len=64)
    assert (c.n_embd, c.n_head) == (768, 6)


def test_orthogonalize_flattens_the_spectrum():
    g = torch.randn(48, 96) @ torch.diag(torch.logspace(-2, 1, 96))
    s = torch.linalg.svdvals(orthogonalize(g))
    assert s.min() > 0.5 and s.max() < 1.3  # from a spread of 1000x to about 1
    assert orthogonalize(torch.randn(96, 48)).shape == (96, 48)


def test_muon_moves_every_matrix_and_resumes_from_its_state():
    w = torch.nn.Parameter(torch.randn(16, 8))
    opt = Muon([w], lr=0.1)
    w.grad = torch.randn(16, 8)
    before = w.detach().clone()
    opt.step()
    assert not torch.equal(before, w)
    again = Muon([torch.nn.Parameter(w.detach().clone())], lr=0.1)
    again.load_state_dict(opt.state_dict())
    assert torch.equal(
        again.state[again.param_groups[0]["params"][0]]["momentum_buffer"], opt.state[w]["momentum_buffer"]
    )


def test_lr_schedule_warms_up_holds_and_decays():
    lrm = [train.lr_multiplier(s, 100, 10, 0.5, 0.1) for s in range(101)]
    assert lrm[0] == pytest.approx(0.1) and lrm[9] == 1.0
    assert set(lrm[10:51]) == {1.0}
    assert lrm[75] == pytest.approx(0.55) and lrm[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrm[10:], lrm[11:]))


def test_a_checkpoint_counts_once_its_meta_and_every_rank_are_there(tmp_path):
    for name in [
        "model_000004.pt",
        "optim_000004_rank0.pt",
        "optim_000004_rank1.pt",
        "meta_000004.json",
        "model_000008.pt",
        "optim_000008_rank0.pt",
        "meta_000008.json",  # rank 1 died before saving
        "model_000012.pt",
        "optim_000012_rank0.pt",
        "optim_000012_rank1.pt",
    ]:  # no meta yet
        (tmp_path / name).write_text("x")
    assert train.last_complete_step(tmp_path, world_size=2) == 4
    assert train.last_complete_step(tmp_path, world_size=1) == 8
    assert train.last_complete_step(tmp_path / "none", world_size=1) is None


def test_metrics_log_drops_the_steps_a_resume_redoes(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in range(6)) + '{"step": 6, "lo')
    log = train.MetricsLog(path, resume_step=3)
    log.write(step=4, loss=0.5)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["step"] for r in lines] == [0, 1, 2, 3, 4]
    assert lines[-1] == {
        "step": 4,
        "loss": 0.5,
        "lr": None,
        "dt_ms": None,
        "tok_per_sec": None,
        "mfu": None,
        "val_bpb": None,
    }


# --- the spec and preflight ---

SMALL = dict(depth=2, head_dim=64, max_seq_len=64, device_batch_size=4, num_iterations=3, eval_tokens=1024)


def test_spec_refuses_batch_sizes_that_do_not_divide():
    with pytest.raises(ValidationError, match=r"total_batch_size 1,000 is not a multiple of .* 4 x 64 x 2 = 512"):
        TrainSpec(dataset="d", total_batch_size=1000, nproc_per_node=2, **SMALL)
    assert TrainSpec(dataset="d", total_batch_size=1024, nproc_per_node=2, **SMALL).total_tokens_per_step() == 1024
    assert TrainSpec(dataset="d", nproc_per_node=2, **SMALL).total_tokens_per_step() == 512
    with pytest.raises(ValidationError, match="eval_tokens 100 is less than one micro-batch"):
        TrainSpec(dataset="d", **{**SMALL, "eval_tokens": 100})
    with pytest.raises(ValidationError, match="only for backend 'nanochat'"):
        TrainSpec(dataset="d", extra_args=["--fp8"], **SMALL)
    with pytest.raises(ValidationError, match="Extra inputs"):
        TrainSpec(dataset="d", num_iteration=3, **SMALL)
    with pytest.raises(ValidationError, match=r"tokenizer\.reuse\.vocab_size"):
        TrainSpec(dataset="d", tokenizer={"path": "/t", "vocab_size": 10}, **SMALL)
    example = TrainSpec.model_json_schema()["examples"][0]
    assert TrainSpec.model_validate(example).nproc_per_node == 8


@pytest.fixture
def shards(data_dir, shared_data):
    docs = shakespeare_docs(shared_data)
    return write_shards(data_dir / "datasets" / "conv1", docs, num_shards=3, row_group_size=64, val_docs=128)


def test_prepare_resolves_datasets_and_refuses_bad_ones(shards, data_dir, tmp_path, monkeypatch):
    settings = get_settings()
    by_id = prepare(TrainSpec(dataset="conv1", **SMALL), settings)
    assert by_id.dataset == str(shards)
    assert prepare(TrainSpec(dataset=str(shards), **SMALL), settings).dataset == str(shards)
    looked_up = prepare(TrainSpec(dataset="job-7", **SMALL), settings, lookup={"job-7": str(shards)}.get)
    assert looked_up.dataset == str(shards)

    def refused(match, where=None, **fields):
        with pytest.raises(InputError, match=match) as e:
            prepare(TrainSpec(**{**SMALL, "dataset": str(shards), **fields}), settings)
        assert e.value.where == where

    refused("unknown dataset 'nope'", "dataset", dataset="nope")
    refused("outside the data dir", None, dataset=str(Path(sys.prefix)))
    refused("validation shard .* has 2 row group.*3 ranks", "dataset", nproc_per_node=3)
    refused("lacks tokenizer.pkl", "tokenizer.path", tokenizer={"path": str(data_dir)})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    refused("no CUDA device", "device", device="cuda")
    lonely = data_dir / "one"
    lonely.mkdir()
    (lonely / "shard_00000.parquet").write_bytes((shards / "shard_00000.parquet").read_bytes())
    refused("has 1 parquet shard", "dataset", dataset=str(lonely))

    run_dir = run_dir_for(by_id, settings, job_id="j1")
    run_dir.mkdir(parents=True)
    (run_dir / "spec.json").write_text(json.dumps({"dataset": "something else"}))
    with pytest.raises(InputError, match="holds a run of a different spec"):
        prepare(TrainSpec(dataset="conv1", **SMALL), settings, job_id="j1")


def test_cli_reports_bad_input_as_an_error_event(data_dir, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"dataset": "missing", **SMALL}))
    cli = subprocess.run(
        [sys.executable, "-m", "openseek_nanochat.cli", "train", str(spec), "--events"], capture_output=True, text=True
    )
    assert cli.returncode == 2
    [error] = [e for e in map(events.parse, cli.stdout.splitlines()) if e]
    assert error["type"] == "error" and error["where"] == "dataset" and "unknown dataset 'missing'" in error["message"]
    spec.write_text(json.dumps({"dataset": "missing", **SMALL, "total_batch_size": 100}))
    cli = subprocess.run(
        [sys.executable, "-m", "openseek_nanochat.cli", "train", str(spec)], capture_output=True, text=True
    )
    assert cli.returncode == 2 and "total_batch_size 100 is not a multiple" in cli.stderr


# --- a real job: tokenizer, then torchrun with 2 CPU ranks ---

JOB = dict(
    tokenizer={"vocab_size": 1024, "max_chars": 600_000},
    depth=2,
    head_dim=64,
    max_seq_len=128,
    device_batch_size=4,
    num_iterations=16,
    eval_every=4,
    eval_tokens=2048,
    save_every=4,
    warmup_steps=2,
    nproc_per_node=2,
    device="cpu",
)


def start_job(spec: dict, path: Path, job_id: str, data_dir: Path) -> subprocess.Popen:
    path.write_text(json.dumps(spec))
    env = {**os.environ, "OPENSEEK_NANOCHAT_JOB_ID": job_id}
    return subprocess.Popen(
        [sys.executable, "-m", "openseek_nanochat.cli", "train", str(path), "--events"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def finish(proc: subprocess.Popen) -> tuple[list[dict], str]:
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-3000:]
    return [e for e in map(events.parse, out.splitlines()) if e], out


def losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["loss"] is not None}


def test_job_trains_on_two_ranks_and_resumes_exactly_after_a_kill(shards, data_dir, tmp_path):
    # 1) the whole job, uninterrupted
    first = start_job({"dataset": "conv1", **JOB}, tmp_path / "a.json", "job-a", data_dir)
    evs, out = finish(first)
    result = [e for e in evs if e["type"] == "result"][-1]
    run_a = data_dir / "runs" / "job-a"
    assert result["run_dir"] == str(run_a) and result["world_size"] == 2 and result["step"] == 16
    assert tok.is_complete(result["tokenizer_dir"]) and tok.load(result["tokenizer_dir"]).get_vocab_size() == 1024
    assert (run_a / "checkpoints" / "optim_000016_rank1.pt").is_file()
    metrics = [e for e in evs if e["type"] == "metric"]
    assert [m["step"] for m in metrics] == list(range(17))
    assert all(m["dt_ms"] > 0 and m["tok_per_sec"] > 0 and m["mfu"] is None for m in metrics[1:])
    bpb = [m["val_bpb"] for m in metrics if m["val_bpb"] is not None]
    assert len(bpb) == 5 and bpb[-1] < bpb[0] - 0.3 and result["val_bpb"] == bpb[-1]
    loss_a = losses(run_a)
    assert sum(loss_a[s] for s in (14, 15, 16)) / 3 < loss_a[1] - 1.0  # the loss falls
    progress = [e for e in evs if e["type"] == "progress" and "step" in e]
    assert progress[-1]["fraction"] == 1.0 and progress[-1]["val_bpb"] == result["val_bpb"]
    assert "step 00016/00016 (100.00%) | loss:" in out and "Step 00016 | Validation bpb:" in out

    # 2) the same training (the first job's tokenizer), killed with SIGKILL once a checkpoint is down, then retried
    spec_b = {"dataset": "conv1", **JOB, "tokenizer": {"path": result["tokenizer_dir"]}}
    run_b = data_dir / "runs" / "job-b"
    job = start_job(spec_b, tmp_path / "b.json", "job-b", data_dir)
    deadline = time.time() + 180
    while not (run_b / "checkpoints" / "meta_000004.json").exists():
        assert job.poll() is None and time.time() < deadline, "the job ended before its first checkpoint"
        time.sleep(0.05)
    tree = psutil.Process(job.pid).children(recursive=True)
    assert len(tree) >= 3  # torchrun and its two ranks
    job.send_signal(signal.SIGKILL)
    job.communicate()
    gone, alive = psutil.wait_procs(tree, timeout=20)
    assert not alive, f"left running after the job was killed: {alive}"
    killed_at = max(losses(run_b))
    assert killed_at < 16

    evs, out = finish(start_job(spec_b, tmp_path / "b.json", "job-b", data_dir))
    resumed_from = train.last_complete_step(run_b / "checkpoints", 2)
    assert resumed_from == 16
    first_redone = min(e["step"] for e in evs if e["type"] == "metric")
    assert f"resuming from step {first_redone - 1}" in out and first_redone - 1 >= 4
    assert "tokenizer: reusing" not in out  # a reused tokenizer is never retrained nor copied
    loss_b = losses(run_b)
    assert sorted(loss_b) == list(range(1, 17))
    for step in range(1, 17):  # same weights, optimizer state, schedule and data: the same losses
        assert loss_b[step] == pytest.approx(loss_a[step], rel=1e-5, abs=1e-6), step


# A stand-in for the process of an earlier attempt still running on another machine: it holds node 0's lock of a run
# dir (fence.py) until it is killed.
HOLD_RUN_DIR = """
import sys, time
from pathlib import Path
from openseek_nanochat.convert import fence
with fence.hold(Path(sys.argv[1]), lock=".train-node0.lock"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_later_attempt_waits_while_an_earlier_one_still_holds_the_run_dir(shards, data_dir, tmp_path):
    """Node 0 of a run dir is trained by one attempt at a time: a later attempt touches nothing there (no spec, no
    tokenizer, no checkpoint) until the earlier attempt's process is gone, says so in its output, then trains."""
    run_dir = data_dir / "runs" / "job-held"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_RUN_DIR, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    spec = {**JOB, "dataset": "conv1", "num_iterations": 4, "eval_every": 4, "save_every": 4}
    job = start_job(spec, tmp_path / "held.json", "job-held", data_dir)
    try:
        waiting = job.stdout.readline()
        assert waiting == (
            f"waiting for the run dir {run_dir} to be free: the processes of an earlier attempt still hold "
            ".train-node0.lock\n"
        )
        time.sleep(1)
        assert job.poll() is None and sorted(p.name for p in run_dir.iterdir()) == [".train-node0.lock"]
    except BaseException:
        job.kill()
        raise
    finally:
        holder.kill()
        holder.wait()
    evs, out = finish(job)
    assert f"the run dir {run_dir} is free after " in out
    assert [e for e in evs if e["type"] == "result"][-1]["step"] == 4


def test_nanochat_tokenizer_trainer_needs_the_nanochat_backend():
    with pytest.raises(
        ValidationError,
        match="tokenizer.trainer 'nanochat' runs a nanochat checkout's tok_train: it needs backend 'nanochat'",
    ):
        TrainSpec(dataset="d", num_iterations=1, tokenizer={"vocab_size": 512, "trainer": "nanochat"})
    spec = TrainSpec(
        dataset="d", num_iterations=1, backend="nanochat", tokenizer={"vocab_size": 512, "trainer": "nanochat"}
    )
    assert spec.tokenizer.trainer == "nanochat"


@pytest.mark.parametrize("command", ["train", "sample", "eval"])
def test_a_bad_spec_file_is_one_line_naming_the_file_and_each_wrong_field(tmp_path, command):
    bad = tmp_path / "bad.json"
    bad.write_text('{"dataset": 3, "train_job": 3}')
    done = subprocess.run(cli(command, str(bad), "--events"), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith(f"error: {bad}: ") and "Input should be a valid string" in line
    [event] = [json.loads(out.split(" ", 1)[1]) for out in done.stdout.splitlines()]
    assert (event["type"], event["where"], f"error: {bad}: {event['message']}") == ("error", str(bad), line)
    missing = subprocess.run(cli(command, str(tmp_path / "nope.json")), capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and missing.stderr.startswith(f"error: {tmp_path / 'nope.json'}: cannot read")
