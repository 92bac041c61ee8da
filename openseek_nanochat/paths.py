"""Where things live: the data dir's layout, and the path policy (inputs only under the input roots, a conversion's
output only in a folder of its own inside `datasets/`).

The data dir holds `datasets/<name>` (conversions' output dirs), `runs/<job id>` (trainings), `jobs/<job id>` (the
spec, log and metrics of each job the service runs) and `cache/` (libraries' caches); the database's default is
settings.py's. A conversion writes only to a folder of its own strictly inside `datasets/`: a purge removes a job's
output dir, so that must never be the data dir, `datasets/`, `jobs/` or `runs/`. Paths are resolved (symlinks
followed, `..` collapsed) before the policy check, so neither a `..` nor a symlink can escape, and folders are compared
by components (`/d/p` and `/d/p2` are apart).
A glob is checked by its literal prefix before anything is listed, then walked within bounds (`glob_inputs`).
"""

import fnmatch
import glob
import os
import time
from pathlib import Path

from openseek_nanochat.settings import Settings


class PathPolicyError(ValueError):
    """A path the policy refuses; `where` names the spec field it came from, when one does."""

    def __init__(self, message: str, where: str | None = None):
        super().__init__(message)
        self.where = where


def datasets_dir(settings: Settings) -> Path:
    return settings.resolved_data_dir / "datasets"


def runs_dir(settings: Settings) -> Path:
    return settings.resolved_data_dir / "runs"


def jobs_dir(settings: Settings) -> Path:
    return settings.resolved_data_dir / "jobs"


def cache_dir(settings: Settings) -> Path:
    """Caches of the libraries jobs use (e.g. `hf/` for Hugging Face datasets): rebuilt when deleted."""
    return settings.resolved_data_dir / "cache"


def _is_under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_input_path(path: str | os.PathLike, settings: Settings) -> Path:
    resolved = Path(path).expanduser().resolve()
    if not any(_is_under(resolved, root) for root in settings.resolved_input_roots):
        raise _outside_roots(str(path), settings)
    return resolved


def nested(a: Path, b: Path) -> bool:
    """Whether one of two resolved folders is, or lies inside, the other."""
    return a == b or a in b.parents or b in a.parents


def is_dataset_dir(path: Path, settings: Settings) -> bool:
    """Whether a resolved path is a folder of its own strictly inside `datasets/`, where conversions write."""
    return datasets_dir(settings).resolve() in path.parents


def _resolve_folder(path: str | os.PathLike, field: str | None = None) -> Path:
    """`path` resolved, if short enough to be recorded: the folders a job writes and reads are keys in the jobs
    database, and PostgreSQL indexes at most ~2.7 KB a row."""
    resolved = Path(path).expanduser().resolve()
    size = len(os.fsencode(resolved))
    if size > MAX_FOLDER_BYTES:
        raise PathPolicyError(
            f"path {str(path)[:80]!r}... is {size:,} bytes long resolved; a job's folders may be at most "
            f"{MAX_FOLDER_BYTES:,}",
            field,
        )
    return resolved


def check_dataset_output(path: str | os.PathLike, settings: Settings) -> Path:
    """A conversion's output dir (the `output_dir` field), resolved: strictly inside `<data dir>/datasets/`."""
    resolved = _resolve_folder(path, "output_dir")
    if is_dataset_dir(resolved, settings):
        return resolved
    root, datasets = settings.resolved_data_dir, datasets_dir(settings)
    if not _is_under(resolved, root):
        raise PathPolicyError(
            f"output path {str(path)!r} is outside the data dir {root}; set OPENSEEK_NANOCHAT_DATA_DIR to allow it",
            "output_dir",
        )
    raise PathPolicyError(
        f"output path {str(path)!r} is not inside {datasets}: a conversion writes to a folder of its own there "
        f"(e.g. {datasets}/<name>)",
        "output_dir",
    )


def check_job_input(path: str | os.PathLike, settings: Settings, what: str = "input path") -> Path:
    """An input that an earlier job may have written (a train job's dataset or tokenizer): under the data dir or the
    input roots."""
    resolved = _resolve_folder(path)
    roots = [settings.resolved_data_dir, *settings.resolved_input_roots]
    if not any(_is_under(resolved, root) for root in roots):
        raise PathPolicyError(
            f"{what} {str(path)!r} is outside the data dir and the input roots ({os.pathsep.join(map(str, roots))})"
        )
    return resolved


def in_input_roots(path: str | os.PathLike, settings: Settings) -> bool:
    resolved = Path(path).resolve()
    return any(_is_under(resolved, root) for root in settings.resolved_input_roots)


def _outside_roots(path: str, settings: Settings) -> PathPolicyError:
    roots = os.pathsep.join(map(str, settings.resolved_input_roots))
    return PathPolicyError(
        f"input path {path!r} is outside the allowed input roots ({roots}); set "
        "OPENSEEK_NANOCHAT_INPUT_ROOTS to allow it"
    )


# --- globs -----------------------------------------------------------------------------------------------------------
# Caps on expanding patterns, so that no request keeps the API busy or lists a whole disk. Constants, not settings: a
# pattern that reaches one is better narrowed (or split over several sources) than the cap raised.
MAX_FOLDER_BYTES = 2048  # a folder a job writes or reads, resolved, in the file system's encoding
MAX_GLOB_MATCHES = 100_000  # per pattern
MAX_GLOB_DEPTH = 64  # folders below the pattern's literal prefix
GLOB_SECONDS = 10.0  # for all the patterns of a source


def _literal_prefix(pattern: str, settings: Settings) -> tuple[Path, tuple[str, ...]]:
    """The pattern's path up to its first component with a wildcard, resolved and under a root, and the components
    from there on. `..` is collapsed as written before any link is followed, and the walk starts from the resolved
    prefix, so what is listed is what was checked; whether anything outside the roots exists never shows."""
    parts = Path(os.path.abspath(os.path.expanduser(pattern))).parts
    first = next((i for i, part in enumerate(parts) if glob.has_magic(part)), len(parts))
    prefix = Path(*parts[:first]).resolve()
    if not in_input_roots(prefix, settings):
        raise _outside_roots(pattern, settings)
    return prefix, parts[first:]


class _Walk:
    """glob's rules (`**` is zero or more folders, hidden names only where the pattern names them), but a `**` never
    enters a folder link (no loops), a wildcard entering one checks it against the roots first, and every file link
    matched must lead under a root. Errors name the pattern or a path under a root, never where a link leads."""

    def __init__(self, pattern: str, settings: Settings, deadline: float):
        self.pattern, self.settings, self.deadline = pattern, settings, deadline
        self.found: set[str] = set()

    def walk(self, folder: str, parts: tuple[str, ...], depth: int = 0) -> None:
        part, rest = parts[0], parts[1:]
        if part == "**":
            self.walk(folder, rest or ("*",), depth)  # zero folders; a trailing `**` names every file below
            for entry in self._entries(folder, "*"):
                if entry.is_dir(follow_symlinks=False):
                    self._descend(entry.path, parts, depth)
            return
        if glob.has_magic(part):  # (path, is a folder or a link to one, is a link)
            candidates = [(e.path, e.is_dir(), e.is_symlink()) for e in self._entries(folder, part)]
        else:
            path = os.path.join(folder, part)
            candidates = [(path, os.path.isdir(path), os.path.islink(path))] if os.path.lexists(path) else []
        for path, is_dir, is_link in candidates:
            if is_dir != bool(rest):  # folders lead on, files end the pattern
                continue
            if is_link and not in_input_roots(path, self.settings):
                raise _outside_roots(path, self.settings)
            if rest:
                self._descend(path, rest, depth)
            elif len(self.found) < MAX_GLOB_MATCHES:
                self.found.add(path)
            else:
                raise PathPolicyError(
                    f"{self.pattern!r} matches more than {MAX_GLOB_MATCHES:,} files; narrow it or split the source"
                )

    def _descend(self, folder: str, parts: tuple[str, ...], depth: int) -> None:
        if depth >= MAX_GLOB_DEPTH:
            raise PathPolicyError(f"{self.pattern!r} reaches more than {MAX_GLOB_DEPTH} folders deep; narrow it")
        self.walk(folder, parts, depth + 1)

    def _entries(self, folder: str, part: str) -> list[os.DirEntry]:
        if time.monotonic() > self.deadline:
            raise PathPolicyError(
                f"expanding the paths took more than {GLOB_SECONDS:g} s (at {self.pattern!r}); "
                "narrow them (a '**' over a big tree?)"
            )
        try:
            with os.scandir(folder) as entries:
                return [e for e in entries if (part[0] == "." or e.name[0] != ".") and fnmatch.fnmatch(e.name, part)]
        except OSError:  # not a folder, gone, or unreadable: nothing matches there, as with glob
            return []


def glob_inputs(pattern: str, settings: Settings, deadline: float | None = None) -> list[str]:
    """The files a glob names, sorted (so runs are deterministic), as named below its prefix; [] when none. Several
    patterns share one time limit through `deadline` (time.monotonic() + GLOB_SECONDS)."""
    prefix, rest = _literal_prefix(pattern, settings)
    if not rest:
        return [str(prefix)] if prefix.exists() and not prefix.is_dir() else []
    walk = _Walk(pattern, settings, time.monotonic() + GLOB_SECONDS if deadline is None else deadline)
    walk.walk(str(prefix), rest)
    return sorted(walk.found)


def expand_input_globs(patterns: list[str], settings: Settings) -> list[Path]:
    """The files the patterns (globs or plain paths) name, resolved; each pattern's in sorted order, each file once.

    A pattern that matches nothing is an error naming the pattern: a typo must not silently shrink a dataset.
    """
    files: list[Path] = []
    deadline = time.monotonic() + GLOB_SECONDS
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = list(dict.fromkeys(Path(os.path.realpath(m)) for m in glob_inputs(pattern, settings, deadline)))
            if not matches:
                raise PathPolicyError(f"no file matches {pattern!r}")
        else:
            path = check_input_path(pattern, settings)  # before looking, so that no answer tells what exists outside
            if not path.exists():
                raise PathPolicyError(f"no such file: {pattern!r}")
            if path.is_dir():
                expanded = os.path.expanduser(pattern)
                raise PathPolicyError(
                    f"{expanded!r} is a directory; give a file or a glob such as '{expanded}/*.jsonl'"
                )
            matches = [path]
        files.extend(matches)
    return files
