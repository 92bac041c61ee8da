"""Progress events: the one channel from a job process to the worker that supervises it.

A job process prints ordinary log lines and, among them, event lines: a fixed prefix and one JSON object. The worker
copies every line to the job's log and folds event lines into the job row. Nothing else is shared, so a job can be run
by hand (`openseek-nanochat convert spec.json --events`) and behave exactly as under a worker.
"""

import json
import sys
import time
from typing import Any

PREFIX = "@@openseek-event "

# Event types:
#   progress  {"fraction", "docs", "chars", "shards", "rate", "eta_s", "message", ...any job-specific fields}
#   metric    one training step: {"step", "loss", "lr", "dt_ms", "tok_per_sec", "mfu", "val_bpb"}
#   result    the job's final result object (manifest summary, checkpoint dir, ...)
#   error     {"message", "where"}: the job failed for a reason a user can act on


def emit(event_type: str, stream=None, **fields: Any) -> None:
    stream = stream or sys.stdout
    record = {"type": event_type, "time": time.time(), **fields}
    stream.write(PREFIX + json.dumps(record, ensure_ascii=False, default=str) + "\n")
    stream.flush()


def parse(line: str) -> dict | None:
    """The event in a line, or None when the line is plain output (or a garbled event: logs must never break a job)."""
    start = line.find(PREFIX)
    if start < 0:
        return None
    try:
        event = json.loads(line[start + len(PREFIX) :])
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and "type" in event else None


class Throttle:
    """True at most once per `interval` seconds; keeps event volume bounded on fast loops."""

    def __init__(self, interval: float):
        self.interval = interval
        self.last = 0.0

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            return True
        return False
