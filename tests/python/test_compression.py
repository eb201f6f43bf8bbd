"""gRPC compression through the official client (tritonclient[grpc]==2.73.0).

`compression_algorithm="gzip"` and `"deflate"` requests infer correctly, against a server that
answers uncompressed (the default level) and one that compresses infer responses
(`--grpc-infer-response-compression-level=high`; the client accepts gzip and deflate). Starts
its own servers the same way as test_tritonclient.py.
"""

from __future__ import annotations

import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from test_tritonclient import int32_rows, launch, make_input


@pytest.fixture(scope="module", params=["none", "high"])
def client(request):
    srv = launch(
        "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
        "--model-control-mode", "explicit", "--load-model", "simple",
        "--grpc-infer-response-compression-level", request.param,
    )
    c = grpcclient.InferenceServerClient(url=srv.address)
    try:
        yield c
    finally:
        c.close()
        srv.stop()


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_infer(client, algorithm):
    a, b = int32_rows(4, seed=7)
    result = client.infer(
        "simple",
        [make_input("INPUT0", a), make_input("INPUT1", b)],
        compression_algorithm=algorithm,
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_stream_infer(client, algorithm):
    results: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)), compression_algorithm=algorithm)
    try:
        a, b = int32_rows(2, seed=11)
        client.async_stream_infer("simple", [make_input("INPUT0", a), make_input("INPUT1", b)])
        result, error = results.get(timeout=30)
    finally:
        client.stop_stream()
    assert error is None, error
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
