"""A nanochat job's run dir, which nanochat reads as its NANOCHAT_BASE_DIR (layout.py names the folders):

    <run dir>/base_data_climbmix/shard_*.parquet   links to the dataset's shards (nanochat: the last is validation)
    <run dir>/tokenizer/                           tokenizer.pkl + token_bytes.pt (this project's, or tok_train's)
    <run dir>/base_checkpoints/<model tag>/        what base_train writes: checkpoints.py's model_, meta_, optim_ files

nanochat's tok_train and base_train write their files in place, so a kill can leave one cut short that merely existing
would not reveal: a tokenizer or a checkpoint counts here only once its files are whole.
"""

import json
import zipfile
from pathlib import Path

from openseek_nanochat.convert.shards import list_shards
from openseek_nanochat.errors import InputError
from openseek_nanochat.train import checkpoints
from openseek_nanochat.train import tokenizer as tok
from openseek_nanochat.train.nanochat import layout
from openseek_nanochat.train.spec import TrainSpec


def model_tag(spec: TrainSpec) -> str:
    return spec.model_tag or f"d{spec.depth}"


def checkpoint_dir(spec: TrainSpec, run_dir: Path) -> Path:
    return Path(run_dir) / layout.CHECKPOINTS_SUBDIR / model_tag(spec)


def tokenizer_dir(run_dir: Path) -> Path:
    return Path(run_dir) / layout.TOKENIZER_SUBDIR


def link_shards(dataset_dir: Path, run_dir: Path) -> list[Path]:
    """<run dir>/base_data_climbmix: a link per shard, same names, so nanochat's sort keeps validation last."""
    if not Path(dataset_dir).is_dir():
        raise InputError(f"{dataset_dir} is not a directory", where="dataset")
    shards = list_shards(dataset_dir)
    if len(shards) < 2:
        raise InputError(
            f"{dataset_dir} has {len(shards)} parquet shard(s); nanochat needs train shards and a validation shard "
            "(the last)",
            where="dataset",
        )
    return _link_files(shards, Path(run_dir) / layout.DATA_SUBDIR)


def link_tokenizer(source: Path, run_dir: Path) -> list[Path]:
    """A reused tokenizer, linked where nanochat reads it."""
    return _link_files([Path(source) / tok.TOKENIZER_FILE, Path(source) / tok.TOKEN_BYTES_FILE], tokenizer_dir(run_dir))


def _link_files(targets: list[Path], folder: Path) -> list[Path]:
    """`folder` holds exactly one link per target (links left from an earlier attempt are replaced)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if old.is_symlink():
            old.unlink()
    links = []
    for target in targets:
        link = folder / target.name
        link.symlink_to(target.resolve())
        links.append(link)
    return links


def tokenizer_ready(tokenizer_dir: Path) -> bool:
    """Both files there and whole."""
    return tok.is_complete(tokenizer_dir) and _whole_torch_file(Path(tokenizer_dir) / tok.TOKEN_BYTES_FILE)


def complete_steps(checkpoint_dir: Path, world_size: int) -> list[int]:
    """The steps with every file base_train writes for them, whole; latest first."""
    return checkpoints.complete_steps(checkpoint_dir, world_size, whole=_whole_checkpoint_file)


def last_complete_step(checkpoint_dir: Path, world_size: int) -> int | None:
    """The latest step with every file base_train writes for it, whole."""
    return checkpoints.last_complete_step(checkpoint_dir, world_size, whole=_whole_checkpoint_file)


def _whole_checkpoint_file(path: Path) -> bool:
    if path.suffix == ".json":
        try:
            json.loads(path.read_text())
            return True
        except (OSError, json.JSONDecodeError):
            return False
    return _whole_torch_file(path)


def _whole_torch_file(path: Path) -> bool:
    """torch.save writes a zip whose directory is at the very end: a file cut short has none."""
    return path.is_file() and zipfile.is_zipfile(path)
