"""Fencing a conversion's output: one attempt of a job writes its folder at a time; a superseded one renames nothing.

A worker that lost a job's lease (the database was away, its machine stalled) may still have the job's processes
running when the next attempt starts, perhaps on another machine sharing the data dir. Two guards keep the older one
from renaming files into the output the newer one is writing:

- `hold`: the job process holds an exclusive flock on `<output>/.convert.lock` for as long as the run lasts. A later
  attempt waits there, saying so in its log, until the earlier one's processes are gone (the kernel drops the lock of a
  process that dies, so a crash never leaves it held).
- the manifest names the job and attempt that last took the folder (`owner`, `attempt`); before each rename into the
  folder the run checks that it still does (`Superseded`, see manifest.py). That covers what a lock cannot: a
  filesystem without flock, a folder deleted and made again.

The attempt comes from the worker, through the job process's environment (procs.JOB_ATTEMPT_ENV). It is in no
fingerprint and in no shard: an attempt changes who may write, never what is written.

A training's run dir is held the same way, one lock per node (train/job.py): a later attempt's node waits while the
earlier attempt's process of that node still runs, so two attempts never write the same checkpoints.
"""

import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from openseek_nanochat.errors import InputError

LOCK = ".convert.lock"
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # what flock says on a filesystem that lacks it


class Superseded(InputError):
    """This run's attempt no longer owns the output: a later one (or another job) took it over. Not bad input, but
    reported the same way: a message, and where."""


@contextmanager
def hold(
    out: Path,
    say: Callable[[str], None] = print,
    lock: str = LOCK,
    what: str = "the output",
    unguarded: str = "only the manifest's attempt guards the output",
) -> Iterator[None]:
    """Hold the folder's `lock` for the block, waiting (and saying so) while an earlier attempt holds it. `what` names
    the folder in what is said; `unguarded`, what is left to guard it on a filesystem without flock."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for {what} {out} to be free: the processes of an earlier attempt still hold {lock}")
            started = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            say(f"{what} {out} is free after {time.monotonic() - started:.1f} s; going on")
        except OSError as e:
            if e.errno not in NO_FLOCK:
                raise
            say(f"the filesystem of {out} has no flock: {unguarded}")
        yield
    finally:
        os.close(fd)  # drops the lock


def check(on_disk: dict | None, owner: str | None, attempt: int | None, where: str) -> None:
    """Raise Superseded unless the manifest `on_disk` still names this run (`owner`, `attempt`)."""
    if attempt is None:
        return  # not run by a worker (the CLI, a test): the lock alone guards it
    if on_disk is None:
        raise Superseded(
            f"attempt {attempt} of job {owner} stops without renaming anything: the manifest it wrote "
            "is gone (the folder was removed?)",
            where,
        )
    theirs = (on_disk.get("owner"), on_disk.get("attempt"))
    if theirs != (owner, attempt):
        by = f"attempt {theirs[1]}" if theirs[0] == owner else f"job {theirs[0]}"
        raise Superseded(
            f"attempt {attempt} of job {owner} stops without renaming anything: the output now belongs "
            f"to {by} (this attempt's worker lost the job's lease, and the job went on without it)",
            where,
        )


def superseded_at_open(on_disk: dict, owner: str | None, attempt: int | None, where: str) -> None:
    """On opening a folder: refuse it when a later attempt of the same job already took it."""
    theirs = on_disk.get("attempt")
    if attempt is not None and on_disk.get("owner") == owner and isinstance(theirs, int) and theirs > attempt:
        raise Superseded(
            f"attempt {attempt} of job {owner} stops without renaming anything: attempt {theirs} of the "
            "job already took this output over",
            where,
        )
