"""The conversion: sources -> mixed, shuffled document stream -> nanochat shards + manifest, resumable.

Order of events for a run into `output_dir`:
  1. The manifest is written first (complete=false), binding the directory to this spec and these inputs.
  2. The stream's last `holdback` documents wait in a ring; older ones go to the shard writer a row group at a time.
  3. Each completed train shard is renamed into place, then the manifest records it with a resume point: the stream
     position of the next document and the state of the block holding it.
  4. At the end the ring is split: the last `val_count` documents are the validation shard (the last file).
A re-run reads the manifest, regenerates the stream from the last resume point and produces the same bytes as an
uninterrupted run; a different spec or changed inputs are refused rather than mixed.
"""

import bisect
import json
import time
from collections import deque
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from openseek_nanochat.errors import InputError
from openseek_nanochat.convert.mixture import DocStream
from openseek_nanochat.paths import check_output_path
from openseek_nanochat.convert.prefetch import prefetch
from openseek_nanochat.settings import Settings, get_settings
from openseek_nanochat.convert.shards import MANIFEST, ShardInfo, ShardWriter, write_json_atomic
from openseek_nanochat.convert.sources import build_sources
from openseek_nanochat.convert.spec import ConvertSpec

AUTO_VAL_MAX = 10_000
MANIFEST_FORMAT = "openseek-nanochat.convert/1"

ProgressCallback = Callable[[dict], None]


def default_output_dir(spec: ConvertSpec, settings: Settings, job_id: str | None) -> Path:
    name = spec.name or job_id
    if not name:
        raise InputError("set 'output_dir' or 'name' (the default output dir is <data dir>/datasets/<name>)", "output_dir")
    return settings.resolved_data_dir / "datasets" / name


def prepare(spec: ConvertSpec, settings: Settings | None = None, job_id: str | None = None) -> ConvertSpec:
    """Check everything knowable before any reading starts; return the spec with its output dir resolved."""
    settings = settings or get_settings()
    out = Path(spec.output_dir).expanduser() if spec.output_dir else default_output_dir(spec, settings, job_id)
    out = check_output_path(out, settings)
    for source in build_sources(spec, settings):
        source.check()
    return spec.model_copy(update={"output_dir": str(out)})


def auto_val_count(total_docs: int) -> int:
    return min(AUTO_VAL_MAX, max(1, total_docs // 100))


class _Run:
    """One conversion run's mutable state; `convert()` is the only entry point."""

    def __init__(self, spec: ConvertSpec, settings: Settings, on_progress: ProgressCallback | None):
        self.spec, self.settings, self.on_progress = spec, settings, on_progress
        self.out = Path(spec.output_dir)
        self.sources = build_sources(spec, settings)
        self.inputs = [{"source": s.name, "files": s.fingerprint()} for s in self.sources]
        self.holdback = spec.val_docs or AUTO_VAL_MAX
        self.shards: list[dict] = []
        self.written_docs = np.zeros(len(self.sources), np.int64)
        self.written_chars = np.zeros(len(self.sources), np.int64)
        self.started = time.time()
        self.last_progress = 0.0
        self.resume_from: dict | None = None
        self.stream: DocStream | None = None
        self.snapshots: deque = deque()  # (stream index where a block starts, its snapshot), oldest still unwritten
        self.fed = 0  # stream index of the next document to hand to the shard writer
        self.best_fraction = 0.0

    # -- manifest -------------------------------------------------------------------------------------------------
    def _fingerprint(self) -> dict:
        return {"spec": self.spec.fingerprint_fields(), "inputs": self.inputs}

    def _open_output(self) -> dict | None:
        """Create or adopt the output dir. Returns a finished manifest when there is nothing left to do."""
        self.out.mkdir(parents=True, exist_ok=True)
        manifest_path = self.out / MANIFEST
        if manifest_path.exists():
            manifest = json.loads(manifest_path.read_text())
            if manifest.get("format") != MANIFEST_FORMAT:
                raise InputError("holds a manifest this version cannot resume; choose another output_dir", str(self.out))
            if manifest["spec"] != self._fingerprint()["spec"]:
                raise InputError(
                    "holds a conversion of a different spec; refusing to mix them. Use another output_dir, or "
                    "delete this one to start over", str(self.out))
            if manifest["inputs"] != self.inputs:
                raise InputError(
                    "holds a conversion of these sources, but the input files changed since (size or mtime); "
                    "refusing to mix old and new data. Delete the output dir to start over", str(self.out))
            if manifest["complete"]:
                return manifest
            self.shards = manifest["shards"]
            self.resume_from = manifest.get("resume")
            if self.resume_from:
                self.written_docs = np.array(self.resume_from["source_docs"], np.int64)
                self.written_chars = np.array(self.resume_from["source_chars"], np.int64)
        elif any(self.out.glob("shard_*.parquet")):
            raise InputError("already holds shards and no manifest; choose an empty output_dir", str(self.out))
        # Whatever a crash left beyond the last recorded shard is rewritten, identically.
        for stale in list(self.out.glob(".*.tmp")) + sorted(self.out.glob("shard_*.parquet"))[len(self.shards):]:
            stale.unlink()
        self._write_manifest(complete=False, resume=self.resume_from)
        return None

    def _source_summaries(self) -> list[dict]:
        total_docs, total_chars = max(1, int(self.written_docs.sum())), max(1, int(self.written_chars.sum()))
        summaries = []
        for i, source in enumerate(self.sources):
            reader = self.stream.readers[i] if self.stream else None
            summaries.append({
                "name": source.name, "type": _source_type(source), "weight": source.weight,
                "docs": int(self.written_docs[i]), "chars": int(self.written_chars[i]),
                "share_docs": round(int(self.written_docs[i]) / total_docs, 6),
                "share_chars": round(int(self.written_chars[i]) / total_chars, 6),
                "epochs": (reader.epoch + 1) if reader else None,
                "skipped": dict(reader.skipped) if reader else {},
                "stats": dict(reader.stats) if reader else {},
            })
        return summaries

    def _write_manifest(self, complete: bool, resume: dict | None) -> dict:
        shard_bytes = sum(s["bytes"] for s in self.shards)
        manifest = {
            "format": MANIFEST_FORMAT,
            "complete": complete,
            "output_dir": str(self.out),
            **self._fingerprint(),
            "shards": self.shards,
            "sources": self._source_summaries(),
            "totals": {
                "docs": sum(s["rows"] for s in self.shards), "chars": sum(s["chars"] for s in self.shards),
                "bytes": shard_bytes, "shards": len(self.shards),
                "train_shards": sum(s["split"] == "train" for s in self.shards),
                "val_docs": sum(s["rows"] for s in self.shards if s["split"] == "val"),
                "skipped": _sum_counters(s["skipped"] for s in self._source_summaries()),
            },
            "resume": resume,
            "updated_at": time.time(),
        }
        write_json_atomic(self.out / MANIFEST, manifest)
        return manifest

    # -- the run --------------------------------------------------------------------------------------------------
    def run(self) -> dict:
        finished = self._open_output()
        if finished is not None:
            self._progress(force=True, message="already complete", fraction=1.0)
            return finished
        spec = self.spec
        self.stream = DocStream(self.sources, min_chars=spec.min_chars, shuffle=spec.shuffle,
                                block_docs=spec.shuffle_buffer, seed=spec.seed,
                                max_docs=spec.max_docs, max_chars=spec.max_chars)
        writer = ShardWriter(self.out, num_sources=len(self.sources), row_group_size=spec.row_group_size,
                             chars_per_shard=spec.chars_per_shard, rows_per_shard=spec.rows_per_shard,
                             first_index=len(self.shards))
        try:
            return self._write(writer)
        finally:
            writer.abort()

    def _write(self, writer: ShardWriter) -> dict:
        spec = self.spec
        w = self.resume_from["stream_docs"] if self.resume_from else 0  # stream index of the next train document
        start = self.resume_from["block"] if self.resume_from else None
        self.fed = w
        ring: list[pa.Table] = []
        ring_rows = 0
        train_limit = spec.max_shards - 1 if spec.max_shards else None
        stopped_by_shards = train_limit is not None and len(self.shards) >= train_limit

        for block in prefetch(self.stream.blocks(start)):
            table = block.table
            self.snapshots.append((block.snapshot["stream_docs"], block.snapshot))
            if start is not None and block.index == start["block"]:
                table = table.slice(w - start["stream_docs"])  # the part of the resumed block already written
            ring.append(table)
            ring_rows += table.num_rows
            # Feed the writer one row group at a time, so a shard never closes with documents queued behind it.
            while ring_rows - self.holdback >= writer.next_group_rows() and not stopped_by_shards:
                group, ring, ring_rows = _pop_front(ring, ring_rows, writer.next_group_rows())
                self.fed += group.num_rows
                for info in writer.add(group):
                    w += info.rows
                    self._shard_done(info, w)
                    stopped_by_shards = train_limit is not None and len(self.shards) >= train_limit
            self._progress()
            if stopped_by_shards and ring_rows >= self.holdback:
                break

        tail = pa.concat_tables(ring) if ring else None
        tail_rows = tail.num_rows if tail is not None else 0
        if stopped_by_shards:
            val_count = spec.val_docs or auto_val_count(w)
            val = tail.slice(0, val_count) if tail is not None else None
        else:
            total = w + tail_rows
            val_count = spec.val_docs or auto_val_count(total)
            if total <= val_count or tail_rows < val_count:
                raise InputError(
                    f"only {total} document(s) after filtering; a dataset needs at least one train document and "
                    f"{val_count} validation document(s) (val_docs). Add data or lower val_docs/min_chars", "sources")
            train_rest = tail.slice(0, tail_rows - val_count)
            self.fed += train_rest.num_rows
            for info in writer.add(train_rest) + writer.finish():
                w += info.rows
                self._shard_done(info, w)
            val = tail.slice(tail_rows - val_count)
        if val is None or val.num_rows == 0:
            raise InputError("no documents left for the validation shard", "sources")
        info = writer.write_val(val)
        self._record(info)
        manifest = self._write_manifest(complete=True, resume=None)
        self._progress(force=True, message="done", fraction=1.0)
        return manifest

    def _record(self, info: ShardInfo) -> None:
        self.shards.append(info.public())
        self.written_docs += np.array(info.source_docs, np.int64)
        self.written_chars += np.array(info.source_chars, np.int64)

    def _shard_done(self, info: ShardInfo, w: int) -> None:
        self._record(info)
        while len(self.snapshots) > 1 and self.snapshots[1][0] <= w:
            self.snapshots.popleft()  # blocks wholly written can't be a resume point any more
        resume = {"stream_docs": w, "block": self.snapshots[0][1], "source_docs": self.written_docs.tolist(),
                  "source_chars": self.written_chars.tolist()}
        self._write_manifest(complete=False, resume=resume)
        self._progress(force=True)

    def _progress(self, force: bool = False, message: str | None = None, fraction: float | None = None) -> None:
        now = time.time()
        if not self.on_progress or (not force and now - self.last_progress < 1.0):
            return
        self.last_progress = now
        elapsed = max(1e-9, now - self.started)
        docs = self.stream.stream_docs if self.stream else 0
        chars = self.stream.stream_chars if self.stream else 0
        fraction = fraction if fraction is not None else self._fraction()
        eta = elapsed * (1 - fraction) / fraction if fraction and 0 < fraction < 1 else (0.0 if fraction == 1 else None)
        self.on_progress({
            "fraction": fraction, "docs": docs, "chars": chars, "shards": len(self.shards),
            "rate": docs / elapsed, "mb_per_s": chars / elapsed / 1e6, "eta_s": eta,
            "message": message or f"{docs:,} docs, {len(self.shards)} shards",
        })


    def _fraction(self) -> float | None:
        """How far the run is, by what has been written rather than read: the read side runs a block or two ahead,
        which for a small input would show 100% while shards are still being written. Within the block holding
        the writer's position, the progress is interpolated between the block's start and end."""
        if not self.snapshots:
            return self.stream.progress() if self.stream else None
        starts = [start for start, _ in self.snapshots]
        i = max(0, bisect.bisect_right(starts, self.fed) - 1)
        start, p0 = starts[i], self.snapshots[i][1]["progress"]
        end, p1 = (starts[i + 1], self.snapshots[i + 1][1]["progress"]) if i + 1 < len(starts) \
            else (self.stream.stream_docs, self.stream.progress())
        if p0 is None or p1 is None:
            return None
        estimate = min(1.0, p0 + (p1 - p0) * (self.fed - start) / max(1, end - start))
        self.best_fraction = max(self.best_fraction, estimate)  # estimates wobble at block edges; never go back
        return self.best_fraction


def _source_type(source) -> str:
    """files, hf or megatron: the module a source class lives in is named for its spec type."""
    return type(source).__module__.rsplit(".", 1)[-1]


def _pop_front(ring: list[pa.Table], ring_rows: int, rows: int):
    taken, need = [], rows
    while need:
        head = ring[0]
        if head.num_rows <= need:
            taken.append(ring.pop(0))
            need -= head.num_rows
        else:
            taken.append(head.slice(0, need))
            ring[0] = head.slice(need)
            need = 0
    group = pa.concat_tables(taken) if len(taken) > 1 else taken[0]
    return group, ring, ring_rows - rows


def _sum_counters(counters) -> dict:
    total: dict[str, int] = {}
    for c in counters:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return total


def convert(spec: ConvertSpec, settings: Settings | None = None, on_progress: ProgressCallback | None = None,
            job_id: str | None = None) -> dict:
    """Run (or resume) a conversion; returns the final manifest. Raises InputError for bad input."""
    settings = settings or get_settings()
    spec = prepare(spec, settings, job_id)
    return _Run(spec, settings, on_progress).run()
