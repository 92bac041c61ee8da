"""Train jobs: check a TrainSpec against the data and this machine (`prepare`), then run it (`run`).

Both pick the backend: the builtin trainer's run is here, the nanochat backend's is train/nanochat/ (preflight.py at
submit, run.py in the job process). A builtin run is two child processes, each streamed through to this process's
output (procs.stream): tokenizer training (skipped when the spec reuses a tokenizer or the run dir already has one) and
torchrun with one rank per device. The run dir is fixed by the job (`<data dir>/runs/<job id>`, or a hash of the spec
for a job without an id), so a job started again after a crash finds its tokenizer and its last checkpoint there and
continues from that step.

A job of several nodes (`nnodes`) runs this on each node, in the same shared run dir: node 0 writes the run's spec and
trains the tokenizer, the other nodes wait for it, then every node starts its torchrun, which meet in c10d's
rendezvous (train/nodes.py).
"""

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from openseek_nanochat import paths, procs
from openseek_nanochat.atomic import write_json_atomic
from openseek_nanochat.convert import fence
from openseek_nanochat.convert import manifest as manifest_file
from openseek_nanochat.convert.shards import list_shards
from openseek_nanochat.errors import InputError
from openseek_nanochat.events import emit as emit_event
from openseek_nanochat.settings import Settings
from openseek_nanochat.train import checkpoints, nodes
from openseek_nanochat.train import tokenizer as tok
from openseek_nanochat.train.spec import ReuseTokenizer, TrainSpec

ERROR_PREFIX = "error: "  # how the tokenizer and the trainer print the reason they fail (the job's error message)
TOKENIZER_WAIT_POLL_S = 1.0  # how often a node other than 0 looks for the tokenizer node 0 trains
UNGUARDED = "an earlier attempt's processes, if any still run, are not waited for"


def run_dir_for(spec: TrainSpec, settings: Settings, job_id: str | None = None) -> Path:
    job_id = job_id or os.environ.get(procs.JOB_ID_ENV)
    if not job_id:
        job_id = "spec-" + hashlib.sha256(spec.model_dump_json().encode()).hexdigest()[:16]
    return paths.runs_dir(settings) / job_id


def tokenizer_dir_for(spec: TrainSpec, run_dir: Path) -> Path:
    """Where a run's tokenizer is: one it reuses, else <run dir>/tokenizer (a nanochat run links a reused one there)."""
    if spec.backend == "nanochat":
        from openseek_nanochat.train.nanochat import rundir

        return rundir.tokenizer_dir(run_dir)
    return Path(spec.tokenizer.path) if isinstance(spec.tokenizer, ReuseTokenizer) else Path(run_dir) / "tokenizer"


def checkpoint_dir_for(spec: TrainSpec, run_dir: Path) -> Path:
    """Where a run's checkpoints are: the builtin trainer's <run dir>/checkpoints, or base_train's folder."""
    if spec.backend == "nanochat":
        from openseek_nanochat.train.nanochat import rundir

        return rundir.checkpoint_dir(spec, run_dir)
    return Path(run_dir) / checkpoints.SUBDIR


def complete_steps(spec: TrainSpec, run_dir: Path) -> list[int]:
    """The steps of a run with a complete checkpoint for every rank of every node, latest first, by its backend's own
    test of a whole file."""
    checkpoint_dir = checkpoint_dir_for(spec, run_dir)
    if spec.backend == "nanochat":
        from openseek_nanochat.train.nanochat import rundir

        return rundir.complete_steps(checkpoint_dir, spec.world_size)
    return checkpoints.complete_steps(checkpoint_dir, spec.world_size)


def _check_allowed(path: Path, settings: Settings, what: str) -> Path:
    try:
        return paths.check_job_input(path, settings, what)
    except paths.PathPolicyError as e:
        raise InputError(str(e)) from None


def resolve_dataset(dataset: str, settings: Settings, lookup: Callable[[str], str | None] | None = None) -> Path:
    """A convert job id (through `lookup`, or its default output dir <data dir>/datasets/<id>) or a shard dir."""
    candidates = []
    if lookup is not None:
        found = lookup(dataset)
        if found:
            candidates.append(Path(found))
    candidates += [Path(dataset).expanduser(), paths.datasets_dir(settings) / dataset]
    for path in candidates:
        if path.is_absolute() and path.is_dir():
            return _check_allowed(path, settings, "dataset")
    raise InputError(
        f"unknown dataset {dataset!r}: not a finished convert job, nor an absolute path to a directory of shards",
        where="dataset",
    )


def check_shards(shard_dir: Path, ranks: int) -> list[Path]:
    """Enough shards, a complete manifest that lists them, a `text` column, and a row group for every rank (of every
    node) in both splits (or a rank would get no data)."""
    shards = list_shards(shard_dir)
    if len(shards) < 2:
        raise InputError(
            f"{shard_dir} has {len(shards)} parquet shard(s); training needs at least 2 "
            "(train shards, then the validation shard last)",
            where="dataset",
        )
    check_manifest(shard_dir, shards)
    try:
        for path in (shards[0], shards[-1]):
            if "text" not in pq.read_schema(path).names:
                raise InputError(f"{path} has no 'text' column", where="dataset")
        val_groups = pq.ParquetFile(shards[-1]).num_row_groups
        train_groups = 0
        for path in shards[:-1]:  # usually the first shard already has enough
            train_groups = max(train_groups, pq.ParquetFile(path).num_row_groups)
            if train_groups >= ranks:
                break
    except OSError as e:
        raise InputError(f"unreadable shard: {e}", where="dataset") from None
    for split, groups in (("validation shard", val_groups), ("largest train shard", train_groups)):
        if groups < ranks:
            raise InputError(
                f"the {split} of {shard_dir} has {groups} row group(s), but each of the {ranks} ranks reads "
                f"row groups of its own: convert with a smaller row_group_size (or more validation documents), "
                f"or train with fewer ranks (nnodes x nproc_per_node <= {groups})",
                where="dataset",
            )
    return shards


def check_manifest(shard_dir: Path, shards: list[Path]) -> None:
    """The dataset is whole: its manifest says the conversion completed, and lists exactly the shards there are, at the
    sizes it wrote (a folder still being written, or cut short by a crash, trains on part of the data or on a part of
    a file)."""
    found = manifest_file.read(shard_dir)
    if found is None:
        raise InputError(
            f"{shard_dir} has no readable {manifest_file.NAME}: a dataset is the output of a finished "
            "convert job, whose manifest lists its shards",
            where="dataset",
        )
    if found.get("complete") is not True:
        raise InputError(
            f"{shard_dir} holds an unfinished conversion ({manifest_file.NAME} says complete: false): "
            "finish (or re-run) the convert job first",
            where="dataset",
        )
    listed = found.get("shards")
    listed = {s.get("file"): s.get("bytes") for s in listed if isinstance(s, dict)} if isinstance(listed, list) else {}
    on_disk = {path.name: path.stat().st_size for path in shards}
    if sorted(listed) != sorted(on_disk):
        raise InputError(
            f"{shard_dir}'s {manifest_file.NAME} lists {len(listed)} shard(s) but the folder holds "
            f"{len(on_disk)} ({_first_difference(listed, on_disk)})",
            where="dataset",
        )
    if changed := sorted(name for name, size in on_disk.items() if listed[name] is not None and listed[name] != size):
        raise InputError(
            f"{changed[0]} in {shard_dir} has {on_disk[changed[0]]:,} bytes, but its manifest says "
            f"{listed[changed[0]]:,}: the shard was changed or cut short",
            where="dataset",
        )


def _first_difference(listed: dict, on_disk: dict) -> str:
    if missing := sorted(set(listed) - set(on_disk)):
        return f"{missing[0]} is missing"
    return f"{sorted(set(on_disk) - set(listed))[0]} is not in the manifest"


def check_device(spec: TrainSpec) -> None:
    """This machine has the devices the spec asks for. Run where the job runs: the API's machine need have no GPU (the
    workers' queue places a job only on a worker that can serve it, app/jobs/placement.py)."""
    if spec.device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise InputError(
            "device 'cuda' was asked for, but this machine has no CUDA device (use 'cpu' or 'auto')", where="device"
        )
    if spec.nproc_per_node > torch.cuda.device_count():
        raise InputError(
            f"nproc_per_node {spec.nproc_per_node} is more than the {torch.cuda.device_count()} CUDA device(s) here",
            where="nproc_per_node",
        )


def prepare(
    spec: TrainSpec,
    settings: Settings,
    job_id: str | None = None,
    lookup: Callable[[str], str | None] | None = None,
    this_machine: bool = True,
) -> TrainSpec:
    """Check the spec against the data (and, with `this_machine`, the devices here); return it with the dataset (and
    tokenizer) as absolute paths.

    `lookup` maps a convert job id to its output dir (None when there is no such finished job). Raises InputError.
    """
    dataset_dir = resolve_dataset(spec.dataset, settings, lookup)
    check_shards(dataset_dir, spec.world_size)
    update = {"dataset": str(dataset_dir)}
    if isinstance(spec.tokenizer, ReuseTokenizer):
        tokenizer_dir = _check_allowed(Path(spec.tokenizer.path), settings, "tokenizer path")
        if not tok.is_complete(tokenizer_dir):
            raise InputError(
                f"{tokenizer_dir} lacks {tok.TOKENIZER_FILE} or {tok.TOKEN_BYTES_FILE}", where="tokenizer.path"
            )
        update["tokenizer"] = ReuseTokenizer(path=str(tokenizer_dir))
    if this_machine:
        check_device(spec)
    if spec.backend == "nanochat":
        try:
            from openseek_nanochat.train.nanochat import preflight
        except ModuleNotFoundError:
            raise InputError("backend 'nanochat' is not available in this installation", where="backend") from None
        return preflight.prepare(spec.model_copy(update=update), settings, this_machine)
    resolved = spec.model_copy(update=update)
    _check_run_dir(run_dir_for(resolved, settings, job_id), resolved)
    return resolved


def _check_run_dir(run_dir: Path, spec: TrainSpec) -> None:
    """A run dir continues only the spec that started it."""
    saved = run_dir / "spec.json"
    if saved.exists() and json.loads(saved.read_text()) != spec.model_dump(mode="json"):
        raise InputError(f"{run_dir} holds a run of a different spec ({saved}); give this job a new id or run dir")


def error_reason(line: str) -> str | None:
    return line.removeprefix(ERROR_PREFIX).strip() if line.startswith(ERROR_PREFIX) else None


def train_flags(spec: TrainSpec, tokenizer_dir: Path, run_dir: Path, events_on: bool) -> list[str]:
    """The spec as openseek_nanochat.train.builtin.trainer flags."""
    flags = {
        "--data-dir": spec.dataset,
        "--tokenizer-dir": tokenizer_dir,
        "--run-dir": run_dir,
        **spec.trainer_flags(),
        "--seed": spec.seed,  # base_train has no such flag
        "--compile": spec.compile,
    }
    return [f"{flag}={value}" for flag, value in flags.items()] + (["--events"] if events_on else [])


def run(spec: TrainSpec, job_dir, events: bool = True) -> dict:
    """Train the tokenizer (unless reused or already there), then the model; resumes whatever the run dir holds.

    `spec` must have been through `prepare`. Returns (and, with events, emits) the result.
    """
    emit = emitter(events)
    node = nodes.this_node()
    # One attempt of this node in the run dir at a time: a later attempt waits here while the process of an earlier
    # one (its worker lost the lease, perhaps on another machine) still runs, and never writes its checkpoints too.
    with fence.hold(Path(job_dir), lock=f".train-node{node}.lock", what="the run dir", unguarded=UNGUARDED):
        if spec.backend == "nanochat":
            from openseek_nanochat.train.nanochat import run as nanochat

            return nanochat.run(spec, job_dir, emit)
        return _run_builtin(spec, Path(job_dir), node, emit, events)


def _run_builtin(spec: TrainSpec, run_dir: Path, node: int, emit: Callable[..., None], events: bool) -> dict:
    _check_run_dir(run_dir, spec)
    if node == 0:
        write_json_atomic(run_dir / "spec.json", spec.model_dump(mode="json"))

    tokenizer_dir = tokenizer_dir_for(spec, run_dir)
    if not isinstance(spec.tokenizer, ReuseTokenizer):
        if node != 0:
            _wait_for_tokenizer(tokenizer_dir, emit)
        elif tok.is_complete(tokenizer_dir):
            print(f"tokenizer: reusing {tokenizer_dir}", flush=True)
        else:
            emit("progress", phase="tokenizer", message="training the tokenizer", fraction=0.0)
            options = spec.tokenizer
            cmd = [
                sys.executable, "-m", "openseek_nanochat.train.tokenizer", f"--data-dir={spec.dataset}",
                f"--out-dir={tokenizer_dir}", f"--vocab-size={options.vocab_size}", f"--max-chars={options.max_chars}",
                f"--doc-cap={options.doc_cap}",
            ]  # fmt: skip
            rc, error = procs.stream(cmd, failure=error_reason)
            if rc != 0:
                raise InputError(error or f"tokenizer training failed (exit code {rc})", where="tokenizer")

    emit("progress", phase="train", message="starting torchrun", step=0, num_iterations=spec.num_iterations)
    try:
        launch = nodes.torchrun_flags(spec.nnodes, spec.nproc_per_node)
    except ValueError as e:
        raise InputError(str(e), where="nnodes") from None
    cmd = [
        sys.executable, "-m", "torch.distributed.run", *launch,
        "-m", "openseek_nanochat.train.builtin.trainer", *train_flags(spec, tokenizer_dir, run_dir, events),
    ]  # fmt: skip
    rc, error = procs.stream(cmd, failure=error_reason)
    if rc != 0:
        raise RuntimeError(f"training failed (torchrun exit code {rc})" + (f": {error}" if error else ""))

    checkpoint_dir = checkpoint_dir_for(spec, run_dir)
    step = checkpoints.last_complete_step(checkpoint_dir, spec.world_size)
    meta = (checkpoints.read_meta(checkpoint_dir, step) if step is not None else None) or {}
    result = {
        "run_dir": str(run_dir),
        "tokenizer_dir": str(tokenizer_dir),
        "checkpoint_dir": str(checkpoint_dir),
        "metrics_file": str(run_dir / "metrics.jsonl"),
        "world_size": meta.get("world_size", spec.world_size),
        "nnodes": spec.nnodes,
        "step": meta.get("step"),
        "num_iterations": spec.num_iterations,
        "val_bpb": meta.get("val_bpb"),
    }
    emit("result", **result)
    return result


def _wait_for_tokenizer(tokenizer_dir: Path, emit: Callable[..., None]) -> None:
    """A node other than 0 waits for the tokenizer node 0 trains into the shared run dir (its worker stops it if the
    gang breaks meanwhile)."""
    emit("progress", phase="tokenizer", message="waiting for node 0's tokenizer", fraction=0.0)
    while not tok.is_complete(tokenizer_dir):
        time.sleep(TOKENIZER_WAIT_POLL_S)
    print(f"tokenizer: node 0's, {tokenizer_dir}", flush=True)


def emitter(on: bool) -> Callable[..., None]:
    return emit_event if on else (lambda *args, **kwargs: None)
