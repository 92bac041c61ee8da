"""Running a prepared nanochat job (train/job.py calls `run` in the job process; preflight.py prepared the spec).

The run dir is set up first (the dataset's shards linked, the tokenizer reused, found or trained), then torchrun runs
base_train once (command.py), its output copied to ours and parsed into metric and progress events (output.py).
Started again, a job resumes from its last complete checkpoint with --resume-from-step; a job whose checkpoint
already has the last step only reports it.
"""

import time
from collections.abc import Callable
from pathlib import Path

from openseek_nanochat import events, procs
from openseek_nanochat.errors import InputError
from openseek_nanochat.train import checkpoints, nodes
from openseek_nanochat.train import tokenizer as tok
from openseek_nanochat.train.nanochat import command, output, rundir
from openseek_nanochat.train.nanochat.output import OutputParser
from openseek_nanochat.train.spec import ReuseTokenizer, TrainSpec


def run(spec: TrainSpec, job_dir, emit: Callable[..., None] = events.emit) -> dict:
    """Run a prepared nanochat job in `job_dir` (its run dir), resuming whatever it holds; return the result.

    Raises InputError for bad data, RuntimeError when nanochat fails (its output, copied to ours, says why).
    """
    if not spec.nanochat_dir:
        raise InputError("no nanochat checkout: the spec was not prepared", where="nanochat_dir")
    nanochat_dir = Path(spec.nanochat_dir)
    run_dir = Path(job_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    rundir.link_shards(Path(spec.dataset), run_dir)
    tokenizer_dir = ensure_tokenizer(spec, run_dir, emit)

    checkpoint_dir = rundir.checkpoint_dir(spec, run_dir)
    saved_step = rundir.last_complete_step(checkpoint_dir, spec.world_size)
    if saved_step is not None and saved_step >= spec.num_iterations:
        print(f"nothing to do: {checkpoint_dir} already has step {saved_step}", flush=True)
    else:
        if saved_step is not None:
            print(f"resuming from the checkpoint of step {saved_step} in {checkpoint_dir}", flush=True)
        train(spec, run_dir, saved_step, emit)
        saved_step = rundir.last_complete_step(checkpoint_dir, spec.world_size)
        if saved_step is None or saved_step < spec.num_iterations:
            raise RuntimeError(
                f"nanochat's base_train ended without a checkpoint of step {spec.num_iterations} in {checkpoint_dir}"
            )

    meta = checkpoints.read_meta(checkpoint_dir, saved_step) or {}
    result = {
        "backend": "nanochat",
        "run_dir": str(run_dir),
        "nanochat_dir": str(nanochat_dir),
        "tokenizer_dir": str(tokenizer_dir),
        "checkpoint_dir": str(checkpoint_dir),
        "world_size": spec.world_size,
        "nnodes": spec.nnodes,
        "step": meta.get("step", saved_step),
        "num_iterations": spec.num_iterations,
        "val_bpb": meta.get("val_bpb"),
        "min_val_bpb": meta.get("loop_state", {}).get("min_val_bpb"),
    }
    emit(
        "progress",
        phase="done",
        step=result["step"],
        num_iterations=spec.num_iterations,
        fraction=1.0,
        val_bpb=result["val_bpb"],
        message="trained",
    )
    emit("result", **result)
    return result


def train(spec: TrainSpec, run_dir: Path, resume_step: int | None, emit=events.emit) -> OutputParser:
    """torchrun base_train once, its output parsed into metric and (at most every 2 s) progress events."""
    parser = OutputParser(spec.matrix_lr, spec.num_iterations, resume_step)
    throttle = events.Throttle(2.0)
    step = resume_step or 0
    emit(
        "progress",
        phase="train",
        message="starting nanochat's base_train",
        step=step,
        num_iterations=spec.num_iterations,
        fraction=step / spec.num_iterations,
    )

    def on_line(line: str) -> None:
        moved = parser.feed(line)
        for record in parser.pop_records():
            emit("metric", **record)
        if moved == "val" or (moved == "step" and throttle.ready()):
            emit("progress", **parser.progress())

    returncode, failure = procs.stream(
        command.torchrun_command(spec, resume_step),
        cwd=Path(spec.nanochat_dir),
        env=command.job_environment(spec, run_dir),
        on_line=on_line,
        failure=output.failure,
    )
    for record in parser.close():
        emit("metric", **record)
    if returncode != 0:
        raise RuntimeError(
            f"nanochat's base_train failed (torchrun exit code {returncode})" + (f": {failure}" if failure else "")
        )
    return parser


def ensure_tokenizer(spec: TrainSpec, run_dir: Path, emit=events.emit) -> Path:
    """Put the tokenizer where nanochat reads it, <run dir>/tokenizer; return the directory it comes from."""
    target = rundir.tokenizer_dir(run_dir)
    if isinstance(spec.tokenizer, ReuseTokenizer):
        source = Path(spec.tokenizer.path)
        rundir.link_tokenizer(source, run_dir)
        return source
    if rundir.tokenizer_ready(target):
        print(f"tokenizer: reusing {target}", flush=True)
        return target
    if nodes.this_node() != 0:  # node 0 trains it into the shared run dir
        emit("progress", phase="tokenizer", message="waiting for node 0's tokenizer", fraction=0.0)
        while not rundir.tokenizer_ready(target):
            time.sleep(1.0)
        return target
    options = spec.tokenizer
    emit("progress", phase="tokenizer", message="training the tokenizer", fraction=0.0)
    if command.uses_tok_train(spec):
        train_nanochat_tokenizer(
            Path(spec.nanochat_dir), run_dir, options.vocab_size, options.max_chars, options.doc_cap
        )
    else:
        try:
            stats = tok.train_from_shards(spec.dataset, target, options.vocab_size, options.max_chars, options.doc_cap)
        except ValueError as e:
            raise InputError(str(e), where="tokenizer") from None
        print(
            f"tokenizer: {stats['vocab_size']:,} tokens from {stats['docs']:,} docs in {stats['seconds']:.1f}s",
            flush=True,
        )
    return target


def train_nanochat_tokenizer(nanochat_dir: Path, run_dir: Path, vocab_size: int, max_chars: int, doc_cap: int) -> Path:
    """nanochat's own scripts.tok_train on the linked train shards; it writes <run dir>/tokenizer."""
    returncode, failure = procs.stream(
        command.tok_train_command(vocab_size, max_chars, doc_cap),
        cwd=nanochat_dir,
        env=command.nanochat_environment(run_dir),
        failure=output.failure,
    )
    target = rundir.tokenizer_dir(run_dir)
    if returncode != 0 or not rundir.tokenizer_ready(target):
        reason = f": {failure}" if failure else ""
        raise RuntimeError(f"nanochat's tok_train failed (exit code {returncode}){reason}")
    return target
