"""TLS with the official tritonclient: gRPC `ssl=True` with the root certificate and a client key and
certificate (mutual TLS), and HTTPS with `ssl=True`. Certificates are generated at run time by
tools/gen_certs.rs (a CA, and server and client certificates it signs), so no Python package is added.
Run with: .venv/bin/python -m pytest tests/python/test_tls.py
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from test_tritonclient import ROOT, launch

HTTP_STARTED = re.compile(r"Started HTTPService at (\S+):(\d+)")


GEN_CERTS = os.environ.get("NEREID_GEN_CERTS", os.path.join(ROOT, "target", "debug", "examples", "gen_certs"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    # A CA, and server and client certificates it signs, from tools/gen_certs.rs (built by
    # `cargo test`; `cargo build --example gen_certs` builds it alone).
    assert os.access(GEN_CERTS, os.X_OK), f"no certificate generator at {GEN_CERTS}: cargo build --example gen_certs"
    d = str(tmp_path_factory.mktemp("pki"))
    subprocess.run([GEN_CERTS, d], check=True)
    return d


@pytest.fixture(scope="module")
def tls_server(pki, tmp_path_factory):
    repo = str(tmp_path_factory.mktemp("repo"))
    shutil.copytree(os.path.join(ROOT, "model_repository", "simple"), os.path.join(repo, "simple"))
    p = lambda name: os.path.join(pki, name)  # noqa: E731
    srv = launch(
        "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
        "--grpc-use-ssl=true", "--grpc-use-ssl-mutual=true",
        f"--grpc-server-cert={p('server.pem')}", f"--grpc-server-key={p('server.key')}",
        f"--grpc-root-cert={p('ca.pem')}",
        "--http-use-ssl=true", f"--http-server-cert={p('server.pem')}", f"--http-server-key={p('server.key')}",
        repository=repo,
    )
    # The HTTP line follows the gRPC one.
    deadline = time.monotonic() + 30
    http = None
    while http is None and time.monotonic() < deadline:
        for line in list(srv.lines):
            m = HTTP_STARTED.search(line)
            if m:
                http = m.group(2)
        if http is None:
            time.sleep(0.05)
    assert http is not None, "\n".join(srv.lines)
    grpc_port = srv.address.rsplit(":", 1)[1]
    try:
        yield {"grpc": f"localhost:{grpc_port}", "http": f"localhost:{http}"}
    finally:
        srv.stop()


def simple_inputs(module):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.ones((1, 16), dtype=np.int32)
    inputs = []
    for name, arr in (("INPUT0", a), ("INPUT1", b)):
        t = module.InferInput(name, list(arr.shape), "INT32")
        t.set_data_from_numpy(arr)
        inputs.append(t)
    return a, b, inputs


def test_grpc_mutual_tls_infers(pki, tls_server):
    client = grpcclient.InferenceServerClient(
        url=tls_server["grpc"],
        ssl=True,
        root_certificates=os.path.join(pki, "ca.pem"),
        private_key=os.path.join(pki, "client.key"),
        certificate_chain=os.path.join(pki, "client.pem"),
    )
    assert client.is_server_live()
    a, b, inputs = simple_inputs(grpcclient)
    result = client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    client.close()


def test_grpc_without_a_client_certificate_is_refused(pki, tls_server):
    client = grpcclient.InferenceServerClient(
        url=tls_server["grpc"], ssl=True, root_certificates=os.path.join(pki, "ca.pem")
    )
    with pytest.raises(Exception):
        client.is_server_live(client_timeout=10)
    client.close()


def test_https_infers(pki, tls_server):
    client = httpclient.InferenceServerClient(
        url=tls_server["http"], ssl=True, ssl_options={"ca_certs": os.path.join(pki, "ca.pem")}
    )
    assert client.is_server_live()
    a, b, inputs = simple_inputs(httpclient)
    result = client.infer("simple", inputs)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
    client.close()
