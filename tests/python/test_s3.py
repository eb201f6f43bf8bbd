"""Model repositories in an S3-compatible object store: a real S3 server (moto's, from PyPI,
pinned in scripts/requirements.txt) on a free loopback port, one per test, and the real
`nereid` binary reading `s3://127.0.0.1:PORT/<bucket>/<prefix>` through its local cache.

Covered: load from a bucket; a poll-mode update of a version; a version uploaded half-way (a
multipart upload not yet completed) that must not load until complete; an explicit load of a
changed version; wrong credentials; a missing bucket; and in every failure the old version keeps
serving. Waits watch observable state (readiness, the index, moto's request log), never a clock.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from test_tritonclient import ROOT, STARTUP_TIMEOUT_S, Server, infer_simple, int32_rows

boto3 = pytest.importorskip("boto3", reason="moto[server] (scripts/requirements.txt) is not installed")

BUCKET = "models"
PREFIX = "repo"
KEY_ID = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
# A guard against a hang, not a timing assertion: each wait ends as soon as its state is seen.
WAIT_S = 90


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}", pytrace=False)


class Moto:
    """moto's S3 server on a free loopback port, with its request log kept."""

    def __init__(self, tmp_path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        # The server class of the tritonclient tests drains and keeps moto's output (its
        # request log); moto prints no gRPC line, so nothing waits on one.
        self.server = Server(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            dict(os.environ),
            started=re.compile(r"^\b$"),
        )
        self.proc, self.lines = self.server.proc, self.server.lines

        def up():
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1).read()
                return True
            except OSError:
                return self.proc.poll() is not None  # exited: fail below
        wait_for(up, "the moto server to answer")
        assert self.proc.poll() is None, "moto server exited:\n" + "\n".join(self.lines)
        self.s3 = self.client("s3")
        self.s3.create_bucket(Bucket=BUCKET)

    def client(self, service: str, key_id: str = KEY_ID, secret: str = SECRET):
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            region_name="us-east-1",
        )

    def upload_model(self, name: str, versions=(1,), as_name: str | None = None, bucket: str = BUCKET):
        """Uploads model_repository/<name>'s config and the given versions (each a copy of its
        version 1 model file) as <PREFIX>/<as_name>/."""
        src = os.path.join(ROOT, "model_repository", name)
        dest = f"{PREFIX}/{as_name or name}"
        self.s3.upload_file(os.path.join(src, "config.pbtxt"), bucket, f"{dest}/config.pbtxt")
        for v in versions:
            self.s3.upload_file(os.path.join(src, "1", "model.onnx"), bucket, f"{dest}/{v}/model.onnx")

    def surveys(self) -> int:
        """Listings of the whole repository prefix so far (one per poll, plus startup and index)."""
        pattern = re.compile(rf'"GET /{BUCKET}\?list-type=2&prefix={PREFIX}/ ')
        return sum(1 for line in list(self.lines) if pattern.search(line))

    def enable_auth(self):
        """From now on every request must be signed by an IAM user's key (moto's IAM check)."""
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                     headers={"Content-Type": "text/plain"})
        urllib.request.urlopen(req, timeout=5).read()

    def stop(self):
        self.server.stop()


@pytest.fixture
def moto(tmp_path):
    m = Moto(tmp_path)
    try:
        yield m
    finally:
        m.stop()


def start(moto: Moto, tmp_path, *args: str, key_id: str = KEY_ID, secret: str = SECRET,
          bucket: str = BUCKET, expect_start: bool = True) -> Server:
    binary = os.environ.get("NEREID_BIN", os.path.join(ROOT, "target", "debug", "nereid"))
    binary = os.path.join(ROOT, binary) if not os.path.isabs(binary) else binary
    if not os.access(binary, os.X_OK):
        pytest.fail(f"server binary '{binary}' not found; build it (cargo build) or set NEREID_BIN", pytrace=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION="us-east-1")
    ort_lib = os.path.join(ROOT, ".ort", "libonnxruntime.so.1.31.1")
    if "ORT_DYLIB_PATH" not in env and os.path.exists(ort_lib):
        env["ORT_DYLIB_PATH"] = ort_lib
    url = f"s3://127.0.0.1:{moto.port}/{bucket}/{PREFIX}"
    argv = [binary, "--model-repository", url, "--model-cache-dir", str(tmp_path / "cache"),
            "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", *args]
    srv = Server(argv, env)
    srv.url = url
    if expect_start:
        srv.wait_started(STARTUP_TIMEOUT_S)
    return srv


@pytest.fixture
def servers():
    started: list[Server] = []
    yield started
    for s in started:
        s.stop()


def serves(client, version: str, model: str = "simple", plus: int = 0) -> bool:
    """The model answers on `version` with OUTPUT0 = INPUT0 + INPUT1 (+ `plus`: the
    simple_versions/2 graph adds 1)."""
    a, b = int32_rows(1, seed=7)
    try:
        out = infer_simple(client, a, b, model=model, version=version)
    except InferenceServerException:
        return False
    return bool(np.array_equal(out.as_numpy("OUTPUT0"), a + b + plus))


def load_error(client, model: str = "simple") -> str:
    """The error text of a load that must fail."""
    with pytest.raises(InferenceServerException) as failed:
        client.load_model(model)
    return str(failed.value)


def ready(client, version: str, model: str = "simple") -> bool:
    try:
        return client.is_model_ready(model, version)
    except InferenceServerException:
        return False  # a version the server does not know


def ready_versions(client, model: str = "simple") -> set[str]:
    index = client.get_model_repository_index(as_json=True).get("models", [])
    return {m.get("version", "") for m in index if m["name"] == model and m.get("state") == "READY"}


def test_loads_from_a_bucket(moto, tmp_path, servers):
    moto.upload_model("simple")
    moto.upload_model("simple_nobatch")
    srv = start(moto, tmp_path)
    servers.append(srv)
    with grpcclient.InferenceServerClient(srv.address) as client:
        assert client.is_model_ready("simple") and client.is_model_ready("simple_nobatch")
        assert serves(client, "1")
        names = {m["name"] for m in client.get_model_repository_index(as_json=True)["models"]}
        assert names == {"simple", "simple_nobatch"}
    # Served from complete copies in the cache folder; nothing left half-written.
    cache = tmp_path / "cache"
    repo_dirs = [d for d in cache.iterdir() if d.is_dir()]
    assert len(repo_dirs) == 1
    snapshots = list((repo_dirs[0] / "simple").iterdir())
    assert len(snapshots) == 1 and (snapshots[0] / "1" / "model.onnx").is_file()
    assert list((repo_dirs[0] / ".partial").iterdir()) == []
    assert any("downloading the model into the cache" in line for line in srv.lines)


def test_poll_mode_updates_a_version_and_waits_for_a_half_uploaded_one(moto, tmp_path, servers):
    moto.upload_model("simple")
    srv = start(moto, tmp_path, "--model-control-mode=poll", "--repository-poll-secs=1")
    servers.append(srv)
    with grpcclient.InferenceServerClient(srv.address) as client:
        assert serves(client, "1")
        # Nothing changes: each poll costs one listing of the repository and nothing else.
        start_at = len(moto.lines)
        polls = moto.surveys()
        wait_for(lambda: moto.surveys() >= polls + 3, "three polls of an unchanged repository")
        requests = [line for line in moto.lines[start_at:] if '"GET ' in line or '"HEAD ' in line]
        assert len(requests) == moto.surveys() - polls, requests
        # Version 2 arrives: the poll notices the new object, waits until it held still, loads
        # it, and the default policy (latest) retires version 1.
        moto.upload_model("simple", versions=(2,))
        wait_for(lambda: ready(client, "2"), "version 2 READY")
        assert serves(client, "2")
        wait_for(lambda: ready_versions(client) == {"2"}, "version 1 retired")

        # Version 3 uploaded half-way: a multipart upload with its part sent, not completed.
        key = f"{PREFIX}/simple/3/model.onnx"
        with open(os.path.join(ROOT, "model_repository", "simple", "1", "model.onnx"), "rb") as f:
            body = f.read()
        upload = moto.s3.create_multipart_upload(Bucket=BUCKET, Key=key)
        part = moto.s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=body)
        polls = moto.surveys()
        wait_for(lambda: moto.surveys() >= polls + 3, "three polls after the partial upload")
        assert not ready(client, "3")
        assert serves(client, "2") and ready_versions(client) == {"2"}

        moto.s3.complete_multipart_upload(
            Bucket=BUCKET, Key=key, UploadId=upload["UploadId"],
            MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})
        wait_for(lambda: ready(client, "3"), "version 3 READY once complete")
        assert serves(client, "3")

        # A broken config replaces the good one: the load fails, version 3 keeps serving.
        moto.s3.put_object(Bucket=BUCKET, Key=f"{PREFIX}/simple/config.pbtxt", Body=b"this is not a config {")
        wait_for(lambda: any("poll: load failed" in line for line in srv.lines), "the failed reload")
        assert serves(client, "3")


def test_explicit_load_of_a_changed_version(moto, tmp_path, servers):
    moto.upload_model("simple")
    srv = start(moto, tmp_path, "--model-control-mode=explicit", "--load-model=simple")
    servers.append(srv)
    downloads = lambda: sum("downloading the model into the cache" in line for line in srv.lines)
    with grpcclient.InferenceServerClient(srv.address) as client:
        assert serves(client, "1")
        assert downloads() == 1
        # Unchanged: the load lists the model, finds the same ETags and downloads nothing.
        client.load_model("simple")
        assert downloads() == 1 and serves(client, "1")
        # Version 2 uploaded: nothing happens until the load asks.
        moto.upload_model("simple", versions=(2,))
        assert not ready(client, "2")
        client.load_model("simple")
        assert ready(client, "2") and serves(client, "2")
        assert downloads() == 2
        # Version 2's file replaced in place (a new ETag, the same size class): an explicit load
        # picks it up; the new graph adds 1.
        graph = lambda m, v: os.path.join(ROOT, "model_repository", m, v, "model.onnx")
        moto.s3.upload_file(graph("simple_versions", "2"), BUCKET, f"{PREFIX}/simple/2/model.onnx")
        assert serves(client, "2")  # nothing happens until the load asks
        client.load_model("simple")
        assert serves(client, "2", plus=1)
        # A file that does not fit simple's config: the load fails, the last good one serves.
        moto.s3.upload_file(graph("simple_identity", "1"), BUCKET, f"{PREFIX}/simple/2/model.onnx")
        text = load_error(client)
        assert "simple" in text
        assert serves(client, "2", plus=1)


def test_missing_bucket(moto, tmp_path, servers):
    # At startup, as for a missing folder: the server stops, naming the URL.
    srv = start(moto, tmp_path, bucket="no-such-bucket", expect_start=False)
    servers.append(srv)
    assert srv.proc.wait(timeout=WAIT_S) != 0
    log = "\n".join(srv.lines)
    assert srv.url in log and "not found" in log and "NoSuchBucket" in log, log
    # In explicit mode the server starts; a load fails, naming the URL.
    srv = start(moto, tmp_path, "--model-control-mode=explicit", bucket="no-such-bucket")
    servers.append(srv)
    with grpcclient.InferenceServerClient(srv.address) as client:
        text = load_error(client)
        assert srv.url in text and "not found" in text, text

    # A bucket removed while a model serves: a load fails naming the URL, the model keeps serving.
    moto.upload_model("simple")
    srv2 = start(moto, tmp_path / "two", "--model-control-mode=explicit", "--load-model=simple")
    servers.append(srv2)
    with grpcclient.InferenceServerClient(srv2.address) as client:
        assert serves(client, "1")
        for obj in moto.s3.list_objects_v2(Bucket=BUCKET)["Contents"]:
            moto.s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
        moto.s3.delete_bucket(Bucket=BUCKET)
        text = load_error(client)
        assert srv2.url in text and "not found" in text
        assert serves(client, "1")


def test_wrong_credentials(moto, tmp_path, servers):
    moto.upload_model("simple")
    # An IAM user whose key the server uses; moto then checks every request's signature.
    iam = moto.client("iam")
    iam.create_user(UserName="nereid")
    iam.put_user_policy(UserName="nereid", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="nereid")["AccessKey"]
    key_id, secret = key["AccessKeyId"], key["SecretAccessKey"]
    moto.enable_auth()
    moto.s3 = moto.client("s3", key_id, secret)

    good = start(moto, tmp_path, "--model-control-mode=explicit", "--load-model=simple",
                 key_id=key_id, secret=secret)
    servers.append(good)
    wrong_secret = "not-the-secret-" + secret[:8]
    bad = start(moto, tmp_path / "bad", "--model-control-mode=explicit", key_id=key_id, secret=wrong_secret)
    servers.append(bad)
    with grpcclient.InferenceServerClient(bad.address) as client:
        text = load_error(client)
        assert bad.url in text and "access denied" in text, text
        assert wrong_secret not in text and secret not in text
    assert not any(wrong_secret in line for line in bad.lines)

    with grpcclient.InferenceServerClient(good.address) as client:
        assert serves(client, "1")
        # The key is revoked, then a new version arrives: the load is refused, version 1 serves.
        moto.upload_model("simple", versions=(2,))
        moto.client("iam", key_id, secret).delete_access_key(UserName="nereid", AccessKeyId=key_id)
        text = load_error(client)
        assert good.url in text and "access denied" in text
        assert serves(client, "1") and not ready(client, "2")


def test_unreachable_endpoint(moto, tmp_path, servers):
    # A URL whose port nobody listens on (moto's fixture only lends the start helper).
    moto.port = free_port()
    srv = start(moto, tmp_path, "--model-control-mode=explicit")
    servers.append(srv)
    with grpcclient.InferenceServerClient(srv.address) as client:
        text = load_error(client)
        assert srv.url in text and "endpoint unreachable" in text, text
