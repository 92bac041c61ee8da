"""A nanochat job's commands: the spec as base_train's flags, the torchrun command, the environment.

The job runs `torchrun --standalone --nproc_per_node=N -m scripts.base_train -- <flags>` with the checkout as its
working directory (with `loader: "openseek"`, the project's launcher module instead, which swaps in this project's
data loader first) and the run dir as NANOCHAT_BASE_DIR. The flags come from the spec (spec.TRAINER_FLAGS, where the
spec means what base_train means), then offline defaults, then the resume step, then extra_args: argparse keeps the
last value of a flag given twice.
"""

import os
import sys
from pathlib import Path

import openseek_nanochat
from openseek_nanochat.train import nodes
from openseek_nanochat.train.nanochat.rundir import model_tag
from openseek_nanochat.train.spec import TRAINER_FLAGS, TrainSpec

BASE_TRAIN = "scripts.base_train"
TOK_TRAIN = "scripts.tok_train"
LAUNCHER = "openseek_nanochat.train.nanochat.launcher"

# base_train flag <- the spec field that sets it. These flags belong to the spec: extra_args may not repeat them.
SPEC_FLAGS = {**TRAINER_FLAGS, "--run": "run", "--model-tag": "model_tag"}
RESUME_FLAG = "--resume-from-step"  # the service's: a job resumes from its own checkpoints
# Defaults that keep a job offline (the CORE metric downloads its eval bundle); extra_args may override them.
OFFLINE_DEFAULTS = {"--core-metric-every": "-1"}
WANDB_OFF = "dummy"  # base_train's run name that disables wandb


def uses_tok_train(spec: TrainSpec) -> bool:
    """Whether to train the tokenizer with the checkout's scripts.tok_train instead of this project's trainer.

    Asked for by `"tokenizer": {..., "trainer": "nanochat"}`.
    """
    return getattr(spec.tokenizer, "trainer", "openseek") == "nanochat"  # a reused tokenizer has no trainer


def spec_flags(spec: TrainSpec) -> dict[str, object]:
    """The spec as base_train flag values, where they mean the same thing; the rest as the spec defines them."""
    values = spec.trainer_flags()
    # the spec's -1 is "only at the end"; nanochat's -1 is "never" (it also evaluates at step 0)
    values["--eval-every"] = spec.eval_every if spec.eval_every > 0 else spec.num_iterations
    values["--run"] = spec.run or WANDB_OFF
    values["--model-tag"] = model_tag(spec)
    return values


def base_train_args(spec: TrainSpec, resume_step: int | None = None) -> list[str]:
    """base_train's argv: the spec's flags, offline defaults, the resume step, then extra_args (argparse: last wins)."""
    given = {arg.split("=", 1)[0] for arg in spec.extra_args}
    args = [f"{flag}={value}" for flag, value in spec_flags(spec).items()]
    args += [f"{flag}={value}" for flag, value in OFFLINE_DEFAULTS.items() if flag not in given]
    if resume_step is not None:
        args.append(f"{RESUME_FLAG}={resume_step}")
    return args + list(spec.extra_args)


def torchrun_command(spec: TrainSpec, resume_step: int | None = None) -> list[str]:
    """torchrun (this Python's) running base_train, or the launcher that swaps in the project's loader first."""
    module = LAUNCHER if spec.loader == "openseek" else BASE_TRAIN
    return [sys.executable, "-m", "torch.distributed.run", *nodes.torchrun_flags(spec.nnodes, spec.nproc_per_node),
            "-m", module, "--", *base_train_args(spec, resume_step)]  # fmt: skip


def tok_train_command(vocab_size: int, max_chars: int, doc_cap: int) -> list[str]:
    """nanochat's own tokenizer training; it reads the run dir's train shards and writes <run dir>/tokenizer."""
    return [sys.executable, "-m", TOK_TRAIN, f"--vocab-size={vocab_size}", f"--max-chars={max_chars}",
            f"--doc-cap={doc_cap}"]  # fmt: skip


def use_compile(spec: TrainSpec) -> bool:
    """The spec's `compile`; base_train always calls torch.compile, so "off" disables TorchDynamo for the job."""
    if spec.compile != "auto":
        return spec.compile == "on"
    if spec.device != "auto":
        return spec.device == "cuda"
    import torch

    return torch.cuda.is_available()


def nanochat_environment(run_dir: Path) -> dict[str, str]:
    """Any nanochat script's environment: the run dir as its base dir, nothing written into the checkout."""
    return {
        **os.environ,
        "NANOCHAT_BASE_DIR": str(run_dir),
        "WANDB_DIR": str(run_dir),  # wandb writes ./wandb otherwise, into the checkout
        "PYTHONDONTWRITEBYTECODE": "1",  # no __pycache__ inside the checkout either
        "PYTHONUNBUFFERED": "1",  # lines as they happen
    }


def job_environment(spec: TrainSpec, run_dir: Path) -> dict[str, str]:
    env = nanochat_environment(run_dir)
    if not use_compile(spec):
        env["TORCHDYNAMO_DISABLE"] = "1"  # torch.compile returns the model as it is
    if spec.loader == "openseek":
        # The launcher runs with the checkout as cwd; make this package importable even when it is not installed.
        package_root = str(Path(openseek_nanochat.__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), package_root) if p)
    return env
