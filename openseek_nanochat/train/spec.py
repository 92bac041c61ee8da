"""The training spec: the body of POST /jobs/train, the file `openseek-nanochat train` reads, what the job runs.

Fields are named like nanochat's `scripts.base_train` flags (dashes become underscores); TRAINER_FLAGS says which field
sets which flag of either trainer. Unknown fields are errors.
"""

from typing import Annotated, Literal

from pydantic import ConfigDict, Discriminator, Field, Tag, model_validator

from openseek_nanochat.convert.spec import MAX_CHARS, Seed, StrictModel

# Upper bounds stop absurd values at the door (see convert/spec.py); each is far above any real run.
MAX_STEPS = 10**9
MAX_TOKENS = 2**50  # tokens per step or per evaluation
MAX_LR = 100.0
MAX_NODES = 1024


class TrainTokenizer(StrictModel):
    """Train a BPE tokenizer on the dataset's train shards (nanochat's tok_train)."""

    vocab_size: int = Field(
        default=32768, ge=265, le=2**20, description="Including nanochat's 9 special tokens (nanochat: 32768)."
    )
    max_chars: int = Field(
        default=2_000_000_000, gt=0, le=MAX_CHARS, description="Train on about this many characters (nanochat: 2B)."
    )
    doc_cap: int = Field(
        default=10_000, gt=0, le=10**9, description="Crop each document to this many characters first."
    )
    trainer: Literal["openseek", "nanochat"] = Field(
        default="openseek", description="'nanochat': the checkout's own scripts.tok_train (backend 'nanochat' only)."
    )


class ReuseTokenizer(StrictModel):
    """Use an existing nanochat-format tokenizer directory (tokenizer.pkl and token_bytes.pt)."""

    path: str


def _tokenizer_kind(value) -> str:
    """`path` given means reuse; anything else is training options (so errors name the right fields)."""
    has_path = "path" in value if isinstance(value, dict) else isinstance(value, ReuseTokenizer)
    return "reuse" if has_path else "train"


TokenizerChoice = Annotated[
    Annotated[TrainTokenizer, Tag("train")] | Annotated[ReuseTokenizer, Tag("reuse")],
    Discriminator(_tokenizer_kind),
]


# The trainer flags a spec field sets, the same for both trainers (the builtin trainer's flags are base_train's).
TRAINER_FLAGS = {
    "--device-type": "device",
    "--depth": "depth",
    "--aspect-ratio": "aspect_ratio",
    "--head-dim": "head_dim",
    "--max-seq-len": "max_seq_len",
    "--num-iterations": "num_iterations",
    "--device-batch-size": "device_batch_size",
    "--total-batch-size": "total_batch_size",
    "--embedding-lr": "embedding_lr",
    "--unembedding-lr": "unembedding_lr",
    "--matrix-lr": "matrix_lr",
    "--weight-decay": "weight_decay",
    "--warmup-steps": "warmup_steps",
    "--warmdown-ratio": "warmdown_ratio",
    "--final-lr-frac": "final_lr_frac",
    "--eval-every": "eval_every",
    "--eval-tokens": "eval_tokens",
    "--save-every": "save_every",
}


class TrainSpec(StrictModel):
    """What to train on and how. Batch sizes are in tokens; a step is one optimizer update."""

    dataset: str = Field(description="A convert job id, or a directory of nanochat shards (the last is validation).")
    backend: Literal["builtin", "nanochat"] = Field(
        default="builtin",
        description="builtin: this project's GPT trainer; nanochat: a nanochat checkout's base_train.",
    )
    tokenizer: TokenizerChoice = Field(
        default_factory=TrainTokenizer,
        description="{vocab_size, max_chars, doc_cap} to train one on the dataset, or {path} to reuse one.",
    )

    depth: int = Field(default=20, ge=1, le=128, description="Transformer layers; width = depth * aspect_ratio.")
    aspect_ratio: int = Field(default=64, ge=1, le=1024)
    head_dim: int = Field(default=128, ge=8, le=1024)
    max_seq_len: int = Field(default=2048, ge=8, le=2**20, description="Context length in tokens.")
    device_batch_size: int = Field(default=32, ge=1, le=2**16, description="Sequences per rank per micro-batch.")
    total_batch_size: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TOKENS,
        description="Tokens per optimizer step, a multiple of device_batch_size * max_seq_len * nproc_per_node "
        "(gradients accumulate over the micro-batches). Default: exactly one micro-batch per rank.",
    )
    num_iterations: int = Field(ge=1, le=MAX_STEPS, description="Optimizer steps.")
    eval_every: int = Field(
        default=250,
        le=MAX_STEPS,
        description="Validation bits per byte every N steps and at the end (-1: only at the end).",
    )
    eval_tokens: int = Field(
        default=20 * 524288, ge=1, le=MAX_TOKENS, description="Validation tokens per evaluation (all ranks)."
    )
    save_every: int = Field(
        default=-1, le=MAX_STEPS, description="Checkpoint every N steps and at the end (-1: only at the end)."
    )

    embedding_lr: float = Field(default=0.3, gt=0, le=MAX_LR)
    unembedding_lr: float = Field(default=0.008, gt=0, le=MAX_LR)
    matrix_lr: float = Field(default=0.02, gt=0, le=MAX_LR)
    weight_decay: float = Field(default=0.0, ge=0, le=MAX_LR)
    warmup_steps: int = Field(default=40, ge=0, le=MAX_STEPS)
    warmdown_ratio: float = Field(default=0.65, ge=0, le=1)
    final_lr_frac: float = Field(default=0.05, ge=0, le=1)

    nproc_per_node: int = Field(default=1, ge=1, le=64, description="Ranks (processes) on each node.")
    nnodes: int = Field(
        default=1,
        ge=1,
        le=MAX_NODES,
        description="Machines (workers) the job runs on at once, each with nproc_per_node ranks; over 1, the job is "
        "gang-scheduled: it starts once that many workers have each taken a node, with torchrun's c10d rendezvous.",
    )
    gang_timeout_s: float = Field(
        default=600.0,
        gt=0,
        le=7 * 86400,
        description="nnodes > 1: nodes taken but not all within this many seconds are given back (and taken again "
        "later), so that a half-gathered job never holds workers that other jobs could use.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: Seed = 42
    compile: Literal["auto", "on", "off"] = Field(default="auto", description="torch.compile (auto: on CUDA only).")

    # the nanochat backend
    nanochat_dir: str | None = Field(default=None, description="nanochat checkout (backend 'nanochat').")
    loader: Literal["nanochat", "openseek"] = Field(
        default="nanochat", description="Backend 'nanochat': its own data loader, or this project's drop-in one."
    )
    extra_args: list[str] = Field(default_factory=list, description="More base_train flags (backend 'nanochat').")
    run: str | None = Field(default=None, description="wandb run name (backend 'nanochat'); unset: wandb off.")
    model_tag: str | None = Field(
        default=None, description="Checkpoint dir name (backend 'nanochat'; default d<depth>)."
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "dataset": "9f1c2d4e",
                    "tokenizer": {"vocab_size": 32768},
                    "depth": 12,
                    "max_seq_len": 2048,
                    "device_batch_size": 32,
                    "total_batch_size": 524288,
                    "num_iterations": 2000,
                    "eval_every": 250,
                    "save_every": 500,
                    "nproc_per_node": 8,
                    "device": "cuda",
                }
            ]
        },
    )

    @property
    def world_size(self) -> int:
        """Ranks over all nodes."""
        return self.nnodes * self.nproc_per_node

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.device_batch_size * self.max_seq_len * self.world_size

    @model_validator(mode="after")
    def _consistent(self):
        if getattr(self.tokenizer, "trainer", "openseek") == "nanochat" and self.backend != "nanochat":
            raise ValueError(
                "tokenizer.trainer 'nanochat' runs a nanochat checkout's tok_train: it needs backend 'nanochat'"
            )
        micro = self.tokens_per_micro_batch
        if self.total_batch_size is not None and self.total_batch_size % micro:
            lower = max(micro, self.total_batch_size // micro * micro)
            ranks, values = "nproc_per_node", f"{self.nproc_per_node}"
            if self.nnodes > 1:
                ranks, values = "nnodes x nproc_per_node", f"{self.nnodes} x {self.nproc_per_node}"
            raise ValueError(
                f"total_batch_size {self.total_batch_size:,} is not a multiple of device_batch_size x max_seq_len x "
                f"{ranks} = {self.device_batch_size} x {self.max_seq_len} x {values} = {micro:,}; "
                f"use e.g. {lower:,} or {lower + micro:,}"
            )
        if self.eval_tokens < micro:
            raise ValueError(
                f"eval_tokens {self.eval_tokens:,} is less than one micro-batch on all ranks ({micro:,} tokens)"
            )
        if self.eval_every == 0 or self.eval_every < -1:
            raise ValueError("eval_every must be a positive number of steps, or -1 (only at the end)")
        if self.save_every == 0 or self.save_every < -1:
            raise ValueError("save_every must be a positive number of steps, or -1 (only at the end)")
        if self.backend == "builtin":
            nanochat_only = [name for name in ("nanochat_dir", "run", "model_tag") if getattr(self, name) is not None]
            nanochat_only += ["extra_args"] if self.extra_args else []
            if nanochat_only:
                raise ValueError(f"{', '.join(nanochat_only)}: only for backend 'nanochat'")
        return self

    def total_tokens_per_step(self) -> int:
        return self.total_batch_size or self.tokens_per_micro_batch

    def trainer_flags(self) -> dict[str, object]:
        """TRAINER_FLAGS with this spec's values, where the spec's meaning needs no translation for either trainer."""
        values = {flag: getattr(self, field) for flag, field in TRAINER_FLAGS.items()}
        values["--device-type"] = "" if self.device == "auto" else self.device  # "": the trainer picks the device
        values["--total-batch-size"] = self.total_tokens_per_step()  # the spec's default, not a trainer's auto-sizing
        return values
