"""Compatibility of the Nereid server with the official Triton gRPC client (tritonclient[grpc]==2.73.0).

One server process is started for the whole session from $NEREID_BIN (default target/debug/nereid) on
model_repository/ with ephemeral ports; the gRPC port is read from its startup log line
"Started GRPCInferenceService at HOST:PORT". Run with: .venv/bin/python -m pytest tests/python
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STARTUP_TIMEOUT_S = 60
STARTED = re.compile(r"Started GRPCInferenceService at (\S+):(\d+)")

# Numeric identity models: Triton datatype suffix -> numpy dtype.
IDENTITY_DTYPES = {
    "bool": np.bool_,
    "uint8": np.uint8,
    "uint16": np.uint16,
    "uint32": np.uint32,
    "uint64": np.uint64,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "fp16": np.float16,
    "fp32": np.float32,
    "fp64": np.float64,
}


class Server:
    """The server process plus everything it printed; a reader thread drains the pipe so it never blocks."""

    def __init__(self, argv: list[str], env: dict[str, str], started: re.Pattern = STARTED):
        self._started_line = started
        self.lines: list[str] = []
        self.address: str | None = None
        self._started = threading.Event()
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            match = self._started_line.search(line)
            if match and self.address is None:
                host, port = match.groups()
                # A wildcard listen address is reached through loopback.
                if host in ("0.0.0.0", "[::]", "::", ""):
                    host = "127.0.0.1"
                self.address = f"{host}:{port}"
                self._started.set()
        self._started.set()  # EOF: wake the waiter, which then sees no address

    def wait_started(self, timeout: float) -> str:
        self._started.wait(timeout)
        if self.address is None:
            try:
                code = self.proc.wait(timeout=1)
                why = f"server exited with code {code} before printing"
            except subprocess.TimeoutExpired:
                why = f"server did not print within {timeout:.0f} s"
            self.stop()
            log = "\n".join(self.lines[-200:]) or "(no output)"
            expected = self._started_line.pattern.split(" at ")[0] + " at HOST:PORT"
            pytest.fail(f"{why} '{expected}'; its log:\n{log}", pytrace=False)
        return self.address

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def launch(*args: str, repository: str | None = None, started: re.Pattern = STARTED) -> Server:
    """Starts $NEREID_BIN (default target/debug/nereid) on `repository` (default model_repository/)
    with `args`, and returns it once it printed the `started` line (the gRPC one by default)."""
    binary = os.environ.get("NEREID_BIN", os.path.join(ROOT, "target", "debug", "nereid"))
    binary = os.path.join(ROOT, binary) if not os.path.isabs(binary) else binary
    if not os.access(binary, os.X_OK):
        pytest.fail(f"server binary '{binary}' not found; build it (cargo build) or set NEREID_BIN", pytrace=False)
    env = dict(os.environ)
    # Outside cargo, .cargo/config.toml's ORT_DYLIB_PATH does not apply; point at the same library.
    ort_lib = os.path.join(ROOT, ".ort", "libonnxruntime.so.1.31.1")
    if "ORT_DYLIB_PATH" not in env and os.path.exists(ort_lib):
        env["ORT_DYLIB_PATH"] = ort_lib
    repository = repository or os.path.join(ROOT, "model_repository")
    srv = Server([binary, "--model-repository", repository, *args], env, started)
    srv.wait_started(STARTUP_TIMEOUT_S)
    return srv


@pytest.fixture(scope="session")
def server():
    srv = launch("--grpc-port", "0", "--http-port", "0", "--metrics-port", "0")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def client(server):
    c = grpcclient.InferenceServerClient(url=server.address)
    yield c
    c.close()


def make_input(name: str, array: np.ndarray, datatype: str | None = None) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype or np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def int32_rows(rows: int, seed: int):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(-1000, 1000, size=(rows, 16), dtype=np.int32),
        rng.integers(-1000, 1000, size=(rows, 16), dtype=np.int32),
    )


def infer_simple(client, a, b, model="simple", version="", outputs=None):
    return client.infer(model, [make_input("INPUT0", a), make_input("INPUT1", b)], model_version=version, outputs=outputs)


def output_names(result) -> list[str]:
    return [o.name for o in result.get_response().outputs]


# ---------------------------------------------------------------------------------------------
# Health and metadata


def test_server_live(client):
    assert client.is_server_live()


def test_server_ready(client):
    assert client.is_server_ready()


def test_model_ready(client):
    assert client.is_model_ready("simple")


def test_server_metadata(client):
    metadata = client.get_server_metadata()
    assert metadata.name == "triton"
    assert "statistics" in metadata.extensions


def test_model_metadata(client):
    metadata = client.get_model_metadata("simple")
    assert metadata.name == "simple"
    inputs = {t.name: (t.datatype, list(t.shape)) for t in metadata.inputs}
    assert inputs == {"INPUT0": ("INT32", [-1, 16]), "INPUT1": ("INT32", [-1, 16])}
    outputs = {t.name: (t.datatype, list(t.shape)) for t in metadata.outputs}
    assert outputs == {"OUTPUT0": ("INT32", [-1, 16]), "OUTPUT1": ("INT32", [-1, 16])}


def test_model_config(client):
    config = client.get_model_config("simple").config
    assert config.name == "simple"
    assert config.max_batch_size == 8
    assert config.platform == "onnxruntime_onnx"
    assert [i.name for i in config.input] == ["INPUT0", "INPUT1"]
    assert [o.name for o in config.output] == ["OUTPUT0", "OUTPUT1"]


def test_autocompleted_model_metadata(client):
    # add_sub_autocomplete has no config.pbtxt; its inputs come from the ONNX graph.
    metadata = client.get_model_metadata("add_sub_autocomplete")
    inputs = {t.name: (t.datatype, list(t.shape)) for t in metadata.inputs}
    assert inputs == {"x": ("FP32", [-1, 4]), "y": ("FP32", [-1, 4])}
    outputs = {t.name: (t.datatype, list(t.shape)) for t in metadata.outputs}
    assert outputs == {"sum": ("FP32", [-1, 4]), "diff": ("FP32", [-1, 4])}


# ---------------------------------------------------------------------------------------------
# Inference


def test_infer_simple_batch_of_two(client):
    a, b = int32_rows(2, seed=1)
    result = infer_simple(client, a, b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0").dtype == np.int32
    assert result.get_response().model_name == "simple"
    assert result.get_response().model_version == "1"


def test_infer_simple_string(client):
    a, b = int32_rows(2, seed=2)
    as_bytes = np.vectorize(lambda v: str(v).encode(), otypes=[object])
    result = client.infer(
        "simple_string",
        [make_input("INPUT0", as_bytes(a), "BYTES"), make_input("INPUT1", as_bytes(b), "BYTES")],
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), as_bytes(a + b))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), as_bytes(a - b))


def test_infer_simple_identity_strings(client):
    x = np.array([[b"", b"a", b"hello world"], ["naïve".encode(), "日本".encode(), b"x" * 300]], dtype=object)
    result = client.infer("simple_identity", [make_input("INPUT0", x, "BYTES")])
    out = result.as_numpy("OUTPUT0")
    assert out.shape == x.shape
    assert out.tolist() == x.tolist()


def test_infer_identity_fp16_exact(client):
    x = np.array([[1.5, -0.0, np.inf, 65504.0], [-np.inf, np.nan, 6e-8, -2.75e-3]], dtype=np.float16)
    out = client.infer("identity_fp16", [make_input("INPUT0", x)]).as_numpy("OUTPUT0")
    assert out.dtype == np.float16
    assert out.shape == x.shape
    assert out.tobytes() == x.tobytes()


def test_infer_identity_bf16_exact(client):
    # tritonclient 2.73.0 maps BF16 to ml_dtypes.bfloat16 (older clients used float32 arrays).
    if np_to_triton_dtype(np.dtype(ml_dtypes.bfloat16)) != "BF16":
        pytest.skip("this tritonclient has no numpy mapping for BF16")
    x = np.array([[1.5, -0.0, np.inf], [-np.inf, np.nan, 3.0e38]], dtype=ml_dtypes.bfloat16)
    out = client.infer("identity_bf16", [make_input("INPUT0", x, "BF16")]).as_numpy("OUTPUT0")
    assert out.dtype == x.dtype
    assert out.shape == x.shape
    assert out.tobytes() == x.tobytes()


@pytest.mark.parametrize("suffix", sorted(IDENTITY_DTYPES))
def test_infer_identity_numeric(client, suffix):
    dtype = IDENTITY_DTYPES[suffix]
    if dtype == np.bool_:
        x = np.array([[True, False, True]])
    elif np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        x = np.array([[info.min, 0, info.max], [1, 2, 3]], dtype=dtype)
    else:
        x = np.array([[1.25, -0.0, np.inf], [np.nan, -7.5, 1e-3]], dtype=dtype)
    out = client.infer(f"identity_{suffix}", [make_input("INPUT0", x)]).as_numpy("OUTPUT0")
    assert out.dtype == x.dtype
    assert out.shape == x.shape
    assert out.tobytes() == x.tobytes()


def test_infer_simple_nobatch(client):
    a, b = (v[0] for v in int32_rows(1, seed=3))
    result = client.infer("simple_nobatch", [make_input("INPUT0", a), make_input("INPUT1", b)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_requested_output_subset(client):
    a, b = int32_rows(1, seed=4)
    result = infer_simple(client, a, b, outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    assert output_names(result) == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_versions_latest_and_explicit(client):
    # Version v adds (v - 1) to OUTPUT0; the policy loads the two latest versions, 2 and 3.
    a, b = int32_rows(1, seed=5)
    latest = infer_simple(client, a, b, model="simple_versions")
    assert latest.get_response().model_version == "3"
    np.testing.assert_array_equal(latest.as_numpy("OUTPUT0"), a + b + 2)
    v2 = infer_simple(client, a, b, model="simple_versions", version="2")
    assert v2.get_response().model_version == "2"
    np.testing.assert_array_equal(v2.as_numpy("OUTPUT0"), a + b + 1)
    assert client.is_model_ready("simple_versions", "3")
    # Version 1 exists on disk but the policy does not load it: an untracked version is NOT_FOUND.
    with pytest.raises(InferenceServerException) as err:
        infer_simple(client, a, b, model="simple_versions", version="1")
    assert err.value.status() == "StatusCode.NOT_FOUND"


def test_inference_statistics(client):
    rows = 3
    a, b = int32_rows(rows, seed=6)
    infer_simple(client, a, b)
    stats = client.get_inference_statistics("simple")
    [model] = [m for m in stats.model_stats if m.name == "simple"]
    assert model.version == "1"
    assert model.inference_count >= rows
    assert model.execution_count >= 1
    assert model.inference_stats.success.count >= 1
    assert model.inference_stats.success.ns > 0


# ---------------------------------------------------------------------------------------------
# Errors


def test_wrong_datatype_is_invalid_argument(client):
    a = np.zeros((1, 16), dtype=np.float32)
    b = np.zeros((1, 16), dtype=np.int32)
    with pytest.raises(InferenceServerException) as err:
        client.infer("simple", [make_input("INPUT0", a), make_input("INPUT1", b)])
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "INPUT0" in err.value.message()


def test_unknown_model(client):
    a, b = int32_rows(1, seed=7)
    with pytest.raises(InferenceServerException) as err:
        infer_simple(client, a, b, model="no_such_model")
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "no_such_model" in err.value.message()
