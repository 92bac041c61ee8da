"""Settings shared by the library, the CLI, the API and the workers.

Every value comes from the environment with the prefix OPENSEEK_NANOCHAT_ (pydantic-settings), so that a job process
started by a worker sees the same data dir and input roots as the server that accepted the job.
"""

import os
from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    return Path("~/.cache/openseek_nanochat").expanduser()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPENSEEK_NANOCHAT_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir, description="Where outputs, logs and the database live.")
    input_roots: str | None = Field(
        default=None, description="os.pathsep-separated folders that input paths must lie under (default: data_dir)."
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL (default: SQLite at <data_dir>/jobs.db)."
    )
    lease_seconds: float = Field(
        default=30.0, gt=0, description="A worker that misses heartbeats this long loses its job."
    )
    api_token: str | None = Field(
        default=None,
        description="When set, every endpoint but /healthz, the dashboard and the docs needs a Bearer token.",
    )
    bind_host: str = Field(
        default="127.0.0.1",
        description="The address the API listens on; `serve --host` sets it. On a loopback "
        "address only loopback Host names are accepted (DNS rebinding).",
    )
    allowed_hosts: str | None = Field(
        default=None,
        description="Comma-separated Host names accepted besides localhost, 127.0.0.1 and [::1] ('*': "
        "any). Unset on a non-loopback bind: any.",
    )
    nanochat_dir: Path | None = Field(
        default=None, description="A nanochat checkout for the nanochat training backend."
    )
    max_attempts: int = Field(default=3, ge=1, description="How often a job whose worker died is retried.")
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="Largest accepted request body.")
    poll_seconds: float = Field(
        default=0.5,
        gt=0,
        description="How often a worker looks for work and, while running a job, reports to the database.",
    )
    kill_grace_seconds: float = Field(
        default=10.0, ge=0, description="How long a cancelled job's processes get between SIGTERM and SIGKILL."
    )
    worker_host: str | None = Field(
        default=None,
        description="The address a worker advertises for other nodes to reach it by (the rendezvous of a multi-node "
        "train job runs on node 0's); default: the machine's name.",
    )
    job_nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="CPU niceness of job processes: a busy machine still answers API requests at once "
        "(0: same as the API).",
    )

    @cached_property
    def resolved_data_dir(self) -> Path:
        return self.data_dir.expanduser().resolve()

    @cached_property
    def resolved_input_roots(self) -> list[Path]:
        if not self.input_roots:
            return [self.resolved_data_dir]
        return [Path(p).expanduser().resolve() for p in self.input_roots.split(os.pathsep) if p]

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite:///{self.resolved_data_dir / 'jobs.db'}"


def get_settings() -> Settings:
    """Read the environment now (not cached: tests and job processes change it)."""
    return Settings()
