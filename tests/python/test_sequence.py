"""The sequence batcher with the official Triton clients (tritonclient 2.73.0).

One server process for the module, from $NEREID_BIN (default target/debug/nereid), on
client_examples_repository/ with the three sequence models of the examples loaded
(simple_sequence, simple_dyna_sequence and simple_string_dyna_sequence, the accumulator on
implicit state) and ephemeral ports. Triton's four sequence examples run unmodified from
$TRITON_CLIENT_EXAMPLES (default ../shared/triton-client-examples next to the repository), as
subprocesses pointed at that server with `-u`, without and with `-d` (the dynamic models); the
other tests check what the examples do not: the oldest strategy's
CORRID, and the sequence errors with Triton's texts over both protocols.
Run with: .venv/bin/python -m pytest tests/python/test_sequence.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from test_tritonclient import ROOT, launch

EXAMPLES = os.environ.get(
    "TRITON_CLIENT_EXAMPLES", os.path.join(ROOT, "..", "shared", "triton-client-examples")
)
HTTP_STARTED = re.compile(r"Started HTTPService at (\S+):(\d+)")
EXAMPLE_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def server():
    srv = launch(
        "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
        "--model-control-mode", "explicit",
        "--load-model", "simple_sequence", "--load-model", "simple_dyna_sequence",
        "--load-model", "simple_string_dyna_sequence", "--load-model", "simple_initial_state",
        repository=os.path.join(ROOT, "client_examples_repository"),
    )
    try:
        yield srv
    finally:
        srv.stop()


def http_address(srv) -> str:
    """The HTTP listener's address, from its startup line (printed beside the gRPC one)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in list(srv.lines):
            m = HTTP_STARTED.search(line)
            if m:
                host, port = m.groups()
                host = "127.0.0.1" if host in ("0.0.0.0", "[::]", "::", "") else host
                return f"{host}:{port}"
        time.sleep(0.05)
    pytest.fail("the server did not print its HTTP address", pytrace=False)


@pytest.fixture(scope="module")
def grpc(server):
    c = grpcclient.InferenceServerClient(url=server.address)
    yield c
    c.close()


@pytest.fixture(scope="module")
def http(server):
    c = httpclient.InferenceServerClient(url=http_address(server))
    yield c
    c.close()


@pytest.mark.parametrize("dyna", [False, True], ids=["plain", "dyna"])
@pytest.mark.parametrize(
    "script, protocol",
    [
        ("simple_grpc_sequence_sync_infer_client.py", "grpc"),
        ("simple_http_sequence_sync_infer_client.py", "http"),
        ("simple_grpc_sequence_stream_infer_client.py", "grpc"),
        ("simple_grpc_aio_sequence_stream_infer_client.py", "grpc"),
    ],
)
def test_triton_sequence_example(server, script, protocol, dyna):
    path = os.path.join(EXAMPLES, script)
    if not os.path.isfile(path):
        pytest.fail(
            f"Triton's client example '{path}' is missing: set TRITON_CLIENT_EXAMPLES to the folder holding it",
            pytrace=False,
        )
    url = server.address if protocol == "grpc" else http_address(server)
    done = subprocess.run(
        [sys.executable, path, "-u", url] + (["-d"] if dyna else []),
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT_S,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{out}"
    assert "PASS" in out, out


def grpc_step(client, model, value, seq_id, start=False, end=False):
    x = grpcclient.InferInput("INPUT", [1, 1], "INT32")
    x.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    r = client.infer(model, [x], sequence_id=seq_id, sequence_start=start, sequence_end=end)
    return int(r.as_numpy("OUTPUT")[0][0])


def http_step(client, model, value, seq_id, start=False, end=False):
    x = httpclient.InferInput("INPUT", [1, 1], "INT32")
    x.set_data_from_numpy(np.array([[value]], dtype=np.int32))
    r = client.infer(model, [x], sequence_id=seq_id, sequence_start=start, sequence_end=end)
    return int(r.as_numpy("OUTPUT")[0][0])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_oldest_strategy_feeds_corrid_and_end(grpc, http, protocol):
    client, step = (grpc, grpc_step) if protocol == "grpc" else (http, http_step)
    seq = 4242 if protocol == "grpc" else 4243
    got = [
        step(client, "simple_dyna_sequence", 5, seq, start=True),
        step(client, "simple_dyna_sequence", 7, seq),
        step(client, "simple_dyna_sequence", -1, seq, end=True),
    ]
    # OUTPUT = READY * (INPUT + START + END * CORRID)
    assert got == [6, 7, -1 + seq]


def test_sequence_errors_over_grpc(grpc):
    x = grpcclient.InferInput("INPUT", [1, 1], "INT32")
    x.set_data_from_numpy(np.array([[1]], dtype=np.int32))
    with pytest.raises(InferenceServerException) as e:
        grpc.infer("simple_sequence", [x])
    assert "must specify a non-zero or non-empty correlation ID" in e.value.message()
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException) as e:
        grpc.infer("simple_sequence", [x], sequence_id=987654)
    assert e.value.message() == (
        "inference request for sequence 987654 to model 'simple_sequence' must specify the START "
        "flag on the first request of the sequence"
    )
    with pytest.raises(InferenceServerException) as e:
        grpc.infer("simple_dyna_sequence", [x], sequence_id="text", sequence_start=True)
    assert e.value.message() == (
        "[request id: <id_unknown>] sequence batching control 'CORRID' data-type is 'BYTES', "
        "but model 'simple_dyna_sequence' expects 'UINT64'"
    )


def test_sequence_errors_over_http(http):
    x = httpclient.InferInput("INPUT", [1, 1], "INT32")
    x.set_data_from_numpy(np.array([[1]], dtype=np.int32))
    with pytest.raises(InferenceServerException) as e:
        http.infer("simple_sequence", [x], sequence_id="never-started")
    assert e.value.message() == (
        "inference request for sequence never-started to model 'simple_sequence' must specify the "
        "START flag on the first request of the sequence"
    )
    with pytest.raises(InferenceServerException) as e:
        http.infer("simple_sequence", [x], sequence_id="x" * 129, sequence_start=True)
    assert "string correlation ID cannot be longer than 128 characters" in e.value.message()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_implicit_state_starts_from_the_initial_state_file(grpc, http, protocol):
    client, step = (grpc, grpc_step) if protocol == "grpc" else (http, http_step)
    seq = 5151 if protocol == "grpc" else 5152
    got = [
        step(client, "simple_initial_state", 1, seq, start=True),
        step(client, "simple_initial_state", 2, seq),
        step(client, "simple_initial_state", 3, seq, end=True),
        step(client, "simple_initial_state", 4, seq, start=True, end=True),
    ]
    # acc starts at 100 (initial_state/offset.bin), adds INPUT, and START resets it.
    assert got == [101, 103, 106, 104]
