"""What a sample or eval job asks of a train job's checkpoint: the bodies of POST /jobs/sample and POST /jobs/eval,
the files `openseek-nanochat sample|eval` read, what the job runs.

A user names the train job (and a step, or the latest complete one); the submit-time check (locate.py) fills
`checkpoint` with where the files are and how the run was shaped, so the job process needs no database.
"""

from typing import Annotated, Literal

from pydantic import Field

from openseek_nanochat.convert.spec import Seed, StrictModel
from openseek_nanochat.train.spec import MAX_STEPS, MAX_TOKENS

MAX_SAMPLE_TOKENS = 1024  # tokens one completion may add: sampling recomputes the whole context for every token
MAX_PROMPTS = 16
MAX_PROMPT_CHARS = 8192

JobRef = Annotated[str, Field(min_length=1, max_length=64, description="The id of a train job.")]
Step = Annotated[
    int | None, Field(default=None, ge=0, le=MAX_STEPS, description="A checkpointed step; default: the latest complete")
]
Device = Literal["auto", "cpu", "cuda"]


class Checkpoint(StrictModel):
    """A train job's checkpoint as the submit found it (leave it out: it is filled in at submit)."""

    backend: Literal["builtin", "nanochat"]
    run_dir: str
    checkpoint_dir: str
    tokenizer_dir: str
    step: int
    world_size: int = Field(description="Ranks the training ran on: an eval reads the validation shard as they did.")
    device_batch_size: int
    max_seq_len: int
    sequence_len: int = Field(description="The model's context in tokens.")
    nanochat_dir: str | None = None


class SampleSpec(StrictModel):
    """Complete each prompt with text sampled from a checkpoint. The same seed gives the same text."""

    train_job: JobRef
    step: Step = None
    prompts: list[Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]] = Field(
        min_length=1, max_length=MAX_PROMPTS, description="Texts to continue; each starts a new document."
    )
    max_tokens: int = Field(default=64, ge=1, le=MAX_SAMPLE_TOKENS, description="Tokens to add to each prompt.")
    temperature: float = Field(default=1.0, ge=0, le=100, description="0: always the likeliest token.")
    top_k: int | None = Field(default=None, ge=1, le=2**20, description="Sample among the k likeliest tokens only.")
    seed: Seed = 42
    device: Device = "auto"
    checkpoint: Checkpoint | None = None


class EvalSpec(StrictModel):
    """Bits per byte of a checkpoint on the validation shard of a converted dataset."""

    train_job: JobRef
    step: Step = None
    dataset: str | None = Field(
        default=None, description="A convert job id or a shard dir; default: the dataset the model was trained on."
    )
    tokens: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TOKENS,
        description="Validation tokens to read (all ranks); default: the training's "
        "eval_tokens, so the number compares with the training's own val_bpb.",
    )
    device: Device = "auto"
    checkpoint: Checkpoint | None = None
