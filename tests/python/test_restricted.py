"""Restricted APIs through the official clients (tritonclient[grpc,http]==2.73.0): the server runs
with model-repository, trace and logging behind one key, as the README's deployment example.
A client that passes the header with `headers=` loads and unloads; one without gets Triton's
refusal (gRPC UNAVAILABLE, HTTP 403); the unrestricted groups need no header.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from test_tritonclient import STARTED as GRPC_STARTED
from test_tritonclient import int32_rows, launch, make_input

HTTP_STARTED = re.compile(r"Started HTTPService at (\S+):(\d+)")
KEY, VALUE = "admin-key", "s3cret"
RESTRICTION = f"model-repository,trace,logging:{KEY}={VALUE}"
GRPC_HEADERS = {f"triton-grpc-protocol-{KEY}": VALUE}
HTTP_HEADERS = {KEY: VALUE}
GRPC_REFUSAL = f"This protocol is restricted, expecting header 'triton-grpc-protocol-{KEY}'"
HTTP_REFUSAL = f"This API is restricted, expecting header '{KEY}'"


@pytest.fixture(scope="module")
def server():
    # The HTTP line comes after the gRPC one: once it is printed, both addresses are known.
    srv = launch(
        "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
        "--model-control-mode", "explicit", "--load-model", "simple",
        f"--grpc-restricted-protocol={RESTRICTION}",
        f"--http-restricted-api={RESTRICTION}",
        started=HTTP_STARTED,
    )
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def grpc(server):
    host, port = next(m.groups() for m in map(GRPC_STARTED.search, server.lines) if m)
    host = "127.0.0.1" if host in ("0.0.0.0", "[::]", "::", "") else host
    c = grpcclient.InferenceServerClient(url=f"{host}:{port}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def http(server):
    c = httpclient.InferenceServerClient(url=server.address)
    yield c
    c.close()


def refused(call, status: str, message: str):
    with pytest.raises(InferenceServerException) as e:
        call()
    assert e.value.status() == status, e.value
    assert message in e.value.message(), e.value


def grpc_state(grpc, model: str) -> str:
    index = grpc.get_model_repository_index(headers=GRPC_HEADERS, as_json=True)
    return next(m.get("state", "") for m in index["models"] if m["name"] == model)


def test_grpc_load_and_unload_need_the_header(grpc):
    refused(lambda: grpc.unload_model("simple"), "StatusCode.UNAVAILABLE", GRPC_REFUSAL)
    refused(lambda: grpc.load_model("simple"), "StatusCode.UNAVAILABLE", GRPC_REFUSAL)
    refused(lambda: grpc.get_model_repository_index(), "StatusCode.UNAVAILABLE", GRPC_REFUSAL)
    refused(lambda: grpc.get_log_settings(), "StatusCode.UNAVAILABLE", GRPC_REFUSAL)
    assert grpc.is_model_ready("simple"), "a refused unload changes nothing"

    grpc.unload_model("simple", headers=GRPC_HEADERS)
    assert grpc_state(grpc, "simple") == "UNAVAILABLE"
    grpc.load_model("simple", headers=GRPC_HEADERS)
    assert grpc_state(grpc, "simple") == "READY"
    assert grpc.is_model_ready("simple")


def test_http_load_and_unload_need_the_header(http):
    refused(lambda: http.unload_model("simple"), "403", HTTP_REFUSAL)
    refused(lambda: http.load_model("simple"), "403", HTTP_REFUSAL)
    refused(lambda: http.get_trace_settings(), "403", HTTP_REFUSAL)
    assert http.is_model_ready("simple")

    http.unload_model("simple", headers=HTTP_HEADERS)
    assert not http.is_model_ready("simple")
    http.load_model("simple", headers=HTTP_HEADERS)
    assert http.is_model_ready("simple")
    assert http.get_log_settings(headers=HTTP_HEADERS)["log_info"] in (True, False)


def test_wrong_value_is_refused(grpc, http):
    refused(
        lambda: grpc.unload_model("simple", headers={f"triton-grpc-protocol-{KEY}": "guess"}),
        "StatusCode.UNAVAILABLE",
        GRPC_REFUSAL,
    )
    refused(lambda: http.unload_model("simple", headers={KEY: "guess"}), "403", HTTP_REFUSAL)


def test_unrestricted_groups_need_no_header(grpc, http):
    a, b = int32_rows(2, 7)
    result = grpc.infer("simple", [make_input("INPUT0", a), make_input("INPUT1", b)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    assert grpc.get_server_metadata().name == "triton"
    assert http.is_server_ready()
    assert http.get_model_config("simple")["name"] == "simple"
