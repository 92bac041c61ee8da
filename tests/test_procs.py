"""Process-tree supervision with real processes: nothing of a stopped job survives, not even processes that ignore
SIGTERM, start their own session, or lose their parent; and a job dies with its worker."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

from openseek_nanochat import procs

from serverutil import REPO, wait_until

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
    root = procs.spawn([sys.executable, "-c", TREE, mode], env=procs.job_environment(job_id))
    wait_until(lambda: len(procs.job_processes(job_id, root.pid)) == 3, timeout=20, what="3 processes")
    return root


def test_stubborn_tree_is_killed_after_the_grace_period():
    root = start_tree("stubborn-tree", "stubborn")
    pids = [p.pid for p in procs.job_processes("stubborn-tree", root.pid)]
    started = time.monotonic()
    assert procs.stop_job("stubborn-tree", root, grace=1.0) == 3
    assert time.monotonic() - started >= 1.0  # SIGTERM was not enough
    assert root.returncode == -signal.SIGKILL
    assert procs.job_processes("stubborn-tree") == []
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)


def test_orphans_are_found_by_their_environment():
    root = start_tree("orphans", "polite")
    root.send_signal(signal.SIGKILL)  # the job process dies first: its descendants are re-parented
    root.wait()
    orphans = procs.job_processes("orphans")
    assert len(orphans) == 2 and all(p.ppid() != root.pid for p in orphans)
    started = time.monotonic()
    assert procs.stop_job("orphans", grace=10) == 2
    assert time.monotonic() - started < 5  # SIGTERM sufficed; no waiting out the grace period
    assert procs.job_processes("orphans") == []


def test_job_process_dies_with_its_worker():
    # A stand-in worker: starts a job the way workers do, then is SIGKILLed.
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from openseek_nanochat import procs; "
            "p = procs.spawn([sys.executable, '-c', 'import time; time.sleep(600)'], "
            "env=procs.job_environment('orphaned-job')); print(p.pid, flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    job_pid = int(parent.stdout.readline())
    assert psutil.Process(job_pid).environ()[procs.JOB_ID_ENV] == "orphaned-job"
    parent.kill()
    parent.wait()
    wait_until(lambda: not procs.job_processes("orphaned-job"), timeout=10, what="the job process gone")


def test_stream_copies_the_childs_bytes_and_finds_the_first_failure(capfdbinary):
    child = (
        "import sys; out = sys.stdout.buffer; "
        "out.write(b'caf\\xe9 latin-1\\n'); out.write(b'error: the first reason\\n'); out.flush(); "
        "sys.stderr.write('error: a consequence\\n'); sys.exit(3)"
    )

    def reason(line: str) -> str | None:
        return line.removeprefix("error: ") if line.startswith("error: ") else None

    lines = []
    returncode, failure = procs.stream([sys.executable, "-c", child], on_line=lines.append, failure=reason)
    assert (returncode, failure) == (3, "the first reason")  # the cause, not what followed from it
    assert lines == ["caf\ufffd latin-1", "error: the first reason", "error: a consequence"]
    out = capfdbinary.readouterr().out
    assert out.endswith(b"\ncaf\xe9 latin-1\nerror: the first reason\nerror: a consequence\n")  # bytes as they were


def test_die_with_parent_as_a_pool_initializer():
    # A stand-in rank: a pool of forked processes that die with it, then it is SIGKILLed.
    script = textwrap.dedent(
        """
        import multiprocessing, os, time
        from concurrent.futures import ProcessPoolExecutor
        from openseek_nanochat import procs
        pool = ProcessPoolExecutor(2, multiprocessing.get_context("fork"), procs.die_with_parent, (os.getpid(),))
        print(*{pool.submit(os.getpid).result() for _ in range(8)}, flush=True)
        time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    workers = [psutil.Process(int(pid)) for pid in parent.stdout.readline().split()]
    assert workers and all(w.ppid() == parent.pid for w in workers)
    parent.kill()
    parent.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
