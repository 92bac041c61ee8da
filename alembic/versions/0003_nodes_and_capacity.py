"""Multi-node jobs: what each node of a job needs, what each worker can serve, and the nodes of every attempt.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from app.jobs.models import UTCDateTime

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("nnodes", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("nproc_per_node", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("device", sa.String(length=8), nullable=False, server_default="cpu"))
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("address", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("cpus", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("cuda", sa.JSON(), nullable=False, server_default="[]"))
    op.create_table(
        "job_nodes",
        sa.Column("job_id", sa.String(length=32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("node", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(length=128), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("endpoint", sa.String(length=300), nullable=True),
        sa.Column("returncode", sa.Integer(), nullable=True),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
        sa.Column("claimed_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "attempt", "node"),
    )
    # Train jobs stored so far ran on one node; what they need per node is in their specs (convert jobs: the default).
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.String),
        sa.column("kind", sa.String),
        sa.column("spec", sa.JSON),
        sa.column("nproc_per_node", sa.Integer),
        sa.column("device", sa.String),
    )
    bind = op.get_bind()
    for job_id, spec in bind.execute(sa.select(jobs.c.id, jobs.c.spec).where(jobs.c.kind == "train")).all():
        spec = spec or {}
        bind.execute(
            jobs.update()
            .where(jobs.c.id == job_id)
            .values(nproc_per_node=int(spec.get("nproc_per_node") or 1), device=str(spec.get("device") or "auto"))
        )


def downgrade() -> None:
    op.drop_table("job_nodes")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("cuda")
        batch.drop_column("cpus")
        batch.drop_column("address")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("device")
        batch.drop_column("nproc_per_node")
        batch.drop_column("nnodes")
