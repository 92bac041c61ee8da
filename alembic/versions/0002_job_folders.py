"""The folders each job writes and reads (job_folders), filled in for the jobs already there.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    folders = op.create_table(
        "job_folders",
        sa.Column("job_id", sa.String(length=32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("access", sa.String(length=8), nullable=False),
        sa.Column("path", sa.String(length=4096), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "access", "path"),
    )
    # What a job's spec names, as the specs stored so far spell it (prepared specs hold resolved paths). A train job's
    # run dir is runs/<its id>, which no other job can write, so only its inputs matter.
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("kind", sa.String), sa.column("spec", sa.JSON))
    rows = []
    for job_id, kind, spec in op.get_bind().execute(sa.select(jobs.c.id, jobs.c.kind, jobs.c.spec)):
        spec = spec or {}
        if kind == "convert" and spec.get("output_dir"):
            rows.append({"job_id": job_id, "access": "writes", "path": spec["output_dir"]})
        elif kind == "train":
            tokenizer = spec.get("tokenizer") if isinstance(spec.get("tokenizer"), dict) else {}
            for path in {spec.get("dataset"), tokenizer.get("path")} - {None}:
                rows.append({"job_id": job_id, "access": "reads", "path": path})
    if rows:
        op.bulk_insert(folders, rows)


def downgrade() -> None:
    op.drop_table("job_folders")
