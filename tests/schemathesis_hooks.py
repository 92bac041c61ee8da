"""Schemathesis hooks for tests/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS): what a schema never
generates but a client may send.

- Numbers JSON can write and no schema allows: infinity and NaN (written `Infinity`, `NaN`, as Python's json and
  JavaScript spell them), `1e400`, integers of 30 to 10,000 digits. One leaf of a body, or one query parameter, is
  replaced by one of them.
- Odd values of the headers the service reads: Host, Origin, Last-Event-ID, Idempotency-Key; one per request at most,
  so that most requests still get past the Host check.
"""

import json
import math
import os

import schemathesis
from hypothesis import strategies as st
from schemathesis.transport.serialization import serialize_json


class Literal(str):
    """A number written into the JSON as is: json.dumps cannot write 1e400 or an integer of 10,000 digits."""


EDGE_NUMBERS = [math.inf, -math.inf, math.nan, Literal("1e400"), Literal("-1e400"), Literal("9" * 10_000),
                Literal("-" + "9" * 5000), 10**30, -(2**63), 2**64, 1e308, 5e-324, -0.0]
EDGE_QUERY_VALUES = ["NaN", "Infinity", "-Infinity", "1e400", "9" * 10_000, "-0", "0x10", "²"]

OWN_ORIGIN = os.environ.get("HOOKS_SERVER_ORIGIN", "http://127.0.0.1")
ODD_HEADERS = {
    "Host": ["evil.example", "localhost:99999", "[::1", "[zz]:80", "127.0.0.1:abc", "a" * 300, "²", "evil@127.0.0.1",
             "LOCALHOST", "127.0.0.1.evil.example"],
    "Origin": ["null", "http://evil.example", "http://[::1", "file://", "http://127.0.0.1:99999", "²", OWN_ORIGIN,
               OWN_ORIGIN.replace("http:", "https:"), f"{OWN_ORIGIN}.evil.example"],
    "Last-Event-ID": ["²", "-1", "1e3", "9" * 20, "9" * 19, "9223372036854775808", "0", "0x10", "1 2", "9" * 400],
    "Idempotency-Key": ["²", "a" * 255, "a" * 256, "key\x7f", "ÿ" * 100, "0"],
}


def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))
    else:
        yield path


def _replaced(value, path, new):
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replaced(value[path[0]], path[1:], new)
    return copy


@schemathesis.hook
def flatmap_body(context, body):
    paths = list(_leaves(body))
    if not paths or not isinstance(body, (dict, list)):
        return st.just(body)
    edged = st.tuples(st.sampled_from(paths), st.sampled_from(EDGE_NUMBERS))
    return st.one_of(st.just(body), edged.map(lambda choice: _replaced(body, *choice)))


@schemathesis.hook
def flatmap_query(context, query):
    if not query:
        return st.just(query)
    edged = st.tuples(st.sampled_from(sorted(query)), st.sampled_from(EDGE_QUERY_VALUES))
    return st.one_of(st.just(query), edged.map(lambda choice: {**query, choice[0]: choice[1]}))


@schemathesis.hook
def flatmap_case(context, case):
    def with_header(choice):
        if choice is not None:
            case.headers = {**(case.headers or {}), choice[0]: choice[1]}
        return case

    odd = st.sampled_from(sorted(ODD_HEADERS)).flatmap(lambda name: st.tuples(st.just(name),
                                                                              st.sampled_from(ODD_HEADERS[name])))
    return st.one_of(st.just(None), st.just(None), odd).map(with_header)


def _has_edges(value) -> bool:
    if isinstance(value, dict):
        return any(_has_edges(item) for item in value.values())
    if isinstance(value, list):
        return any(_has_edges(item) for item in value)
    return isinstance(value, Literal) or (isinstance(value, float) and not math.isfinite(value))


def dumps(value) -> str:
    """JSON with Infinity/NaN as Python writes them and each Literal as its text."""
    literals: list[str] = []

    def mark(item):
        if isinstance(item, Literal):
            literals.append(str(item))
            return f"\0literal{len(literals) - 1}\0"
        if isinstance(item, dict):
            return {key: mark(inner) for key, inner in item.items()}
        if isinstance(item, list):
            return [mark(inner) for inner in item]
        return item

    text = json.dumps(mark(value))
    for index, literal in enumerate(literals):
        text = text.replace(json.dumps(f"\0literal{index}\0"), literal)
    return text


@schemathesis.serializer("application/json")
def json_with_edge_numbers(context, value):
    if _has_edges(value):
        return {"data": dumps(value).encode()}
    return serialize_json(value)  # schemathesis' own: requests refuses NaN and infinity
