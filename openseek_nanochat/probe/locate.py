"""Submit-time checks of sample and eval jobs: the train job has a complete checkpoint at the step asked for, each
prompt fits the model's context, the dataset has a validation shard every rank can read. Returns the spec with its
`checkpoint` filled in. No torch here: the API runs these.
"""

from collections.abc import Callable
from pathlib import Path

from openseek_nanochat.errors import InputError
from openseek_nanochat.probe.spec import Checkpoint, EvalSpec, SampleSpec
from openseek_nanochat.settings import Settings
from openseek_nanochat.train import checkpoints, job
from openseek_nanochat.train import tokenizer as tok
from openseek_nanochat.train.spec import TrainSpec


def find_checkpoint(train: TrainSpec, run_dir: Path, step: int | None, train_id: str, state: str) -> Checkpoint:
    """The checkpoint of `step` (default: the latest complete one) of the train job `train_id`, run in `run_dir`."""
    checkpoint_dir = job.checkpoint_dir_for(train, run_dir)
    complete = job.complete_steps(train, run_dir)
    if not complete:
        first = train.save_every if train.save_every > 0 else train.num_iterations
        raise InputError(
            f"train job {train_id} ({state}) has no complete checkpoint yet: its first is written at step {first}",
            where="train_job",
        )
    if step is None:
        step = complete[0]
    elif step not in complete:
        listed = ", ".join(map(str, sorted(complete)[-10:]))
        raise InputError(
            f"train job {train_id} has no complete checkpoint of step {step}; it has steps {listed}", where="step"
        )
    meta = checkpoints.read_meta(checkpoint_dir, step) or {}
    return Checkpoint(
        backend=train.backend,
        run_dir=str(run_dir),
        checkpoint_dir=str(checkpoint_dir),
        tokenizer_dir=str(job.tokenizer_dir_for(train, run_dir)),
        step=step,
        world_size=meta.get("world_size", train.world_size),
        device_batch_size=train.device_batch_size,
        max_seq_len=train.max_seq_len,
        sequence_len=(meta.get("model_config") or {}).get("sequence_len", train.max_seq_len),
        nanochat_dir=train.nanochat_dir,
    )


def prepare_sample(spec: SampleSpec, train: TrainSpec, run_dir: Path, train_id: str, state: str) -> SampleSpec:
    checkpoint = find_checkpoint(train, run_dir, spec.step, train_id, state)
    tokenizer = tok.load(checkpoint.tokenizer_dir)
    for i, tokens in enumerate(tokenizer.encode(list(spec.prompts))):
        # the model must see the whole prompt (after the BOS that starts every document) to add its first token
        if len(tokens) + 1 > checkpoint.sequence_len:
            raise InputError(
                f"the prompt is {len(tokens):,} tokens long; the model reads at most {checkpoint.sequence_len - 1:,} "
                f"(its context is {checkpoint.sequence_len:,} tokens, one of them the document's start)",
                where=f"prompts[{i}]",
            )
    return spec.model_copy(update={"step": checkpoint.step, "checkpoint": checkpoint})


def prepare_eval(
    spec: EvalSpec,
    settings: Settings,
    train: TrainSpec,
    run_dir: Path,
    train_id: str,
    state: str,
    lookup: Callable[[str], str | None] | None = None,
) -> EvalSpec:
    """`lookup` maps a convert job id to its output dir, as for a train job (train/job.py's resolve_dataset)."""
    checkpoint = find_checkpoint(train, run_dir, spec.step, train_id, state)
    dataset = job.resolve_dataset(spec.dataset or train.dataset, settings, lookup)
    job.check_shards(dataset, checkpoint.world_size)
    tokens = spec.tokens or train.eval_tokens
    batch = checkpoint.device_batch_size * checkpoint.max_seq_len * checkpoint.world_size
    if tokens < batch:
        raise InputError(
            f"{tokens:,} tokens is less than one batch on all ranks ({batch:,} tokens: the training's "
            "device_batch_size x max_seq_len x ranks)",
            where="tokens",
        )
    return spec.model_copy(
        update={"step": checkpoint.step, "dataset": str(dataset), "tokens": tokens, "checkpoint": checkpoint}
    )
