"""`openseek-nanochat jobs …`: the service's jobs from a terminal or a script, over openseek_nanochat.client.

Tables for people, `--json` for scripts (what the API returns, as it returns it). `--follow` shows a progress bar on
stderr and the job's log on stdout, and exits with how the job ended; Ctrl-C only detaches (the job runs on), and the
stream reconnects by itself when the server restarts. Every failure is one line on stderr, never a traceback.
"""

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from openseek_nanochat import events
from openseek_nanochat.cli import Command

# Exit codes (also in the command's help).
OK, JOB_FAILED, REQUEST_FAILED, DETACHED = 0, 1, 2, 130
EPILOG = """exit codes: 0 done (a followed job succeeded); 1 the job failed or was cancelled; 2 the request failed
(server unreachable, a wrong token, no such job, a spec refused); 130 detached with Ctrl-C (the job runs on).
The server: --server, else $OPENSEEK_NANOCHAT_SERVER, else http://127.0.0.1:8000; the token:
$OPENSEEK_NANOCHAT_API_TOKEN."""
STATES = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter

    def common(p: argparse.ArgumentParser, default) -> None:
        # Accepted before the verb and after it; after it, only what is given overrides (SUPPRESS).
        p.add_argument(
            "--server",
            default=default,
            help="the service's URL (default: $OPENSEEK_NANOCHAT_SERVER, else http://127.0.0.1:8000)",
        )
        p.add_argument(
            "--json",
            action="store_true",
            default=False if default is None else default,
            help="print JSON for scripts instead of tables",
        )

    common(parser, None)
    shared = argparse.ArgumentParser(add_help=False)
    common(shared, argparse.SUPPRESS)
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    def verb(name: str, help: str) -> argparse.ArgumentParser:
        return verbs.add_parser(
            name,
            parents=[shared],
            help=help,
            description=help,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    p = verb("submit", "submit a job; print its id, or with --follow stream it until it ends")
    p.add_argument("kind", help="the kind of job: convert, train, …")
    p.add_argument("spec", help="the spec, a JSON file (- reads stdin)")
    p.add_argument("--idempotency-key", help="submitting again with this key returns the first job")
    p.add_argument("--follow", "-f", action="store_true", help="show progress and log until the job ends")
    p = verb("list", "list jobs, newest first")
    p.add_argument("--kind")
    p.add_argument("--state", choices=STATES)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--offset", type=int, default=0)
    verb("status", "a job's state, progress, result or error").add_argument("id")
    p = verb("logs", "a job's log (without progress event lines, unless --raw)")
    p.add_argument("id")
    p.add_argument("--follow", "-f", action="store_true", help="go on printing until the job ends")
    p.add_argument("--raw", action="store_true", help="the log exactly as stored, event lines included")
    verb("wait", "show a job's progress until it ends; exit with how it ended").add_argument("id")
    verb("cancel", "cancel a job (its worker stops every process of it)").add_argument("id")
    verb("manifest", "the manifest of a job's outputs: shards with rows, bytes, sha256").add_argument("id")
    p = verb("delete", "delete a finished job")
    p.add_argument("id")
    p.add_argument("--purge", action="store_true", help="also remove the outputs the job owns")
    verb("workers", "the workers, what each runs, when each last heartbeated")


# --- formatting ---------------------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = [headers, *rows]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def pairs(items: list[tuple[str, object]], indent: str = "") -> str:
    width = max((len(k) for k, _ in items), default=0)
    return "\n".join(f"{indent}{k.ljust(width)}  {v}" for k, v in items)


def when(moment: datetime | None) -> str:
    return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


def run_time(job) -> float | None:
    if job.started_at is None:
        return None
    end = job.finished_at or datetime.now(job.started_at.tzinfo)
    return (end - job.started_at).total_seconds()


def value(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower() if v is not None else "-"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={value(x)}" for k, x in v.items())
    return str(v)


def progress_text(progress) -> str:
    """One line: a convert job's message, or a train job's step and loss; the rate and ETA where known."""
    if progress is None:
        return ""
    p = progress.model_dump(exclude_none=True)
    parts = [p["message"]] if "message" in p and "step" not in p else []
    if "step" in p:
        parts.append(f"step {p['step']:,}/{p['num_iterations']:,}" if "num_iterations" in p else f"step {p['step']:,}")
    for key, label in (("loss", "loss"), ("val_bpb", "val_bpb")):
        if isinstance(p.get(key), (int, float)):
            parts.append(f"{label} {p[key]:.3f}")
    if isinstance(p.get("tok_per_sec"), (int, float)):
        parts.append(f"{p['tok_per_sec']:,.0f} tok/s")
    if isinstance(p.get("mb_per_s"), (int, float)):
        parts.append(f"{p['mb_per_s']:.1f} MB/s")
    if p.get("eta_s"):
        parts.append(f"ETA {duration(p['eta_s'])}")
    return ", ".join(parts)


def percent(job) -> str:
    fraction = job.progress.fraction if job.progress else None
    return "-" if fraction is None else f"{100 * fraction:.0f}%"


def emit_json(data) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def dump(model) -> object:
    return model.model_dump(mode="json")


# --- following ----------------------------------------------------------------------------------------------------


class Follower:
    """A followed job on the terminal: a progress bar on stderr, the log's plain lines on stdout (event lines are the
    bar's business, unless `raw`), a note when the connection drops and comes back. With `as_json`, every event is one
    JSON line on stdout instead."""

    def __init__(self, bar: bool, log: bool, raw: bool = False, as_json: bool = False):
        from tqdm import tqdm

        self.prefix = events.PREFIX
        self.tqdm = tqdm
        self.log, self.raw, self.as_json = log, raw, as_json
        self.want_bar = bar and not as_json
        self.bar = None  # drawn from the first event on: a server that never answers leaves just its error line
        self.pending = ""  # the start of a log line still being written
        self.lost = False
        self.job = None

    def retrying(self, reason: str, pause: float) -> None:
        if not self.lost:
            self.note(f"lost the server ({reason}); reconnecting")
        self.lost = True

    def show(self, event) -> None:
        if self.lost:
            self.note("reconnected")
            self.lost = False
        if event.job is not None:
            self.job = event.job
        if self.as_json:
            print(
                json.dumps(
                    {
                        "type": event.type,
                        "id": event.id,
                        "job": event.job and dump(event.job),
                        "text": event.text,
                        "deleted": event.deleted,
                    },
                    ensure_ascii=False,
                ),
                flush=True,
            )
            return
        if event.type == "log" and self.log:
            self.print_log(event.text)
        if self.want_bar and event.job is not None:
            job = event.job
            if self.bar is None:
                # The text after the bar goes in as `unit`: tqdm's postfix would start with a comma.
                self.bar = self.tqdm(
                    total=100,
                    file=sys.stderr,
                    unit="",
                    dynamic_ncols=True,
                    mininterval=0.2,
                    bar_format="{desc} {percentage:3.0f}%|{bar}| {unit}",
                )
            self.bar.set_description_str(f"{job.id} {job.state}", refresh=False)
            if job.progress and job.progress.fraction is not None:
                self.bar.n = round(100 * job.progress.fraction, 1)
            self.bar.unit = progress_text(job.progress)
            self.bar.refresh()

    def print_log(self, text: str) -> None:
        lines = (self.pending + text).split("\n")
        self.pending = lines.pop()
        shown = [line for line in lines if self.raw or self.prefix not in line]
        if shown:
            self.write("\n".join(shown), sys.stdout)

    def write(self, text: str, file) -> None:
        if self.bar is not None:
            self.tqdm.write(text, file=file)
        else:
            print(text, file=file)
        file.flush()

    def note(self, text: str) -> None:
        if not self.as_json:
            self.write(text, sys.stderr)

    def close(self) -> None:
        if self.pending and (self.raw or self.prefix not in self.pending):
            self.write(self.pending, sys.stdout)
        self.pending = ""
        if self.bar is not None:
            self.bar.close()
        self.bar, self.want_bar = None, False


def reattach_hint(args: argparse.Namespace, job_id: str) -> str:
    server = f" --server {args.server}" if args.server else ""
    return f"openseek-nanochat jobs{server} logs {job_id} --follow (or: openseek-nanochat jobs{server} wait {job_id})"


def follow(client, args: argparse.Namespace, job_id: str, bar: bool, log: bool) -> int:
    """Follow the job until it ends; the exit code says how it ended."""
    view = Follower(bar=bar, log=log, raw=getattr(args, "raw", False), as_json=args.json)
    deleted = False
    try:
        for event in client.follow(job_id, on_retry=view.retrying):
            view.show(event)
            deleted = event.deleted
    except KeyboardInterrupt:
        view.close()
        print(
            f"detached from job {job_id}; it keeps running. Follow it again with: {reattach_hint(args, job_id)}",
            file=sys.stderr,
        )
        return DETACHED
    finally:
        view.close()
    if deleted:
        print(f"error: job {job_id} was deleted", file=sys.stderr)
        return JOB_FAILED
    return outcome(view.job, quiet=args.json)


def outcome(job, quiet: bool = False) -> int:
    """Say how the job ended (on stdout if it succeeded, else on stderr); its exit code."""
    if job.state == "succeeded":
        if not quiet:
            print(f"job {job.id} ({job.kind}) succeeded in {duration(run_time(job))}")
            if job.result:
                print(pairs([(k, value(v)) for k, v in job.result.items()], indent="  "))
        return OK
    if not quiet:
        reason = f": {job.error}" if job.error else ""
        verb = "was cancelled" if job.state == "cancelled" else job.state
        print(f"error: job {job.id} ({job.kind}) {verb}{reason}", file=sys.stderr)
    return JOB_FAILED


# --- the verbs ----------------------------------------------------------------------------------------------------


def read_spec(source: str) -> dict:
    name = "stdin" if source == "-" else source
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"cannot read the spec {name}: {getattr(e, 'strerror', None) or e}") from None
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(f"{name}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from None
    if not isinstance(spec, dict):
        raise SpecError(f"{name}: a spec is a JSON object, not {type(spec).__name__}")
    return spec


class SpecError(Exception):
    pass


def submit(client, args) -> int:
    job = client.submit(args.kind, read_spec(args.spec), idempotency_key=args.idempotency_key)
    if not args.follow:
        if args.json:
            emit_json(dump(job))
        else:
            print(job.id)
        return OK
    if not args.json:
        print(f"submitted job {job.id} ({job.kind}); following it (Ctrl-C detaches, the job runs on)", file=sys.stderr)
    return follow(client, args, job.id, bar=True, log=True)


def list_jobs(client, args) -> int:
    page = client.list(kind=args.kind, state=args.state, limit=args.limit, offset=args.offset)
    if args.json:
        emit_json(dump(page))
        return OK
    rows = [[j.id, j.kind, j.state, percent(j), when(j.created_at), duration(run_time(j))] for j in page.jobs]
    print(table(["ID", "KIND", "STATE", "PROGRESS", "CREATED", "RUN TIME"], rows))
    if page.total > len(page.jobs):
        print(f"{len(page.jobs)} of {page.total} jobs shown (--limit, --offset)")
    return OK


def status(client, args) -> int:
    job = client.status(args.id)
    if args.json:
        emit_json(dump(job))
        return OK
    items: list[tuple[str, object]] = [
        ("id", job.id),
        ("kind", job.kind),
        ("state", job.state),
        ("attempts", job.attempts),
        ("worker", job.worker_id or "-"),
        ("created", when(job.created_at)),
        ("started", when(job.started_at)),
        ("finished", when(job.finished_at)),
        ("run time", duration(run_time(job))),
    ]
    if job.progress:
        items.append(("progress", f"{percent(job)}  {progress_text(job.progress)}".rstrip()))
    if job.error:
        items.append(("error", job.error))
    print(pairs(items))
    if job.result:
        print("result")
        print(pairs([(k, value(v)) for k, v in job.result.items()], indent="  "))
    return OK


def logs(client, args) -> int:
    if args.follow:
        return follow(client, args, args.id, bar=False, log=True)
    offset, pieces, chunk = 0, [], None
    while True:
        chunk = client.logs(args.id, offset)
        if chunk.next_offset <= offset:
            break
        pieces.append(chunk.text)
        offset = chunk.next_offset
    text = "".join(pieces)
    if args.json:
        emit_json({"offset": 0, "next_offset": offset, "size": chunk.size, "text": text, "complete": chunk.complete})
        return OK
    view = Follower(bar=False, log=True, raw=args.raw)
    view.print_log(text)
    view.close()
    return OK


def wait(client, args) -> int:
    return follow(client, args, args.id, bar=True, log=False)


def cancel(client, args) -> int:
    job = client.cancel(args.id)
    if args.json:
        emit_json(dump(job))
    elif job.state == "cancelling":
        print(f"job {job.id} is cancelling: its worker stops every process of it")
    else:
        print(f"job {job.id} {job.state}")
    return OK


def manifest(client, args) -> int:
    data = client.manifest(args.id)
    if args.json:
        emit_json(data)
        return OK
    items = [(key, value(data[key])) for key in ("output_dir", "complete", "owner") if key in data]
    print(pairs(items))
    shards = data.get("shards") or []
    if shards:
        print(
            table(
                ["FILE", "SPLIT", "ROWS", "CHARS", "BYTES", "SHA256"],
                [
                    [
                        s.get("file", "-"),
                        s.get("split", "-"),
                        value(s.get("rows")),
                        value(s.get("chars")),
                        value(s.get("bytes")),
                        str(s.get("sha256", "-"))[:16],
                    ]
                    for s in shards
                ],
            )
        )
    if isinstance(data.get("totals"), dict):
        print("totals")
        print(pairs([(k, value(v)) for k, v in data["totals"].items()], indent="  "))
    return OK


def delete(client, args) -> int:
    deleted = client.delete(args.id, purge=args.purge)
    if args.json:
        emit_json(dump(deleted))
        return OK
    print(f"deleted job {deleted.id}")
    for path in deleted.removed:
        print(f"  removed {path}")
    for kept in deleted.kept:
        print(f"  kept {kept.path}: {kept.reason}")
    return OK


def workers(client, args) -> int:
    found = client.workers()
    if args.json:
        emit_json([dump(w) for w in found])
        return OK
    rows = [
        [w.id, w.host, str(w.pid), w.job_id or "-", when(w.heartbeat_at), "yes" if w.alive else "no"] for w in found
    ]
    print(table(["ID", "HOST", "PID", "JOB", "HEARTBEAT", "ALIVE"], rows))
    return OK


VERBS = {
    "submit": submit,
    "list": list_jobs,
    "status": status,
    "logs": logs,
    "wait": wait,
    "cancel": cancel,
    "manifest": manifest,
    "delete": delete,
    "workers": workers,
}


def run(args: argparse.Namespace) -> int:
    from openseek_nanochat import client as api

    try:
        with api.Client(args.server) as client:
            return VERBS[args.verb](client, args)
    except api.ClientError as e:
        hint = (
            " (is it running? --server or $OPENSEEK_NANOCHAT_SERVER names it)" if isinstance(e, api.Unreachable) else ""
        )
        print(f"error: {' '.join(str(e).split())}{hint}", file=sys.stderr)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
    except KeyboardInterrupt:  # outside a follow: nothing was left half-done on our side
        print("interrupted", file=sys.stderr)
        return DETACHED
    return REQUEST_FAILED


command = Command(
    "the service's jobs: submit, follow, list, status, logs, wait, cancel, manifest, delete, workers",
    add_arguments,
    run,
)
