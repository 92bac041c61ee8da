"""Load on the API while a conversion runs: does polling slow the API down, or the conversion?

One run, one server (`serve --workers 1`, SQLite), the same conversion several times:
  - alone, and with N concurrent clients polling GET /jobs/{id} (alternating, `--rounds` of each); each client waits
    `--interval` between its requests, their schedules spread over the interval; per-request latency (p50/p99/max over
    all rounds) and errors of the pollers, the conversion's throughput (chars/s between the job's started_at and
    finished_at) with and without them (medians over the rounds);
  - pick-up latency: submit -> running (the job's created_at -> started_at), for small jobs sent to an idle worker.
Targets: p99 < 50 ms, zero errors, throughput within 10% of the run without pollers, pick-up < 1 s.

    python benchmarks/api_load.py [--clients 50] [--interval 1.0] [--copies 300] [--rounds 4]
"""

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from openseek_nanochat.settings import Settings  # noqa: E402

from serverutil import SHARED_DATA, shakespeare_jsonl, start_server, wait_for_state  # noqa: E402


def seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def throughput(job: dict) -> float:
    """Characters per second of the conversion itself, as it reported at the end (process start-up not counted)."""
    return job["progress"]["mb_per_s"] * 1e6


def job_throughput(job: dict) -> float:
    """Characters per second between the job's start and finish, process start-up included."""
    return job["result"]["chars"] / seconds_between(job["started_at"], job["finished_at"])


class Poller:
    """One polling client: a keep-alive HTTP/1.1 connection and as little client-side work as possible, so that what
    is measured is the server (httpx would cost this 2-core machine more CPU than the server does per request)."""

    def __init__(self, host: str, port: int, path: str, headers: dict[str, str]):
        self.host, self.port = host, port
        lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(self.request)
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
        )
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def poll_until_done(base_url: str, headers: dict, job_id: str, clients: int, interval: float) -> dict:
    url = httpx.URL(base_url)
    latencies: list[float] = []
    errors: list[str] = []
    done = asyncio.Event()

    async def client_loop(poller: Poller, start_after: float) -> None:
        await asyncio.sleep(start_after)  # clients poll on their own schedules, not in lockstep
        while not done.is_set():
            started = time.perf_counter()
            try:
                status, body = await poller.get()
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors.append(f"HTTP {status}")
                elif json.loads(body)["state"] in ("succeeded", "failed", "cancelled"):
                    done.set()
            except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                errors.append(type(error).__name__)
                poller.close()
                poller.writer = None
            if interval:
                await asyncio.sleep(interval)

    pollers = [Poller(url.host, url.port, f"/jobs/{job_id}", headers) for _ in range(clients)]
    started = time.perf_counter()
    await asyncio.gather(*(client_loop(poller, interval * i / clients) for i, poller in enumerate(pollers)))
    elapsed = time.perf_counter() - started
    for poller in pollers:
        poller.close()
    return {"latencies": latencies, "errors": errors, "requests_per_s": len(latencies) / elapsed}


def percentiles(latencies: list[float]) -> dict:
    ordered = sorted(latencies)
    at = lambda q: round(1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q))], 2)  # noqa: E731
    return {"requests": len(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": round(1000 * ordered[-1], 2)}


def run_conversion(server, spec: dict, name: str, pollers: tuple[int, float] | None) -> tuple[dict, dict | None]:
    job = server.client.post("/jobs/convert", json={**spec, "name": name}).json()
    load = None
    if pollers:
        auth = {k: v for k, v in server.client.headers.items() if k.lower() == "authorization"}
        api = psutil.Process(server.process.pid)  # the API's process (its workers are children)
        before = sum(api.cpu_times()[:2])
        load = asyncio.run(poll_until_done(server.base_url, auth, job["id"], *pollers))
        load["api_cpu_ms_per_request"] = 1000 * (sum(api.cpu_times()[:2]) - before) / max(1, len(load["latencies"]))
    job = wait_for_state(server.client, job["id"], "succeeded", timeout=600)
    server.client.delete(f"/jobs/{job['id']}", params={"purge": "true"}).raise_for_status()  # keep the disk free
    return job, load


def pickup_latencies(server, count: int) -> list[float]:
    spec = {
        "sources": [
            {"type": "files", "paths": [str(SHARED_DATA / "jsonl" / "gsm8k.jsonl")], "text_column": "question"}
        ],
        "max_docs": 50,
    }
    latencies = []
    for _ in range(count):
        job = server.client.post("/jobs/convert", json=spec).json()
        job = wait_for_state(server.client, job["id"], "succeeded")
        latencies.append(seconds_between(job["created_at"], job["started_at"]))
        time.sleep(0.3)  # submit at a random moment of the worker's poll cycle
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        help="pause of each client between its requests, in seconds (1: a dashboard's refresh)",
    )
    parser.add_argument("--copies", type=int, default=300, help="corpus size, in copies of tinyshakespeare (~1.3 MB)")
    parser.add_argument("--rounds", type=int, default=4, help="conversions with and without pollers, alternating")
    parser.add_argument("--pickups", type=int, default=10)
    parser.add_argument("--job-nice", type=int, help="run the jobs at this niceness instead of the default")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="api-load-") as tmp:
        data_dir = Path(tmp) / "data"
        corpus = shakespeare_jsonl(Path(tmp) / "corpus.jsonl", args.copies)
        spec = {"sources": [{"type": "files", "paths": [str(corpus)]}], "chars_per_shard": 2_000_000}
        # The service as shipped: default settings (the tests' faster polling undone).
        defaults = {
            f"OPENSEEK_NANOCHAT_{name.upper()}": str(Settings.model_fields[name].default)
            for name in ("poll_seconds", "kill_grace_seconds", "lease_seconds", "job_nice")
        }
        if args.job_nice is not None:
            defaults["OPENSEEK_NANOCHAT_JOB_NICE"] = str(args.job_nice)
        with start_server(data_dir, workers=1, env=defaults) as server:
            run_conversion(server, spec, "warmup", None)
            jobs: dict[str, list[dict]] = {"alone": [], "polled": []}
            loads = []
            for round_ in range(args.rounds):
                order = ("alone", "polled") if round_ % 2 == 0 else ("polled", "alone")  # ABBA: cancels drift
                for mode in order:
                    pollers = (args.clients, args.interval) if mode == "polled" else None
                    job, load = run_conversion(server, spec, f"{mode}-{round_}", pollers)
                    jobs[mode].append(job)
                    if load:
                        loads.append(load)
                alone, polled = jobs["alone"][-1], jobs["polled"][-1]
                print(
                    f"round {round_}: conversion alone {throughput(alone) / 1e6:.2f} M chars/s (job "
                    f"{job_throughput(alone) / 1e6:.2f}), with pollers {throughput(polled) / 1e6:.2f} (job "
                    f"{job_throughput(polled) / 1e6:.2f}); {loads[-1]['requests_per_s']:.0f} requests/s, "
                    f"{len(loads[-1]['errors'])} errors, API CPU {loads[-1]['api_cpu_ms_per_request']:.2f} ms/request, "
                    f"{percentiles(loads[-1]['latencies'])}",
                    flush=True,
                )
            pickups = pickup_latencies(server, args.pickups)

    summary = {
        "load_average_1min_at_end": os.getloadavg()[0],
        "cpus": os.cpu_count(),
        "clients": args.clients,
        "interval_s": args.interval,
        "job_nice": args.job_nice if args.job_nice is not None else Settings.model_fields["job_nice"].default,
        "chars": jobs["alone"][0]["result"]["chars"],
        **percentiles([latency for load in loads for latency in load["latencies"]]),
        "errors": sum(len(load["errors"]) for load in loads),
        "error_kinds": sorted({error for load in loads for error in load["errors"]}),
        "requests_per_s": statistics.mean(load["requests_per_s"] for load in loads),
        "api_cpu_ms_per_request": statistics.mean(load["api_cpu_ms_per_request"] for load in loads),
        **{f"throughput_{mode}_chars_per_s": statistics.median(map(throughput, jobs[mode])) for mode in jobs},
        "throughput_ratio": statistics.median(map(throughput, jobs["polled"]))
        / statistics.median(map(throughput, jobs["alone"])),
        "job_throughput_ratio": statistics.median(map(job_throughput, jobs["polled"]))
        / statistics.median(map(job_throughput, jobs["alone"])),
        "pickup_s_median": statistics.median(pickups),
        "pickup_s_max": max(pickups),
    }
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}, indent=2))
    ok = (
        summary["p99_ms"] < 50
        and summary["errors"] == 0
        and summary["throughput_ratio"] >= 0.9
        and summary["pickup_s_max"] < 1
    )
    print("targets (p99 < 50 ms, 0 errors, throughput >= 90%, pick-up < 1 s):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
