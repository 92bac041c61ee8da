"""Where nanochat keeps its files: the base dir and the folders under it.

nanochat reads `$NANOCHAT_BASE_DIR` (default `~/.cache/nanochat`, nanochat/common.py) and finds there its shards
(nanochat/dataset.py), its tokenizer (nanochat/tokenizer.py) and base_train's checkpoints (scripts/base_train.py).
The drop-in loader and tokenizer look where nanochat looks, and a nanochat job's run dir is such a base dir
(rundir.py): all of them ask here.
"""

import os
from pathlib import Path

DATA_SUBDIR = "base_data_climbmix"
LEGACY_DATA_SUBDIR = "base_data"  # nanochat falls back to it when base_data_climbmix does not exist
TOKENIZER_SUBDIR = "tokenizer"
CHECKPOINTS_SUBDIR = "base_checkpoints"


def base_dir() -> Path:
    return Path(os.environ.get("NANOCHAT_BASE_DIR") or Path("~/.cache/nanochat").expanduser())
