"""Process-tree supervision with real processes: nothing of a stopped job survives, not even processes that ignore
SIGTERM, start their own session, or lose their parent; and a job dies with its worker."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from serverutil import REPO, wait_until
from openseek_nanochat import procs as processes

# A job that forks a child in a new session which forks a grandchild; all three ignore SIGTERM when asked to.
TREE = textwrap.dedent(
    """
    import os, signal, sys, time
    stubborn = sys.argv[1] == "stubborn"
    def ignore_term():
        if stubborn:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
    ignore_term()
    if os.fork() == 0:
        os.setsid()
        ignore_term()
        if os.fork() == 0:
            ignore_term()
        time.sleep(600)
    time.sleep(600)
    """
)


def start_tree(job_id: str, mode: str) -> subprocess.Popen:
    root = processes.spawn([sys.executable, "-c", TREE, mode], env=processes.job_environment(job_id))
    wait_until(lambda: len(processes.job_processes(job_id, root.pid)) == 3, timeout=20, what="3 processes")
    return root


def test_stubborn_tree_is_killed_after_the_grace_period():
    root = start_tree("stubborn-tree", "stubborn")
    pids = [p.pid for p in processes.job_processes("stubborn-tree", root.pid)]
    started = time.monotonic()
    assert processes.stop_job("stubborn-tree", root, grace=1.0) == 3
    assert time.monotonic() - started >= 1.0  # SIGTERM was not enough
    assert root.returncode == -signal.SIGKILL
    assert processes.job_processes("stubborn-tree") == []
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)


def test_orphans_are_found_by_their_environment():
    root = start_tree("orphans", "polite")
    root.send_signal(signal.SIGKILL)  # the job process dies first: its descendants are re-parented
    root.wait()
    orphans = processes.job_processes("orphans")
    assert len(orphans) == 2 and all(p.ppid() != root.pid for p in orphans)
    started = time.monotonic()
    assert processes.stop_job("orphans", grace=10) == 2
    assert time.monotonic() - started < 5  # SIGTERM sufficed; no waiting out the grace period
    assert processes.job_processes("orphans") == []


def test_job_process_dies_with_its_worker():
    # A stand-in worker: starts a job the way workers do, then is SIGKILLed.
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from openseek_nanochat import procs as processes; "
            "p = processes.spawn([sys.executable, '-c', 'import time; time.sleep(600)'], "
            "env=processes.job_environment('orphaned-job')); print(p.pid, flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    job_pid = int(parent.stdout.readline())
    assert psutil.Process(job_pid).environ()[processes.JOB_ID_ENV] == "orphaned-job"
    parent.kill()
    parent.wait()
    wait_until(lambda: not processes.job_processes("orphaned-job"), timeout=10, what="the job process gone")
