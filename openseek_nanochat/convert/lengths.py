"""The histogram of document lengths a manifest records: fixed log-scale bins, so shards, runs and datasets add up
and compare bin for bin.

Bin i counts the documents of 2**i to 2**(i+1) - 1 characters (bin 0: one character); the last bin also everything
longer.
"""

import numpy as np

BINS = 32  # up to 2**31 characters, Arrow's limit for one string


def edges() -> list[int]:
    """The lower bound of each bin, in characters."""
    return [1 << i for i in range(BINS)]


def histogram(chars: np.ndarray) -> np.ndarray:
    """Documents per bin, for documents of `chars` characters (each at least 1: empty ones never reach a shard)."""
    bins = np.minimum(np.log2(np.maximum(chars, 1)).astype(np.int64), BINS - 1)
    return np.bincount(bins, minlength=BINS)
