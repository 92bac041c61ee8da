"""Property-based requests from the OpenAPI schema against the running service: no input makes it answer 5xx.

Besides what the schema allows, tests/schemathesis_hooks.py sends numbers no schema allows (infinity, NaN, 1e400,
integers of up to 10,000 digits) and odd Host, Origin, Last-Event-ID and Idempotency-Key headers. The server has no
token, so that the Origin check of writes is exercised too.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from serverutil import SHARED_DATA, start_server

HOOKS = Path(__file__).with_name("schemathesis_hooks.py")


def test_no_server_errors(tmp_path):
    with start_server(tmp_path / "data", workers=0) as server:
        spec = {
            "sources": [
                {"type": "files", "paths": [str(SHARED_DATA / "jsonl" / "gsm8k.jsonl")], "text_column": "question"}
            ]
        }
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
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(config),
                "--no-color",
                "run",
                f"{server.base_url}/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "20",
                "--seed",
                "20260101",
                "--workers",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={
                **os.environ,
                "SCHEMATHESIS_HOOKS": str(HOOKS),
                "HOOKS_SERVER_ORIGIN": server.base_url,
                "HOOKS_REPORT": str(tmp_path / "sent.json"),
            },
        )
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        assert " passed" in result.stdout and "failed" not in result.stdout.split("SUMMARY")[-1]
        assert "Traceback" not in server.log() and '" 500' not in server.log()
        # The odd values did reach the server, and the checks they meet answered.
        sent = json.loads((tmp_path / "sent.json").read_text())
        assert sent["edge_bodies"] >= 30, sent
        assert all(sent[f"odd {name}"] >= 3 for name in ("Host", "Origin", "Last-Event-ID", "Idempotency-Key")), sent
        assert sent["status 400"] and sent["status 403"] and not any(k.startswith("status 5") for k in sent), sent
