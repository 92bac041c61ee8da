"""Local files: JSONL (also .gz/.zst), parquet, Arrow IPC/feather, and plain text (one document per file).

Cursor: {"file": index into the sorted file list, "row": record index inside that file}; a JSONL batch adds "byte"
and "line", where its first line starts in the (decompressed) file and that line's number. JSONL is cut into blocks
of whole lines, each parsed by Arrow's JSON reader, so each batch's byte offset is known and a resume starts there
instead of parsing the file up to the cursor again: a plain file is seeked, a compressed one (gzip and zstd streams
cannot seek) decompressed up to it unparsed. A JSONL document's position is its line number (blank lines are no
records but count as lines), found per block from the newlines in its bytes; a parquet or Arrow document's is its
row. When Arrow rejects a block, the file continues through Python's json line by line from the first row not yet
yielded, so a malformed line is reported as file:line (on_error="fail") or dropped and counted ("skip").
"""

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.json as pj
import pyarrow.parquet as pq

from openseek_nanochat.convert.prefetch import prefetch
from openseek_nanochat.convert.sources.base import Batch, file_fingerprint, run_of
from openseek_nanochat.convert.sources.text import check_columns, needed_columns, select_text
from openseek_nanochat.convert.spec import FilesSource
from openseek_nanochat.errors import InputError
from openseek_nanochat.paths import expand_input_globs
from openseek_nanochat.settings import Settings

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
CODECS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd", ".bz2": "bz2"}
COMPRESSED_SUFFIXES = tuple(CODECS)
PARQUET_SUFFIXES = (".parquet", ".pq")
ARROW_SUFFIXES = (".arrow", ".feather", ".ipc")
TEXT_SUFFIXES = (".txt", ".md", ".text")

JSON_BLOCK_BYTES = 8 << 20  # a batch of JSONL: whole lines, read at once
JSON_PARSE_BYTES = 1 << 20  # Arrow parses a batch in pieces this big, on all cores
ROWS_PER_BATCH = 8192  # parquet/arrow/python-JSON batch size
TEXT_FILES_PER_BATCH = 256
PEEK_BYTES = 1 << 20


def detect_format(path: Path) -> str:
    name = path.name.lower()
    for suffix in COMPRESSED_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if name.endswith(ARROW_SUFFIXES):
        return "arrow"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    raise InputError('cannot tell the format from the file name; set "format" on the source', str(path))


def _line_blocks(stream: pa.NativeFile, offset: int) -> Iterator[tuple[int, pa.Buffer]]:
    """(offset, block): whole lines, about JSON_BLOCK_BYTES at a time (a longer line is a block of its own)."""
    if stream.seekable():
        yield from _line_blocks_seeking(stream, offset)
        return
    carry = b""
    while True:
        data = stream.read(JSON_BLOCK_BYTES)
        if not data:
            if carry.strip():
                yield offset, pa.py_buffer(carry)
            return
        data = carry + data if carry else data
        cut = data.rfind(b"\n") + 1
        if cut:
            yield offset, pa.py_buffer(data[:cut])
            offset += cut
        carry = data[cut:]


def _line_blocks_seeking(raw: pa.NativeFile, offset: int) -> Iterator[tuple[int, pa.Buffer]]:
    """_line_blocks on a plain file, without copying: each block ends at its last newline, the next starts there."""
    size = JSON_BLOCK_BYTES
    while True:
        raw.seek(offset)
        block = raw.read_buffer(size)
        if len(block) < size:  # the end of the file
            if len(block) and np.frombuffer(block, np.uint8).max(initial=0) > 32:  # not only blank lines
                yield offset, block
            return
        newlines = np.flatnonzero(np.frombuffer(block, np.uint8)[-min(size, 1 << 16) :] == 10)
        if not len(newlines):
            newlines = np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
            if not len(newlines):
                size *= 2  # one line longer than the block: read more
                continue
            cut = int(newlines[-1]) + 1
        else:
            cut = len(block) - min(size, 1 << 16) + int(newlines[-1]) + 1
        yield offset, block.slice(0, cut)
        offset += cut
        size = JSON_BLOCK_BYTES


def _record_lines(block: pa.Buffer, first_line: int) -> tuple[np.ndarray, int]:
    """(the line number of each record in `block`, the number of the line after it): a record is a line with a byte
    other than JSON whitespace, as Arrow's reader counts them. One pass in numpy, no Python per line."""
    data = np.frombuffer(block, np.uint8)
    newlines = np.flatnonzero(data == 10)
    starts = np.concatenate(([0], newlines + 1))
    starts = starts[starts < len(data)]
    if not len(starts):
        return np.zeros(0, np.int64), first_line + len(newlines)
    records = np.flatnonzero(np.maximum.reduceat(data, starts) > 32)  # tab, LF, CR and space are all <= 32
    return first_line + records.astype(np.int64), first_line + len(newlines)


def _skip_to(stream: pa.NativeFile, raw: pa.NativeFile, offset: int, path: Path) -> None:
    """Move `stream` to decompressed byte `offset`: a seek on a plain file, unparsed reading on a compressed one."""
    if not offset:
        return
    if stream is raw:
        if offset > raw.size():
            raise InputError(f"the resume point (byte {offset}) is past the end: the file changed", str(path))
        raw.seek(offset)
        return
    left = offset
    while left:
        skipped = len(stream.read(min(left, JSON_BLOCK_BYTES)))
        if not skipped:
            raise InputError(f"the resume point (byte {offset}) is past the end: the file changed", str(path))
        left -= skipped


def _open_stream(path: Path) -> tuple[pa.NativeFile, pa.NativeFile]:
    """(the file's decompressed bytes, the file itself): the file's position measures progress."""
    try:
        raw = pa.OSFile(str(path))
        lower = path.name.lower()
        codec = next((c for suffix, c in CODECS.items() if lower.endswith(suffix)), None)
        return (pa.CompressedInputStream(raw, codec) if codec else raw), raw
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"cannot open: {e}", str(path)) from None


class FilesTextSource:
    def __init__(self, spec: FilesSource, settings: Settings, on_error: str = "fail", name: str | None = None):
        self.spec = spec
        self.weight = spec.weight
        self.on_error = on_error
        self.files = expand_input_globs(spec.paths, settings)
        self.formats = [spec.format if spec.format != "auto" else detect_format(p) for p in self.files]
        self.name = name or (
            str(self.files[0]) if len(self.files) == 1 else f"{self.files[0].parent}/ ({len(self.files)} files)"
        )
        self.total_bytes = sum(p.stat().st_size for p in self.files) or 1
        self._bytes_before = [0]
        for p in self.files:
            self._bytes_before.append(self._bytes_before[-1] + p.stat().st_size)

    # -- checks -------------------------------------------------------------------------------------------------
    def check(self) -> None:
        for path, fmt in zip(self.files, self.formats):
            if fmt != "text":
                check_columns(self._columns(path, fmt), self.spec, str(path))

    def _columns(self, path: Path, fmt: str) -> list[str]:
        try:
            if fmt == "parquet":
                return pq.ParquetFile(path).schema_arrow.names
            if fmt == "arrow":
                return self._open_ipc(path).schema.names
            return self._peek_json_schema(path).names
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"cannot read as {fmt}: {e}", str(path)) from None

    def _peek_json_schema(self, path: Path) -> pa.Schema:
        """The schema of the first complete lines of a JSONL file (a malformed first line is reported by line)."""
        stream, _ = _open_stream(path)
        with stream:
            head = stream.read(PEEK_BYTES)
        if len(head) == PEEK_BYTES and b"\n" in head:
            head = head[: head.rindex(b"\n") + 1]
        if not head.strip():
            return pa.schema([])
        try:
            return pj.read_json(io.BytesIO(head)).schema
        except pa.ArrowInvalid:
            return self._python_head_schema(path, head)

    def _python_head_schema(self, path: Path, head: bytes) -> pa.Schema:
        """Arrow rejected the first lines: parse them one by one, to name a bad line or infer around it."""
        records = []
        for line_number, line in enumerate(head.decode("utf-8", errors="replace").splitlines(), 1):
            if line.strip() and (record := self._parse_line(line, line_number, path, None)) is not None:
                records.append(record)
        try:
            return pa.Table.from_pylist(records).schema
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # types vary between lines: the reader renders them as text
            return pa.schema([pa.field(name, pa.string()) for name in dict.fromkeys(k for r in records for k in r)])

    # -- reading ------------------------------------------------------------------------------------------------
    def fingerprint(self) -> list[dict]:
        return [file_fingerprint(p) for p in self.files]

    def provenance_items(self) -> list[dict]:
        position = {"jsonl": "line", "parquet": "row", "arrow": "row", "text": "row"}  # a text file is one row
        return [{"file": str(p), "pos": position[fmt]} for p, fmt in zip(self.files, self.formats)]

    def read(self, cursor: dict | None = None) -> Iterator[Batch]:
        start_file, start_row = (cursor["file"], cursor["row"]) if cursor else (0, 0)
        # Cursors of JSONL batches; a resume seeks to the byte only where the cursor knows that line's number too.
        start_byte = cursor.get("byte") if cursor and "line" in cursor else None
        start_line = cursor.get("line") if start_byte is not None else None
        for index in range(start_file, len(self.files)):
            path, fmt = self.files[index], self.formats[index]
            row = start_row if index == start_file else 0
            if fmt == "jsonl":
                at = (start_byte, start_line) if index == start_file and start_byte is not None else None
                yield from self._read_jsonl(index, path, row, at)
                continue
            reader = {"parquet": self._read_parquet, "arrow": self._read_arrow, "text": self._read_text}[fmt]
            yield from reader(index, path, row)
            if fmt == "text":
                return  # text files are batched across files by _read_text itself

    def _batch(
        self,
        index: int,
        row: int,
        table,
        path: Path,
        skipped: dict | None = None,
        bytes_read: int | None = None,
        lines: np.ndarray | None = None,
    ) -> Batch:
        """A batch of rows of file `index` from `row`; progress counts `bytes_read` of it, or the whole file when
        unknown. Positions are the rows, or `lines` for JSONL."""
        texts = select_text(table, self.spec, str(path))
        done = self._bytes_before[index] + bytes_read if bytes_read is not None else self._bytes_before[index + 1]
        items, positions = run_of(index, row, len(texts))
        return Batch(
            cursor={"file": index, "row": row},
            texts=texts,
            skipped=skipped or {},
            progress=min(1.0, done / self.total_bytes),
            items=items,
            positions=positions if lines is None else lines,
        )

    def _read_parquet(self, index: int, path: Path, row: int) -> Iterator[Batch]:
        try:
            pf = pq.ParquetFile(path)
            check_columns(pf.schema_arrow.names, self.spec, str(path))
            # Start at the row group holding `row`, then cut the rows before it.
            group, first = 0, 0
            while group < pf.num_row_groups and first + pf.metadata.row_group(group).num_rows <= row:
                first += pf.metadata.row_group(group).num_rows
                group += 1
            groups = list(range(group, pf.num_row_groups))
            done = first
            for record_batch in pf.iter_batches(ROWS_PER_BATCH, row_groups=groups, columns=needed_columns(self.spec)):
                if done + record_batch.num_rows <= row:
                    done += record_batch.num_rows
                    continue
                cut = max(0, row - done)
                record_batch = record_batch.slice(cut)
                yield self._batch(index, done + cut, record_batch, path)
                done += cut + record_batch.num_rows
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"cannot read parquet: {e}", str(path)) from None

    def _open_ipc(self, path: Path):
        try:
            return ipc.open_file(pa.memory_map(str(path)))
        except pa.ArrowInvalid:
            return ipc.open_stream(pa.memory_map(str(path)))

    def _read_arrow(self, index: int, path: Path, row: int) -> Iterator[Batch]:
        try:
            reader = self._open_ipc(path)
            check_columns(reader.schema.names, self.spec, str(path))
            batches = (
                (reader.get_batch(i) for i in range(reader.num_record_batches))
                if isinstance(reader, ipc.RecordBatchFileReader)
                else iter(reader)
            )
            done = 0
            for record_batch in batches:
                if done + record_batch.num_rows <= row:
                    done += record_batch.num_rows
                    continue
                cut = max(0, row - done)
                for offset in range(cut, record_batch.num_rows, ROWS_PER_BATCH):
                    yield self._batch(index, done + offset, record_batch.slice(offset, ROWS_PER_BATCH), path)
                done += record_batch.num_rows
        except (OSError, pa.ArrowException) as e:
            raise InputError(f"cannot read Arrow IPC: {e}", str(path)) from None

    def _read_text(self, index: int, path: Path, row: int) -> Iterator[Batch]:
        """Plain text: each file is one document; files are batched together (cursor row is always 0)."""
        for first in range(index, len(self.files), TEXT_FILES_PER_BATCH):
            texts, skipped, unreadable = [], {}, set()
            for i in range(first, min(first + TEXT_FILES_PER_BATCH, len(self.files))):
                try:
                    texts.append(self.files[i].read_bytes().decode("utf-8"))
                except UnicodeDecodeError as e:
                    if self.on_error == "fail":
                        raise InputError(f"not valid UTF-8 (byte {e.start}): {e.reason}", str(self.files[i])) from None
                    skipped["invalid_utf8"] = skipped.get("invalid_utf8", 0) + 1
                    unreadable.add(i)
                except OSError as e:
                    raise InputError(f"cannot read: {e.strerror}", str(self.files[i])) from None
            end = min(first + TEXT_FILES_PER_BATCH, len(self.files))
            read = np.array([i for i in range(first, end) if i not in unreadable], np.int32)
            batch = Batch(
                cursor={"file": first, "row": 0},
                texts=pa.array(texts, pa.string()),
                skipped=skipped,
                items=read,
                positions=np.zeros(len(read), np.int64),
            )
            batch.progress = self._bytes_before[end] / self.total_bytes
            yield batch

    # -- JSONL --------------------------------------------------------------------------------------------------
    def _json_schema(self, path: Path) -> pa.Schema:
        """Explicit types for the needed columns only, so unrelated columns can't fail a block by changing type."""
        peeked = self._peek_json_schema(path)
        check_columns(peeked.names, self.spec, str(path))
        return pa.schema(
            [
                peeked.field(c) if not pa.types.is_null(peeked.field(c).type) else pa.field(c, pa.string())
                for c in needed_columns(self.spec)
            ]
        )

    def _read_jsonl(self, index: int, path: Path, row: int, at: tuple[int, int] | None = None) -> Iterator[Batch]:
        """Rows from `row` on; `at`, when known, is (byte, line number) where row `row` starts: reading begins there."""
        schema = self._json_schema(path)
        read_options = pj.ReadOptions(block_size=JSON_PARSE_BYTES, use_threads=True)
        parse_options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
        done, (offset, line) = (row, at) if at is not None else (0, (0, 1))
        stream, raw = _open_stream(path)
        blocks = None
        try:
            _skip_to(stream, raw, offset, path)
            blocks = prefetch(_line_blocks(stream, offset))  # the next block is read while this one is parsed
            for block_offset, block in blocks:
                table = pj.read_json(pa.BufferReader(block), read_options=read_options, parse_options=parse_options)
                lines, next_line = _record_lines(block, line)
                if len(lines) != table.num_rows:  # Arrow counted records otherwise: let Python's json count them
                    raise pa.ArrowInvalid("records and lines disagree")
                if done + table.num_rows > row:
                    cut = max(0, row - done)
                    batch = self._batch(
                        index, done + cut, table.slice(cut), path, bytes_read=raw.tell(), lines=lines[cut:]
                    )
                    if cut == 0:
                        batch.cursor.update(byte=block_offset, line=line)
                    yield batch
                done, line = done + table.num_rows, next_line
            return
        except pa.ArrowInvalid:
            pass  # a malformed line or a type that changed: continue line by line from the first row not yet yielded
        finally:
            if blocks is not None:
                blocks.close()  # its thread is done with the stream before the stream closes
            stream.close()
        yield from self._read_jsonl_python(index, path, max(row, done), schema)

    def _iter_json_records(self, path: Path):
        """(line number, raw line) for every non-blank line, as Arrow's reader counts records."""
        stream, _ = _open_stream(path)
        with stream:
            for line_number, line in enumerate(io.TextIOWrapper(stream, encoding="utf-8", errors="strict"), 1):
                if line.strip():
                    yield line_number, line

    def _parse_record(self, line: str, schema: pa.Schema | None) -> dict:
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError(f"expected a JSON object, got {type(record).__name__}")
        return record if schema is None else {name: record.get(name) for name in schema.names}

    def _parse_line(self, line: str, line_number: int, path: Path, schema: pa.Schema | None) -> dict | None:
        """The line's record; None for a malformed line under on_error="skip", an error naming file:line otherwise."""
        try:
            return self._parse_record(line, schema)
        except ValueError as e:
            if self.on_error == "fail":
                raise InputError(f"malformed JSON: {e}", f"{path}:{line_number}") from None
            return None

    def _read_jsonl_python(self, index: int, path: Path, row: int, schema: pa.Schema) -> Iterator[Batch]:
        records, lines, skipped, batch_row, record_index = [], [], {}, row, -1
        try:
            for line_number, line in self._iter_json_records(path):
                record_index += 1
                if record_index < row:
                    continue
                record = self._parse_line(line, line_number, path, schema)
                if record is None:
                    skipped["malformed"] = skipped.get("malformed", 0) + 1
                records.append(record)
                lines.append(line_number)
                if len(records) == ROWS_PER_BATCH:
                    yield self._python_batch(index, batch_row, records, lines, skipped, schema, path)
                    batch_row += len(records)
                    records, lines, skipped = [], [], {}
        except UnicodeDecodeError as e:
            raise InputError(f"not valid UTF-8: {e.reason}", str(path)) from None
        if records or skipped:
            yield self._python_batch(index, batch_row, records, lines, skipped, schema, path)

    def _python_batch(self, index, row, records, lines, skipped, schema, path) -> Batch:
        kept = [r for r in records if r is not None]
        kept_lines = np.array([n for r, n in zip(records, lines) if r is not None], np.int64)
        columns = {}
        for field in schema:
            values = [r[field.name] for r in kept]
            try:
                columns[field.name] = pa.array(values, field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                # The column's type varies from line to line: render every value as text rather than guess.
                columns[field.name] = pa.array(
                    [v if v is None or isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in values],
                    pa.string(),
                )
        table = pa.table(columns) if kept else schema.empty_table()
        return self._batch(index, row, table, path, skipped, lines=kept_lines)
