"""The folders jobs claim: what each job writes and reads, checked and recorded in the transaction that inserts it.

No two unfinished jobs write one folder, nor one inside the other (conversions into datasets/p and datasets/p/q would
mix or remove each other's files), and a purge never removes a folder an unfinished job writes or reads. Each check
runs in the same transaction as the insert or delete it guards: on SQLite, BEGIN IMMEDIATE already makes writers take
turns (app/jobs/db.py); on PostgreSQL the transaction first takes an advisory lock, so two submits, or a submit and a
purge, cannot interleave. Paths are resolved and compared by components (paths.nested), never as strings.
"""

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlmodel import Session, col, select

from openseek_nanochat.paths import nested

from app.jobs.models import FINISHED, Job, JobFolder

WRITES = "writes"
READS = "reads"
_LOCK_KEY = 0x6F6E5F666F6C6472  # any constant the service owns: pg_advisory_xact_lock's key for "job folders"


@dataclass(frozen=True)
class Use:
    """An unfinished job's use of a folder."""

    job_id: str
    state: str
    access: str
    path: Path

    def describe(self, folder: Path) -> str:
        """'job X (running) already writes to P' and how P stands to `folder`, for a 409."""
        where = (
            ""
            if self.path == folder
            else (f", which lies inside {folder}" if folder in self.path.parents else f", which holds {folder}")
        )
        verb = "already writes to" if self.access == WRITES else "reads"
        return f"job {self.job_id} ({self.state}) {verb} {self.path}{where}"


def lock(session: Session) -> None:
    """Make this transaction the only one that checks or changes claims until it ends."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})


def unfinished_uses(session: Session, other_than: str | None = None) -> list[Use]:
    query = (
        select(JobFolder.job_id, JobFolder.access, JobFolder.path, Job.state)
        .join(Job, col(Job.id) == col(JobFolder.job_id))
        .where(col(Job.state).not_in(FINISHED))
    )
    if other_than is not None:
        query = query.where(col(JobFolder.job_id) != other_than)
    return [Use(job_id, state, access, Path(path)) for job_id, access, path, state in session.exec(query).all()]


def writer_overlapping(session: Session, folders: list[Path]) -> tuple[Use, Path] | None:
    """An unfinished job that writes one of `folders`, inside one, or above one; with the folder it collides with."""
    for use in unfinished_uses(session):
        for folder in folders:
            if use.access == WRITES and nested(use.path, folder):
                return use, folder
    return None


def user_of(session: Session, folder: Path, other_than: str) -> Use | None:
    """An unfinished job (not `other_than`) that writes `folder`, inside or above it, or reads it or inside it: what
    removing `folder` would break."""
    for use in unfinished_uses(session, other_than):
        if nested(use.path, folder) if use.access == WRITES else (use.path == folder or folder in use.path.parents):
            return use
    return None


def record(session: Session, job_id: str, writes: list[str], reads: list[str]) -> None:
    for access, paths in ((WRITES, writes), (READS, reads)):
        for path in sorted(set(paths)):
            session.add(JobFolder(job_id=job_id, access=access, path=path))
