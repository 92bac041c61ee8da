"""The MMIDIDX reader: megatron-core's own files, layouts Megatron allows, and every malformed file it must refuse."""

import json
import struct

import numpy as np
import pytest

from openseek_nanochat.convert.sources.megatron_index import HEADER, MegatronIndex, write_megatron
from openseek_nanochat.errors import InputError

BEGIN, END = 151849, 151850  # <|extra_203|>, <|extra_204|>: how OpenSeek wraps each document


def test_reads_parts_written_by_megatron_core(shared_data):
    prefix = shared_data / "megatron" / "math500_text_document"
    index = MegatronIndex(prefix)
    documents = (shared_data / "megatron" / "math500_text_document.expected.jsonl").read_text().splitlines()
    assert index.dtype == np.int32
    assert index.num_documents == len(documents) == 500
    tokens, offsets = index.read_documents(0, index.num_documents)
    assert offsets[0] == 0 and offsets[-1] == len(tokens) == index.bin_size // 4
    assert (tokens[offsets[:-1]] == BEGIN).all() and (tokens[offsets[1:] - 1] == END).all()
    # A run in the middle is the same slice of the whole.
    middle, middle_offsets = index.read_documents(100, 103)
    assert middle.tolist() == tokens[offsets[100] : offsets[103]].tolist()
    assert (middle_offsets + offsets[100]).tolist() == offsets[100:104].tolist()
    assert json.loads(documents[0])["text"].startswith("Convert the point")


def test_writer_reproduces_megatron_core_byte_for_byte(shared_data, tmp_path):
    original = shared_data / "megatron" / "cmath_text_document"
    index = MegatronIndex(original)
    tokens, offsets = index.read_documents(0, index.num_documents)
    write_megatron(tmp_path / "copy", [[tokens[a:b]] for a, b in zip(offsets[:-1], offsets[1:])])
    for ext in (".idx", ".bin"):
        assert (tmp_path / f"copy{ext}").read_bytes() == original.with_suffix(ext).read_bytes()


def documents_of(index: MegatronIndex, start: int, stop: int) -> list[list[int]]:
    tokens, offsets = index.read_documents(start, stop)
    return [tokens[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16])
def test_documents_are_runs_of_sequences(tmp_path, dtype):
    documents = [[[1, 2], [3], [4, 5, 6]], [[7]], [], [[], [8]], [[9, 10]]]
    write_megatron(tmp_path / "p", documents, dtype)
    index = MegatronIndex(tmp_path / "p")
    assert index.dtype == np.dtype(dtype)
    assert (index.num_documents, index.num_sequences) == (5, 7)
    assert documents_of(index, 0, 5) == [[1, 2, 3, 4, 5, 6], [7], [], [8], [9, 10]]
    assert documents_of(index, 2, 4) == [[], [8]]
    assert documents_of(index, 3, 3) == []


def test_an_empty_part_has_no_documents(tmp_path):
    write_megatron(tmp_path / "p", [])
    index = MegatronIndex(tmp_path / "p")
    assert index.num_documents == 0 and index.read_documents(0, 0)[0].tolist() == []


def rewrite(path, offset: int, fmt: str, *values) -> None:
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, *values)
    path.write_bytes(bytes(data))


def test_sequences_need_not_be_stored_back_to_back(tmp_path):
    write_megatron(tmp_path / "p", [[[1, 2, 3]], [[4, 5]], [[6]]])
    # Store the sequences in reverse order in .bin; the pointers say where each one is.
    (tmp_path / "p.bin").write_bytes(np.array([6, 4, 5, 1, 2, 3], np.int32).tobytes())
    rewrite(tmp_path / "p.idx", HEADER.size + 3 * 4, "<3q", 12, 4, 0)
    assert documents_of(MegatronIndex(tmp_path / "p"), 0, 3) == [[1, 2, 3], [4, 5], [6]]
    assert documents_of(MegatronIndex(tmp_path / "p"), 1, 3) == [[4, 5], [6]]


@pytest.fixture
def part(tmp_path):
    """A valid part (3 documents, 4 sequences, int32) to break in one way per test."""
    write_megatron(tmp_path / "p", [[[1, 2]], [[3], [4, 5]], [[6]]])
    return tmp_path / "p"


def error(prefix) -> str:
    with pytest.raises(InputError) as e:
        MegatronIndex(prefix)
    return str(e.value)


def test_legacy_index_format(part):
    rewrite(part.with_suffix(".idx"), 0, "9s", b"TNTIDX\x00\x00")
    assert error(part) == (
        f"{part}.idx: legacy Megatron index format (TNTIDX); only megatron-core's MMIDIDX format "
        "is supported: preprocess the data again with megatron-core"
    )


def test_wrong_magic(part):
    rewrite(part.with_suffix(".idx"), 0, "9s", b"PK\x03\x04zip!!")
    assert error(part) == (
        f"{part}.idx: not a Megatron index: the file starts with b'PK\\x03\\x04zip!!', expected b'MMIDIDX\\x00\\x00'"
    )


def test_wrong_version(part):
    rewrite(part.with_suffix(".idx"), 9, "<Q", 2)
    assert error(part) == f"{part}.idx: unsupported index version 2; only version 1 is known"


def test_unknown_dtype(part):
    rewrite(part.with_suffix(".idx"), 17, "<B", 9)
    assert error(part) == (
        f"{part}.idx: unknown dtype code 9 (known: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, "
        "6 float64, 7 float32, 8 uint16)"
    )


def test_truncated_header(part):
    idx = part.with_suffix(".idx")
    idx.write_bytes(idx.read_bytes()[:20])
    assert error(part) == f"{idx}: truncated .idx: 20 bytes, less than the 34-byte header"


def test_truncated_index_arrays(part):
    idx = part.with_suffix(".idx")
    idx.write_bytes(idx.read_bytes()[:-8])
    assert error(part) == (
        f"{idx}: truncated .idx: the header announces 4 sequences and 4 document index entries "
        "(114 bytes), the file has 106 bytes"
    )


def test_index_longer_than_its_header_says(part):
    idx = part.with_suffix(".idx")
    idx.write_bytes(idx.read_bytes() + b"\x00" * 4)  # e.g. the per-sequence modes of a multimodal index
    assert error(part) == (
        f"{idx}: inconsistent .idx: the header announces 4 sequences and 4 document index "
        "entries (114 bytes), the file has 4 bytes more"
    )


def test_empty_document_index(tmp_path):
    (tmp_path / "p.bin").write_bytes(b"")
    (tmp_path / "p.idx").write_bytes(HEADER.pack(b"MMIDIDX\x00\x00", 1, 4, 0, 0))
    assert error(tmp_path / "p") == (
        f"{tmp_path}/p.idx: inconsistent .idx: the document index is empty; it must at least hold 0"
    )


def test_document_index_must_cover_all_sequences(part):
    rewrite(part.with_suffix(".idx"), HEADER.size + 12 * 4 + 8 * 3, "<q", 3)
    assert error(part) == (
        f"{part}.idx: inconsistent .idx: the document index runs from 0 to 3, expected 0 to 4 (the sequence count)"
    )


def test_document_index_must_not_decrease(part):
    rewrite(part.with_suffix(".idx"), HEADER.size + 12 * 4 + 8, "<q", 4)  # [0, 4, 3, 4]
    index = MegatronIndex(part)  # only both ends are checked on open
    with pytest.raises(InputError) as e:
        index.read_documents(0, 3)
    assert str(e.value) == f"{part}.idx: inconsistent .idx: the document index decreases at document 1"


def test_document_index_must_stay_within_the_sequences(part):
    rewrite(part.with_suffix(".idx"), HEADER.size + 12 * 4 + 16, "<q", 7)  # [0, 1, 7, 4]
    with pytest.raises(InputError) as e:
        MegatronIndex(part).read_documents(0, 2)  # the decrease after 7 lies beyond what this read looks at
    assert str(e.value) == f"{part}.idx: inconsistent .idx: documents 0..2 point outside the 4 sequences"


def test_negative_sequence_length(part):
    rewrite(part.with_suffix(".idx"), HEADER.size + 4, "<i", -1)
    with pytest.raises(InputError) as e:
        MegatronIndex(part).read_documents(0, 3)
    assert str(e.value) == f"{part}.idx: inconsistent .idx: negative sequence length in documents 0..2"


def test_truncated_bin(part):
    bin_path = part.with_suffix(".bin")
    bin_path.write_bytes(bin_path.read_bytes()[:-2])
    assert error(part) == f"{bin_path}: truncated .bin: the index needs at least 24 bytes, the file has 22"


def test_sequence_outside_bin(part):
    rewrite(part.with_suffix(".idx"), HEADER.size + 4 * 4 + 8, "<q", 1000)  # sequence 1 moved past the end
    with pytest.raises(InputError) as e:
        MegatronIndex(part).read_documents(1, 3)
    assert str(e.value) == f"{part}.bin: truncated .bin: sequence 1 lies at bytes 1000..1004, the file has 24"


def test_missing_files(part):
    part.with_suffix(".bin").unlink()
    assert error(part) == f"{part}.idx: the index has no data file beside it (p.bin is missing)"
    part.with_suffix(".idx").unlink()
    assert error(part) == f"{part}.idx: no such Megatron index file"
