"""The conversion spec: one pydantic model for the HTTP body, the CLI file and the job process.

Unknown fields are rejected everywhere (extra="forbid"), so a typo such as `text_colum` is an error, not a default.
"""

import math
import string
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator


class StrictModel(BaseModel):
    # NaN and infinity are no number a spec means (JSON's `1e400` parses to infinity): rejected like any bad value.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# Every size and count has an upper bound far above any real use, so that an absurd value is a 422 rather than an
# overflow, a spin or a job that can never end; each bound also fits a JavaScript number exactly (the dashboard shows
# specs and re-submits them), 2**53.
MAX_DOCS = 10**15
MAX_CHARS = 10**15  # some thousand times the text of OpenSeek-Pretrain-100B
MAX_SEED = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="Seeds every random choice: same seed, same output.")]

# Weights only count relative to each other. The bounds keep every share the mixture computes a normal float: without
# them 1e-320 beside 1e300 rounds a share to 0, and weights near 1e308 add up to infinity.
MIN_WEIGHT, MAX_WEIGHT = 1e-15, 1e15
Weight = Annotated[float, Field(ge=MIN_WEIGHT, le=MAX_WEIGHT, description="Relative share in the mixture.")]


class TextSelection(StrictModel):
    """How a row becomes a document: one column, or a template over any columns."""

    text_column: str = Field(default="text", description="Column holding the document text.")
    text_template: str | None = Field(
        default=None,
        description="Python format string over columns, e.g. '{question}\\n{answer}'. Overrides text_column. "
        "Lists are joined with newlines, numbers rendered as text, missing values as ''.",
        examples=["{question}\n{answer}"],
    )

    @field_validator("text_template")
    @classmethod
    def _template_fields_are_plain(cls, template: str | None) -> str | None:
        if template is None:
            return None
        fields = template_fields(template)
        if not fields:
            raise ValueError("text_template names no column; use e.g. '{question}\\n{answer}'")
        return template


def template_fields(template: str) -> list[str]:
    """The column names a template uses, in order. Only plain `{column}` fields are supported."""
    fields = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ValueError(f"text_template {template!r} is not a valid format string: {e}") from None
    for _, field, format_spec, conversion in parsed:
        if field is None:
            continue
        if not field or format_spec or conversion or any(c in field for c in ".[]"):
            written = field + (f"!{conversion}" if conversion else "") + (f":{format_spec}" if format_spec else "")
            raise ValueError(
                f"text_template field {{{written}}} is not supported: use plain column names like {{question}}"
            )
        fields.append(field)
    return fields


class FilesSource(TextSelection):
    type: Literal["files"] = "files"
    paths: list[str] = Field(min_length=1, description="Files or globs (sorted), under the input roots.")
    format: Literal["auto", "jsonl", "parquet", "arrow", "text"] = Field(
        default="auto",
        description="auto picks by extension: .jsonl/.json(.gz/.zst), .parquet, .arrow/.feather/.ipc, .txt/.md.",
    )
    weight: Weight = 1.0


class HFSource(TextSelection):
    type: Literal["hf"] = "hf"
    dataset: str = Field(description="A Hugging Face hub id (needs network) or a local dataset directory.")
    name: str | None = Field(default=None, description="The dataset configuration name.")
    split: str = "train"
    streaming: bool = True
    weight: Weight = 1.0


class QwenTokenizerSpec(StrictModel):
    type: Literal["qwen"] = "qwen"
    path: str = Field(description="OpenSeek's qwen.tiktoken vocabulary file (base64 token, rank per line).")


class HFTokenizerSpec(StrictModel):
    type: Literal["hf"] = "hf"
    path: str = Field(description="A Hugging Face tokenizer.json.")


class TiktokenTokenizerSpec(StrictModel):
    type: Literal["tiktoken"] = "tiktoken"
    path: str = Field(
        description="Any tiktoken ranks file (base64 token, rank per line; Llama 3's tokenizer.model). "
        "Ids past the file are special tokens and vanish from the text."
    )


# Megatron's --tokenizer-type values this source reads, and the arguments each needs (its --vocab-file, ...).
MEGATRON_TOKENIZER_ARGS = {
    "GPT2BPETokenizer": ("vocab_file", "merge_file"),
    "HuggingFaceTokenizer": ("tokenizer_model",),
    "SentencePieceTokenizer": ("tokenizer_model",),
    "GPTSentencePieceTokenizer": ("tokenizer_model",),
    "Llama2Tokenizer": ("tokenizer_model",),
    "QwenTokenizerFS": ("tokenizer_path",),
}


class MegatronTokenizerSpec(StrictModel):
    """Megatron's own tokenizer arguments, pasted from a training command or config (`tokenizer_type` and its files).

    vocab_size and make_vocab_size_divisible_by only pad Megatron's embedding: accepted so a config pastes as is.
    """

    tokenizer_type: Literal[tuple(MEGATRON_TOKENIZER_ARGS)]  # type: ignore[valid-type]
    vocab_file: str | None = Field(default=None, description="GPT2BPETokenizer: GPT-2's vocab.json.")
    merge_file: str | None = Field(default=None, description="GPT2BPETokenizer: GPT-2's merges.txt.")
    tokenizer_model: str | None = Field(
        default=None, description="A tokenizer.json or its folder (HuggingFaceTokenizer), or a SentencePiece .model."
    )
    tokenizer_path: str | None = Field(default=None, description="QwenTokenizerFS: the folder holding qwen.tiktoken.")
    vocab_size: int | None = Field(default=None, ge=1, le=2**31 - 1)
    make_vocab_size_divisible_by: int | None = Field(default=None, ge=1, le=2**31 - 1)

    @model_validator(mode="after")
    def _has_its_files(self):
        needed = MEGATRON_TOKENIZER_ARGS[self.tokenizer_type]
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(f"tokenizer_type {self.tokenizer_type} needs {' and '.join(missing)}")
        unused = [
            name
            for name in ("vocab_file", "merge_file", "tokenizer_model", "tokenizer_path")
            if name not in needed and getattr(self, name) is not None
        ]
        if unused:
            raise ValueError(f"tokenizer_type {self.tokenizer_type} takes no {' or '.join(unused)}")
        return self


def _tokenizer_form(value) -> str | None:
    """Which tokenizer model a value means: its `type`, or Megatron's arguments when it has `tokenizer_type`."""
    if isinstance(value, dict):
        return value.get("type") or ("megatron" if "tokenizer_type" in value else None)
    return "megatron" if isinstance(value, MegatronTokenizerSpec) else getattr(value, "type", None)


TokenizerSpec = Annotated[
    Annotated[QwenTokenizerSpec, Tag("qwen")]
    | Annotated[HFTokenizerSpec, Tag("hf")]
    | Annotated[TiktokenTokenizerSpec, Tag("tiktoken")]
    | Annotated[MegatronTokenizerSpec, Tag("megatron")],
    Discriminator(
        _tokenizer_form,
        custom_error_type="tokenizer_form",
        custom_error_message=(
            "a tokenizer is {'type': 'qwen' | 'hf' | 'tiktoken', 'path': ...} or Megatron's arguments "
            "{'tokenizer_type': ..., ...}"
        ),
    ),
]


class MegatronSource(StrictModel):
    """Megatron indexed datasets (`<prefix>.bin` + `<prefix>.idx`), detokenized back to text."""

    type: Literal["megatron"] = "megatron"
    prefixes: list[str] | None = Field(default=None, description="Dataset prefixes (without .bin/.idx); globs allowed.")
    data_path: list[float | str] | None = Field(
        default=None,
        description="Megatron's blend list as OpenSeek's configs write it: weight, prefix, weight, prefix, ...",
        examples=[[3.0, "/data/arxiv/007_00000_text_document", 1.0, "/data/zh_cc/part_28_text_document"]],
    )
    openseek_config: str | None = Field(
        default=None,
        description="An OpenSeek/FlagScale training YAML: its data.data_path, and its data.tokenizer unless "
        "'tokenizer' is given.",
    )
    dataset_base_dir: str | None = Field(
        default=None, description="What ${experiment.dataset_base_dir} stands for in the openseek_config."
    )
    experiment_config: str | None = Field(
        default=None,
        description="The Hydra experiment YAML that sets experiment.dataset_base_dir (instead of "
        "dataset_base_dir); a relative base dir is taken from that file's folder.",
    )
    tokenizer: TokenizerSpec | None = Field(default=None, description="Required unless an openseek_config names one.")
    weight: Weight = 1.0

    @model_validator(mode="after")
    def _one_of_prefixes_data_path_or_config(self):
        given = [name for name in ("prefixes", "data_path", "openseek_config") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'prefixes', 'data_path' or 'openseek_config'")
        if self.prefixes is not None and not self.prefixes:
            raise ValueError("'prefixes' is empty")
        if self.data_path is not None:
            weighted_prefixes(self.data_path)  # validates the shape
        if self.openseek_config is None:
            if self.tokenizer is None:
                raise ValueError("'tokenizer' is required (only an openseek_config can name it instead)")
            if self.dataset_base_dir is not None or self.experiment_config is not None:
                raise ValueError("'dataset_base_dir' and 'experiment_config' only go with 'openseek_config'")
        if self.dataset_base_dir is not None and self.experiment_config is not None:
            raise ValueError("give 'dataset_base_dir' or 'experiment_config', not both")
        return self


def weighted_prefixes(data_path: list) -> list[tuple[float, str]]:
    """[w1, p1, w2, p2, ...] -> [(w1, p1), ...], with errors that name the offending position."""
    if not data_path or len(data_path) % 2:
        raise ValueError(
            "'data_path' must be a non-empty list of weight, prefix pairs: [w1, 'prefix1', w2, 'prefix2', ...]"
        )
    pairs = []
    for i in range(0, len(data_path), 2):
        weight, prefix = data_path[i], data_path[i + 1]
        if isinstance(weight, str):
            try:
                weight = float(weight)
            except ValueError:
                raise ValueError(f"data_path[{i}] should be a weight, got {weight!r}") from None
        if not isinstance(prefix, str):
            raise ValueError(f"data_path[{i + 1}] should be a prefix path, got {prefix!r}")
        if not (math.isfinite(weight) and MIN_WEIGHT <= weight <= MAX_WEIGHT):
            raise ValueError(f"data_path[{i}]: weight must be between {MIN_WEIGHT:g} and {MAX_WEIGHT:g}, got {weight}")
        pairs.append((float(weight), prefix))
    return pairs


Source = Annotated[FilesSource | HFSource | MegatronSource, Field(discriminator="type")]


class ConvertSpec(StrictModel):
    """What to convert and how. The body of POST /jobs/convert and the file `openseek-nanochat convert` reads."""

    name: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="Names the default output dir."
    )
    sources: list[Source] = Field(min_length=1, description="Weighted sources, interleaved and shuffled together.")
    output_dir: str | None = Field(
        default=None, description="A folder inside <data dir>/datasets/. Default: <data dir>/datasets/<name or job id>."
    )
    chars_per_shard: int = Field(
        default=250_000_000, gt=0, le=MAX_CHARS, description="Characters per shard (nanochat: 250M)."
    )
    rows_per_shard: int | None = Field(
        default=None, gt=0, le=MAX_DOCS, description="Rows per shard; overrides chars_per_shard."
    )
    row_group_size: int = Field(
        default=1024, gt=0, le=2**20, description="Rows per parquet row group (nanochat: 1024)."
    )
    max_docs: int | None = Field(
        default=None, gt=0, le=MAX_DOCS, description="Stop after this many documents (all shards)."
    )
    max_chars: int | None = Field(
        default=None, gt=0, le=MAX_CHARS, description="Stop after this many characters (all shards)."
    )
    max_shards: int | None = Field(
        default=None, ge=2, le=10**6, description="At most this many shards, the val shard included."
    )
    min_chars: int = Field(
        default=0, ge=0, le=MAX_CHARS, description="Drop documents shorter than this; empty ones always go."
    )
    shuffle: bool = True
    shuffle_buffer: int = Field(
        default=65_536, gt=0, le=10**8, description="Documents shuffled together (bounded memory)."
    )
    seed: Seed = 42
    val_docs: int | None = Field(
        default=None,
        gt=0,
        le=10**9,
        description="Documents in the validation shard (the last one). Default: 1%, at most 10,000.",
    )
    on_error: Literal["fail", "skip"] = Field(
        default="fail", description="A malformed record: fail naming file:line, or skip it and count it."
    )
    processes: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="Cores the conversion keeps busy (default: every core the job process may use): JSON is parsed "
        "and Megatron parts decoded on that many threads, the reader runs ahead of the mixing, and that many shards "
        "are compressed at once; 1 runs every step in turn on one thread. The output is the same for any number, and "
        "a run may be resumed with another.",
    )

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "gsm8k",
                    "sources": [
                        {"type": "files", "paths": ["/data/gsm8k.jsonl"], "text_template": "{question}\n{answer}"}
                    ],
                    "chars_per_shard": 1_000_000,
                }
            ]
        },
    )

    def fingerprint_fields(self) -> dict:
        """The parts of the spec that shape the output; a resume must agree on all of them. `processes` shapes
        nothing (the plan of blocks and shards never depends on it), so a run may resume with another count."""
        return self.model_dump(mode="json", exclude={"name", "processes"})
