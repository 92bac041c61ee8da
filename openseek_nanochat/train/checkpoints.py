"""Checkpoints in nanochat's file layout, shared by the builtin trainer and the nanochat backend.

A checkpoint of step s is `model_<s>.pt` (the weights), `optim_<s>_rank<r>.pt` (each rank's optimizer state) and
`meta_<s>.json` (step, loss, loader state, ...), steps written with six digits. The builtin trainer writes the meta
last, so a step counts once its meta and every rank's files are there. No torch import: workers and job processes
ask here before deciding what to start.
"""

import json
import re
from collections.abc import Callable
from pathlib import Path

SUBDIR = "checkpoints"  # the builtin trainer's, in its run dir (nanochat's: layout.CHECKPOINTS_SUBDIR/<model tag>)
_META = re.compile(r"meta_(\d+)\.json")


def model_file(step: int) -> str:
    return f"model_{step:06d}.pt"


def optim_file(step: int, rank: int) -> str:
    return f"optim_{step:06d}_rank{rank}.pt"


def meta_file(step: int) -> str:
    return f"meta_{step:06d}.json"


def step_files(step: int, world_size: int) -> list[str]:
    return [meta_file(step), model_file(step)] + [optim_file(step, rank) for rank in range(world_size)]


def read_meta(checkpoint_dir: Path, step: int) -> dict | None:
    """The meta of a step; None when it is missing or cut short."""
    try:
        return json.loads((Path(checkpoint_dir) / meta_file(step)).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def complete_steps(checkpoint_dir: Path, world_size: int, whole: Callable[[Path], bool] = Path.is_file) -> list[int]:
    """The steps whose model, meta and per-rank optimizer files all pass `whole` (default: they exist), latest first."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        return []
    steps = sorted((int(m.group(1)) for f in checkpoint_dir.iterdir() if (m := _META.fullmatch(f.name))), reverse=True)
    return [step for step in steps if all(whole(checkpoint_dir / name) for name in step_files(step, world_size))]


def last_complete_step(
    checkpoint_dir: Path, world_size: int, whole: Callable[[Path], bool] = Path.is_file
) -> int | None:
    """The latest of `complete_steps`, or None."""
    steps = complete_steps(checkpoint_dir, world_size, whole)
    return steps[0] if steps else None
