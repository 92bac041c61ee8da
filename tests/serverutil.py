"""Start the real service for a test: `openseek-nanochat serve` as a subprocess on a free port, with real workers.

    with start_server(tmp_path / "data", workers=2) as server:
        job = server.client.post("/jobs/convert", json=spec).json()
        wait_for_state(server.client, job["id"], "succeeded")

The server's output goes to `<data dir>/../server-<port>.log`, shown when startup fails.
"""

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from syspackages import postgres_bin

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
FINISHED = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(data_dir: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server or worker over `data_dir`; inputs may come from it, its parent and shared data."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OPENSEEK_NANOCHAT_")}
    return {
        **base,
        "OPENSEEK_NANOCHAT_DATA_DIR": str(data_dir),
        "OPENSEEK_NANOCHAT_INPUT_ROOTS": os.pathsep.join([str(data_dir.parent), str(SHARED_DATA)]),
        "OPENSEEK_NANOCHAT_POLL_SECONDS": "0.2",
        "OPENSEEK_NANOCHAT_KILL_GRACE_SECONDS": "3",
        **(env or {}),
    }


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "openseek_nanochat.cli", *args]


@dataclass
class Server:
    base_url: str
    client: httpx.Client
    process: subprocess.Popen
    data_dir: Path
    log_path: Path
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def start(self) -> None:
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=log_file, stderr=subprocess.STDOUT)

    def wait_up(self, timeout: float = 60) -> None:
        def up():
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with code {self.process.returncode}:\n{self.log()}")
            try:
                return self.client.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout, what="server health")

    def restart(self) -> None:
        """Stop the server (SIGTERM: its workers requeue their jobs) and start it again on the same port, data dir and
        environment, as an operator restarting the service does."""
        stop_process(self.process)
        self.start()
        self.wait_up()

    def worker_pids(self) -> list[int]:
        return [c.pid for c in psutil.Process(self.process.pid).children() if "worker" in " ".join(c.cmdline())]


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition"):
    """Poll `condition` until it returns something truthy; return that. Fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout} s")
        time.sleep(interval)


def wait_for_state(
    client: httpx.Client, job_id: str, states: str | tuple[str, ...] = FINISHED, timeout: float = 60
) -> dict:
    """Poll GET /jobs/{id} until the job is in one of `states`; return the job. On timeout, fail showing the job."""
    states = (states,) if isinstance(states, str) else tuple(states)
    job: dict = {}

    def reached():
        nonlocal job
        job = client.get(f"/jobs/{job_id}").raise_for_status().json()
        if job["state"] in FINISHED and job["state"] not in states:
            raise AssertionError(f"job {job_id} ended {job['state']}, waiting for {states}: {job}")
        return job["state"] in states

    try:
        wait_until(reached, timeout, what=f"job {job_id} in {states}")
    except TimeoutError as e:
        raise AssertionError(f"{e}; last seen: {job}") from None
    return job


def stop_process(process: subprocess.Popen, timeout: float = 20) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def start_server(
    data_dir: Path,
    workers: int = 0,
    env: dict[str, str] | None = None,
    token: str | None = None,
    access_log: bool = False,
) -> Iterator[Server]:
    """Run `serve` over `data_dir` until the block ends. `token` sets the server's API token and the client's header;
    `env` adds to (or overrides) `service_env`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    extra = dict(env or {})
    if token:
        extra["OPENSEEK_NANOCHAT_API_TOKEN"] = token
    log_path = data_dir.parent / f"server-{port}.log"
    argv = cli(
        "serve", "--port", str(port), "--workers", str(workers), "--access-log" if access_log else "--no-access-log"
    )
    base_url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client = httpx.Client(base_url=base_url, headers=headers, timeout=30)
    server = Server(base_url, client, None, data_dir, log_path, argv, service_env(data_dir, extra))
    server.start()
    try:
        server.wait_up()
        if workers:
            wait_until(lambda: len(client.get("/workers").json()) >= workers, timeout=60, what=f"{workers} workers")
        yield server
    finally:
        client.close()
        stop_process(server.process)  # the one running now (restart replaces it)


def start_worker(data_dir: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A standalone `openseek-nanochat worker` over `data_dir` (stop it with stop_process)."""
    log_file = open(data_dir.parent / f"worker-{time.monotonic_ns()}.log", "wb")
    with log_file:
        return subprocess.Popen(
            cli("worker"), env=service_env(data_dir, env), stdout=log_file, stderr=subprocess.STDOUT
        )


def shakespeare_jsonl(path: Path, copies: int) -> Path:
    """A JSONL corpus of `copies` x 7,222 unique paragraphs (~1.3 MB per copy): input for conversions that must run
    for seconds (cancel, crash, load). Written once per path."""
    if not path.exists():
        paragraphs = [p for p in (SHARED_DATA / "tinyshakespeare.txt").read_text().split("\n\n") if p.strip()]
        with open(path.with_suffix(".tmp"), "w") as f:
            for copy in range(copies):
                for i, paragraph in enumerate(paragraphs):
                    f.write(json.dumps({"text": f"[{copy}:{i}] {paragraph}"}) + "\n")
        path.with_suffix(".tmp").rename(path)
    return path


def long_conversion(server: "Server", copies: int = 6, **extra) -> dict:
    """A convert spec of many small shards (~55 per copy of the corpus): seconds of work, long enough to act on while
    it runs (cancel, kill, follow). `extra` adds or overrides fields (name, max_docs, ...)."""
    corpus = shakespeare_jsonl(server.data_dir.parent / f"shakespeare-{copies}.jsonl", copies=copies)
    return {
        "sources": [{"type": "files", "paths": [str(corpus)]}],
        "chars_per_shard": 20_000,
        "row_group_size": 16,
        "shuffle_buffer": 2000,
        **extra,
    }


@contextmanager
def start_postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a Unix socket; yields its SQLAlchemy URL. Runs as the `postgres` user when
    this process is root (PostgreSQL refuses to run as root)."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="openseek-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    try:
        subprocess.run(
            [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
            check=True,
            capture_output=True,
        )
        options = f"-k {root} -p {port} -c listen_addresses='' -c fsync=off -c max_connections=200"
        subprocess.run(
            [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
            check=True,
            capture_output=True,
        )
        try:
            yield f"postgresql+psycopg://postgres@/postgres?host={root}&port={port}"
        finally:
            subprocess.run(
                [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def lock_sqlite(db: Path, seconds: float) -> threading.Thread:
    """Someone else takes a SQLite database's write lock and keeps it `seconds` (its own connection, on a thread of the
    test); returns once the lock is held. Join the thread to wait for its release."""
    held = threading.Event()

    def hold() -> None:
        connection = sqlite3.connect(db, isolation_level=None, timeout=60)
        connection.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(seconds)
        connection.execute("COMMIT")
        connection.close()

    thread = threading.Thread(target=hold, name="sqlite-write-lock")
    thread.start()
    if not held.wait(60):
        raise TimeoutError(f"could not take the write lock of {db}")
    return thread
