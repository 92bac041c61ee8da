"""The training spec: the body of POST /jobs/train, the file `openseek-nanochat train` reads, what the job runs.

Fields are named like nanochat's `scripts.base_train` flags (dashes become underscores). Unknown fields are errors.
"""

from typing import Annotated, Literal, Union

from pydantic import ConfigDict, Discriminator, Field, Tag, model_validator

from openseek_nanochat.convert.spec import StrictModel


class TrainTokenizer(StrictModel):
    """Train a BPE tokenizer on the dataset's train shards (nanochat's tok_train)."""

    vocab_size: int = Field(default=32768, ge=265, description="Including nanochat's 9 special tokens (nanochat: 32768).")
    max_chars: int = Field(default=2_000_000_000, gt=0, description="Train on about this many characters (nanochat: 2B).")
    doc_cap: int = Field(default=10_000, gt=0, description="Crop each document to this many characters first.")
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
    Union[Annotated[TrainTokenizer, Tag("train")], Annotated[ReuseTokenizer, Tag("reuse")]],
    Discriminator(_tokenizer_kind),
]


class TrainSpec(StrictModel):
    """What to train on and how. Batch sizes are in tokens; a step is one optimizer update."""

    dataset: str = Field(description="A convert job id, or a directory of nanochat shards (the last is validation).")
    backend: Literal["builtin", "nanochat"] = Field(
        default="builtin", description="builtin: this project's GPT trainer; nanochat: a nanochat checkout's base_train."
    )
    tokenizer: TokenizerChoice = Field(
        default_factory=TrainTokenizer,
        description="{vocab_size, max_chars, doc_cap} to train one on the dataset, or {path} to reuse one.",
    )

    depth: int = Field(default=20, ge=1, le=128, description="Transformer layers; width = depth * aspect_ratio.")
    aspect_ratio: int = Field(default=64, ge=1)
    head_dim: int = Field(default=128, ge=8)
    max_seq_len: int = Field(default=2048, ge=8, description="Context length in tokens.")
    device_batch_size: int = Field(default=32, ge=1, description="Sequences per rank per micro-batch.")
    total_batch_size: int | None = Field(
        default=None, ge=1,
        description="Tokens per optimizer step, a multiple of device_batch_size * max_seq_len * nproc_per_node "
        "(gradients accumulate over the micro-batches). Default: exactly one micro-batch per rank.",
    )
    num_iterations: int = Field(ge=1, description="Optimizer steps.")
    eval_every: int = Field(default=250, description="Validation bits per byte every N steps and at the end (-1: only at the end).")
    eval_tokens: int = Field(default=20 * 524288, ge=1, description="Validation tokens per evaluation (all ranks).")
    save_every: int = Field(default=-1, description="Checkpoint every N steps and at the end (-1: only at the end).")

    embedding_lr: float = Field(default=0.3, gt=0)
    unembedding_lr: float = Field(default=0.008, gt=0)
    matrix_lr: float = Field(default=0.02, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=40, ge=0)
    warmdown_ratio: float = Field(default=0.65, ge=0, le=1)
    final_lr_frac: float = Field(default=0.05, ge=0, le=1)

    nproc_per_node: int = Field(default=1, ge=1, le=64, description="Ranks (processes) on this machine.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 42
    compile: Literal["auto", "on", "off"] = Field(default="auto", description="torch.compile (auto: on CUDA only).")

    # the nanochat backend
    nanochat_dir: str | None = Field(default=None, description="nanochat checkout (backend 'nanochat').")
    loader: Literal["nanochat", "openseek"] = Field(
        default="nanochat", description="Backend 'nanochat': its own data loader, or this project's drop-in one."
    )
    extra_args: list[str] = Field(default_factory=list, description="More base_train flags (backend 'nanochat').")
    run: str | None = Field(default=None, description="wandb run name (backend 'nanochat'); unset: wandb off.")
    model_tag: str | None = Field(default=None, description="Checkpoint dir name (backend 'nanochat'; default d<depth>).")

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
    def tokens_per_micro_batch(self) -> int:
        return self.device_batch_size * self.max_seq_len * self.nproc_per_node

    @model_validator(mode="after")
    def _consistent(self):
        if getattr(self.tokenizer, "trainer", "openseek") == "nanochat" and self.backend != "nanochat":
            raise ValueError("tokenizer.trainer 'nanochat' runs a nanochat checkout's tok_train: it needs backend 'nanochat'")
        micro = self.tokens_per_micro_batch
        if self.total_batch_size is not None and self.total_batch_size % micro:
            lower = max(micro, self.total_batch_size // micro * micro)
            raise ValueError(
                f"total_batch_size {self.total_batch_size:,} is not a multiple of device_batch_size x max_seq_len x "
                f"nproc_per_node = {self.device_batch_size} x {self.max_seq_len} x {self.nproc_per_node} = {micro:,}; "
                f"use e.g. {lower:,} or {lower + micro:,}"
            )
        if self.eval_tokens < micro:
            raise ValueError(f"eval_tokens {self.eval_tokens:,} is less than one micro-batch on all ranks ({micro:,} tokens)")
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
