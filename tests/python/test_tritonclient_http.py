"""Compatibility of the Nereid server with the official Triton HTTP client (tritonclient[http]==2.73.0).

One server process is started for this module's session from $NEREID_BIN (default target/debug/nereid) on
model_repository/ with ephemeral ports; the HTTP port is read from its startup log line
"Started HTTPService at HOST:PORT". Run with: .venv/bin/python -m pytest tests/python
"""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from test_tritonclient import IDENTITY_DTYPES, launch

STARTED = re.compile(r"Started HTTPService at (\S+):(\d+)")


@pytest.fixture(scope="module")
def server():
    srv = launch("--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", started=STARTED)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(url=server.address)
    yield c
    c.close()


def make_input(name: str, array: np.ndarray, datatype: str | None = None, binary: bool = True):
    tensor = httpclient.InferInput(name, list(array.shape), datatype or np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def int32_rows(rows: int, seed: int):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(-1000, 1000, size=(rows, 16), dtype=np.int32),
        rng.integers(-1000, 1000, size=(rows, 16), dtype=np.int32),
    )


# ---------------------------------------------------------------------------------------------
# Health, metadata, config


def test_health(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple_versions", "3")
    # Any non-200 reads as "not ready" in the HTTP client.
    assert not client.is_model_ready("no_such_model")
    assert not client.is_model_ready("simple_versions", "1")


def test_server_metadata(client):
    metadata = client.get_server_metadata()
    assert metadata["name"] == "triton"
    assert "statistics" in metadata["extensions"]
    assert "binary_tensor_data" in metadata["extensions"]


def test_model_metadata(client):
    metadata = client.get_model_metadata("simple")
    assert metadata["name"] == "simple"
    assert metadata["versions"] == ["1"]
    inputs = {t["name"]: (t["datatype"], t["shape"]) for t in metadata["inputs"]}
    assert inputs == {"INPUT0": ("INT32", [-1, 16]), "INPUT1": ("INT32", [-1, 16])}
    outputs = {t["name"]: (t["datatype"], t["shape"]) for t in metadata["outputs"]}
    assert outputs == {"OUTPUT0": ("INT32", [-1, 16]), "OUTPUT1": ("INT32", [-1, 16])}
    assert client.get_model_metadata("simple_versions", "2")["versions"] == ["2"]


def test_model_config(client):
    config = client.get_model_config("simple")
    assert config["name"] == "simple"
    assert config["max_batch_size"] == 8
    assert config["platform"] == "onnxruntime_onnx"
    assert [i["name"] for i in config["input"]] == ["INPUT0", "INPUT1"]
    assert [o["name"] for o in config["output"]] == ["OUTPUT0", "OUTPUT1"]
    assert config["input"][0]["data_type"] == "TYPE_INT32"
    assert config["input"][0]["dims"] == [16]


# ---------------------------------------------------------------------------------------------
# Inference


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_simple(client, binary):
    a, b = int32_rows(2, seed=1)
    outputs = [
        httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary),
        httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary),
    ]
    result = client.infer(
        "simple", [make_input("INPUT0", a, binary=binary), make_input("INPUT1", b, binary=binary)],
        outputs=outputs, request_id="r1",
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    assert result.as_numpy("OUTPUT0").dtype == np.int32
    response = result.get_response()
    assert response["model_name"] == "simple"
    assert response["model_version"] == "1"
    assert response["id"] == "r1"
    has_binary = all("parameters" in o for o in response["outputs"])
    assert has_binary == binary


def test_infer_default_outputs_come_back_binary(client):
    a, b = int32_rows(1, seed=2)
    result = client.infer("simple", [make_input("INPUT0", a, binary=False), make_input("INPUT1", b)])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == a.nbytes


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_simple_string(client, binary):
    a, b = int32_rows(2, seed=3)
    as_bytes = np.vectorize(lambda v: str(v).encode(), otypes=[object])
    result = client.infer(
        "simple_string",
        [make_input("INPUT0", as_bytes(a), "BYTES", binary), make_input("INPUT1", as_bytes(b), "BYTES", binary)],
        outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)],
    )
    # JSON BYTES outputs come back as str elements, binary ones as bytes (client behaviour).
    want = as_bytes(a + b) if binary else np.vectorize(str, otypes=[object])(a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), want)
    assert result.as_numpy("OUTPUT1") is None


def test_infer_identity_fp16_exact(client):
    x = np.array([[1.5, -0.0, np.inf, 65504.0], [-np.inf, np.nan, 6e-8, -2.75e-3]], dtype=np.float16)
    out = client.infer("identity_fp16", [make_input("INPUT0", x)]).as_numpy("OUTPUT0")
    assert out.dtype == np.float16
    assert out.tobytes() == x.tobytes()


def test_infer_fp16_json_is_refused(client):
    x = np.array([[1.5]], dtype=np.float16)
    with pytest.raises(InferenceServerException) as err:
        client.infer("identity_fp16", [make_input("INPUT0", x, binary=False)])
    assert err.value.status() == "400"
    assert "receiving FP16 data via JSON is not supported" in err.value.message()


def test_infer_identity_bf16_exact(client):
    if np_to_triton_dtype(np.dtype(ml_dtypes.bfloat16)) != "BF16":
        pytest.skip("this tritonclient has no numpy mapping for BF16")
    x = np.array([[1.5, -0.0, np.inf], [-np.inf, np.nan, 3.0e38]], dtype=ml_dtypes.bfloat16)
    out = client.infer("identity_bf16", [make_input("INPUT0", x, "BF16")]).as_numpy("OUTPUT0")
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
    if dtype not in (np.float16,):
        # The same values through JSON (finite ones only: JSON has no NaN/Inf).
        finite = x if dtype == np.bool_ or np.issubdtype(dtype, np.integer) else np.array([[1.25, -7.5, 1e-3]], dtype=dtype)
        out = client.infer(
            f"identity_{suffix}",
            [make_input("INPUT0", finite, binary=False)],
            outputs=[httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)],
        ).as_numpy("OUTPUT0")
        np.testing.assert_array_equal(out, finite)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_infer_compressed(client, algorithm):
    a, b = int32_rows(3, seed=4)
    result = client.infer(
        "simple",
        [make_input("INPUT0", a), make_input("INPUT1", b)],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)


def test_async_infer_and_classification(client):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    pending = client.async_infer(
        "simple",
        [make_input("INPUT0", a), make_input("INPUT1", b)],
        outputs=[httpclient.InferRequestedOutput("OUTPUT0", class_count=2)],
    )
    result = pending.get_result()
    assert result.as_numpy("OUTPUT0").tolist() == [[b"16:15", b"15:14"]]


def test_versions(client):
    a, b = int32_rows(1, seed=5)
    inputs = [make_input("INPUT0", a), make_input("INPUT1", b)]
    latest = client.infer("simple_versions", inputs)
    assert latest.get_response()["model_version"] == "3"
    np.testing.assert_array_equal(latest.as_numpy("OUTPUT0"), a + b + 2)
    v2 = client.infer("simple_versions", inputs, model_version="2")
    np.testing.assert_array_equal(v2.as_numpy("OUTPUT0"), a + b + 1)
    with pytest.raises(InferenceServerException) as err:
        client.infer("simple_versions", inputs, model_version="1")
    assert err.value.status() == "404"


def test_inference_statistics(client):
    a, b = int32_rows(3, seed=6)
    client.infer("simple", [make_input("INPUT0", a), make_input("INPUT1", b)])
    stats = client.get_inference_statistics("simple")
    [model] = [m for m in stats["model_stats"] if m["name"] == "simple"]
    assert model["version"] == "1"
    assert model["inference_count"] >= 3
    assert model["execution_count"] >= 1
    assert model["inference_stats"]["success"]["count"] >= 1
    assert model["inference_stats"]["success"]["ns"] > 0
    everything = client.get_inference_statistics()
    assert {m["name"] for m in everything["model_stats"]} >= {"simple", "simple_versions"}


# ---------------------------------------------------------------------------------------------
# Repository


def test_repository_index(client):
    index = client.get_model_repository_index()
    simple = [m for m in index if m["name"] == "simple"]
    assert simple == [{"name": "simple", "version": "1", "state": "READY"}]


def test_load_unload_refused_in_none_mode(client):
    for call in (lambda: client.load_model("simple"), lambda: client.unload_model("simple")):
        with pytest.raises(InferenceServerException) as err:
            call()
        assert err.value.status() == "503"
        assert err.value.message() == "explicit model load / unload is not allowed if polling is enabled"
    with pytest.raises(InferenceServerException) as err:
        client.load_model("simple", config='{"max_batch_size": 4}')
    assert err.value.status() == "503"


# ---------------------------------------------------------------------------------------------
# Errors


def test_errors(client):
    a, b = int32_rows(1, seed=7)
    with pytest.raises(InferenceServerException) as err:
        client.infer("no_such_model", [make_input("INPUT0", a), make_input("INPUT1", b)])
    assert err.value.status() == "400"
    assert err.value.message() == "Request for unknown model: 'no_such_model' is not found"

    f = np.zeros((1, 16), dtype=np.float32)
    with pytest.raises(InferenceServerException) as err:
        client.infer("simple", [make_input("INPUT0", f), make_input("INPUT1", b)])
    assert err.value.status() == "400"
    assert "INPUT0" in err.value.message()

    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("no_such_model")
    assert err.value.status() == "400"
    # The server still serves.
    assert client.is_server_ready()
