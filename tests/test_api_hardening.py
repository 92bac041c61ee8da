"""Bad numbers, bad headers and web pages against the running service: each is a 4xx that says what is wrong.

- numbers JSON can write but no spec means (`1e400`, `NaN`, `-Infinity`, 10,000 digits, `seed: -1`, sizes past any
  use) are a 422 naming the field, never a 202 that spins or a 500 from echoing the value back;
- a `Last-Event-ID` that is not an event id is a 400;
- on the default loopback bind, a Host that is not a loopback name (DNS rebinding) is a 400, unless
  OPENSEEK_NANOCHAT_ALLOWED_HOSTS names it;
- without a token, a request that changes state from a page of another origin is a 403;
- with a token, exactly /healthz, the dashboard, the docs and their static files answer without it.
"""

import functools
import json
import math

import httpx
import pytest

from openseek_nanochat.settings import Settings

from app.api.errors import _jsonable
from app.api.origins import allowed_hosts

from serverutil import SHARED_DATA, start_server

TOKEN = "hardening-token"
GSM8K = str(SHARED_DATA / "jsonl" / "gsm8k.jsonl")

HOST_REFUSED = (
    "Host {host!r} is not served here: this server answers to localhost, 127.0.0.1, [::1]{more} (any "
    "port); add names with OPENSEEK_NANOCHAT_ALLOWED_HOSTS"
)
ORIGIN_REFUSED = (
    "{method} from another origin ({origin!r}) is refused: with no OPENSEEK_NANOCHAT_API_TOKEN, only "
    "pages of this server and clients that send no Origin (curl, scripts) may change jobs"
)
BAD_EVENT_ID = "Last-Event-ID must be the id of an event of this stream: a byte offset, 0 to 9223372036854775807"


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    """The default: no token, bound to 127.0.0.1, no worker (jobs stay queued)."""
    with start_server(tmp_path_factory.mktemp("open") / "data") as server:
        yield server


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("token") / "data", token=TOKEN) as server:
        yield server


def convert_spec(**fields) -> dict:
    return {"sources": [{"type": "files", "paths": [GSM8K], "text_column": "question"}], **fields}


def with_literal(spec: dict, path: tuple, literal: str) -> str:
    """`spec` as JSON with the value at `path` written as `literal`, which json.dumps cannot write (`1e400`)."""
    spec = json.loads(json.dumps(spec))
    target = spec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = "\0literal\0"
    return json.dumps(spec).replace(json.dumps("\0literal\0"), literal)


def strict_json(response: httpx.Response):
    """The body as JSON that any parser reads: no NaN or Infinity, which Python's json would accept."""

    def refuse(constant):
        raise AssertionError(f"the answer is not strict JSON: it holds {constant}")

    return json.loads(response.text, parse_constant=refuse)


TEN_THOUSAND_DIGITS = "9" * 10_000
WEIGHT = ("sources", 0, "weight")
MEGATRON = {
    "sources": [
        {
            "type": "megatron",
            "tokenizer": {"type": "qwen", "path": str(SHARED_DATA / "qwen.tiktoken")},
            "data_path": [1.0, str(SHARED_DATA / "megatron" / "x")],
        }
    ]
}
TRAIN = {"dataset": "no-such-job", "num_iterations": 10}

# (kind, spec, path to the value, the value as written, the field the 422 must name, what pydantic says, the echo).
# Before: 202 (and a job that spins at full CPU) for weight 1e400/Infinity and for every bound; 500 for NaN, infinite
# integers and the 10,000 digits' echo; the data_path and train cases failed on another field, or at run time.
NUMBER_CASES = [
    ("convert", convert_spec(), WEIGHT, "1e400", "weight", "Input should be a finite number", "Infinity"),
    ("convert", convert_spec(), WEIGHT, "Infinity", "weight", "Input should be a finite number", "Infinity"),
    ("convert", convert_spec(), WEIGHT, "NaN", "weight", "Input should be a finite number", "NaN"),
    (
        "convert",
        convert_spec(),
        WEIGHT,
        "1e300",
        "weight",
        "Input should be less than or equal to 1000000000000000",
        1e300,
    ),
    ("convert", convert_spec(), ("seed",), "1e400", "seed", "Input should be a finite number", "Infinity"),
    ("convert", convert_spec(), ("seed",), "-Infinity", "seed", "Input should be a finite number", "-Infinity"),
    ("convert", convert_spec(), ("seed",), TEN_THOUSAND_DIGITS, "seed", "Input should be a finite number", "Infinity"),
    ("convert", convert_spec(), ("seed",), "-1", "seed", "Input should be greater than or equal to 0", -1),
    (
        "convert",
        convert_spec(),
        ("seed",),
        str(2**32),
        "seed",
        "Input should be less than or equal to 4294967295",
        2**32,
    ),
    (
        "convert",
        convert_spec(),
        ("shuffle_buffer",),
        "1e400",
        "shuffle_buffer",
        "Input should be a finite number",
        "Infinity",
    ),
    (
        "convert",
        convert_spec(),
        ("chars_per_shard",),
        str(10**20),
        "chars_per_shard",
        "Input should be less than or equal to 1000000000000000",
        10**20,
    ),
    (
        "convert",
        convert_spec(),
        ("max_docs",),
        "9" * 4000,
        "max_docs",
        "Input should be less than or equal to 1000000000000000",
        int("9" * 4000),
    ),
    (
        "convert",
        MEGATRON,
        ("sources", 0, "data_path", 0),
        '"1e400"',
        "sources",
        "Value error, data_path[0]: weight must be between 1e-15 and 1e+15, got inf",
        None,
    ),
    ("train", TRAIN, ("num_iterations",), "1e400", "num_iterations", "Input should be a finite number", "Infinity"),
    ("train", TRAIN, ("embedding_lr",), "NaN", "embedding_lr", "Input should be a finite number", "NaN"),
    ("train", TRAIN, ("seed",), "-1", "seed", "Input should be greater than or equal to 0", -1),
    (
        "train",
        TRAIN,
        ("device_batch_size",),
        str(2**40),
        "device_batch_size",
        "Input should be less than or equal to 65536",
        2**40,
    ),
]


@pytest.mark.parametrize(
    "kind, spec, path, literal, field, message, echo",
    NUMBER_CASES,
    ids=[f"{c[0]}-{'.'.join(map(str, c[2]))}={c[3][:12]}" for c in NUMBER_CASES],
)
def test_numbers_no_spec_means_are_422_naming_the_field(open_server, kind, spec, path, literal, field, message, echo):
    body = with_literal(spec, path, literal)
    response = open_server.client.post(f"/jobs/{kind}", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    errors = [e for e in strict_json(response)["detail"] if field in e["loc"]]
    assert errors and errors[0]["msg"] == message, response.text
    assert errors[0]["loc"][0] == "body"
    if echo is not None:
        assert errors[0]["input"] == echo


def test_the_422_handler_can_echo_anything():
    # Over HTTP a body cannot carry most of these (JSON integers past 4,300 digits already read as infinity); the
    # handler copes all the same, as it answers for every route.
    echo = _jsonable(
        {
            "inf": math.inf,
            "nan": math.nan,
            "big": 10**10_000,
            "bytes": b"\xff",
            1: (2, ValueError("x")),
            "deep": functools.reduce(lambda inner, _: [inner], range(5000), []),
        }
    )
    json.dumps(echo, allow_nan=False)
    assert echo["inf"] == "Infinity" and echo["nan"] == "NaN" and echo["big"] == "<an integer of about 10001 digits>"
    assert echo["bytes"] == "\ufffd" and echo["1"] == [2, "x"]


def test_a_garbled_last_event_id_is_400(open_server):
    client = open_server.client
    job = client.post("/jobs/convert", json=convert_spec()).json()
    # Before: '²' was a 500 (isdigit() takes it, int() does not); the others silently restarted the stream.
    for value in [b"\xb2", b"-1", b"1e3", b"9" * 20, b"0x10", b"12 34", b"9223372036854775808"]:
        with client.stream("GET", f"/jobs/{job['id']}/events", headers={"Last-Event-ID": value}) as response:
            assert response.status_code == 400, value
            assert json.loads(response.read()) == {"detail": BAD_EVENT_ID}


def test_on_a_loopback_bind_only_loopback_host_names_are_served(open_server, token_server):
    for server in (open_server, token_server):
        client = server.client
        for host in [
            "evil.example",
            "evil.example:80",
            "127.0.0.1.evil.example",
            "localhost.",
            "0.0.0.0",
            "evil@127.0.0.1",
            "[::2]",
            "192.168.1.10",
        ]:
            for path in ["/jobs", "/", "/healthz", "/openapi.json"]:
                response = client.get(path, headers={"Host": host})
                assert response.status_code == 400, (host, path)
                assert response.json() == {"detail": HOST_REFUSED.format(host=host, more="")}
        for host in [
            "localhost",
            "LOCALHOST:1",
            "127.0.0.1",
            f"127.0.0.1:{client.base_url.port}",
            "[::1]",
            "[::1]:8000",
        ]:
            assert client.get("/jobs", headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_adds_names(tmp_path):
    env = {"OPENSEEK_NANOCHAT_ALLOWED_HOSTS": "evil.example, *.lab.example"}
    with start_server(tmp_path / "data", env=env) as server:
        for host in ["evil.example", "evil.example:8000", "gpu1.lab.example", "localhost"]:
            assert server.client.get("/jobs", headers={"Host": host}).status_code == 200, host
        response = server.client.get("/jobs", headers={"Host": "lab.example"})
        assert response.status_code == 400
        more = ", evil.example, *.lab.example"
        assert response.json() == {"detail": HOST_REFUSED.format(host="lab.example", more=more)}


@pytest.mark.parametrize(
    "bind, allowed, expected",
    [
        ("127.0.0.1", None, ["localhost", "127.0.0.1", "::1"]),
        ("::1", None, ["localhost", "127.0.0.1", "::1"]),
        ("localhost", "a.example,[fe80::1]:8000", ["localhost", "127.0.0.1", "::1", "a.example", "fe80::1"]),
        ("127.0.0.1", "*", None),
        ("0.0.0.0", None, None),  # the operator opened the service to the network: any name, and a warning if no token
        ("0.0.0.0", "gpu1.example", ["localhost", "127.0.0.1", "::1", "gpu1.example"]),
    ],
)
def test_which_host_names_a_bind_accepts(bind, allowed, expected):
    assert allowed_hosts(Settings(bind_host=bind, allowed_hosts=allowed)) == expected


def test_without_a_token_writes_from_another_origin_are_403(open_server):
    client = open_server.client
    own = str(client.base_url).rstrip("/")
    job = client.post("/jobs/convert", json=convert_spec()).json()
    for origin in [
        "http://evil.example",
        f"https://{own.removeprefix('http://')}",
        "http://localhost:1",
        "null",
        f"{own}.evil.example",
        "not a url",
    ]:
        for method, path in [
            ("POST", "/jobs/convert"),
            ("POST", f"/jobs/{job['id']}/cancel"),
            ("DELETE", f"/jobs/{job['id']}"),
            ("PUT", "/jobs"),
            ("PATCH", "/jobs"),
        ]:
            response = client.request(method, path, json=convert_spec(), headers={"Origin": origin})
            assert response.status_code == 403, (origin, method, path)
            assert response.json() == {"detail": ORIGIN_REFUSED.format(method=method, origin=origin)}
    assert client.get(f"/jobs/{job['id']}").json()["state"] == "queued"  # nothing was cancelled
    # Reading is no write: the browser keeps a page of another origin from reading the answer (no CORS).
    assert client.get("/jobs", headers={"Origin": "http://evil.example"}).status_code == 200
    # The dashboard's own requests (same origin; the default port spelled out or not) and clients with no Origin.
    assert client.post("/jobs/convert", json=convert_spec(), headers={"Origin": own}).status_code == 202
    local = own.replace("127.0.0.1", "localhost")
    assert (
        client.post(
            "/jobs/convert", json=convert_spec(), headers={"Origin": local, "Host": local.removeprefix("http://")}
        ).status_code
        == 202
    )
    assert client.post("/jobs/convert", json=convert_spec()).status_code == 202
    assert client.post(f"/jobs/{job['id']}/cancel", headers={"Origin": own}).status_code == 202


def test_with_a_token_the_token_is_the_check(token_server):
    client = token_server.client
    foreign = {"Origin": "http://evil.example"}
    assert client.post("/jobs/convert", json=convert_spec(), headers=foreign).status_code == 202
    response = httpx.post(f"{token_server.base_url}/jobs/convert", json=convert_spec(), headers=foreign)
    assert response.status_code == 401


OPEN_PATHS = [
    "/healthz",
    "/",
    "/static/dashboard/app.js",
    "/static/dashboard/style.css",
    "/docs",
    "/openapi.json",
    "/static/swagger-ui/swagger-ui-bundle.js",
]


def test_with_a_token_only_health_dashboard_and_docs_are_open(token_server):
    anonymous = httpx.Client(base_url=token_server.base_url, timeout=30)
    job = token_server.client.post("/jobs/convert", json=convert_spec()).json()
    for path in OPEN_PATHS:
        assert anonymous.get(path).status_code == 200, path
    operations = [
        (method.upper(), path)
        for path, methods in anonymous.get("/openapi.json").json()["paths"].items()
        for method in methods
    ]
    assert len(operations) >= 12
    for method, path in operations:
        if path == "/healthz":
            continue
        url = path.replace("{job_id}", job["id"])
        response = anonymous.request(method, url, json=convert_spec() if method == "POST" else None)
        assert response.status_code == 401, (method, path, response.text)
        assert "missing or wrong API token" in response.json()["detail"]
    anonymous.close()


@pytest.mark.needs("chromium")
def test_in_a_browser_the_dashboard_writes_and_another_origin_cannot(open_server):
    from playwright.sync_api import sync_playwright

    from browserutil import launch

    client, port = open_server.client, open_server.client.base_url.port
    job = client.post("/jobs/convert", json=convert_spec()).json()
    cancel = f"http://127.0.0.1:{port}/jobs/{job['id']}/cancel"
    with sync_playwright() as playwright:
        browser = launch(playwright)
        try:
            page = browser.new_page()
            # Another origin (the same server by another name): a "simple" POST needs no preflight, so before the
            # Origin check it cancelled the job; the page cannot read the answer either way (no-cors).
            page.goto(f"http://localhost:{port}/")
            page.evaluate("url => fetch(url, {method: 'POST', mode: 'no-cors'})", cancel)
            assert client.get(f"/jobs/{job['id']}").json()["state"] == "queued"
            # The dashboard's own origin: its requests go through.
            page.goto(f"http://127.0.0.1:{port}/")
            status = page.evaluate("url => fetch(url, {method: 'POST'}).then(r => r.status)", cancel)
            assert status == 202
            assert client.get(f"/jobs/{job['id']}").json()["state"] == "cancelled"
        finally:
            browser.close()
