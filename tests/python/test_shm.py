"""Client system shared memory through the official tritonclient (gRPC and HTTP) and its
`tritonclient.utils.shared_memory` helpers, as Triton's shm examples use them, plus the byte-exact
BYTES path (NUL bytes and binary) through the ONNX string identity model.

One server with --allow-client-shm=true for the module, and one with the default (off).
Run with: .venv/bin/python -m pytest tests/python/test_shm.py
"""

from __future__ import annotations

import os
import re
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, serialize_byte_tensor, serialized_byte_size

from test_tritonclient import launch

HTTP_STARTED = re.compile(r"Started HTTPService at (\S+):(\d+)")
GRPC_STARTED = re.compile(r"Started GRPCInferenceService at (\S+):(\d+)")
DISABLED = "Client shared memory is disabled. Start the server with '--allow-client-shm=true' to enable."


def addresses(srv) -> tuple[str, str]:
    """(gRPC, HTTP) host:port of a server launched on its HTTP line."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for line in list(srv.lines):
            m = GRPC_STARTED.search(line)
            if m:
                return f"{m.group(1)}:{m.group(2)}", srv.address
        time.sleep(0.05)
    pytest.fail("no gRPC address in the server log", pytrace=False)


@pytest.fixture(scope="module")
def server():
    srv = launch("--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", "--allow-client-shm=true",
                 started=HTTP_STARTED)
    try:
        yield addresses(srv)
    finally:
        srv.stop()


@pytest.fixture(params=["grpc", "http"])
def client(request, server):
    grpc_url, http_url = server
    if request.param == "grpc":
        c = grpcclient.InferenceServerClient(url=grpc_url)
    else:
        c = httpclient.InferenceServerClient(url=http_url)
    c.unregister_system_shared_memory()
    c.unregister_cuda_shared_memory()
    yield request.param, c
    c.unregister_system_shared_memory()
    c.close()


def module(protocol):
    return grpcclient if protocol == "grpc" else httpclient


def key(name: str) -> str:
    return f"/nereid-py-{os.getpid()}-{name}"


def test_simple_through_regions(client):
    protocol, c = client
    m = module(protocol)
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 7, dtype=np.int32)
    ins = shm.create_shared_memory_region("in", key("in"), 128)
    outs = shm.create_shared_memory_region("out", key("out"), 128)
    try:
        shm.set_shared_memory_region(ins, [a, b])
        c.register_system_shared_memory("in", key("in"), 128)
        c.register_system_shared_memory("out", key("out"), 128)
        status = c.get_system_shared_memory_status()
        names = sorted(r.name for r in status.regions.values()) if protocol == "grpc" else sorted(r["name"] for r in status)
        assert names == ["in", "out"]

        inputs = [m.InferInput("INPUT0", [1, 16], "INT32"), m.InferInput("INPUT1", [1, 16], "INT32")]
        inputs[0].set_shared_memory("in", 64)
        inputs[1].set_shared_memory("in", 64, offset=64)
        outputs = [m.InferRequestedOutput("OUTPUT0"), m.InferRequestedOutput("OUTPUT1")]
        outputs[0].set_shared_memory("out", 64)
        outputs[1].set_shared_memory("out", 64, offset=64)
        result = c.infer("simple", inputs, outputs=outputs)
        for name, offset, want in [("OUTPUT0", 0, a + b), ("OUTPUT1", 64, a - b)]:
            out = result.get_output(name)
            dtype = out.datatype if protocol == "grpc" else out["datatype"]
            shape = list(out.shape) if protocol == "grpc" else out["shape"]
            assert (dtype, shape) == ("INT32", [1, 16])
            got = shm.get_contents_as_numpy(outs, np.int32, shape, offset=offset)
            np.testing.assert_array_equal(got, want)

        # A region too small for its output: Triton's text, after execution.
        outputs[1].set_shared_memory("out", 32, offset=64)
        with pytest.raises(InferenceServerException) as e:
            c.infer("simple", inputs, outputs=outputs)
        assert "should be at least 64 bytes to hold the results" in e.value.message()
        # An unknown region.
        inputs[0].set_shared_memory("nope", 64)
        with pytest.raises(InferenceServerException) as e:
            c.infer("simple", inputs)
        assert e.value.message().endswith("Unable to find shared memory region: 'nope'")
        # A name registered twice.
        with pytest.raises(InferenceServerException) as e:
            c.register_system_shared_memory("in", key("in"), 128)
        assert "shared memory region 'in' already in manager" in e.value.message()
    finally:
        c.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(ins)
        shm.destroy_shared_memory_region(outs)


def test_bytes_byte_for_byte_through_regions(client):
    protocol, c = client
    m = module(protocol)
    data = np.array([[b"a\x00b", b"", bytes(range(256)), b"\xff\xfe\x00"]], dtype=np.object_)
    blob = serialize_byte_tensor(data)
    size = serialized_byte_size(blob)
    ins = shm.create_shared_memory_region("sin", key("sin"), size)
    outs = shm.create_shared_memory_region("sout", key("sout"), size)
    try:
        shm.set_shared_memory_region(ins, [blob])
        c.register_system_shared_memory("sin", key("sin"), size)
        c.register_system_shared_memory("sout", key("sout"), size)
        i = m.InferInput("INPUT0", [1, 4], "BYTES")
        i.set_shared_memory("sin", size)
        o = m.InferRequestedOutput("OUTPUT0")
        o.set_shared_memory("sout", size)
        c.infer("simple_identity", [i], outputs=[o])
        got = shm.get_contents_as_numpy(outs, np.object_, [1, 4])
        assert got.tolist() == data.tolist()
    finally:
        c.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(ins)
        shm.destroy_shared_memory_region(outs)


def test_bytes_byte_for_byte_in_band(client):
    protocol, c = client
    m = module(protocol)
    data = np.array([[b"a\x00b", b"", bytes(range(256)), b"\xff\xfe\x00"]], dtype=np.object_)
    i = m.InferInput("INPUT0", [1, 4], "BYTES")
    i.set_data_from_numpy(data)
    result = c.infer("simple_identity", [i])
    assert result.as_numpy("OUTPUT0").tolist() == data.tolist()


def test_cuda_shared_memory_status_and_unregister(client):
    protocol, c = client
    status = c.get_cuda_shared_memory_status()
    assert (len(status.regions) if protocol == "grpc" else len(status)) == 0
    c.unregister_cuda_shared_memory()
    c.unregister_cuda_shared_memory("not_there")


@pytest.fixture(scope="module")
def disabled_server():
    srv = launch("--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", started=HTTP_STARTED)
    try:
        yield addresses(srv)
    finally:
        srv.stop()


def test_disabled_by_default(disabled_server):
    grpc_url, http_url = disabled_server
    for c, status in [
        (grpcclient.InferenceServerClient(url=grpc_url), "StatusCode.UNIMPLEMENTED"),
        (httpclient.InferenceServerClient(url=http_url), "501"),
    ]:
        with pytest.raises(InferenceServerException) as e:
            c.register_system_shared_memory("r", "/k", 8)
        assert e.value.status() == status
        assert e.value.message().endswith(DISABLED)
        with pytest.raises(InferenceServerException):
            c.unregister_system_shared_memory()
        c.get_system_shared_memory_status()
        c.close()
