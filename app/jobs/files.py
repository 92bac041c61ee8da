"""A job's own folder, `<data dir>/jobs/<id>/`: the spec it runs, its output log and its metrics.

Workers write these files; the API reads them. Outputs proper (shards, checkpoints) live where the spec says.
"""

import json
from pathlib import Path

from openseek_nanochat.atomic import write_json_atomic
from openseek_nanochat.paths import jobs_dir
from openseek_nanochat.settings import Settings

SPEC = "spec.json"
LOG = "output.log"
METRICS = "metrics.jsonl"


def node_log(node: int) -> str:
    """A multi-node job's log of `node`: node 0's is the job's log, the others' lie beside it."""
    return LOG if node == 0 else f"output.node{node}.log"


def node_metrics(node: int) -> str:
    """Only node 0 reports metrics (its first rank does); another node's file stays empty unless that changes."""
    return METRICS if node == 0 else f"metrics.node{node}.jsonl"


def job_dir(settings: Settings, job_id: str) -> Path:
    return jobs_dir(settings) / job_id


def write_spec(folder: Path, spec: dict) -> Path:
    path = folder / SPEC
    write_json_atomic(path, spec)
    return path


def read_log(folder: Path, offset: int, limit: int) -> tuple[str, int, int]:
    """Up to `limit` bytes of the log from `offset`, cut after the last whole line: (text, next_offset, size)."""
    path = folder / LOG
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "", 0, 0
    offset = min(offset, size)
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(limit)
    if offset + len(data) < size:
        cut = data.rfind(b"\n")
        if cut >= 0:  # a single line longer than the limit comes in pieces
            data = data[: cut + 1]
    return data.decode("utf-8", errors="replace"), offset + len(data), size


def read_metrics(folder: Path) -> list[dict]:
    """Metric records in step order, one per step: a resumed trainer repeats steps, and the last record wins."""
    by_step: dict = {}
    unnumbered: list[dict] = []
    try:
        lines = (folder / METRICS).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if not isinstance(record, dict):
            continue
        step = record.get("step")
        if isinstance(step, int):
            by_step[step] = record
        else:
            unnumbered.append(record)
    return [by_step[step] for step in sorted(by_step)] + unnumbered
