"""Child processes, handled in one place: start them, copy their output, make them die with their parent, stop a tree.

Every process the project starts goes through here: the worker's job processes (`spawn` in a session of its own), a
job's tokenizer and torchrun children (`stream`), the dataloader's tokenizer processes (`die_with_parent` as their
initializer), the builtin trainer's ranks (`exit_with_parent`) and `serve`'s workers.

A job process runs in its own session (a signal to the worker's group never reaches it by accident) with the job id and
the attempt number in its environment. Every process it starts, torchrun's ranks included, inherits that environment,
and keeps it when it is re-parented after its parent died or when it starts a session of its own. So "the processes of
attempt N of job X" are the descendants of that attempt's job process plus every process whose environment names job X
and attempt N: that set is found again on every pass while stopping (`stop_job`: TERM, a grace period, KILL), so a
process forked in between is caught too. Stopping one attempt never touches another: a worker that lost its lease
stops its own attempt, not the one that took over.

On Linux a child started here gets a signal when its parent dies (PR_SET_PDEATHSIG): a SIGKILLed worker does not leave
a conversion running that would race the worker that resumes it, and a killed job leaves no trainer. A worker starting
attempt N first stops whatever attempts before N left behind on this machine.

`stop` is the one stop path (TERM, a grace period, KILL) for every process this project stops: a job's, or `serve`'s
workers.
"""

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import BinaryIO

import psutil

JOB_ID_ENV = "OPENSEEK_NANOCHAT_JOB_ID"
JOB_ATTEMPT_ENV = "OPENSEEK_NANOCHAT_JOB_ATTEMPT"
# The node of a multi-node job a process runs for (train/nodes.py sets it): two nodes of one attempt may share a machine
# (and do in tests), and each worker stops only its own node's processes.
JOB_NODE_ENV = "OPENSEEK_NANOCHAT_NODE"

_PR_SET_PDEATHSIG = 1
# Resolved once, here: after a fork only what is already resolved may run (no lookups, no allocations to speak of).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


# --- dying with the parent -------------------------------------------------------------------------------------------


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """In a child, first thing: have it receive `sig` when its parent dies (Linux; elsewhere nothing happens).

    The kernel signals when the *thread* that forked the child ends, so start children from a long-lived thread. If
    the parent died before this took effect, the child signals itself. Works as a Popen preexec_fn (see `spawn`) and
    as a multiprocessing initializer (`initializer=procs.die_with_parent, initargs=(os.getpid(),)`).
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def exit_with_parent(poll_seconds: float = 1.0) -> None:
    """Exit this process once its parent is gone, watching from a daemon thread.

    For torchrun's ranks: torchrun starts them, so no preexec_fn of ours runs, and PR_SET_PDEATHSIG set by a rank
    itself would fire as soon as the torchrun thread that forked it ends, which need not be when torchrun ends. A rank
    whose torchrun died (a killed job, a crashed agent) must not keep training, so it polls.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _child_setup(parent_pid: int, sig: int, nice: int) -> Callable[[], None]:
    def preexec() -> None:
        if nice:
            os.nice(nice)
        die_with_parent(parent_pid, sig)

    return preexec


# --- starting and streaming ------------------------------------------------------------------------------------------


def spawn(
    argv: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd=None,
    stdout=None,
    nice: int = 0,
    own_session: bool = True,
) -> subprocess.Popen:
    """Start a child that gets SIGTERM if this process dies, `nice` steps below this process's CPU priority, stderr
    merged into `stdout` (when that is given), and in a session of its own unless `own_session` is False (a job's own
    children stay in the job's group, so a Ctrl-C on a job run by hand reaches them too).

    Call from a long-lived thread (the main one): Linux signals when the *thread* that forked the child ends.
    """
    return subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not None else None,
        start_new_session=own_session,
        preexec_fn=_child_setup(os.getpid(), signal.SIGTERM, nice),
    )


def job_environment(job_id: str, attempt: int = 0) -> dict[str, str]:
    """The environment of a job process: the job id and the attempt number (0: not run by a worker) tag it and all it
    starts."""
    return {**os.environ, JOB_ID_ENV: job_id, JOB_ATTEMPT_ENV: str(attempt), "PYTHONUNBUFFERED": "1"}


def job_attempt() -> int | None:
    """The attempt this process runs for (its worker's claim), or None outside a worker's job."""
    value = os.environ.get(JOB_ATTEMPT_ENV, "")
    return int(value) if value.isascii() and value.isdigit() and int(value) > 0 else None


def copy_lines(source: BinaryIO, write: Callable[[bytes], None], on_line: Callable[[str], None] | None = None) -> None:
    """Copy a child's output line by line as it comes, bytes as they are, to `write`; hand each line to `on_line`
    (decoded, without its line ending). Returns at the end of the output."""
    for raw in iter(source.readline, b""):
        write(raw)
        if on_line is not None:
            on_line(raw.decode("utf-8", errors="replace").rstrip("\r\n"))


def _write_stdout(raw: bytes) -> None:
    out = sys.stdout
    if hasattr(out, "buffer"):  # the child's bytes as they are, whatever our stdout's encoding
        out.flush()  # after our own events and lines, in order
        out.buffer.write(raw)
        out.buffer.flush()
    else:
        out.write(raw.decode("utf-8", errors="replace"))
        out.flush()


def stream(
    argv: list[str],
    *,
    cwd=None,
    env: dict[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
    failure: Callable[[str], str | None] | None = None,
) -> tuple[int, str | None]:
    """Run a child of this job to its end, its output (stdout and stderr) copied to ours line by line as it comes.

    Each line goes to `on_line`; `failure(line)` says what a line tells of why the child failed, if anything. Returns
    the exit code and the first such reason (the first failure is the cause; what follows is its consequences). If this
    process is interrupted meanwhile, the child is terminated before the interruption goes on.
    """
    print("$ " + " ".join(argv), flush=True)
    process = spawn(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, own_session=False)
    reason: str | None = None

    def read(line: str) -> None:
        nonlocal reason
        if reason is None and failure is not None:
            reason = failure(line)
        if on_line is not None:
            on_line(line)

    try:
        copy_lines(process.stdout, _write_stdout, read)
        return process.wait(), reason
    finally:
        if process.poll() is None:  # interrupted: take the child down with us
            process.terminate()
            process.wait()
        process.stdout.close()


# --- stopping a job --------------------------------------------------------------------------------------------------


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _attempt_of(environ: dict[str, str]) -> int:
    value = environ.get(JOB_ATTEMPT_ENV, "")
    return int(value) if value.isascii() and value.isdigit() else 0  # untagged: older than any attempt


def _tagged_with(job_id: str, attempts: range | None, node: int | None = None) -> list[psutil.Process]:
    """Processes (that this user may inspect) whose environment names the job (and one of `attempts`, and `node`)."""
    me = os.getpid()
    found = []
    for process in psutil.process_iter():
        if process.pid == me:
            continue
        try:
            environ = process.environ()
        except psutil.Error:  # gone, a zombie, or another user's
            continue
        if environ.get(JOB_ID_ENV) != job_id or (attempts is not None and _attempt_of(environ) not in attempts):
            continue
        if node is None or environ.get(JOB_NODE_ENV, "0") == str(node):
            found.append(process)
    return found


def job_processes(
    job_id: str, root_pid: int | None = None, attempts: range | None = None, node: int | None = None
) -> list[psutil.Process]:
    """The live processes of a job: the root's descendants and everything tagged with the job id, of every attempt or
    only of `attempts` (`range(n, n + 1)`: attempt n; `range(n)`: those before n), of every node or only of `node`."""
    found: dict[int, psutil.Process] = {p.pid: p for p in _tagged_with(job_id, attempts, node)}
    if root_pid is not None:
        try:
            root = psutil.Process(root_pid)
            for process in [root, *root.children(recursive=True)]:
                found.setdefault(process.pid, process)
        except psutil.Error:
            pass
    return [p for p in found.values() if _alive(p)]


def _signal_all(processes: Iterable, sig: int) -> None:
    for process in processes:
        try:
            process.send_signal(sig)
        except (psutil.Error, ProcessLookupError):
            pass


def stop(find: Callable[[], list], grace: float, on_kill: Callable[[list], None] | None = None) -> int:
    """SIGTERM every process `find()` returns, SIGKILL what is left after `grace` seconds; return once `find()` finds
    none (or, for a process stuck in the kernel, 5 s after SIGKILL). Returns how many processes were signalled.

    `find` is asked again on every pass, so a process started in between is caught too. It returns live processes,
    psutil's or subprocess's (anything with a pid and send_signal); `on_kill` hears of those that needed SIGKILL.
    """
    signalled: set[int] = set()
    killed: set[int] = set()
    kill_at = time.monotonic() + grace
    while True:
        processes = find()
        now = time.monotonic()
        if not processes or now >= kill_at + 5:
            return len(signalled)
        if now >= kill_at:
            if on_kill is not None and (new := [p for p in processes if p.pid not in killed]):
                on_kill(new)
            killed.update(p.pid for p in processes)
            _signal_all(processes, signal.SIGKILL)
        else:
            _signal_all([p for p in processes if p.pid not in signalled], signal.SIGTERM)
        signalled.update(p.pid for p in processes)
        time.sleep(0.05)


def stop_job(
    job_id: str,
    root: subprocess.Popen | None = None,
    grace: float = 10.0,
    attempts: range | None = None,
    node: int | None = None,
) -> int:
    """Stop the processes of a job (of every attempt, or only of `attempts`; of every node or only of `node`; `root`
    is the attempt's job process) with `stop`. Returns how many processes were signalled."""

    def find() -> list[psutil.Process]:
        # Reap the job process itself once it exits; from then on its pid may be reused, so its descendants are
        # found by their environment alone.
        root_pid = root.pid if root is not None and root.poll() is None else None
        return job_processes(job_id, root_pid, attempts, node)

    return stop(find, grace)
