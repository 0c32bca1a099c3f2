"""Fuzzing the mesh as `headrace up` runs it (synthetic engine): every HTTP
endpoint and the WebSocket with Hypothesis-made bodies and headers, every
gRPC method of every service with random messages, mutated messages and
raw garbage. Whatever arrives: no HTTP 5xx, no INTERNAL or UNKNOWN status,
no process dies, and no traceback per bad call in the logs.

Bounded in time: a fixed number of examples each, derandomized (the same
inputs on every run, so a failure reproduces).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.descriptor import ServiceDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from headrace.v1 import cache_pb2, router_pb2, scheduler_pb2, worker_pb2
from tests.support import fuzzing
from tests.support.cli import headrace, mesh_env

pytestmark = pytest.mark.slow

HTTP_EXAMPLES = 300
WS_EXAMPLES = 60
GRPC_RANDOM, GRPC_MUTATED, GRPC_GARBAGE = 6, 6, 4
# Statuses that mean the server failed, not the request.
FAILED_STATUSES = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}

COUNTS: Counter[str] = Counter()


@dataclass
class FuzzedMesh:
    env: dict[str, str]
    http_url: str
    processes: list[dict[str, Any]]

    def address(self, name: str) -> str:
        return str(next(p["address"] for p in self.processes if p["name"] == name))

    def dead(self) -> list[str]:
        """Processes of the mesh that are no longer running."""
        gone = []
        for process in self.processes:
            try:
                state = Path(f"/proc/{process['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                state = "gone"
            if state in ("gone", "Z", "X"):
                gone.append(process["name"])
        return gone

    def logs(self) -> dict[str, str]:
        return {p["name"]: Path(p["log_path"]).read_text(errors="replace") for p in self.processes if p["log_path"]}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzedMesh]:
    state_dir = tmp_path_factory.mktemp("fuzz") / "state"
    env = {
        **mesh_env(state_dir),
        # Quick answers: the point is the parsing, not the engine.
        "HEADRACE_CACHE__SEMANTIC__ENABLED": "false",
        "HEADRACE_LIMITS__MAX_TOKENS": "4",
    }
    up = headrace(env, "up", "--detach", "--engine", "synthetic", "--timeout", "120")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        processes = json.loads((state_dir / "mesh.json").read_text())["processes"]
        yield FuzzedMesh(env, f"http://127.0.0.1:{env['HEADRACE_ROUTER__HTTP_PORT']}", processes)
    finally:
        headrace(env, "down", timeout=120)
        print("fuzz counts:", dict(sorted(COUNTS.items())))


# --- HTTP ----------------------------------------------------------------


@pytest.fixture(scope="module")
def http(mesh: FuzzedMesh) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mesh.http_url, timeout=30) as client:
        yield client


_ID = st.sampled_from(["batch_x", "file-x", "x" * 300, "%00", "..", "smollm2", "%ED%A0%80"])
requests_ = st.one_of(
    st.tuples(st.just("POST"), st.just("/v1/chat/completions"), fuzzing.bodies(fuzzing.CHAT)),
    st.tuples(st.just("POST"), st.just("/v1/completions"), fuzzing.bodies(fuzzing.COMPLETION)),
    st.tuples(st.just("POST"), st.just("/v1/embeddings"), fuzzing.bodies(fuzzing.EMBEDDING)),
    # POST /v1/batches reads its body through body.read_model, as the routes above.
    st.tuples(st.just("POST"), st.just("/v1/batches"), fuzzing.bodies(fuzzing.BATCH)),
    st.tuples(st.sampled_from(["GET", "POST", "DELETE"]), _ID.map(lambda i: f"/v1/batches/{i}"), st.just(b"")),
    st.tuples(st.just("POST"), _ID.map(lambda i: f"/v1/batches/{i}/cancel"), st.just(b"")),
    st.tuples(st.sampled_from(["GET", "DELETE"]), _ID.map(lambda i: f"/v1/files/{i}"), st.just(b"")),
    st.tuples(st.just("GET"), _ID.map(lambda i: f"/v1/files/{i}/content"), st.just(b"")),
    st.tuples(
        st.sampled_from(["GET", "PUT"]),
        st.sampled_from(["/v1/models", "/v1/models/smollm2", "/v1/models/%ff"]),
        st.just(b""),
    ),
    st.tuples(st.just("GET"), st.sampled_from(["/v1/batches", "/healthz", "/nowhere", "/v1/models/a/b"]), st.just(b"")),
)
headers_ = st.fixed_dictionaries(
    {},
    optional={
        "content-type": st.sampled_from(
            ["application/json", "text/plain", "multipart/form-data", "x/y; charset=utf-16"]
        ),
        # Only timeouts long enough to answer: a short one is a fair 504.
        "x-headrace-timeout": st.sampled_from(["abc", "-1", "0", "nan", "inf", "1e999", "30"]),
        "cache-control": fuzzing.header_values,
        "x-request-id": fuzzing.header_values,
        "authorization": fuzzing.header_values,
    },
)


@settings(
    max_examples=HTTP_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(request=requests_, headers=headers_)
def test_http_endpoints_answer_every_body_without_a_5xx(
    http: httpx.Client, request: tuple[str, str, bytes], headers: dict[str, str]
) -> None:
    method, path, body = request
    response = http.request(method, path, content=body or None, headers=headers)
    COUNTS[f"http {response.status_code // 100}xx"] += 1
    assert response.status_code < 500, (method, path, body[:300], headers, response.text[:500])
    if response.status_code >= 400:
        assert "error" in response.json(), response.text


@settings(max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(
    content=st.binary(max_size=2000) | fuzzing.bodies(fuzzing.CHAT), purpose=st.sampled_from(["batch", "", "x" * 300])
)
def test_file_uploads_answer_without_a_5xx(http: httpx.Client, content: bytes, purpose: str) -> None:
    response = http.post("/v1/files", files={"file": ("f.jsonl", content)}, data={"purpose": purpose})
    COUNTS[f"http {response.status_code // 100}xx"] += 1
    assert response.status_code < 500, (content[:300], response.text[:500])


def test_the_websocket_answers_every_message_and_stays_open(mesh: FuzzedMesh) -> None:
    rng = random.Random(16)
    url = mesh.http_url.replace("http", "ws", 1) + "/v1/realtime/chat"
    sent = 0
    with connect(url, open_timeout=10) as ws:
        for index in range(WS_EXAMPLES):
            payload = _ws_message(rng, index)
            ws.send(payload)
            # A sentinel after each: always a 400, so every answer before it
            # belongs to the fuzzed message.
            ws.send(json.dumps({"type": "sentinel"}))
            while True:
                answer = json.loads(ws.recv(timeout=30))
                if answer["type"] == "error":
                    COUNTS[f"ws error {answer['status'] // 100}xx"] += 1
                    assert answer["status"] < 500, (payload[:300], answer)
                    if "'sentinel'" in answer["error"]["message"]:
                        break
            sent += 1
    COUNTS["ws messages"] += sent


def _ws_message(rng: random.Random, index: int) -> str | bytes:
    seed: Any = fuzzing.REALTIME if index % 2 else {"type": "chat.cancel"}
    choice = index % 5
    if choice == 0:
        return rng.randbytes(rng.randint(0, 50))
    if choice == 1:
        return "[" * rng.randint(100, 5000)
    body = json.loads(json.dumps(seed))
    target = body["request"] if "request" in body and rng.random() < 0.7 else body
    key = rng.choice(fuzzing.FIELD_NAMES)
    target[key] = rng.choice(["\ud800", 10**30, None, [], {"a": [{}]}, float("nan"), "x" * 5000, True])
    return json.dumps(body, allow_nan=True)


# --- gRPC ----------------------------------------------------------------

SERVICES = [
    ("router", router_pb2.DESCRIPTOR.services_by_name["Router"]),
    ("cache", cache_pb2.DESCRIPTOR.services_by_name["Cache"]),
    ("worker", worker_pb2.DESCRIPTOR.services_by_name["Worker"]),
    # Last: a fuzzed ReportLoad registers a bogus worker while its stream lasts.
    ("scheduler", scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"]),
]


def _payloads(service: ServiceDescriptor, method_name: str, rng: random.Random) -> list[bytes]:
    descriptor = service.methods_by_name[method_name].input_type
    valid = [fuzzing.random_message(descriptor, rng).SerializeToString() for _ in range(GRPC_RANDOM)]
    mutated = [fuzzing.mutate_bytes(rng.choice(valid), rng) for _ in range(GRPC_MUTATED)]
    garbage = [rng.randbytes(rng.randint(1, 200)) for _ in range(GRPC_GARBAGE)]
    # Plus a length prefix with nothing after it.
    return [*valid, *mutated, b"\x0a\xff\xff\xff\xff\x0f", *garbage]


def _call(channel: grpc.Channel, path: str, client_streams: bool, server_streams: bool, payload: bytes) -> str:
    """The call's status name (reading a few streamed answers at most)."""
    try:
        if server_streams:
            stream = (
                channel.stream_stream(path)(iter([payload]), timeout=5)
                if client_streams
                else channel.unary_stream(path)(payload, timeout=5)
            )
            for count, _answer in enumerate(stream):
                if count >= 3:
                    stream.cancel()
                    return "OK"
        elif client_streams:
            channel.stream_unary(path)(iter([payload]), timeout=5)
        else:
            channel.unary_unary(path)(payload, timeout=5)
    except grpc.RpcError as exc:
        code = exc.code()
        assert code not in FAILED_STATUSES, (path, payload[:200], code, exc.details())
        return str(code.name)
    return "OK"


def _worker_address(mesh: FuzzedMesh) -> str:
    return str(next(p["address"] for p in mesh.processes if p["module"] == "services.worker"))


def test_grpc_services_answer_random_mutated_and_garbage_messages(mesh: FuzzedMesh) -> None:
    rng = random.Random(16)
    for name, service in SERVICES:
        address = _worker_address(mesh) if name == "worker" else mesh.address(name)
        with grpc.insecure_channel(address) as channel:
            for method in service.methods:
                path = f"/{service.full_name}/{method.name}"
                for payload in _payloads(service, method.name, rng):
                    code = _call(channel, path, method.client_streaming, method.server_streaming, payload)
                    COUNTS[f"grpc {code}"] += 1
            # Health answers garbage the same way.
            code = _call(channel, "/grpc.health.v1.Health/Check", False, False, b"\xff\xff\xff")
            assert code == "INVALID_ARGUMENT"
            COUNTS[f"grpc {code}"] += 1


def test_every_process_lived_and_bad_calls_left_no_tracebacks(mesh: FuzzedMesh) -> None:
    assert mesh.dead() == []
    with httpx.Client(base_url=mesh.http_url, timeout=30) as client:
        assert client.get("/healthz").json() == {"status": "serving"}
    logs = mesh.logs()
    for name, text in logs.items():
        # grpc's own "Unexpected [DecodeError] raised by servicer method".
        assert "Unexpected [" not in text, name
        assert "unhandled error" not in text, (name, text[-3000:])
    COUNTS["log tracebacks"] = sum(text.count("Traceback") for text in logs.values())
    COUNTS["log bytes"] = sum(len(text) for text in logs.values())
