"""Process trees: start a job process so that none of its descendants can outlive a cancel or its worker.

A job process runs in its own session (a signal to the worker's group never reaches it by accident) with the job id in
its environment. Every process it starts, torchrun's ranks included, inherits that environment, and keeps it when it
is re-parented after its parent died or when it starts a session of its own. So "the processes of job X" are the
descendants of the job process plus every process whose environment names job X: that set is found again on every
pass while stopping, so a process forked in between is caught too.

On Linux the job process also gets SIGTERM when its worker dies (PR_SET_PDEATHSIG): a SIGKILLed worker does not leave a
conversion running that would race the worker that resumes it. A worker starting a job first stops whatever an
earlier attempt on this machine left behind.
"""

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable

import psutil

JOB_ID_ENV = "OPENSEEK_NANOCHAT_JOB_ID"

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def _child_setup(parent_pid: int, sig: int, nice: int):
    """preexec_fn for the child: lower its CPU priority, and have it receive `sig` when the thread that started it
    exits (everything resolved before the fork)."""
    prctl = _libc.prctl if _libc is not None else None

    def preexec() -> None:
        if nice:
            os.nice(nice)
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def spawn(
    argv: list[str], *, env: dict[str, str] | None = None, cwd=None, stdout=None, nice: int = 0
) -> subprocess.Popen:
    """Start a child (in a session of its own, `nice` steps below this process's CPU priority) that gets SIGTERM if this
    process dies. Call from a long-lived thread (the main one): Linux signals when the *thread* that forked it ends."""
    return subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.STDOUT if stdout is not None else None,
        start_new_session=True,
        preexec_fn=_child_setup(os.getpid(), signal.SIGTERM, nice),
    )


def job_environment(job_id: str) -> dict[str, str]:
    return {**os.environ, JOB_ID_ENV: job_id, "PYTHONUNBUFFERED": "1"}


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _tagged_with(job_id: str) -> list[psutil.Process]:
    """Processes (that this user may inspect) whose environment names the job."""
    me = os.getpid()
    found = []
    for process in psutil.process_iter():
        if process.pid == me:
            continue
        try:
            if process.environ().get(JOB_ID_ENV) == job_id:
                found.append(process)
        except psutil.Error:  # gone, a zombie, or another user's
            continue
    return found


def job_processes(job_id: str, root_pid: int | None = None) -> list[psutil.Process]:
    """The live processes of a job: the root's descendants and everything tagged with the job id."""
    found: dict[int, psutil.Process] = {p.pid: p for p in _tagged_with(job_id)}
    if root_pid is not None:
        try:
            root = psutil.Process(root_pid)
            for process in [root, *root.children(recursive=True)]:
                found.setdefault(process.pid, process)
        except psutil.Error:
            pass
    return [p for p in found.values() if _alive(p)]


def _signal_all(processes: Iterable[psutil.Process], sig: int) -> None:
    for process in processes:
        try:
            process.send_signal(sig)
        except psutil.Error:
            pass


def stop_job(job_id: str, root: subprocess.Popen | None = None, grace: float = 10.0) -> int:
    """SIGTERM every process of the job, SIGKILL what is left after `grace` seconds; return once none is alive (or,
    for a process stuck in the kernel, 5 s after SIGKILL). Returns how many processes were signalled."""
    signalled: set[int] = set()
    kill_at = time.monotonic() + grace
    while True:
        # Reap the job process itself once it exits; from then on its pid may be reused, so its descendants are
        # found by their environment alone.
        root_pid = root.pid if root is not None and root.poll() is None else None
        processes = job_processes(job_id, root_pid)
        now = time.monotonic()
        if not processes or now >= kill_at + 5:
            return len(signalled)
        if now >= kill_at:
            _signal_all(processes, signal.SIGKILL)
        else:
            _signal_all([p for p in processes if p.pid not in signalled], signal.SIGTERM)
        signalled.update(p.pid for p in processes)
        time.sleep(0.05)
