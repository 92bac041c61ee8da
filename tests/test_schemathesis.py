"""Property-based requests from the OpenAPI schema against the running service: no input makes it answer 5xx."""

import subprocess
import sys

from serverutil import SHARED_DATA, start_server

TOKEN = "schemathesis-token"


def test_no_server_errors(tmp_path):
    with start_server(tmp_path / "data", workers=0, token=TOKEN) as server:
        spec = {"sources": [{"type": "files", "paths": [str(SHARED_DATA / "jsonl" / "gsm8k.jsonl")],
                             "text_column": "question"}]}
        # Real job ids, used for half the path parameters, so the checks get past "404 no such job".
        ids = [server.client.post("/jobs/convert", json=spec).json()["id"] for _ in range(3)]
        server.client.post(f"/jobs/{ids[0]}/cancel")
        config = tmp_path / "schemathesis.toml"
        config.write_text(
            f"[dictionaries.jobs]\nvalues = {ids!r}\n\n"
            '[parameters]\n"path.job_id" = { dictionary = "jobs", probability = 0.5 }\n'
        )
        result = subprocess.run(
            [
                sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
                "run", f"{server.base_url}/openapi.json",
                "--checks", "not_a_server_error",
                "--header", f"Authorization: Bearer {TOKEN}",
                "--max-examples", "20",
                "--seed", "20260101",
                "--workers", "1",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        assert " passed" in result.stdout and "failed" not in result.stdout.split("SUMMARY")[-1]
        assert "Traceback" not in server.log() and '" 500' not in server.log()
