"""The conversion run: sources -> mixed, shuffled document stream -> nanochat shards + manifest, resumable.

Order of events for a run into `output_dir`:
  1. The manifest is written first (complete=false), binding the directory to this spec and these inputs (manifest.py).
  2. The stream's last `holdback` documents wait in a ring; older ones go to the shard writer a row group at a time.
  3. Each completed train shard is renamed into place, then the manifest records it with a resume point: the stream
     position of the next document and the state of the block holding it.
  4. At the end of the stream the ring is split: its last `val_count` documents are the validation shard (the last
     file), 1% of all the documents unless val_docs says; when max_shards stops the run first, the `val_count`
     documents that follow the last train shard are, 1% of the train documents unless val_docs says.
The run keeps `processes` cores busy (cores.py): the reader runs ahead on its own threads while shards are compressed
on lanes of their own; shards are still renamed and recorded one by one in order, so the number changes nothing that
is written.
A re-run reads the manifest, regenerates the stream from the last resume point and produces the same bytes as an
uninterrupted run; a different spec or changed inputs are refused rather than mixed.
"""

import bisect
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from openseek_nanochat import procs
from openseek_nanochat.convert import cores, fence
from openseek_nanochat.convert.manifest import Manifest
from openseek_nanochat.convert.mixture import DocStream, Rows, Shuffled
from openseek_nanochat.convert.prefetch import prefetch
from openseek_nanochat.convert.shards import ShardInfo, ShardWriter
from openseek_nanochat.convert.sources import TextSource, build_sources
from openseek_nanochat.convert.spec import ConvertSpec
from openseek_nanochat.errors import InputError
from openseek_nanochat.paths import check_dataset_output, datasets_dir
from openseek_nanochat.settings import Settings, get_settings

AUTO_VAL_MAX = 10_000

ProgressCallback = Callable[[dict], None]


def default_output_dir(spec: ConvertSpec, settings: Settings, job_id: str | None) -> Path:
    name = spec.name or job_id
    if not name:
        raise InputError(
            "set 'output_dir' or 'name' (the default output dir is <data dir>/datasets/<name>)", "output_dir"
        )
    return datasets_dir(settings) / name


def prepare(spec: ConvertSpec, settings: Settings | None = None, job_id: str | None = None) -> ConvertSpec:
    """Check everything knowable before any reading starts; return the spec with its output dir resolved."""
    return _prepared(spec, settings or get_settings(), job_id)[0]


def _prepared(spec: ConvertSpec, settings: Settings, job_id: str | None) -> tuple[ConvertSpec, list[TextSource]]:
    """prepare(), and the checked sources: a run reads through these (a tokenizer loads once, 1,000 prefixes are
    expanded and checked once)."""
    out = Path(spec.output_dir).expanduser() if spec.output_dir else default_output_dir(spec, settings, job_id)
    out = check_dataset_output(out, settings)
    sources = build_sources(spec, settings)
    for source in sources:
        source.check()
    return spec.model_copy(update={"output_dir": str(out)}), sources


def auto_val_count(total_docs: int) -> int:
    return min(AUTO_VAL_MAX, max(1, total_docs // 100))


class Progress:
    """A run's progress events: at most one a second unless forced, with an estimate of how far the run is."""

    def __init__(self, on_progress: ProgressCallback | None):
        self.on_progress = on_progress
        self.started = time.time()
        self.last = 0.0
        self.best_fraction = 0.0

    def report(
        self,
        stream: DocStream | None,
        shards: int,
        snapshots: deque,
        fed: int,
        force: bool = False,
        message: str | None = None,
        fraction: float | None = None,
    ) -> None:
        now = time.time()
        if not self.on_progress or (not force and now - self.last < 1.0):
            return
        self.last = now
        elapsed = max(1e-9, now - self.started)
        docs = stream.stream_docs if stream else 0
        chars = stream.stream_chars if stream else 0
        fraction = fraction if fraction is not None else self.fraction(stream, snapshots, fed)
        eta = elapsed * (1 - fraction) / fraction if fraction and 0 < fraction < 1 else (0.0 if fraction == 1 else None)
        self.on_progress(
            {
                "fraction": fraction,
                "docs": docs,
                "chars": chars,
                "shards": shards,
                "rate": docs / elapsed,
                "mb_per_s": chars / elapsed / 1e6,
                "eta_s": eta,
                "message": message or f"{docs:,} docs, {shards} shards",
            }
        )

    def fraction(self, stream: DocStream | None, snapshots: deque, fed: int) -> float | None:
        """How far the run is, by what has been written (`fed`: documents handed to the shard writer) rather than
        read: the read side runs a block or two ahead, which for a small input would show 100% while shards are still
        being written. Within the block holding the writer's position, the progress is interpolated between the
        block's start and end."""
        if not snapshots:
            return stream.progress() if stream else None
        starts = [start for start, _ in snapshots]
        i = max(0, bisect.bisect_right(starts, fed) - 1)
        start, p0 = starts[i], snapshots[i][1]["progress"]
        end, p1 = (
            (starts[i + 1], snapshots[i + 1][1]["progress"])
            if i + 1 < len(starts)
            else (stream.stream_docs, stream.progress())
        )
        if p0 is None or p1 is None:
            return None
        estimate = min(1.0, p0 + (p1 - p0) * (fed - start) / max(1, end - start))
        self.best_fraction = max(self.best_fraction, estimate)  # estimates wobble at block edges; never go back
        return self.best_fraction


class _Run:
    """One conversion run's mutable state; `convert()` is the only entry point."""

    def __init__(
        self,
        spec: ConvertSpec,
        sources: list[TextSource],
        on_progress: ProgressCallback | None,
        job_id: str | None,
        attempt: int | None,
    ):
        self.spec = spec
        self.out = Path(spec.output_dir)
        self.sources = sources
        self.manifest = Manifest(self.out, spec, self.sources, owner=job_id, attempt=attempt)
        self.holdback = spec.val_docs or AUTO_VAL_MAX
        self.progress = Progress(on_progress)
        self.stream: DocStream | None = None
        self.snapshots: deque = deque()  # (stream index where a block starts, its snapshot), oldest still unwritten
        self.fed = 0  # stream index of the next document to hand to the shard writer
        self.written = 0  # stream index of the first document not in a published train shard

    def run(self) -> dict:
        finished = self.manifest.open()
        if finished is not None:
            self._progress(force=True, message="already complete", fraction=1.0)
            return finished
        spec = self.spec
        self.stream = DocStream(
            self.sources,
            min_chars=spec.min_chars,
            shuffle=spec.shuffle,
            block_docs=spec.shuffle_buffer,
            seed=spec.seed,
            max_docs=spec.max_docs,
            max_chars=spec.max_chars,
        )
        writer = ShardWriter(
            self.out,
            num_sources=len(self.sources),
            row_group_size=spec.row_group_size,
            chars_per_shard=spec.chars_per_shard,
            rows_per_shard=spec.rows_per_shard,
            first_index=len(self.manifest.shards),
            before_publish=self.manifest.check_fence,
            lanes=cores.current(),
        )
        try:
            return self._write(writer)
        finally:
            writer.abort()

    def _write(self, writer: ShardWriter) -> dict:
        spec, manifest = self.spec, self.manifest
        resume_from = manifest.resume_from
        self.written = self.fed = resume_from["stream_docs"] if resume_from else 0
        first = self.written
        start = resume_from["block"] if resume_from else None
        ring: list[Shuffled] = []
        for block in prefetch(self.stream.blocks(start)):
            table = block.table
            self.snapshots.append((block.snapshot["stream_docs"], block.snapshot))
            if start is not None and block.index == start["block"]:
                table = table.slice(self.written - start["stream_docs"])  # the part of the resumed block written
            ring.append(table)
            self._feed(writer, ring, keep=self.holdback)
            self._progress()
            if self._stopped(writer) and _rows(ring) >= self.holdback:
                break

        if not self._stopped(writer):
            # The stream has ended: every document is counted, and all but the validation ones are train documents.
            total = self.fed + _rows(ring)
            val_count = spec.val_docs or auto_val_count(total)
            if total <= val_count or _rows(ring) < val_count:
                raise InputError(
                    f"only {total} document(s) after filtering; a dataset needs at least one train document and "
                    f"{val_count} validation document(s) (val_docs). Add data or lower val_docs/min_chars",
                    "sources",
                )
            self._feed(writer, ring, keep=val_count)  # whole row groups; the shard limit may still stop this
        if self._stopped(writer):
            # Stopped by max_shards: the validation documents follow the last train shard, and their automatic
            # count is taken from the train documents (a stop means the stream was not read to its end).
            val_count = spec.val_docs or auto_val_count(first + writer.closed_rows)
            val = Rows(ring).slice(0, val_count) if ring else None
        else:
            tail = Rows(ring)
            train_rest = tail.slice(0, tail.num_rows - val_count)  # less than a row group
            self.fed += train_rest.num_rows
            self._shards_done(writer.add(train_rest) + writer.finish())
            val = tail.slice(tail.num_rows - val_count)
        if val is None or val.num_rows == 0:
            raise InputError("no documents left for the validation shard", "sources")
        # The validation shard is written while the last train shards still are; all are published in order.
        self._shards_done(writer.write_val(val) + writer.drain())
        final = manifest.write(complete=True, resume=None, readers=self.stream.readers)
        self._progress(force=True, message="done", fraction=1.0)
        return final

    def _stopped(self, writer: ShardWriter) -> bool:
        """max_shards reached: the limit counts shards closed, not only published ones (lanes may still be writing
        the last of them), and leaves one shard for validation."""
        return self.spec.max_shards is not None and writer.index >= self.spec.max_shards - 1

    def _feed(self, writer: ShardWriter, ring: list[Shuffled], keep: int) -> None:
        """Hand the writer the ring's oldest documents one row group at a time (so a shard never closes with
        documents queued behind it), keeping the newest `keep`, until the shard limit is reached."""
        while not self._stopped(writer) and _rows(ring) - keep >= writer.next_group_rows():
            group = _pop_front(ring, writer.next_group_rows())
            self.fed += group.num_rows
            self._shards_done(writer.add(group))

    def _shards_done(self, infos: list[ShardInfo]) -> None:
        for info in infos:
            if info.split == "val":
                self.manifest.record(info)
            else:
                self.written += info.rows
                self._train_shard_done(info)

    def _train_shard_done(self, info: ShardInfo) -> None:
        w = self.written
        self.manifest.record(info)
        while len(self.snapshots) > 1 and self.snapshots[1][0] <= w:
            self.snapshots.popleft()  # blocks wholly written can't be a resume point any more
        resume = self.manifest.resume_point(w, self.snapshots[0][1])
        self.manifest.write(complete=False, resume=resume, readers=self.stream.readers)
        # At the shard just published, not at what was handed over: lanes publish several shards at once at times.
        self._progress(force=True, at=w)

    def _progress(
        self, force: bool = False, message: str | None = None, fraction: float | None = None, at: int | None = None
    ) -> None:
        self.progress.report(
            self.stream,
            len(self.manifest.shards),
            self.snapshots,
            self.fed if at is None else at,
            force=force,
            message=message,
            fraction=fraction,
        )


def _rows(ring: list[Shuffled]) -> int:
    return sum(table.num_rows for table in ring)


def _pop_front(ring: list[Shuffled], rows: int) -> Rows:
    """The ring's first `rows` documents, taken out of it, not gathered yet (the shard writer's lanes gather them)."""
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
    return Rows(taken)


def convert(
    spec: ConvertSpec,
    settings: Settings | None = None,
    on_progress: ProgressCallback | None = None,
    job_id: str | None = None,
    attempt: int | None = None,
) -> dict:
    """Run (or resume) a conversion; returns the final manifest. Raises InputError for bad input, and its kind
    fence.Superseded when a later attempt of the job took the output over.

    `job_id` (default: the job this process runs for, procs.JOB_ID_ENV) names the default output dir and becomes the
    manifest's owner, unless the output is already complete: a finished dataset keeps the job that made it. `attempt`
    (default: the worker's, procs.JOB_ATTEMPT_ENV) is the owner's attempt, which fences the output (fence.py).
    """
    settings = settings or get_settings()
    job_id = job_id or os.environ.get(procs.JOB_ID_ENV)
    attempt = attempt if attempt is not None else procs.job_attempt()
    with cores.using(spec.processes):
        spec, sources = _prepared(spec, settings, job_id)
        with fence.hold(Path(spec.output_dir)):
            return _Run(spec, sources, on_progress, job_id, attempt).run()
