"""Overload refusals through the official client (tritonclient[grpc]==2.73.0).

The server refuses an overloaded request from its head (model, id, parameters), before the
tensors have arrived, and resets the rest of the stream. The official client must see Triton's
UNAVAILABLE "Exceeds maximum queue size" for it, even while it is still sending a large body,
and its channel must keep working. Starts its own server in explicit mode, the same way as
test_tritonclient.py.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from test_tritonclient import launch, make_input

MODEL = "identity_fp32"
# identity_fp32 with a one-request queue whose batch waits 1.5 s to fill.
CONFIG = {
    "name": MODEL,
    "platform": "onnxruntime_onnx",
    "max_batch_size": 8,
    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [-1]}],
    "dynamic_batching": {
        "max_queue_delay_microseconds": 1500000,
        "default_queue_policy": {"max_queue_size": 1},
    },
}


@pytest.fixture(scope="module")
def client():
    srv = launch(
        "--model-control-mode", "explicit",
        "--grpc-port", "0",
        "--allow-http", "false",
        "--allow-metrics", "false",
    )
    try:
        c = grpcclient.InferenceServerClient(url=srv.address)
        c.load_model(MODEL, config=json.dumps(CONFIG))
        yield c
        c.close()
    finally:
        srv.stop()


def test_a_large_request_is_refused_while_sending_and_the_channel_keeps_working(client):
    small = np.arange(4, dtype=np.float32).reshape(1, 4)
    held = []
    client.async_infer(MODEL, [make_input("INPUT0", small)], callback=lambda result, error: held.append((result, error)))
    time.sleep(0.3)  # the request now waits in the queue for its batch to fill
    # 4 MB: far more than the first frames the refusal needs.
    big = np.ones((1, 1 << 20), dtype=np.float32)
    started = time.monotonic()
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, [make_input("INPUT0", big)], request_id="big-1")
    took = time.monotonic() - started
    assert err.value.status() == "StatusCode.UNAVAILABLE"
    assert err.value.message() == "[request id: big-1] Exceeds maximum queue size"
    assert took < 1.0, f"refused after {took:.3f} s, the queued request was still waiting"

    deadline = time.monotonic() + 10
    while not held and time.monotonic() < deadline:
        time.sleep(0.01)
    assert held, "the queued request was answered"
    result, error = held[0]
    assert error is None, error
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), small)
    # The same channel serves the large request once the queue has room.
    out = client.infer(MODEL, [make_input("INPUT0", big)])
    np.testing.assert_array_equal(out.as_numpy("OUTPUT0"), big)
