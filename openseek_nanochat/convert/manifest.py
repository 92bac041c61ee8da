"""The manifest: `manifest.json` beside the shards, what a conversion has written and where a re-run goes on.

It binds its folder to one spec and one set of inputs (the spec's output-shaping fields, and each input file's size and
mtime), lists every shard (rows, characters, bytes, sha256, split), sums them per source and in total, and, while the
run is unfinished, holds the resume point after the last recorded shard. Opening an output dir adopts a manifest with
the same fingerprint and refuses any other: a different spec or changed inputs are never mixed into one dataset.

`owner` names the job that owns the folder (what `DELETE /jobs/{id}?purge=true` may remove): the job that created the
manifest, or the last one that resumed it while it was incomplete. A job that finds it complete writes nothing and
owns nothing. The owner is not part of the fingerprint, so a resubmitted spec still resumes. `attempt` names the
owner's attempt that took the folder: before each rename into it, a run checks that the manifest still names its own
job and attempt (fence.py), so a superseded attempt renames nothing.

Each shard's record names its provenance sidecar (provenance.py) with its bytes and sha256, and holds its documents'
length histogram; each source lists its `items`, what the sidecars' `item` column indexes.
"""

import json
import time
from pathlib import Path

import numpy as np

from openseek_nanochat.atomic import compact_json, fsync_dir, temp_path, write_json_atomic
from openseek_nanochat.convert import fence, lengths, provenance
from openseek_nanochat.convert.mixture import SourceReader
from openseek_nanochat.convert.shards import ShardInfo, list_shards
from openseek_nanochat.convert.sources import TextSource
from openseek_nanochat.convert.spec import ConvertSpec
from openseek_nanochat.errors import InputError

NAME = "manifest.json"
# /2: shards have provenance sidecars and length histograms; a /1 folder has neither.
# /3: blocks are sized by the stream's mean document length (mixture.py), not by what the sources had fetched.
# An unfinished folder of an earlier format is not resumed: its run would end otherwise than a clean one.
FORMAT = "openseek-nanochat.convert/3"
READABLE_FORMATS = ("openseek-nanochat.convert/1", "openseek-nanochat.convert/2", FORMAT)  # finished is finished
WITH_PROVENANCE = ("openseek-nanochat.convert/2", FORMAT)  # formats whose shards have provenance sidecars


class Manifest:
    """The manifest of one output dir: the shards recorded so far and what each source contributed to them."""

    def __init__(
        self,
        out: Path,
        spec: ConvertSpec,
        sources: list[TextSource],
        owner: str | None = None,
        attempt: int | None = None,
    ):
        self.out = out
        self.owner = owner
        self.attempt = attempt
        self.taken = False  # whether this run has written the manifest (from then on, every write is fenced)
        self.last_written: tuple | None = None  # the identity of the manifest file this run wrote last
        self.sources = sources
        inputs = [{"source": s.name, "files": s.fingerprint()} for s in sources]
        self.fingerprint = {"spec": spec.fingerprint_fields(), "inputs": inputs}
        # The shards recorded so far; the manifest is rewritten at every shard, so what it says of them is kept up to
        # date as they come: each record encoded once, the totals summed once (re-encoding and re-summing all of them
        # each time was quadratic: most of the time of a 2,000-shard run).
        self.shards: list[dict] = []
        self.shard_lines: list[str] = []
        self.sums = ShardSums()
        self.source_docs = np.zeros(len(sources), np.int64)
        self.source_chars = np.zeros(len(sources), np.int64)
        self.resume_from: dict | None = None  # the resume point found on opening: where an interrupted run stopped

    def open(self) -> dict | None:
        """Create or adopt the output dir. Returns a finished manifest when there is nothing left to do."""
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / NAME
        if path.exists():
            manifest = json.loads(path.read_text())
            if manifest.get("format") not in READABLE_FORMATS:
                raise InputError(
                    f"holds a manifest of another format ({manifest.get('format')!r}); choose another output_dir",
                    str(self.out),
                )
            if manifest["spec"] != self.fingerprint["spec"]:
                raise InputError(
                    "holds a conversion of a different spec; refusing to mix them. Use another output_dir, or "
                    "delete this one to start over",
                    str(self.out),
                )
            if manifest["inputs"] != self.fingerprint["inputs"]:
                raise InputError(
                    "holds a conversion of these sources, but the input files changed since (size or mtime); "
                    "refusing to mix old and new data. Delete the output dir to start over",
                    str(self.out),
                )
            if manifest["complete"]:
                return manifest  # finished, by this version or an earlier one: nothing to do
            if manifest["format"] != FORMAT:
                raise InputError(
                    f"holds an unfinished conversion by an earlier version ({manifest['format']}), which this one "
                    "cannot resume (it plans and records the rest otherwise, so the dataset would match neither "
                    "version's); delete the folder or choose another output_dir",
                    str(self.out),
                )
            fence.superseded_at_open(manifest, self.owner, self.attempt, str(path))
            for shard in manifest["shards"]:
                self._add_shard(shard)
            self.resume_from = manifest.get("resume")
            if self.resume_from:
                self.source_docs = np.array(self.resume_from["source_docs"], np.int64)
                self.source_chars = np.array(self.resume_from["source_chars"], np.int64)
        elif list_shards(self.out):
            raise InputError("already holds shards and no manifest; choose an empty output_dir", str(self.out))
        # Whatever a crash left beyond the last recorded shard is rewritten, identically. Temp names are atomic.py's.
        recorded = {shard["file"] for shard in self.shards}
        sidecars = self.out / provenance.FOLDER
        if not sidecars.is_dir():
            sidecars.mkdir()
            fsync_dir(self.out)
        stale = [p for p in list_shards(self.out) + list_shards(sidecars) if p.name not in recorded]
        temps = [p for folder in (self.out, sidecars) for p in folder.glob(temp_path(Path("*")).name)]
        for path in temps + stale:
            path.unlink()
        self.write(complete=False, resume=self.resume_from)
        self.taken = True
        return None

    def check_fence(self) -> None:
        """Before a rename into the folder: raise fence.Superseded unless the manifest still names this run. The file
        this run wrote last, still in place, needs no reading (a manifest grows with its shards)."""
        if self.attempt is None or _identity(self.out / NAME) == self.last_written:
            return
        fence.check(read(self.out), self.owner, self.attempt, str(self.out / NAME))

    def record(self, info: ShardInfo) -> None:
        self._add_shard(info.public())
        self.source_docs += np.array(info.source_docs, np.int64)
        self.source_chars += np.array(info.source_chars, np.int64)

    def _add_shard(self, record: dict) -> None:
        self.shards.append(record)
        self.shard_lines.append(compact_json(record))
        self.sums.add(record)

    def resume_point(self, stream_docs: int, block: dict) -> dict:
        """Where a re-run starts: the stream position after the last recorded shard, the snapshot of the block holding
        it, and what each source has contributed up to there."""
        return {
            "stream_docs": stream_docs,
            "block": block,
            "source_docs": self.source_docs.tolist(),
            "source_chars": self.source_chars.tolist(),
        }

    def write(self, complete: bool, resume: dict | None, readers: list[SourceReader] | None = None) -> dict:
        """Write the manifest as it stands; `readers` (the stream's, once it runs) add epochs, skips and stats."""
        if self.taken:
            self.check_fence()
        sources = self._source_summaries(readers)
        manifest = {
            "format": FORMAT,
            "complete": complete,
            "owner": self.owner,
            "attempt": self.attempt,
            "output_dir": str(self.out),
            **self.fingerprint,
            "shards": self.shards,
            "sources": sources,
            "totals": self.sums.totals(sources),
            "resume": resume,
            "updated_at": time.time(),
        }
        write_json_atomic(self.out / NAME, manifest, encoded={"shards": self.shard_lines})
        self.last_written = _identity(self.out / NAME)
        return manifest

    def _source_summaries(self, readers: list[SourceReader] | None) -> list[dict]:
        total_docs, total_chars = max(1, int(self.source_docs.sum())), max(1, int(self.source_chars.sum()))
        summaries = []
        for i, source in enumerate(self.sources):
            reader = readers[i] if readers else None
            summaries.append(
                {
                    "name": source.name,
                    "type": _source_type(source),
                    "weight": source.weight,
                    "docs": int(self.source_docs[i]),
                    "chars": int(self.source_chars[i]),
                    "share_docs": round(int(self.source_docs[i]) / total_docs, 6),
                    "share_chars": round(int(self.source_chars[i]) / total_chars, 6),
                    "epochs": (reader.epoch + 1) if reader else None,
                    "items": source.provenance_items(),
                    "skipped": dict(reader.skipped) if reader else {},
                    "stats": dict(reader.stats) if reader else {},
                }
            )
        return summaries


def read(out: Path) -> dict | None:
    """The manifest in `out`, or None when there is none or it is not one (unreadable, not JSON, not an object)."""
    try:
        manifest = json.loads((out / NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _identity(path: Path) -> tuple | None:
    """Which file `path` is: each write renames a new file into place, so another write changes this."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


class ShardSums:
    """The manifest's totals over its shards, summed as they are recorded."""

    def __init__(self):
        self.shards = self.train_shards = self.docs = self.chars = self.bytes = self.val_docs = 0
        self.length_hist = np.zeros(lengths.BINS, np.int64)

    def add(self, shard: dict) -> None:
        self.shards += 1
        self.train_shards += shard["split"] == "train"
        self.docs += shard["rows"]
        self.chars += shard["chars"]
        self.bytes += shard["bytes"]
        self.val_docs += shard["rows"] if shard["split"] == "val" else 0
        self.length_hist += np.asarray(shard["length_hist"], np.int64)

    def totals(self, sources: list[dict]) -> dict:
        return {
            "docs": self.docs,
            "chars": self.chars,
            "bytes": self.bytes,
            "shards": self.shards,
            "train_shards": self.train_shards,
            "val_docs": self.val_docs,
            "length_bins": lengths.edges(),
            "length_hist": self.length_hist.tolist(),
            "skipped": _sum_counters(s["skipped"] for s in sources),
        }


def _source_type(source: TextSource) -> str:
    """files, hf or megatron: the module a source class lives in is named for its spec type."""
    return type(source).__module__.rsplit(".", 1)[-1]


def _sum_counters(counters) -> dict:
    total: dict[str, int] = {}
    for c in counters:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return total
