"""The text model through the official tritonclient[grpc]: sentences in, embeddings out, as the
README shows it. Serves text_repository/ (model built by scripts/gen_text_model.py) and compares
with the NumPy reference embeddings that script wrote. Fails, not skips, without the model."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from test_tritonclient import ROOT, launch

MIN_COSINE = 0.99999
MAX_ABS_DIFF = 1e-4


@pytest.fixture(scope="module")
def reference():
    with open(os.path.join(ROOT, "tests", "data", "minilm_reference.json"), encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def text_client():
    repo = os.path.join(ROOT, "text_repository")
    for f in ("minilm/1/model.onnx", "minilm/tokenizer.json"):
        if not os.path.isfile(os.path.join(repo, f)):
            pytest.fail(f"text_repository/{f} is missing: build it with .venv/bin/python scripts/gen_text_model.py", pytrace=False)
    srv = launch("--grpc-port", "0", "--http-port", "0", "--metrics-port", "0", repository=repo)
    try:
        client = grpcclient.InferenceServerClient(url=srv.address)
        yield client
        client.close()
    finally:
        srv.stop()


def test_sentences_in_embeddings_out(text_client, reference):
    sentences = reference["sentences"]
    # The README's example: one text per row, BYTES [n, 1].
    texts = np.array([[s.encode("utf-8")] for s in sentences], dtype=object)
    inp = grpcclient.InferInput("TEXT", list(texts.shape), "BYTES")
    inp.set_data_from_numpy(texts)
    result = text_client.infer("minilm", [inp])
    got = result.as_numpy("EMBEDDING")
    assert got.shape == (len(sentences), 384) and got.dtype == np.float32
    want = np.array(reference["embeddings"], dtype=np.float64)
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.min() >= MIN_COSINE, cosine
    assert np.abs(got - want).max() <= MAX_ABS_DIFF


def test_metadata_shows_the_text_interface(text_client):
    meta = text_client.get_model_metadata("minilm", as_json=True)
    assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [("TEXT", "BYTES", ["-1", "1"])]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == [("EMBEDDING", "FP32", ["-1", "384"])]


def test_invalid_utf8_is_an_invalid_argument(text_client):
    texts = np.array([[b"fine"], [b"caf\xe9"]], dtype=object)
    inp = grpcclient.InferInput("TEXT", [2, 1], "BYTES")
    inp.set_data_from_numpy(texts)
    with pytest.raises(InferenceServerException) as e:
        text_client.infer("minilm", [inp])
    assert "text 1 is not valid UTF-8" in e.value.message()
