"""Schemathesis hooks for tests/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS): what a schema never
generates but a client may send.

- Numbers JSON can write and no schema allows: infinity and NaN (written `Infinity`, `NaN`, as Python's json and
  JavaScript spell them), `1e400`, integers of 30 to 10,000 digits. One leaf of a body, or one query parameter, is
  replaced by one of them.
- Odd values of the headers the service reads: Host, Origin, Last-Event-ID, Idempotency-Key; one per request at most,
  so that most requests still get past the Host check.

Only the fuzzing phase applies hooks; the other phases send what the schema allows. What was sent is counted into
the file HOOKS_REPORT names, so the test can tell that the odd values did reach the server.
"""

import atexit
import json
import math
import os
import re
from collections import Counter

import schemathesis
from hypothesis import strategies as st
from schemathesis.transport.serialization import serialize_json


class Literal(str):
    """A number written into the JSON as is: json.dumps cannot write 1e400 or an integer of 10,000 digits."""


EDGE_NUMBERS = [
    math.inf,
    -math.inf,
    math.nan,
    Literal("1e400"),
    Literal("-1e400"),
    Literal("9" * 10_000),
    Literal("-" + "9" * 5000),
    10**30,
    -(2**63),
    2**64,
    1e308,
    5e-324,
    -0.0,
]
EDGE_QUERY_VALUES = ["NaN", "Infinity", "-Infinity", "1e400", "9" * 10_000, "-0", "0x10", "²"]

OWN_ORIGIN = os.environ.get("HOOKS_SERVER_ORIGIN", "http://127.0.0.1")
ODD_HEADERS = {
    "Host": [
        "evil.example",
        "localhost:99999",
        "[::1",
        "[zz]:80",
        "127.0.0.1:abc",
        "a" * 300,
        "²",
        "evil@127.0.0.1",
        "LOCALHOST",
        "127.0.0.1.evil.example",
    ],
    "Origin": [
        "null",
        "http://evil.example",
        "http://[::1",
        "file://",
        "http://127.0.0.1:99999",
        "²",
        OWN_ORIGIN,
        OWN_ORIGIN.replace("http:", "https:"),
        f"{OWN_ORIGIN}.evil.example",
    ],
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
    paths = list(_leaves(body)) if isinstance(body, (dict, list)) else []
    if not paths:
        return st.just(body)

    def with_edges(choices):
        edged = body
        for path, number in choices:
            edged = _replaced(edged, path, number)
        return edged

    # Every fuzzed body carries one to three of them: bodies are few (two operations take one).
    edge = st.tuples(st.sampled_from(paths), st.sampled_from(EDGE_NUMBERS))
    return st.lists(edge, min_size=1, max_size=3).map(with_edges)


@schemathesis.hook
def flatmap_query(context, query):
    if not query:
        return st.just(query)
    edged = st.tuples(st.sampled_from(sorted(query)), st.sampled_from(EDGE_QUERY_VALUES))
    return st.one_of(st.just(query), edged.map(lambda choice: {**query, choice[0]: choice[1]}))


def _odd_header(names: list[str]) -> st.SearchStrategy:
    return st.sampled_from(names).flatmap(lambda name: st.tuples(st.just(name), st.sampled_from(ODD_HEADERS[name])))


@schemathesis.hook
def flatmap_case(context, case):
    """Half the requests get an odd value of a header their operation reads (Last-Event-ID of the event stream,
    Idempotency-Key of a submit) or of Host or Origin (Host only rarely: it stops a request at the door)."""
    declared = {parameter.name.lower() for parameter in case.operation.headers}
    own = [name for name in ("Last-Event-ID", "Idempotency-Key") if name.lower() in declared]
    choices = st.one_of(st.just(None), _odd_header(own or ["Origin"]), _odd_header(["Host", "Origin"]))

    def with_header(choice):
        if choice is not None:
            case.headers = {**(case.headers or {}), choice[0]: choice[1]}
        return case

    return choices.map(with_header)


def dumps(value) -> str:
    """JSON with infinity and NaN as Python writes them (`Infinity`, `NaN`) and each Literal as its text."""
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
def json_with_edge_numbers(context, value) -> bytes:
    """Replaces schemathesis' own, which hands the value to requests, and requests refuses NaN and infinity."""
    serialized = serialize_json(value)  # what schemathesis sends for raw bytes and for `null`
    return serialized["data"] if "data" in serialized else dumps(serialized["json"]).encode()


SENT: Counter = Counter()
_EDGE_IN_BODY = re.compile(rb"Infinity|NaN|1e400|[0-9]{30}")


@schemathesis.hook
def after_call(context, case, response):
    body = response.request.body or b""
    body = body.encode() if isinstance(body, str) else body
    SENT["edge_bodies"] += bool(_EDGE_IN_BODY.search(body))
    headers = {name.lower(): value for name, value in (case.headers or {}).items()}
    for name, values in ODD_HEADERS.items():
        SENT[f"odd {name}"] += headers.get(name.lower()) in values
    SENT[f"status {response.status_code}"] += 1


if os.environ.get("HOOKS_REPORT"):
    atexit.register(lambda: open(os.environ["HOOKS_REPORT"], "w").write(json.dumps(SENT)))
