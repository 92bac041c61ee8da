"""openseek-nanochat: OpenSeek's pretraining data as nanochat parquet shards, and training on them."""

__version__ = "0.1.0"
