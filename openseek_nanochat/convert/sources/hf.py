"""Hugging Face datasets through the `datasets` library: hub ids (need network) or local dataset directories.

Batches come out as Arrow tables (`with_format("arrow")`), so no row becomes a Python dict. Cursor: {"row": n}.
A directory written by `Dataset.save_to_disk` is opened with `load_from_disk`; any other directory or hub id with
`load_dataset`.
"""

from pathlib import Path
from typing import Iterator

from openseek_nanochat.errors import InputError
from openseek_nanochat.paths import check_input_path
from openseek_nanochat.settings import Settings
from openseek_nanochat.convert.spec import HFSource
from openseek_nanochat.convert.sources.base import Batch, file_fingerprint
from openseek_nanochat.convert.sources.text import check_columns, needed_columns

ROWS_PER_BATCH = 4096


def _looks_local(dataset: str) -> bool:
    return dataset.startswith(("/", ".", "~")) or Path(dataset).expanduser().exists()


class HFTextSource:
    def __init__(self, spec: HFSource, settings: Settings, name: str | None = None):
        self.spec = spec
        self.weight = spec.weight
        self.name = name or spec.dataset
        self.local_dir = check_input_path(spec.dataset, settings) if _looks_local(spec.dataset) else None
        if self.local_dir is not None and not self.local_dir.is_dir():
            raise InputError("no such dataset directory", spec.dataset)

    def _load(self):
        import datasets  # heavy; only jobs that read from the hub or a dataset dir pay for it

        try:
            if self.local_dir is not None and (self.local_dir / "dataset_info.json").exists() \
                    and (self.local_dir / "state.json").exists():
                ds = datasets.load_from_disk(str(self.local_dir))
                if isinstance(ds, datasets.DatasetDict):
                    ds = ds[self.spec.split]
                return ds.to_iterable_dataset() if self.spec.streaming else ds
            return datasets.load_dataset(
                str(self.local_dir or self.spec.dataset), self.spec.name, split=self.spec.split,
                streaming=self.spec.streaming,
            )
        except (FileNotFoundError, ValueError, KeyError) as e:
            raise InputError(f"cannot load dataset (split {self.spec.split!r}): {e}", self.spec.dataset) from None
        except ConnectionError as e:
            raise InputError(f"the Hugging Face hub is unreachable: {e}", self.spec.dataset) from None

    def check(self) -> None:
        ds = self._load()
        columns = ds.column_names
        if columns is None:  # some streaming datasets only know their columns once read
            columns = list(next(iter(ds.with_format("arrow").iter(batch_size=1))).column_names)
        check_columns(list(columns), self.spec, self.spec.dataset)

    def fingerprint(self) -> list[dict]:
        if self.local_dir is None:
            return [{"dataset": self.spec.dataset, "name": self.spec.name, "split": self.spec.split}]
        return [file_fingerprint(p) for p in sorted(self.local_dir.rglob("*")) if p.is_file() and ".cache" not in p.parts]

    def read(self, cursor: dict | None = None) -> Iterator[Batch]:
        from openseek_nanochat.convert.sources.text import select_text

        row = cursor["row"] if cursor else 0
        ds = self._load()
        if row:
            ds = ds.skip(row) if hasattr(ds, "skip") and not hasattr(ds, "__len__") else ds.select(range(row, len(ds)))
        ds = ds.select_columns(needed_columns(self.spec)) if ds.column_names else ds
        total = len(ds) + row if hasattr(ds, "__len__") else None
        for table in ds.with_format("arrow").iter(batch_size=ROWS_PER_BATCH):
            batch = Batch(cursor={"row": row}, texts=select_text(table, self.spec, self.spec.dataset))
            row += table.num_rows
            batch.progress = row / total if total else None
            yield batch
