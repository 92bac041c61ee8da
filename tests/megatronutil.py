"""Megatron parts written by megatron-core's own builder (IndexedDatasetBuilder), as tools/preprocess_data.py does."""

import warnings
from pathlib import Path

import numpy as np


def write_part(prefix: Path, documents: list[list[int]], dtype=np.int32) -> Path:
    """One part, one sequence per document (preprocess_data.py without --split-sentences)."""
    import torch

    # megatron-core warns that Transformer Engine and Apex are absent, and of numpy 2's copy keyword: neither matters
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

        prefix.parent.mkdir(parents=True, exist_ok=True)
        builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=dtype)
        for document in documents:
            builder.add_document(torch.tensor(document, dtype=torch.int64), [len(document)])
        builder.finalize(f"{prefix}.idx")
    return prefix
