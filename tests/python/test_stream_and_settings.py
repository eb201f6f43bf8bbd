"""ModelStreamInfer, TraceSetting, LogSettings and the metrics listener through the official client
(tritonclient[grpc]==2.73.0). Starts its own server process, the same way as test_tritonclient.py.
"""

from __future__ import annotations

import queue
import re
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from test_tritonclient import int32_rows, launch, make_input

METRICS = re.compile(r"Started Metrics Service at (\S+):(\d+)")


@pytest.fixture(scope="module")
def server():
    srv = launch("--grpc-port", "0", "--metrics-port", "0", "--metrics-address", "127.0.0.1")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(url=server.address)
    yield c
    c.close()


def simple_inputs(a, b):
    return [make_input("INPUT0", a), make_input("INPUT1", b)]


def collect(results: queue.Queue, n: int, timeout: float = 30.0):
    out = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        out.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
    return out


def test_stream_answers_in_order_and_keeps_going_after_errors(client):
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        sent = []
        for i in range(20):
            a, b = int32_rows(1, i)
            if i % 5 == 3:
                # Wrong datatype: rejected by validation, reported in-band.
                client.async_stream_infer(
                    "simple",
                    [make_input("INPUT0", a.astype(np.float32)), make_input("INPUT1", b)],
                    request_id=str(i),
                )
            else:
                client.async_stream_infer("simple", simple_inputs(a, b), request_id=str(i))
            sent.append((str(i), a, b))
        got = collect(results, len(sent))
    finally:
        client.stop_stream()
    for (rid, a, b), (result, error) in zip(sent, got):
        if int(rid) % 5 == 3:
            assert result is None
            assert isinstance(error, InferenceServerException)
            assert "FP32" in error.message(), error.message()
        else:
            assert error is None, error
            response = result.get_response()
            assert response.id == rid
            np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
            assert response.parameters["triton_final_response"].bool_param is True


def test_stream_with_triton_grpc_error_ends_on_the_first_error(client, server):
    results: queue.Queue = queue.Queue()
    c = grpcclient.InferenceServerClient(url=server.address)
    c.start_stream(callback=lambda result, error: results.put((result, error)), headers={"triton_grpc_error": "true"})
    try:
        a, b = int32_rows(1, 1)
        c.async_stream_infer("simple", simple_inputs(a, b), request_id="ok")
        c.async_stream_infer("no_such_model", simple_inputs(a, b), request_id="bad")
        first, second = collect(results, 2)
    finally:
        c.stop_stream()
        c.close()
    assert first[1] is None and first[0].get_response().id == "ok"
    assert second[0] is None
    assert "unknown model" in second[1].message(), second[1].message()
    assert second[1].status() == "StatusCode.INVALID_ARGUMENT"
    assert client.is_server_live()


def test_trace_settings(client):
    settings = client.get_trace_settings(as_json=True)["settings"]
    assert settings["trace_level"]["value"] == ["OFF"]
    assert settings["trace_mode"]["value"] == ["triton"]
    updated = client.update_trace_settings(model_name="simple", settings={"trace_rate": "7"}, as_json=True)
    assert updated["settings"]["trace_rate"]["value"] == ["7"]
    assert client.get_trace_settings(as_json=True)["settings"]["trace_rate"]["value"] == ["1000"]
    with pytest.raises(InferenceServerException, match="trace file location can not be updated"):
        client.update_trace_settings(settings={"trace_file": "x.json"})
    with pytest.raises(InferenceServerException, match="Request for unknown model : nope"):
        client.get_trace_settings(model_name="nope")


def test_log_settings(client):
    settings = client.get_log_settings(as_json=True)["settings"]
    assert settings["log_info"]["bool_param"] is True
    assert settings["log_format"]["string_param"] == "default"
    updated = client.update_log_settings(settings={"log_verbose_level": 1, "log_info": True}, as_json=True)
    assert updated["settings"]["log_verbose_level"]["uint32_param"] == 1
    client.update_log_settings(settings={"log_verbose_level": 0})
    with pytest.raises(InferenceServerException, match="log file location can not be updated"):
        client.update_log_settings(settings={"log_file": "x.log"})


def test_metrics_count_requests(client, server):
    match = next(m for m in map(METRICS.search, server.lines) if m)
    url = f"http://{match.group(1)}:{match.group(2)}/metrics"

    def success():
        text = urllib.request.urlopen(url, timeout=10).read().decode()
        line = next(l for l in text.splitlines() if l.startswith('nv_inference_request_success{model="simple",version="1"}'))
        return float(line.split()[-1])

    before = success()
    for i in range(3):
        a, b = int32_rows(2, 100 + i)
        client.infer("simple", simple_inputs(a, b))
    assert success() == before + 3
