"""Path policy: inputs only under the input roots, outputs only under the data dir.

Paths are resolved (symlinks followed, `..` collapsed) before the check, so neither a `..` nor a symlink can escape.
"""

import glob
import os
from pathlib import Path

from openseek_nanochat.settings import Settings


class PathPolicyError(ValueError):
    pass


def _is_under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_input_path(path: str | os.PathLike, settings: Settings) -> Path:
    resolved = Path(path).expanduser().resolve()
    roots = settings.resolved_input_roots
    if not any(_is_under(resolved, root) for root in roots):
        raise PathPolicyError(
            f"input path {str(path)!r} is outside the allowed input roots "
            f"({os.pathsep.join(map(str, roots))}); set OPENSEEK_NANOCHAT_INPUT_ROOTS to allow it"
        )
    return resolved


def check_output_path(path: str | os.PathLike, settings: Settings) -> Path:
    resolved = Path(path).expanduser().resolve()
    root = settings.resolved_data_dir
    if not _is_under(resolved, root):
        raise PathPolicyError(
            f"output path {str(path)!r} is outside the data dir {root}; set OPENSEEK_NANOCHAT_DATA_DIR to allow it"
        )
    return resolved


def expand_input_globs(patterns: list[str], settings: Settings) -> list[Path]:
    """Expand each glob (sorted, so runs are deterministic), check every match against the input roots.

    A pattern that matches nothing is an error naming the pattern: a typo must not silently shrink a dataset.
    """
    files: list[Path] = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(expanded):
            matches = [m for m in sorted(glob.glob(expanded, recursive=True)) if not os.path.isdir(m)]
            if not matches:
                raise PathPolicyError(f"no file matches {pattern!r}")
        else:
            if not os.path.exists(expanded):
                raise PathPolicyError(f"no such file: {pattern!r}")
            if os.path.isdir(expanded):
                raise PathPolicyError(f"{expanded!r} is a directory; give a file or a glob such as '{expanded}/*.jsonl'")
            matches = [expanded]
        files.extend(check_input_path(m, settings) for m in matches)
    return files
