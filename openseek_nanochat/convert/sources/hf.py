"""Hugging Face datasets through the `datasets` library: hub ids (need network) or local dataset directories.

Batches come out as Arrow tables (`with_format("arrow")`), so no row becomes a Python dict. Cursor: {"row": n}, and
for a stream also {"stream": its `state_dict()`}: `datasets` resumes from it at the file the cursor is in (less the
chunk it was rebatching), never from the first file.
A directory written by `Dataset.save_to_disk` is opened with `load_from_disk`; any other directory or hub id through
`load_dataset_builder`. Every data file a local directory resolves to (its README's `configs: data_files` may point
anywhere) must lie under the input roots: checked before anything is read, each time the dataset is opened.

Every cache `datasets` and `huggingface_hub` write goes under `<data dir>/cache/hf` (they read their variables once,
on import, so they are set before the import). The submit-time check (`check`) runs in a child process with a time
limit and streams the first rows only, whatever `streaming` says: the API never builds an Arrow cache, never waits on
the hub unbounded and never holds `datasets` in memory.
"""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from openseek_nanochat import events, procs
from openseek_nanochat.convert.sources.base import Batch, file_fingerprint, run_of
from openseek_nanochat.convert.sources.text import check_columns, needed_columns
from openseek_nanochat.convert.spec import HFSource
from openseek_nanochat.errors import InputError
from openseek_nanochat.paths import cache_dir, check_input_path, in_input_roots
from openseek_nanochat.settings import Settings, get_settings

ROWS_PER_BATCH = 4096
CHECK_SECONDS = 60  # resolving a hub dataset's files can take a while, but a submit must not wait forever


def cache_environment(settings: Settings) -> dict[str, str]:
    root = cache_dir(settings) / "hf"
    names = {
        "HF_DATASETS_CACHE": "datasets",
        "HF_MODULES_CACHE": "modules",
        "HF_HUB_CACHE": "hub",
        "HF_ASSETS_CACHE": "assets",
        "HF_XET_CACHE": "xet",
    }
    return {variable: str(root / folder) for variable, folder in names.items()}


def _import_datasets(settings: Settings):
    if "datasets" not in sys.modules and "huggingface_hub" not in sys.modules:
        os.environ.update(cache_environment(settings))
    import datasets  # heavy; only jobs that read from the hub or a dataset dir pay for it

    return datasets


def _looks_local(dataset: str) -> bool:
    return dataset.startswith(("/", ".", "~")) or Path(dataset).expanduser().exists()


class HFTextSource:
    def __init__(self, spec: HFSource, settings: Settings, name: str | None = None):
        self.spec = spec
        self.settings = settings
        self.weight = spec.weight
        self.name = name or spec.dataset
        self.local_dir = check_input_path(spec.dataset, settings) if _looks_local(spec.dataset) else None
        if self.local_dir is not None and not self.local_dir.is_dir():
            raise InputError("no such dataset directory", spec.dataset)

    def _saved(self) -> bool:
        return (
            self.local_dir is not None
            and (self.local_dir / "dataset_info.json").exists()
            and (self.local_dir / "state.json").exists()
        )

    def _outside_roots(self, files: list) -> bool:
        return any("://" in str(path) or not in_input_roots(path, self.settings) for path in files)

    def _load(self, streaming: bool):
        datasets = _import_datasets(self.settings)
        spec = self.spec
        try:
            if self._saved():
                state = json.loads((self.local_dir / "state.json").read_text(encoding="utf-8"))
                arrow_files = [self.local_dir / f["filename"] for f in state.get("_data_files", [])]
                if self._outside_roots(arrow_files):
                    raise InputError(
                        "state.json `_data_files` names a file outside the allowed input roots", spec.dataset
                    )
                ds = datasets.load_from_disk(str(self.local_dir))
                if isinstance(ds, datasets.DatasetDict):
                    ds = ds[spec.split]
                return ds.to_iterable_dataset() if streaming else ds
            cache = cache_environment(self.settings)["HF_DATASETS_CACHE"]  # also when `datasets` came in before us
            builder = datasets.load_dataset_builder(str(self.local_dir or spec.dataset), spec.name, cache_dir=cache)
            data_files = builder.config.data_files if self.local_dir is not None else None
            for split, files in (data_files or {}).items():
                if self._outside_roots(files):
                    raise InputError(
                        f"data_files of split {str(split)!r} names a file outside the allowed input "
                        "roots (see README.md `configs`)",
                        spec.dataset,
                    )
            if streaming:
                return builder.as_streaming_dataset(split=spec.split)
            builder.download_and_prepare()
            return builder.as_dataset(split=spec.split)
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise InputError(f"cannot load dataset (split {spec.split!r}): {e}", spec.dataset) from None
        except ConnectionError as e:
            raise InputError(f"the Hugging Face hub is unreachable: {e}", spec.dataset) from None

    def first_columns(self) -> list[str]:
        """The dataset's columns, from its first rows at most (streamed, whatever `streaming` says)."""
        ds = self._load(streaming=True)
        if ds.column_names is not None:
            return list(ds.column_names)
        first = next(iter(ds.with_format("arrow").iter(batch_size=1)), None)  # some streams know columns once read
        return list(first.column_names) if first is not None else []

    def check(self) -> None:
        check_columns(probe(self.spec, self.settings), self.spec, self.spec.dataset)

    def fingerprint(self) -> list[dict]:
        if self.local_dir is None:
            return [{"dataset": self.spec.dataset, "name": self.spec.name, "split": self.spec.split}]
        files = [p for p in sorted(self.local_dir.rglob("*")) if p.is_file() and ".cache" not in p.parts]
        # A link out of the roots is never read, and its target's size and time must not reach the manifest either.
        return [file_fingerprint(p) for p in files if in_input_roots(p, self.settings)]

    def provenance_items(self) -> list[dict]:
        return [{"dataset": self.spec.dataset, "name": self.spec.name, "split": self.spec.split, "pos": "row"}]

    def read(self, cursor: dict | None = None) -> Iterator[Batch]:
        from openseek_nanochat.convert.sources.text import select_text

        row = cursor["row"] if cursor else 0
        ds = self._load(self.spec.streaming)
        streaming = not hasattr(ds, "__len__")
        if row and not streaming:
            ds = ds.select(range(row, len(ds)))  # an index over the Arrow table: nothing before it is read
        elif row and "stream" not in cursor:
            ds = ds.skip(row)  # a cursor recorded before streams kept their state: read up to it, unparsed
        ds = ds.select_columns(needed_columns(self.spec)) if ds.column_names else ds
        ds = ds.with_format("arrow")
        if row and streaming and "stream" in cursor:
            ds.load_state_dict(cursor["stream"])
        total = len(ds) + row if not streaming else None
        tables = ds.iter(batch_size=ROWS_PER_BATCH)
        while True:
            # A stream's own state where this batch starts: a resume opens no data file wholly before it.
            at = {"row": row, "stream": ds.state_dict()} if streaming else {"row": row}
            table = next(tables, None)
            if table is None:
                return
            items, positions = run_of(0, row, table.num_rows)  # the row of the split, as `datasets` numbers them
            batch = Batch(
                cursor=at, texts=select_text(table, self.spec, self.spec.dataset), items=items, positions=positions
            )
            row += table.num_rows
            batch.progress = row / total if total else None
            yield batch


# --- the submit-time check, in a child process -----------------------------------------------------------------------


def probe(spec: HFSource, settings: Settings) -> list[str]:
    """The columns of `spec`'s dataset, found by `python -m` this module within CHECK_SECONDS; InputError if not."""
    request = json.dumps({"dataset": spec.dataset, "name": spec.name, "split": spec.split})
    env = {
        **os.environ,
        **cache_environment(settings),
        "OPENSEEK_NANOCHAT_DATA_DIR": str(settings.resolved_data_dir),
        "OPENSEEK_NANOCHAT_INPUT_ROOTS": os.pathsep.join(map(str, settings.resolved_input_roots)),
    }
    process = procs.spawn([sys.executable, "-m", __name__, request], env=env, stdout=subprocess.PIPE)
    try:
        output, _ = process.communicate(timeout=CHECK_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise InputError(
            f"checking the dataset took more than {CHECK_SECONDS} s; is the hub reachable?", spec.dataset
        ) from None
    for event in filter(None, map(events.parse, output.decode(errors="replace").splitlines())):
        if event["type"] == "result":
            return event["columns"]
        if event["type"] == "error":
            raise InputError(event["message"], event.get("where"))
    raise InputError(f"checking the dataset failed (exit code {process.returncode})", spec.dataset)


def main(request: str) -> None:
    spec = HFSource.model_validate(json.loads(request))
    try:
        events.emit("result", columns=HFTextSource(spec, get_settings()).first_columns())
    except InputError as e:
        events.emit("error", message=e.message, where=e.where)
    except Exception as e:  # whatever `datasets` raises, said as a message the API can return rather than a traceback
        events.emit(
            "error", message=f"cannot load dataset (split {spec.split!r}): {type(e).__name__}: {e}", where=spec.dataset
        )


if __name__ == "__main__":
    main(sys.argv[1])
