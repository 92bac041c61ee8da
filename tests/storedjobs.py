"""Train jobs written into a service's database through the real store, with their metrics file where a worker
writes it: for tests of what the API and the dashboard show of a training, without spending a minute training.
A running one moves on through the worker's own calls (`queue.heartbeat` with new progress, metrics appended). A
stored job can be given a checkpoint (an untrained model of its shape) for sample jobs to load, and eval jobs.
"""

import json
import math
from datetime import timedelta
from pathlib import Path

from openseek_nanochat.settings import Settings
from openseek_nanochat.train.spec import TrainSpec

from app.jobs import files as jobfiles
from app.jobs import queue, store
from app.jobs.db import make_engine
from app.jobs.models import FINISHED, Job, JobState, new_job_id, utcnow

WORKER_ID = "stored-jobs-worker"  # the worker a running stored job belongs to


def _progress(spec: dict, records: list[dict]) -> dict:
    """The progress a worker reports after these records, as the trainer's progress events have it."""
    last = records[-1]
    evaluated = [r["val_bpb"] for r in records if r["val_bpb"] is not None]
    return {
        "phase": "train",
        "step": last["step"],
        "num_iterations": spec["num_iterations"],
        "fraction": last["step"] / spec["num_iterations"],
        "loss": last["loss"],
        "tok_per_sec": last["tok_per_sec"],
        "val_bpb": evaluated[-1] if evaluated else None,
        "eta_s": 0.0,
    }


def train_metrics(num_iterations: int, eval_every: int) -> list[dict]:
    """Records as the trainer writes them: step 0 is the first evaluation, then one per step, a falling loss."""
    records = []
    for step in range(num_iterations + 1):
        evaluated = step % eval_every == 0 or step == num_iterations
        records.append(
            {
                "step": step,
                "loss": None if step == 0 else round(3.2 + 6.0 * math.exp(-step / 6) + 0.05 * math.sin(step), 4),
                "lr": None if step == 0 else 0.02,
                "dt_ms": None if step == 0 else 180.0 + step % 3,
                "tok_per_sec": None if step == 0 else 22_000.0 + 100 * (step % 5),
                "mfu": None,
                "val_bpb": round(2.9 - 1.2 * (1 - math.exp(-step / 8)), 4) if evaluated else None,
            }
        )
    return records


def small_train_spec(dataset: Path, num_iterations: int = 20, eval_every: int = 5) -> dict:
    """A small CPU training, as POST /jobs/train stores it."""
    return TrainSpec(
        dataset=str(dataset),
        depth=4,
        max_seq_len=256,
        device_batch_size=8,
        num_iterations=num_iterations,
        eval_every=eval_every,
        eval_tokens=8192,
        nproc_per_node=2,
        device="cpu",
        tokenizer={"vocab_size": 1024},
    ).model_dump(mode="json")


def add_train_job(
    data_dir: Path, dataset: Path, num_iterations: int = 20, eval_every: int = 5, state: JobState = JobState.succeeded
) -> tuple[str, list[dict]]:
    """A train job in `state` that logged every step up to `num_iterations`. Returns its id and metric records."""
    records = train_metrics(num_iterations, eval_every)
    return insert_train_job(data_dir, small_train_spec(dataset, num_iterations, eval_every), records, state), records


def insert_train_job(
    data_dir: Path,
    spec: dict,
    records: list[dict],
    state: JobState,
    job_id: str | None = None,
    duration: timedelta = timedelta(minutes=3),
) -> str:
    """A train job row whose progress and result agree with its metric records, and its metrics file."""
    settings = Settings(data_dir=data_dir)
    last = records[-1]
    now = utcnow()
    job = Job(
        id=job_id or new_job_id(),
        kind="train",
        state=state,
        spec=spec,
        progress=_progress(spec, records),
        result={"val_bpb": last["val_bpb"], "step": last["step"]} if state in FINISHED else None,
        attempts=1,
        worker_id=None if state in FINISHED else WORKER_ID,
        created_at=now - duration,
        started_at=now - duration,
        finished_at=now if state in FINISHED else None,
    )
    engine = make_engine(settings.sqlalchemy_url)
    try:
        store.create_job(engine, job)
    finally:
        engine.dispose()
    folder = jobfiles.job_dir(settings, job.id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / jobfiles.METRICS).write_text("".join(json.dumps(r) + "\n" for r in records))
    return job.id


def advance_train_job(data_dir: Path, job_id: str, spec: dict, new_records: list[dict]) -> None:
    """A running stored job logs more steps: its metrics grow and its worker heartbeats the new progress."""
    settings = Settings(data_dir=data_dir)
    folder = jobfiles.job_dir(settings, job_id)
    with open(folder / jobfiles.METRICS, "a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in new_records))
    claim = queue.Claim(job_id=job_id, kind="train", spec=spec, worker_id=WORKER_ID, attempt=1)
    engine = make_engine(settings.sqlalchemy_url)
    try:
        progress = _progress(spec, jobfiles.read_metrics(folder))
        assert queue.heartbeat(engine, claim, lease_seconds=300, progress=progress) == "running"
    finally:
        engine.dispose()


def add_checkpoint(data_dir: Path, job_id: str, spec: dict, step: int, docs: list[str], vocab_size: int = 512) -> Path:
    """A train job's run dir as its trainer leaves it at `step`, without the training: a tokenizer trained on `docs`
    and the builtin GPT of the spec's shape, freshly initialised, in checkpoints.py's files. Returns the run dir."""
    import torch

    from openseek_nanochat.train import checkpoints
    from openseek_nanochat.train import tokenizer as tok
    from openseek_nanochat.train.builtin.model import GPT, config_for_depth

    run_dir = Path(data_dir) / "runs" / job_id
    tok.save(tok.train_encoding(iter(docs), vocab_size), run_dir / "tokenizer")
    torch.manual_seed(0)
    config = config_for_depth(spec["depth"], vocab_size, spec["max_seq_len"], spec["aspect_ratio"], spec["head_dim"])
    model = GPT(config)
    model.init_weights()
    folder = run_dir / checkpoints.SUBDIR
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / checkpoints.model_file(step))
    for rank in range(spec["nproc_per_node"]):
        torch.save([], folder / checkpoints.optim_file(step, rank))
    meta = {"step": step, "model_config": vars(config), "world_size": spec["nproc_per_node"], "val_bpb": None}
    (folder / checkpoints.meta_file(step)).write_text(json.dumps(meta))
    return run_dir


def add_eval_job(data_dir: Path, train_id: str, step: int, dataset: str, tokens: int, val_bpb: float) -> str:
    """A finished eval job of a train job, as a worker records it."""
    settings = Settings(data_dir=data_dir)
    spec = {"train_job": train_id, "step": step, "dataset": dataset, "tokens": tokens, "device": "auto"}
    now = utcnow()
    job = Job(
        id=new_job_id(),
        kind="eval",
        state=JobState.succeeded,
        spec=spec,
        result={"train_job": train_id, "step": step, "dataset": dataset, "tokens": tokens, "val_bpb": val_bpb},
        attempts=1,
        created_at=now,
        started_at=now,
        finished_at=now,
    )
    engine = make_engine(settings.sqlalchemy_url)
    try:
        store.create_job(engine, job)
    finally:
        engine.dispose()
    return job.id
