"""Every tokenizer form a megatron source may name, loaded as a Detokenizer, with the files it read.

Forms: {"type": "qwen" | "hf", "path"} (detok.py), {"type": "tiktoken", "path"} and Megatron's own arguments
({"tokenizer_type": ..., "vocab_file", ...}, as a training config writes them). Byte-level tokenizers (GPT-2 BPE,
tiktoken, Qwen, byte-level HF) and SentencePiece all decode through ByteTableDetokenizer's single Arrow take:
a SentencePiece id is a fixed byte string too, once `▁` is a space and `<0xNN>` its byte; only the dummy-prefix space
at the start of each document needs undoing, which is one vectorized slice.
"""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from openseek_nanochat.convert.sources import detok
from openseek_nanochat.convert.sources.detok import ByteTableDetokenizer, Decoded, Detokenizer, byte_level_bytes
from openseek_nanochat.convert.spec import (
    HFTokenizerSpec,
    MegatronTokenizerSpec,
    QwenTokenizerSpec,
    TiktokenTokenizerSpec,
    TokenizerSpec,
)
from openseek_nanochat.errors import InputError
from openseek_nanochat.paths import check_input_path
from openseek_nanochat.settings import Settings

GPT2_END_OF_TEXT = "<|endoftext|>"  # Megatron's GPT2BPETokenizer appends it as EOD: a marker, not text
ANY_ID = 2**31 - 1  # a tiktoken ranks file says nothing of the specials past it: any non-negative id is one


class PastEndDetokenizer(ByteTableDetokenizer):
    """A tiktoken ranks file: ids 0..n-1 are its tokens, every id past them a special token that vanishes."""

    def __init__(self, token_bytes: list[bytes]):
        super().__init__([*token_bytes, b""])  # the last entry stands for every special id
        self.known = len(token_bytes)
        self.vocab_size = ANY_ID

    def decode(self, tokens: np.ndarray, offsets: np.ndarray) -> Decoded:
        return super().decode(np.minimum(tokens, self.known), offsets)


class SentencePieceDetokenizer(ByteTableDetokenizer):
    """A SentencePiece model as a byte table; the space SentencePiece adds before each text is taken off again.

    SentencePiece drops a leading `▁` of the first piece that yields text, when the model adds a dummy prefix (or
    removes extra whitespace); `strip` marks the ids that begin with one.
    """

    def __init__(self, path: Path):
        import sentencepiece

        try:
            sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (RuntimeError, OSError) as e:
            raise InputError(f"not a SentencePiece model: {e}", str(path)) from None
        table, strip = [], np.zeros(sp.get_piece_size(), bool)
        for i in range(sp.get_piece_size()):
            piece = sp.id_to_piece(i)
            if sp.is_control(i):
                table.append(b"")
            elif sp.is_byte(i):  # <0xNN>
                table.append(bytes([int(piece[3:5], 16)]))
            elif sp.is_unknown(i):
                table.append(sp.decode_ids([i]).encode())
            else:
                table.append(piece.replace("\u2581", " ").encode())
                strip[i] = piece.startswith("\u2581")
        super().__init__(table)
        first = int(np.argmax(strip)) if strip.any() else None
        self.strip = strip if first is not None and not sp.decode_ids([first]).startswith(" ") else None
        self.lengths = np.diff(np.frombuffer(self.table.buffers()[1], np.int64, len(table) + 1))

    def decode(self, tokens: np.ndarray, offsets: np.ndarray) -> Decoded:
        decoded = super().decode(tokens, offsets)
        if self.strip is None or not len(tokens):
            return decoded
        with_text = np.flatnonzero(self.lengths[tokens] > 0)  # the first of these in a document yields its start
        first = np.searchsorted(with_text, offsets[:-1])
        first_token = with_text[np.minimum(first, len(with_text) - 1)] if len(with_text) else offsets[:-1]
        has_text = (first < len(with_text)) & (first_token < offsets[1:])
        mask = has_text & self.strip[tokens[np.minimum(first_token, len(tokens) - 1)]]
        if not mask.any():
            return decoded
        texts = pc.if_else(pa.array(mask), pc.utf8_slice_codeunits(decoded.texts, 1), decoded.texts)
        return Decoded(texts, decoded.replacements)


def gpt2_detokenizer(vocab_file: Path) -> ByteTableDetokenizer:
    try:
        vocab = json.loads(vocab_file.read_bytes())
        if not isinstance(vocab, dict) or not all(isinstance(i, int) and i >= 0 for i in vocab.values()):
            raise ValueError("expected an object of token: id")
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"not a GPT-2 vocab.json: {e}", str(vocab_file)) from None
    table = [b""] * (max(vocab.values(), default=-1) + 1)
    for token, i in vocab.items():
        table[i] = b"" if token == GPT2_END_OF_TEXT else byte_level_bytes(token)
    return ByteTableDetokenizer(table)


def hf_tokenizer_json(model: str, settings: Settings) -> str:
    """HuggingFaceTokenizer's tokenizer_model: a tokenizer.json, or the folder holding one."""
    folder = check_input_path(model, settings)
    return str(Path(model).expanduser() / "tokenizer.json") if folder.is_dir() else model


def load_tokenizer(spec: TokenizerSpec, settings: Settings) -> tuple[Detokenizer, list[str]]:
    """The detokenizer a spec names, and the files it was read from (resolved; they join the fingerprint)."""
    if isinstance(spec, QwenTokenizerSpec | HFTokenizerSpec):
        return detok.load_detokenizer(spec, settings), [str(check_input_path(spec.path, settings))]
    if isinstance(spec, TiktokenTokenizerSpec):
        path = detok.tokenizer_file(spec.path, settings, "tokenizer.path")
        ranks = detok.tiktoken_ranks(path)
        return PastEndDetokenizer(ranks), [str(path)]
    assert isinstance(spec, MegatronTokenizerSpec)
    kind = spec.tokenizer_type
    if kind == "QwenTokenizerFS":
        return load_tokenizer(
            QwenTokenizerSpec(path=str(Path(spec.tokenizer_path).expanduser() / "qwen.tiktoken")), settings
        )
    if kind == "HuggingFaceTokenizer":
        return load_tokenizer(HFTokenizerSpec(path=hf_tokenizer_json(spec.tokenizer_model, settings)), settings)
    if kind == "GPT2BPETokenizer":
        vocab = detok.tokenizer_file(spec.vocab_file, settings, "tokenizer.vocab_file")
        merges = detok.tokenizer_file(
            spec.merge_file, settings, "tokenizer.merge_file"
        )  # not needed to decode; fingerprinted
        return gpt2_detokenizer(vocab), [str(vocab), str(merges)]
    model = detok.tokenizer_file(spec.tokenizer_model, settings, "tokenizer.tokenizer_model")  # the SentencePiece kinds
    return SentencePieceDetokenizer(model), [str(model)]
