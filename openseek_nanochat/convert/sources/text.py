"""Turning a table's row into a document: one column, or a template over several, all in Arrow compute.

Templates render lists one item per line, numbers and booleans as text, and missing values as ''. Structs and other
nested values are rendered as JSON, the only case that goes through Python per row.
"""

import json
import string

import pyarrow as pa
import pyarrow.compute as pc

from openseek_nanochat.convert.spec import TextSelection, template_fields
from openseek_nanochat.errors import InputError


def needed_columns(selection: TextSelection) -> list[str]:
    if selection.text_template is not None:
        return list(dict.fromkeys(template_fields(selection.text_template)))
    return [selection.text_column]


def check_columns(available: list[str], selection: TextSelection, where: str) -> None:
    missing = [c for c in needed_columns(selection) if c not in available]
    if missing:
        what = "text_template uses" if selection.text_template is not None else "text_column is"
        raise InputError(
            f"{what} {', '.join(map(repr, missing))}, but the data has no such column; "
            f"its columns are: {', '.join(map(repr, available)) or '(none)'}",
            where,
        )


def _as_text(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    t = column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return column
    if pa.types.is_string_view(t):
        return column.cast(pa.string())
    if pa.types.is_null(t):
        return pa.nulls(len(column), pa.string())
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        items = _as_text(pc.list_flatten(column))
        rebuilt = type(column).from_arrays(column.offsets, items) if not pa.types.is_fixed_size_list(t) else None
        if rebuilt is None:  # fixed-size lists have no offsets; rebuild as a plain list
            rebuilt = pa.ListArray.from_arrays(pa.array(range(0, len(items) + 1, t.list_size), pa.int32()), items)
        joined = pc.binary_join(rebuilt, "\n")
        return pc.if_else(column.is_null(), pa.scalar(None, joined.type), joined)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_decimal(t):
        return column.cast(pa.string())
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return column.cast(pa.string())  # validates UTF-8
    # Structs, maps, dates: JSON is unambiguous and readable. Rare, so Python per row is acceptable here.
    return pa.array(
        [None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in column.to_pylist()], pa.string()
    )


def select_text(table: pa.Table | pa.RecordBatch, selection: TextSelection, where: str) -> pa.Array:
    """One string per row: the document text (null where the row has none)."""
    check_columns(table.schema.names, selection, where)
    try:
        if selection.text_template is None:
            return _as_text(table.column(selection.text_column))
        pieces = []
        for literal, field, _, _ in string.Formatter().parse(selection.text_template):
            if literal:
                pieces.append(pa.scalar(literal, pa.string()))
            if field is not None:
                pieces.append(pc.fill_null(_as_text(table.column(field)).cast(pa.string()), ""))
        # binary_join_element_wise takes the separator last; an empty one concatenates.
        return pc.binary_join_element_wise(*pieces, "") if len(pieces) > 1 else pieces[0]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise InputError(f"cannot render text from columns {needed_columns(selection)}: {e}", where) from None
