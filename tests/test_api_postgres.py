"""The service on PostgreSQL: `serve` migrates it, workers claim with FOR UPDATE SKIP LOCKED, a job runs through."""

import pytest

from serverutil import SHARED_DATA, start_postgres, start_server, wait_for_state


@pytest.mark.needs("postgresql")
def test_convert_job_on_postgresql(tmp_path):
    with (
        start_postgres() as url,
        start_server(tmp_path / "data", workers=2, env={"OPENSEEK_NANOCHAT_DATABASE_URL": url}) as server,
    ):
        spec = {
            "sources": [
                {"type": "files", "paths": [str(SHARED_DATA / "jsonl" / "gsm8k.jsonl")], "text_column": "question"}
            ],
            "chars_per_shard": 50_000,
        }
        ids = [server.client.post("/jobs/convert", json=spec).json()["id"] for _ in range(4)]
        jobs = [wait_for_state(server.client, job_id, "succeeded") for job_id in ids]
        assert all(job["attempts"] == 1 and job["result"]["docs"] == 1319 for job in jobs)
        assert not (server.data_dir / "jobs.db").exists()
        assert len(server.client.get("/workers").json()) == 2
