"""What the API does with a job beyond its row: submit it, delete it with its files, read its manifest.

A submit checks the spec with its kind's `prepare` (everything knowable before a worker starts), replays a retried
request that carries the same Idempotency-Key, and claims the folders the job writes and reads in the transaction that
inserts it (app/jobs/folders.py): two unfinished jobs never write one folder, nor one inside the other.

A purge removes only what the job owns: its run dir (`runs/<id>`, by id) and a dataset whose manifest names it as its
owner (convert/manifest.py); anything else it keeps and says why. It refuses while an unfinished job writes the folder
or reads from it. What it removes is first moved aside inside the delete's transaction, so no job submitted meanwhile
can start writing into a folder that is about to go. The route modules (app/api/routes/) only translate between HTTP
and these functions.
"""

import hashlib
import json
import shutil
from pathlib import Path

from pydantic import BaseModel
from sqlalchemy import Engine

from openseek_nanochat import paths
from openseek_nanochat.errors import InputError
from openseek_nanochat.settings import Settings

from app.jobs import files as jobfiles
from app.jobs import folders, store
from app.jobs.kinds import KINDS, JobKind
from app.jobs.models import Job, JobState, new_job_id


class Rejected(Exception):
    """The spec failed a submit-time check; `error` (an InputError, PathPolicyError, ValueError or OSError) says what
    is wrong and where."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


def submit(engine: Engine, settings: Settings, kind: JobKind, spec: BaseModel, key: str | None) -> tuple[Job, bool]:
    """Queue a job of `kind` running `spec`. Returns the job and whether it is the one an earlier request with the
    same idempotency `key` created (a replay)."""
    request_hash = _request_hash(kind.name, spec)
    if key is not None and (existing := store.find_by_idempotency_key(engine, key)) is not None:
        return _replay(existing, key, request_hash), True
    job_id = new_job_id()
    try:
        prepared = kind.prepare(spec, settings, job_id, engine)
    except (InputError, ValueError, OSError) as error:  # PathPolicyError is a ValueError
        raise Rejected(error) from error
    prepared_spec = prepared.model_dump(mode="json")
    needs = kind.needs(prepared_spec)
    job = store.create_job(
        engine,
        Job(
            id=job_id,
            kind=kind.name,
            state=JobState.queued,
            spec=prepared_spec,
            idempotency_key=key,
            request_hash=request_hash,
            nnodes=needs.nnodes,
            nproc_per_node=needs.nproc_per_node,
            device=needs.device,
        ),
        writes=kind.outputs(prepared_spec, job_id),
        reads=kind.inputs(prepared_spec),
    )
    if job.id != job_id:  # the same key won a race with this request
        return _replay(job, key or "", request_hash), True
    return job, False


def delete(engine: Engine, settings: Settings, job_id: str, purge: bool) -> tuple[Job, list[str], list[dict]]:
    """Delete a finished job, its folder and, with `purge`, the outputs it owns. Returns the job, the folders removed
    and the outputs kept (`{path, reason}`)."""
    existing = store.get_job(engine, job_id)
    kind = KINDS.get(existing.kind)
    outputs = [Path(p) for p in kind.outputs(existing.spec, existing.id)] if purge and kind is not None else []
    moved: list[tuple[Path, Path]] = []  # (an output, where it waits to be removed)
    kept: list[dict] = []

    def move_aside(session, job: Job) -> None:
        for folder in outputs:
            if (use := folders.user_of(session, folder, other_than=job.id)) is not None:
                raise store.Conflict(f"{use.describe(folder)}; not purging job {job.id}'s {folder}")
        for folder in outputs:
            if not folder.exists() and not folder.is_symlink():
                continue
            if (reason := _not_owned(folder, job, settings)) is not None:
                kept.append({"path": str(folder), "reason": reason})
                continue
            aside = folder.with_name(f".purging-{job.id}-{folder.name}")
            try:
                folder.rename(aside)
            except OSError as error:
                kept.append({"path": str(folder), "reason": f"could not be moved aside: {error.strerror}"})
                continue
            moved.append((folder, aside))

    try:
        job = store.delete_job(engine, job_id, move_aside if outputs else None)
    except BaseException:
        for folder, aside in reversed(moved):  # the job stays, and so does everything it wrote
            aside.rename(folder)
        raise
    removed = []
    own_dir = jobfiles.job_dir(settings, job.id)  # the job's log folder is its own by id
    if own_dir.exists():
        shutil.rmtree(own_dir, ignore_errors=True)
        removed.append(str(own_dir))
    for folder, aside in moved:
        shutil.rmtree(aside, ignore_errors=True)
        removed.append(str(folder))
    return job, removed, kept


def read_manifest(engine: Engine, job_id: str) -> dict:
    """The manifest the job wrote, plus `output_dir`; NotFound when there is none (yet)."""
    job = store.get_job(engine, job_id)
    kind = KINDS.get(job.kind)
    path = kind.manifest(job.spec) if kind else None
    if path is None:
        raise store.NotFound(f"{job.kind} jobs have no manifest")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        why = "it is still queued" if job.state == JobState.queued else f"it is {job.state}"
        raise store.NotFound(f"job {job.id} has no manifest yet ({why}); expected at {path}") from None
    return {**manifest, "output_dir": str(path.parent)}


def read_dataset_manifest(engine: Engine, job_id: str) -> dict:
    """The manifest of the dataset a job reads (a train or eval job's), plus `output_dir`; NotFound when the job
    reads none or the folder holds no manifest."""
    from openseek_nanochat.convert import manifest as manifest_file

    job = store.get_job(engine, job_id)
    kind = KINDS.get(job.kind)
    folder = kind.dataset(job.spec) if kind else None
    if folder is None:
        raise store.NotFound(f"{job.kind} jobs read no dataset")
    found = manifest_file.read(folder)
    if found is None:
        raise store.NotFound(f"the dataset of job {job.id}, {folder}, has no readable {manifest_file.NAME}")
    return {**found, "output_dir": str(folder)}


def sample_dataset(
    engine: Engine, job_id: str, n: int, seed: int, source: str | None, split: str | None, max_chars: int
):
    """Documents drawn from a convert job's finished dataset with their provenance (convert/samples.py). NotFound for
    another kind of job; Conflict while the dataset is unfinished; InputError for a source it does not have."""
    from openseek_nanochat.convert import manifest as manifest_file
    from openseek_nanochat.convert import samples

    job = store.get_job(engine, job_id)
    if job.kind != "convert":
        raise store.NotFound(f"{job.kind} jobs write no dataset to sample; a convert job does")
    folder = Path(job.spec["output_dir"])
    found = manifest_file.read(folder)
    if found is None or not found.get("complete"):
        raise store.Conflict(
            f"the dataset of job {job.id} is not finished yet (it is {job.state}); sample it when done"
        )
    if found.get("format") not in manifest_file.WITH_PROVENANCE:
        raise store.Conflict(f"the dataset in {folder} was written by an older version, without provenance")
    return samples.draw(folder, found, n=n, seed=seed, source=source, split=split, max_chars=max_chars)


def _request_hash(kind: str, spec: BaseModel) -> str:
    canonical = json.dumps({"kind": kind, "spec": spec.model_dump(mode="json")}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(job: Job, key: str, request_hash: str) -> Job:
    if job.request_hash != request_hash:
        raise store.Conflict(
            f"Idempotency-Key {key!r} was already used for a different request (job {job.id}); use a new key"
        )
    return job


def _not_owned(folder: Path, job: Job, settings: Settings) -> str | None:
    """Why a purge of `job` keeps `folder` (None: the job owns it). A run dir is its job's by id; a dataset is the
    job's when its manifest names the job as owner and it holds no folder of its own (another dataset, perhaps)."""
    from openseek_nanochat.convert import manifest as manifest_file
    from openseek_nanochat.convert import provenance

    if folder.is_symlink():
        return "it is a symbolic link"
    resolved = folder.resolve()
    if resolved == paths.runs_dir(settings).resolve() / job.id:
        return None
    if not paths.is_dataset_dir(resolved, settings):
        return f"it is not a dataset folder of its own inside {paths.datasets_dir(settings)}"
    found = manifest_file.read(folder)
    if found is None:
        return f"it holds no {manifest_file.NAME} naming job {job.id} as its owner"
    if found.get("owner") != job.id:
        owner = found.get("owner")
        return f"its manifest names {f'job {owner}' if owner else 'no job'} as its owner, not job {job.id}"
    own = provenance.sidecar_folder(folder)  # the conversion's own subfolder; a link there is not its own
    if subfolders := sorted(p.name for p in folder.iterdir() if p.is_dir() and (p != own or p.is_symlink())):
        return f"it holds folders job {job.id} did not write ({', '.join(subfolders)}); remove them first"
    return None
