"""A job process's output, read on a thread (procs.copy_lines): every line goes to the job's log, event lines also into
what the worker reports (latest progress, result, error) and metric events into the job's metrics file."""

import json
import threading
from collections import deque
from pathlib import Path
from typing import BinaryIO

from openseek_nanochat import events, procs


class JobOutput:
    def __init__(self, stream: BinaryIO, log_path: Path, metrics_path: Path):
        self._stream = stream
        self._log = open(log_path, "ab")
        self._metrics_path = metrics_path
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, name="job-output", daemon=True)
        self._progress: dict | None = None
        self._progress_version = 0
        self.result: dict | None = None
        self.error: dict | None = None
        self.tail: deque[str] = deque(maxlen=20)  # the last plain lines, to explain a crash

    def note(self, text: str) -> None:
        """A line of the worker's own in the job's log (attempts, cancels, requeues)."""
        self._write(f"{text}\n".encode())

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def close(self) -> None:
        with self._lock:
            self._log.close()

    def progress(self) -> tuple[dict | None, int]:
        with self._lock:
            return self._progress, self._progress_version

    def _write(self, data: bytes) -> None:
        with self._lock:
            if not self._log.closed:
                self._log.write(data)
                self._log.flush()

    def _read(self) -> None:
        procs.copy_lines(self._stream, self._write, self._take)
        self._stream.close()

    def _take(self, line: str) -> None:
        event = events.parse(line)
        if event is None:
            if line.strip():
                self.tail.append(line.rstrip())
        else:
            self._fold(event)

    def _fold(self, event: dict) -> None:
        kind = event.pop("type")
        event.pop("time", None)
        if kind == "progress":
            with self._lock:
                self._progress = event
                self._progress_version += 1
        elif kind == "result":
            self.result = event
        elif kind == "error":
            where = event.get("where")
            self.error = {"message": str(event.get("message", "")), "where": None if where is None else str(where)}
        elif kind == "metric":
            with open(self._metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(event) + "\n")
