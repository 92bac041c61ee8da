"""The database connection: one engine per process, sessions for reading and for writing.

SQLite serves one machine: WAL lets readers (the API) run while a writer commits, the busy timeout makes writers queue
instead of failing, and every transaction that writes starts with BEGIN IMMEDIATE, so it holds the write lock from its
first statement and two writers can never deadlock upgrading read locks. PostgreSQL serves many machines and needs none
of this: row locks (FOR UPDATE SKIP LOCKED, see app/jobs/queue.py) do the same job there.

`lock_wait` bounds how long one statement waits for a lock (SQLite's busy timeout, PostgreSQL's lock_timeout) and, on
PostgreSQL, for a connection. The API waits long; a worker waits a fraction of its lease, so that a database
held by someone else costs it a heartbeat, retried on the next tick, never the lease (worker/loop.py).
"""

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import TypeVar

import anyio
from sqlalchemy import Engine, create_engine, event, text
from sqlmodel import Session

T = TypeVar("T")

LOCK_WAIT_SECONDS = 30.0  # the API's: a request may wait this long for the write lock
_WRITE = "openseek_write"  # execution option that marks a connection whose transaction will write


def make_engine(url: str, lock_wait: float = LOCK_WAIT_SECONDS) -> Engine:
    wait_ms = max(1, round(lock_wait * 1000))
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": lock_wait},
            # Many API threads read at once; connections to a SQLite file are cheap.
            pool_size=10,
            max_overflow=40,
        )
        event.listen(engine, "connect", partial(_sqlite_on_connect, wait_ms))
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    connect_args = {}
    if url.startswith("postgresql"):  # libpq: the lock wait, and how long connecting may take
        connect_args = {"connect_timeout": max(2, math.ceil(lock_wait)), "options": f"-c lock_timeout={wait_ms}"}
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, connect_args=connect_args)


def _sqlite_on_connect(busy_ms: int, dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # the driver emits no BEGIN of its own; _sqlite_begin does
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
    cursor.execute("PRAGMA synchronous=NORMAL")  # in WAL mode: durable except for a power cut's last commits
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(connection) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.get_execution_options().get(_WRITE) else "BEGIN")


@contextmanager
def reading(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


def for_writing(engine: Engine) -> Engine:
    """The same engine (and pool), but its transactions start by taking the write lock."""
    return engine.execution_options(**{_WRITE: True})


@contextmanager
def writing(engine: Engine) -> Iterator[Session]:
    """A session whose transaction takes the write lock at once and commits on leaving (rolls back on error)."""
    with Session(for_writing(engine), expire_on_commit=False) as session, session.begin():
        yield session


def ping(engine: Engine) -> None:
    """Raises (OperationalError) when the database does not answer."""
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


async def read_for_async(engine: Engine, read: Callable[..., T], *args) -> T:
    """Run a short read from an async endpoint. On SQLite it runs right here: in WAL mode a read never waits for a
    lock, and handing it to a thread costs more than the read (measured: as much CPU again, per request). Other
    databases answer over the network, so the wait goes to a thread and the event loop stays free."""
    if engine.dialect.name == "sqlite":
        return read(engine, *args)
    return await anyio.to_thread.run_sync(partial(read, engine, *args))
