"""`openseek-nanochat jobs …` as a user runs it, a real process against a real server: --follow shows progress and
exits with how the job ended (0 with the output dir; non-zero naming file:line, or when cancelled), Ctrl-C detaches
and leaves the job running, a server restart mid-job is ridden out; list/status/logs/manifest say what the HTTP API
says; a wrong token, an unknown job, a refused spec and an unreachable server are one line each, never a traceback."""

import json
import os
import re
import signal
import subprocess
import time

import pytest

from openseek_nanochat import events

from serverutil import (
    SHARED_DATA,
    cli,
    free_port,
    long_conversion,
    start_server,
    wait_for_state,
    wait_until,
)

TOKEN = "cli-token"
ENV = {"OPENSEEK_NANOCHAT_LEASE_SECONDS": "3"}
GSM8K = str(SHARED_DATA / "jsonl" / "gsm8k.jsonl")
TOKEN_401 = (
    "error: missing or wrong API token: send 'Authorization: Bearer <token>' with the server's "
    "OPENSEEK_NANOCHAT_API_TOKEN (HTTP 401)\n"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("jobs-cli") / "data", workers=1, env=ENV, token=TOKEN) as server:
        yield server


def client_env(server, token: str | None = TOKEN) -> dict[str, str]:
    """A user's shell: the server's address and token, none of the service's own settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENSEEK_NANOCHAT_")}
    env["OPENSEEK_NANOCHAT_SERVER"] = server.base_url
    if token is not None:
        env["OPENSEEK_NANOCHAT_API_TOKEN"] = token
    return env


def jobs(server, *args: str, token: str | None = TOKEN, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli("jobs", *args), env=client_env(server, token), input=stdin, capture_output=True, text=True, timeout=180
    )


def start_jobs(server, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        cli("jobs", *args), env=client_env(server), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def write_spec(path, spec: dict) -> str:
    path.write_text(json.dumps(spec))
    return str(path)


def submitted_id(process: subprocess.Popen) -> str:
    """The job id a `submit --follow` announces on its first line of stderr."""
    line = process.stderr.readline()
    match = re.match(r"submitted job ([0-9a-f]+) \(convert\); following it", line)
    assert match, line
    return match[1]


def running_with_shards(server, job_id: str, shards: int) -> None:
    def written():
        job = server.client.get(f"/jobs/{job_id}").json()
        assert job["state"] in ("queued", "running"), job
        return (job["progress"] or {}).get("shards", 0) >= shards

    wait_until(written, timeout=60, what=f"{shards} shards written")


def plain_lines(log: str) -> str:
    """The log as the CLI shows it: without the event lines (the progress bar shows those)."""
    return "".join(line for line in log.splitlines(keepends=True) if events.PREFIX not in line)


def api_log(server, job_id: str) -> str:
    return server.client.get(f"/jobs/{job_id}/logs", params={"limit": 4 << 20}).json()["text"]


@pytest.fixture(scope="module")
def converted(server, tmp_path_factory) -> tuple[dict, subprocess.CompletedProcess]:
    """`jobs submit convert spec.json --follow` on gsm8k: the finished job and what the command printed."""
    spec = {
        "name": "gsm8k",
        "sources": [{"type": "files", "paths": [GSM8K], "text_template": "{question}\n{answer}"}],
        "chars_per_shard": 100_000,
    }
    spec_file = write_spec(tmp_path_factory.mktemp("spec") / "spec.json", spec)
    done = jobs(server, "submit", "convert", spec_file, "--follow")
    job_id = re.match(r"submitted job ([0-9a-f]+) ", done.stderr)[1]
    return server.client.get(f"/jobs/{job_id}").json(), done


def test_submit_follow_shows_progress_and_exits_0_with_the_output_dir(server, converted):
    job, done = converted
    assert done.returncode == 0, done.stderr
    assert job["state"] == "succeeded"
    output_dir = server.data_dir.resolve() / "datasets" / "gsm8k"
    assert job["result"]["output_dir"] == str(output_dir) and (output_dir / "manifest.json").is_file()

    # the progress bar went to stderr and reached 100%, with the job's own words beside it
    bar = done.stderr.replace("\r", "\n")
    assert re.search(rf"^{job['id']} succeeded 100%\|█+\| done, [\d.]+ MB/s", bar, re.MULTILINE), bar
    # stdout: the log's plain lines as they came, then how the job ended and its result
    log, summary = done.stdout.split(f"job {job['id']} (convert) succeeded in ")
    assert log == plain_lines(api_log(server, job["id"])) and "attempt 1 started" in log
    assert f"\n  output_dir    {output_dir}\n" in summary and "\n  docs          1,319\n" in summary
    assert "Traceback" not in done.stderr


def test_a_job_failing_on_a_malformed_line_exits_1_naming_file_and_line(server, tmp_path):
    # ~1.5 MB, the bad line past the first MiB (what a submit reads to check a file)
    corpus = server.data_dir.parent / "bad.jsonl"
    lines = [json.dumps({"text": f"doc {i} " + "x" * 240}) for i in range(6000)]
    lines.insert(5500, "{not json")
    corpus.write_text("\n".join(lines) + "\n")
    spec = {"sources": [{"type": "files", "paths": [str(corpus)]}], "chars_per_shard": 100_000}

    done = jobs(server, "submit", "convert", write_spec(tmp_path / "bad.json", spec), "--follow")
    assert done.returncode == 1, done.stderr
    job_id = re.match(r"submitted job ([0-9a-f]+) ", done.stderr)[1]
    error = server.client.get(f"/jobs/{job_id}").json()["error"]
    assert error["where"] == f"{corpus}:5501" and "malformed JSON" in error["message"]
    assert done.stderr.endswith(f"\nerror: job {job_id} (convert) failed: {corpus}:5501: {error['message']}\n")


def test_a_cancelled_job_exits_1(server):
    spec = write_spec(server.data_dir.parent / "cancel.json", long_conversion(server, name="cancelled"))
    following = start_jobs(server, "submit", "convert", spec, "--follow")
    job_id = submitted_id(following)
    running_with_shards(server, job_id, 1)

    cancel = jobs(server, "cancel", job_id)
    assert cancel.returncode == 0 and re.fullmatch(
        rf"job {job_id} (is cancelling: its worker stops every process of it|cancelled)\n", cancel.stdout
    )
    out, err = following.communicate(timeout=60)
    assert following.returncode == 1, err
    assert err.endswith(f"\nerror: job {job_id} (convert) was cancelled\n")
    assert server.client.get(f"/jobs/{job_id}").json()["state"] == "cancelled"


def test_ctrl_c_detaches_and_the_job_runs_on(server):
    spec = write_spec(server.data_dir.parent / "detach.json", long_conversion(server, name="detached"))
    following = start_jobs(server, "submit", "convert", spec, "--follow")
    job_id = submitted_id(following)
    running_with_shards(server, job_id, 1)

    following.send_signal(signal.SIGINT)
    out, err = following.communicate(timeout=20)
    assert following.returncode == 130, err
    assert err.endswith(
        f"\ndetached from job {job_id}; it keeps running. Follow it again with: openseek-nanochat "
        f"jobs logs {job_id} --follow (or: openseek-nanochat jobs wait {job_id})\n"
    )
    assert "Traceback" not in err
    assert server.client.get(f"/jobs/{job_id}").json()["state"] == "running"  # not cancelled

    again = jobs(server, "wait", job_id)  # reattach, as the hint says
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"job {job_id} (convert) succeeded in ")
    job = server.client.get(f"/jobs/{job_id}").json()
    assert job["state"] == "succeeded" and job["attempts"] == 1


def test_list_status_logs_and_manifest_agree_with_the_api(server, converted):
    job, _ = converted
    api = server.client
    job_id = job["id"]

    def as_json(*args):
        done = jobs(server, *args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    assert as_json("status", job_id) == api.get(f"/jobs/{job_id}").json()
    assert (
        as_json("list", "--kind", "convert", "--limit", "3")
        == api.get("/jobs", params={"kind": "convert", "limit": 3}).json()
    )
    assert as_json("manifest", job_id) == api.get(f"/jobs/{job_id}/manifest").json()
    assert as_json("logs", job_id)["text"] == api_log(server, job_id)
    workers = api.get("/workers").json()
    assert [(w["id"], w["pid"]) for w in as_json("workers")] == [(w["id"], w["pid"]) for w in workers]

    # the same for people
    listed = jobs(server, "list", "--state", "succeeded").stdout.splitlines()
    assert listed[0].split() == ["ID", "KIND", "STATE", "PROGRESS", "CREATED", "RUN", "TIME"]
    assert [row.split()[:4] for row in listed if row.startswith(job_id)] == [[job_id, "convert", "succeeded", "100%"]]
    status = jobs(server, "status", job_id).stdout
    assert f"id        {job_id}\n" in status and "\nstate     succeeded\n" in status
    assert f"\n  output_dir    {job['result']['output_dir']}\n" in status
    assert jobs(server, "logs", job_id).stdout == plain_lines(api_log(server, job_id))
    assert jobs(server, "logs", job_id, "--raw").stdout == api_log(server, job_id)
    shards = api.get(f"/jobs/{job_id}/manifest").json()["shards"]
    table = jobs(server, "manifest", job_id).stdout
    for shard in shards:
        assert re.search(
            rf"^{shard['file']}\s+{shard['split']}\s+{shard['rows']:,}\s.*\s{shard['sha256'][:16]}$",
            table,
            re.MULTILINE,
        ), table
    # logs --follow of a finished job: its log, then how it ended
    followed = jobs(server, "logs", job_id, "--follow")
    assert followed.returncode == 0
    assert followed.stdout.startswith(plain_lines(api_log(server, job_id)) + f"job {job_id} (convert) succeeded")


def test_delete_purges_and_then_the_job_is_a_404(server, tmp_path):
    spec = {
        "name": "deleted",
        "sources": [{"type": "files", "paths": [GSM8K], "text_template": "{question}"}],
        "max_docs": 200,
    }
    job_id = jobs(server, "submit", "convert", "-", stdin=json.dumps(spec)).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{16}", job_id)
    assert jobs(server, "wait", job_id).returncode == 0
    output_dir = server.data_dir.resolve() / "datasets" / "deleted"
    deleted = jobs(server, "delete", job_id, "--purge")
    assert deleted.returncode == 0 and f"\n  removed {output_dir}\n" in deleted.stdout
    assert not output_dir.exists()
    gone = jobs(server, "status", job_id)
    assert (gone.returncode, gone.stdout, gone.stderr) == (2, "", f"error: no job with id '{job_id}' (HTTP 404)\n")


def test_the_token_is_sent_and_a_wrong_or_missing_one_is_one_line(server, converted):
    job, _ = converted
    assert jobs(server, "status", job["id"]).returncode == 0  # every other test also runs with the right token
    for token in ("wrong", None):
        for args in (["list"], ["logs", job["id"], "--follow"], ["submit", "convert", "-"]):
            done = jobs(server, *args, token=token, stdin="{}")
            assert (done.returncode, done.stdout, done.stderr) == (2, "", TOKEN_401), args


def test_refused_specs_and_unknown_kinds_are_one_line(server, tmp_path):
    def refused(spec_text: str, kind: str = "convert") -> str:
        done = jobs(server, "submit", kind, "-", stdin=spec_text)
        assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
        return done.stderr

    spec = {"sources": [{"type": "files", "paths": [GSM8K]}], "chars_per_shard": -1}
    assert refused(json.dumps(spec)) == "error: chars_per_shard: Input should be greater than 0 (HTTP 422)\n"
    assert refused('{"sources": [}') == "error: stdin:1:14: malformed JSON: Expecting value\n"
    assert refused(json.dumps(spec), kind="compile") == "error: the server has no job kind 'compile' (HTTP 404)\n"
    missing = jobs(server, "submit", "convert", str(tmp_path / "nope.json"))
    assert missing.stderr == f"error: cannot read the spec {tmp_path / 'nope.json'}: No such file or directory\n"


def test_an_unreachable_server_is_one_line(server):
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["list"], ["submit", "convert", "-", "--follow"], ["wait", "0123456789abcdef"]):
        done = subprocess.run(
            cli("jobs", "--server", url, *args),
            input="{}",
            capture_output=True,
            text=True,
            timeout=60,
            env=client_env(server),
        )
        assert done.returncode == 2 and done.stdout == "", args
        assert (
            done.stderr == f"error: cannot reach the server at {url}: connection refused (is it running? "
            "--server or $OPENSEEK_NANOCHAT_SERVER names it)\n"
        )


def test_follow_rides_out_a_server_restart_mid_job(tmp_path):
    with start_server(tmp_path / "data", workers=1, env=ENV) as server:
        spec = write_spec(tmp_path / "long.json", long_conversion(server, name="restarted"))
        env = client_env(server, token=None)
        del env["OPENSEEK_NANOCHAT_SERVER"]  # --server says where, this time
        following = subprocess.Popen(
            cli("jobs", "submit", "convert", spec, "--follow", "--server", server.base_url),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        job_id = submitted_id(following)
        running_with_shards(server, job_id, 2)

        started = time.monotonic()
        server.restart()  # the old server's workers requeue the job; the new server's worker resumes it
        out, err = following.communicate(timeout=120)
        assert following.returncode == 0, err
        assert time.monotonic() - started > 1  # it did wait for the new server
        assert "lost the server (" in err and "reconnected" in err

        wait_for_state(server.client, job_id, "succeeded")
        log = api_log(server, job_id)
        # stopped half-way with its server, queued again, resumed by the new server's worker
        assert "worker stopping: job queued" in log and log.count(" started (pid ") == 2
        # every line of the log, once: resumed with Last-Event-ID where the stream stopped
        assert out.split(f"job {job_id} (convert) succeeded in ")[0] == plain_lines(log)
