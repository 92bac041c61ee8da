"""The newest complete checkpoint in nanochat's file layout (`model_<step>.pt`, `meta_<step>.json`,
`optim_<step>_rank<r>.pt`), shared by the builtin trainer and the nanochat backend. No torch import: workers and
job processes call it before deciding what to start."""

import re
from pathlib import Path
from typing import Callable


def last_complete_step(checkpoint_dir: Path, world_size: int,
                       whole: Callable[[Path], bool] = Path.is_file) -> int | None:
    """The latest step whose model, meta and per-rank optimizer files all pass `whole` (default: they exist)."""
    if not checkpoint_dir.is_dir():
        return None
    steps = sorted((int(m.group(1)) for f in checkpoint_dir.iterdir() if (m := re.fullmatch(r"meta_(\d+)\.json", f.name))),
                   reverse=True)
    for step in steps:
        files = [f"meta_{step:06d}.json", f"model_{step:06d}.pt"] + \
                [f"optim_{step:06d}_rank{r}.pt" for r in range(world_size)]
        if all(whole(checkpoint_dir / f) for f in files):
            return step
    return None
