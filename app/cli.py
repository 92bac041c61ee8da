"""The service's commands: `openseek-nanochat serve` and `openseek-nanochat db upgrade|current`.

`serve` migrates the database, starts N worker processes and serves the API until SIGTERM or Ctrl-C. Workers are
separate processes (`python -m worker`), each in its own session: a crash in one touches neither
the API nor the others. A worker that exits is started again (with a growing delay if it keeps failing at once). On
shutdown the workers get SIGTERM, stop their jobs and requeue them; if this process dies without a shutdown, the kernel
sends them SIGTERM all the same (see openseek_nanochat/procs.py).
"""

import argparse
import asyncio
import logging
import os
import signal
import subprocess
import sys
import time

from openseek_nanochat.cli import Command

log = logging.getLogger("openseek_nanochat.serve")


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this machine only; elsewhere, set an API token and "
        "OPENSEEK_NANOCHAT_ALLOWED_HOSTS)",
    )
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--workers", type=_count, default=1, help="worker processes to run beside the API (0: API only)"
    )
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--access-log",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="log every request (off by default: clients poll, and one line per poll buries what matters)",
    )


class WorkerPool:
    """N worker processes, restarted when they exit."""

    def __init__(self, count: int, stop_grace: float):
        self.count = count
        self.stop_grace = stop_grace
        self.processes: list[subprocess.Popen | None] = [None] * count
        self.started_at = [0.0] * count
        self.delay = [1.0] * count
        self.restart_at = [0.0] * count

    def _start(self, slot: int) -> None:
        from openseek_nanochat.procs import spawn

        self.processes[slot] = spawn([sys.executable, "-m", "worker"])
        self.started_at[slot] = time.monotonic()
        log.info("started worker process %d", self.processes[slot].pid)

    def start(self) -> None:
        for slot in range(self.count):
            self._start(slot)

    def watch(self) -> None:
        now = time.monotonic()
        for slot, process in enumerate(self.processes):
            if process is not None and process.poll() is not None:
                quick = now - self.started_at[slot] < 10
                self.delay[slot] = min(30.0, self.delay[slot] * 2) if quick else 1.0
                self.restart_at[slot] = now + self.delay[slot]
                log.warning(
                    "worker process %d exited with code %s; starting another in %.0f s",
                    process.pid,
                    process.returncode,
                    self.delay[slot],
                )
                self.processes[slot] = None
            elif process is None and now >= self.restart_at[slot]:
                self._start(slot)

    def stop(self) -> None:
        """SIGTERM (each worker stops its job and gives it back), then SIGKILL after the grace period: procs.stop."""
        from openseek_nanochat.procs import stop

        def killing(processes) -> None:
            pids = ", ".join(str(p.pid) for p in processes)
            log.warning("worker processes %s did not stop in time; killing them", pids)

        workers = [p for p in self.processes if p is not None]
        stop(lambda: [p for p in workers if p.poll() is None], grace=self.stop_grace, on_kill=killing)


async def _serve(server, pool: WorkerPool) -> None:
    async def watch() -> None:
        while True:
            await asyncio.sleep(1)
            pool.watch()

    pool.start()
    watcher = asyncio.create_task(watch())
    try:
        await server.serve()
    finally:
        watcher.cancel()
        pool.stop()


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from openseek_nanochat.settings import get_settings

    from app.jobs.db import make_engine
    from app.jobs.migrate import upgrade

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s serve %(levelname)s %(message)s")
    settings = get_settings()
    settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    upgrade(engine)
    engine.dispose()

    os.environ["OPENSEEK_NANOCHAT_BIND_HOST"] = args.host  # create_app reads it: which Host names to answer
    config = uvicorn.Config(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it is done; with this handler that only ends run() normally,
    # after the workers have been stopped.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    asyncio.run(_serve(server, WorkerPool(args.workers, stop_grace=settings.kill_grace_seconds + 10)))
    return 0


# --- db --------------------------------------------------------------------------------------------------------------


def add_db_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="db_command", required=True)
    upgrade = sub.add_parser("upgrade", help="migrate the database to the newest schema (creating it if needed)")
    upgrade.add_argument("revision", nargs="?", default="head")
    sub.add_parser("current", help="print the database's schema revision and the newest one")


def run_db(args: argparse.Namespace) -> int:
    from openseek_nanochat.settings import get_settings

    from app.jobs.db import make_engine
    from app.jobs.migrate import current_revision, head_revision, upgrade

    settings = get_settings()
    if settings.database_url is None:
        settings.resolved_data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.sqlalchemy_url)
    url = engine.url.render_as_string(hide_password=True)
    try:
        if args.db_command == "upgrade":
            upgrade(engine, args.revision)
        print(f"{url}: at revision {current_revision(engine)} (newest: {head_revision()})")
    finally:
        engine.dispose()
    return 0


serve = Command("run the HTTP API and worker processes", add_serve_arguments, run_serve)
db = Command("database migrations", add_db_arguments, run_db)
