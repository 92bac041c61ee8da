"""Token ids back to text, for Megatron parts: OpenSeek's Qwen tiktoken vocabulary, or any HF tokenizer.json.

A document's text is the UTF-8 decoding of the concatenated bytes of all its tokens (one character often spans
several tokens, so never token by token), with errors="replace" and the replacements counted. Special tokens are
document markers (OpenSeek wraps each document as <|extra_203|> ... <|extra_204|>, stock Megatron appends an EOD) and
are dropped, not rendered.

Where every id stands for a fixed byte string (Qwen's vocabulary, HF tokenizers with a byte-level decoder), decoding
is one Arrow `take` from a table of token bytes: a gather in C++ that releases the GIL and needs no Python int per
token, which is why it beats tiktoken's own decode_bytes (benchmarks/detok.py). Other HF tokenizers (WordPiece,
Metaspace, byte fallback, ...) decode through the tokenizers library, whose decoders need the whole id sequence.
"""

import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa

from openseek_nanochat.convert.spec import HFTokenizerSpec, QwenTokenizerSpec
from openseek_nanochat.errors import InputError
from openseek_nanochat.paths import check_input_path
from openseek_nanochat.settings import Settings

# Qwen's special tokens, numbered right after the 151,643 byte tokens of qwen.tiktoken.
QWEN_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *(f"<|extra_{i}|>" for i in range(205)))
UTF8_REPLACEMENT = "\ufffd".encode()
# A tokenizer file is read whole, at submit too: the largest real ones (qwen.tiktoken 2.5 MB, tokenizer.json files of
# 256k vocabularies ~35 MB) fit well; a bigger file is a mistake that must not swell the API.
MAX_TOKENIZER_BYTES = 64 << 20


@dataclass
class Decoded:
    texts: pa.Array  # string, one document each
    replacements: int  # U+FFFD characters put in for invalid UTF-8


class Detokenizer(Protocol):
    vocab_size: int  # every id in the data must lie in 0..vocab_size-1 (callers check, to name the file)

    def decode(self, tokens: np.ndarray, offsets: np.ndarray) -> Decoded:
        """Document i is tokens[offsets[i]:offsets[i+1]]."""


def utf8_documents(data: pa.Buffer, offsets: np.ndarray) -> Decoded:
    """Documents data[offsets[i]:offsets[i+1]] as strings, invalid UTF-8 replaced by U+FFFD and counted."""
    large = int(offsets[-1]) >= 2**31
    raw = pa.Array.from_buffers(
        pa.large_binary() if large else pa.binary(),
        len(offsets) - 1,
        [None, pa.py_buffer(offsets.astype(np.int64 if large else np.int32)), data],
    )
    string_type = pa.large_string() if large else pa.string()
    try:
        return Decoded(raw.cast(string_type), 0)  # Arrow validates the UTF-8 of the whole batch at GB/s
    except pa.ArrowInvalid:
        pass
    texts, replacements = [], 0
    for doc in raw.to_pylist():  # only batches holding broken UTF-8 come here
        try:
            texts.append(doc.decode("utf-8"))
        except UnicodeDecodeError:
            text = doc.decode("utf-8", errors="replace")
            replacements += text.count("\ufffd") - doc.count(UTF8_REPLACEMENT)  # a U+FFFD in the data is no error
            texts.append(text)
    return Decoded(pa.array(texts, string_type), replacements)


class ByteTableDetokenizer:
    """Each id is a fixed byte string (empty for special tokens); a batch decodes with one Arrow take.

    The take writes an offset per token, more bytes than the text itself: 32-bit ones wherever the batch's bytes
    cannot reach 2 GB (every batch in practice: measured 10-15% faster than 64-bit ones), 64-bit ones otherwise.
    """

    def __init__(self, token_bytes: list[bytes]):
        lengths = np.fromiter(map(len, token_bytes), np.int64, len(token_bytes))
        offsets = np.zeros(len(token_bytes) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(token_bytes))]
        self.table = pa.Array.from_buffers(pa.large_binary(), len(token_bytes), buffers)
        self.narrow_table = self.table.cast(pa.binary()) if offsets[-1] < 2**31 else None
        self.longest = int(lengths.max(initial=0))  # bytes of the longest token: bounds a batch's bytes
        self.vocab_size = len(token_bytes)

    def decode(self, tokens: np.ndarray, offsets: np.ndarray) -> Decoded:
        narrow = self.narrow_table is not None and len(tokens) * self.longest < 2**31
        pieces = (self.narrow_table if narrow else self.table).take(pa.array(tokens))
        width = np.int32 if narrow else np.int64
        byte_offsets = np.frombuffer(pieces.buffers()[1], width, len(pieces) + 1)[offsets]
        return utf8_documents(pieces.buffers()[2] or pa.py_buffer(b""), byte_offsets)


class TokenizersDetokenizer:
    """An HF tokenizer whose decoder is not byte-level: the tokenizers library decodes each document.

    tokenizers replaces invalid UTF-8 itself, so here every U+FFFD in the output counts as a replacement.
    """

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.vocab_size = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1

    def decode(self, tokens: np.ndarray, offsets: np.ndarray) -> Decoded:
        ids = tokens.tolist()
        bounds = offsets.tolist()
        texts = self.tokenizer.decode_batch([ids[a:b] for a, b in zip(bounds, bounds[1:])], skip_special_tokens=True)
        return Decoded(pa.array(texts, pa.string()), sum(t.count("\ufffd") for t in texts))


def qwen_token_bytes(path: Path) -> list[bytes]:
    """qwen.tiktoken plus its special tokens as empty strings."""
    return tiktoken_ranks(path) + [b""] * len(QWEN_SPECIAL_TOKENS)


def tiktoken_ranks(path: Path) -> list[bytes]:
    """A tiktoken ranks file (one `base64-token rank` per line, ranks 0..n-1, blank lines allowed): each rank's
    bytes, in rank order. Read in bulk where the file is as tiktoken writes it, ranks in order (a vocabulary is read
    at every submit and every conversion start: line by line this took 0.15-0.2 s for Qwen's); otherwise line by line,
    which names the first line or rank that is wrong."""
    data = path.read_bytes()
    in_order = _in_order_ranks(data)
    return in_order if in_order is not None else _ranks_line_by_line(data, path)


_WHITESPACE = np.zeros(256, bool)  # what bytes.split() splits on
_WHITESPACE[list(b" \t\n\r\x0b\x0c")] = True


def _in_order_ranks(data: bytes) -> list[bytes] | None:
    """The tokens, if every non-blank line holds a valid base64 token and the next rank, in order; else None."""
    fields = data.split()
    raw = np.frombuffer(data, np.uint8)
    space = _WHITESPACE[raw]
    field_starts = np.flatnonzero(~space & np.concatenate(([True], space[:-1])))
    line_of_field = np.searchsorted(np.flatnonzero(raw == ord("\n")), field_starts)
    fields_per_line = np.bincount(line_of_field)
    if np.any((fields_per_line != 0) & (fields_per_line != 2)):
        return None
    tokens, ranks = fields[0::2], fields[1::2]
    if ranks != [b"%d" % rank for rank in range(len(ranks))]:
        return None
    try:
        return [binascii.a2b_base64(token, strict_mode=True) for token in tokens]
    except binascii.Error:
        return None


def _ranks_line_by_line(data: bytes, path: Path) -> list[bytes]:
    by_rank = []
    for line_number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            by_rank.append((int(rank), binascii.a2b_base64(token, strict_mode=True)))
        except (ValueError, binascii.Error):
            raise InputError("expected a base64 token and its rank", f"{path}:{line_number}") from None
    by_rank.sort(key=lambda pair: pair[0])
    for expected, (rank, _) in enumerate(by_rank):
        if rank != expected:
            problem = f"rank {rank} appears twice" if rank < expected else f"rank {expected} is missing"
            raise InputError(f"not a tiktoken vocabulary: {problem} (ranks must be 0..n-1)", str(path))
    return [token for _, token in by_rank]


def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet (GPT-2's): printable bytes stand for themselves, the rest for chr(256 + k)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    alphabet = {chr(b): b for b in printable}
    alphabet.update({chr(256 + k): b for k, b in enumerate(others)})
    return alphabet


BYTE_LEVEL_ALPHABET = _byte_level_alphabet()


def byte_level_bytes(token: str) -> bytes:
    """A byte-level token's bytes; a token outside the alphabet (an added token) is its own UTF-8, as in tokenizers."""
    try:
        return bytes(BYTE_LEVEL_ALPHABET[c] for c in token)
    except KeyError:
        return token.encode()


def load_hf(path: Path) -> ByteTableDetokenizer | TokenizersDetokenizer:
    from tokenizers import Tokenizer, decoders

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises plain Exception for every parse error
        raise InputError(f"not a tokenizer.json the tokenizers library can load: {e}", str(path)) from None
    if not isinstance(tokenizer.decoder, decoders.ByteLevel):
        return TokenizersDetokenizer(tokenizer)
    special = {i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special}
    size = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1
    table = []
    for i in range(size):
        token = tokenizer.id_to_token(i)
        table.append(b"" if token is None or i in special else byte_level_bytes(token))
    return ByteTableDetokenizer(table)


def tokenizer_file(path: str | Path, settings: Settings, field: str) -> Path:
    """A tokenizer file a spec names (in its `field`): inside the input roots, a file, not absurdly large (checked
    before a byte is read)."""
    resolved = check_input_path(path, settings)
    if not resolved.is_file():
        raise InputError("no such tokenizer file", str(path))
    size = resolved.stat().st_size
    if size > MAX_TOKENIZER_BYTES:
        raise InputError(
            f"{field} names a {size / 2**20:,.0f} MiB file; a tokenizer file may be at most "
            f"{MAX_TOKENIZER_BYTES >> 20} MiB",
            str(path),
        )
    return resolved


def load_detokenizer(spec: QwenTokenizerSpec | HFTokenizerSpec, settings: Settings) -> Detokenizer:
    path = tokenizer_file(spec.path, settings, "tokenizer.path")
    if spec.type == "qwen":
        return ByteTableDetokenizer(qwen_token_bytes(path))
    return load_hf(path)
