#!/usr/bin/env python3
"""Writes the test model repository: <out>/<model>/config.pbtxt and <out>/<model>/<version>/model.onnx.

Output is deterministic (no timestamps, no randomness), so rerunning gives byte-identical files and
scripts/check_models.sh can prove the committed fixtures match this generator. Every model is built
and checked with onnx.checker before anything is written; --verify also runs each one through
onnxruntime and compares its outputs with numpy. Only the folders of the models listed here are
replaced; anything else under <out> is left alone.

With --examples it writes the models Triton's client examples need beyond model_repository/
(simple_int8, densenet_onnx) into client_examples_repository/ instead (scripts/run_examples.sh
serves both folders).

Usage: gen_models.py [--examples] [--out DIR] [--verify] [--list]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OPSET = 17
# IR 8 is the version that belongs to opset 17; onnxruntime 1.31.1 loads it.
IR_VERSION = 8
PRODUCER_NAME = "nereid-gen_models"
PRODUCER_VERSION = "1"
MAX_BATCH = 8

# Triton datatype suffix (identity_<suffix>) -> (config TYPE_*, ONNX element type, numpy dtype name).
# bf16 has no numpy dtype of its own; ml_dtypes.bfloat16 is what onnx and tritonclient use.
IDENTITY_TYPES = {
    "bool": ("TYPE_BOOL", TensorProto.BOOL, "bool"),
    "uint8": ("TYPE_UINT8", TensorProto.UINT8, "uint8"),
    "uint16": ("TYPE_UINT16", TensorProto.UINT16, "uint16"),
    "uint32": ("TYPE_UINT32", TensorProto.UINT32, "uint32"),
    "uint64": ("TYPE_UINT64", TensorProto.UINT64, "uint64"),
    "int8": ("TYPE_INT8", TensorProto.INT8, "int8"),
    "int16": ("TYPE_INT16", TensorProto.INT16, "int16"),
    "int32": ("TYPE_INT32", TensorProto.INT32, "int32"),
    "int64": ("TYPE_INT64", TensorProto.INT64, "int64"),
    "fp16": ("TYPE_FP16", TensorProto.FLOAT16, "float16"),
    "bf16": ("TYPE_BF16", TensorProto.BFLOAT16, "bfloat16"),
    "fp32": ("TYPE_FP32", TensorProto.FLOAT, "float32"),
    "fp64": ("TYPE_FP64", TensorProto.DOUBLE, "float64"),
}


@dataclass
class Tensor:
    name: str
    config_type: str | None  # None: not written to config.pbtxt
    onnx_type: int
    onnx_shape: list
    dims: list[int] = field(default_factory=list)


@dataclass
class Model:
    name: str
    versions: dict[int, onnx.ModelProto]
    config: str | None
    # verify(session, version) raises AssertionError on a wrong result; needs onnxruntime.
    verify: Callable
    # Other files of the model folder (name -> text), e.g. a labels file.
    files: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Building blocks


def onnx_model(graph_name: str, nodes, inputs: list[Tensor], outputs: list[Tensor], initializers=()):
    graph = helper.make_graph(
        nodes,
        graph_name,
        [helper.make_tensor_value_info(t.name, t.onnx_type, t.onnx_shape) for t in inputs],
        [helper.make_tensor_value_info(t.name, t.onnx_type, t.onnx_shape) for t in outputs],
        initializer=list(initializers),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def config_pbtxt(name: str, max_batch_size: int, inputs: list[Tensor], outputs: list[Tensor], extra: str = ""):
    def section(kind: str, tensors: list[Tensor]) -> str:
        entries = []
        for t in tensors:
            dims = ", ".join(str(d) for d in t.dims)
            entries.append(
                "  {\n"
                f'    name: "{t.name}"\n'
                f"    data_type: {t.config_type}\n"
                f"    dims: [ {dims} ]\n"
                "  }"
            )
        return f"{kind} [\n" + ",\n".join(entries) + "\n]\n"

    text = f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: {max_batch_size}\n'
    text += extra
    return text + section("input", inputs) + section("output", outputs)


def add_sub_nodes(a: str, b: str, sum_out: str, diff_out: str, offset: str | None = None):
    if offset is None:
        return [helper.make_node("Add", [a, b], [sum_out]), helper.make_node("Sub", [a, b], [diff_out])]
    return [
        helper.make_node("Add", [a, b], ["a_plus_b"]),
        helper.make_node("Add", ["a_plus_b", offset], [sum_out]),
        helper.make_node("Sub", [a, b], [diff_out]),
    ]


def int32_pair(shape, seed: int):
    # Fixed seeds: verification data must not change from run to run either.
    rng = np.random.default_rng(seed)
    a = rng.integers(-1000, 1000, size=shape, dtype=np.int32)
    b = rng.integers(-1000, 1000, size=shape, dtype=np.int32)
    return a, b


def run(session, feeds: dict):
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def assert_equal(got, want, what: str):
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype or got.tobytes() != want.tobytes():
        raise AssertionError(f"{what}: expected {want.dtype}{list(want.shape)} {want!r}, got {got.dtype}{list(got.shape)} {got!r}")


def assert_strings_equal(got, want, what: str):
    got, want = np.asarray(got, dtype=object), np.asarray(want, dtype=object)
    as_text = np.vectorize(lambda s: s.decode() if isinstance(s, bytes) else str(s), otypes=[object])
    if got.shape != want.shape or not np.array_equal(as_text(got), as_text(want)):
        raise AssertionError(f"{what}: expected {want!r}, got {got!r}")


# ---------------------------------------------------------------------------------------------
# The models


def int32_add_sub(name: str, batching: bool, offsets: dict[int, int] | None = None, extra_config: str = "",
                  element: str = "int32") -> Model:
    config_type, onnx_type, np_name = {
        "int32": ("TYPE_INT32", TensorProto.INT32, "int32"),
        "int8": ("TYPE_INT8", TensorProto.INT8, "int8"),
    }[element]
    shape = ["N", 16] if batching else [16]
    ins = [Tensor(n, config_type, onnx_type, shape, [16]) for n in ("INPUT0", "INPUT1")]
    outs = [Tensor(n, config_type, onnx_type, shape, [16]) for n in ("OUTPUT0", "OUTPUT1")]
    offsets = offsets or {1: 0}
    versions = {}
    for version, offset in offsets.items():
        if len(offsets) == 1:
            nodes, inits = add_sub_nodes("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1"), []
        else:
            nodes = add_sub_nodes("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1", offset="version_offset")
            inits = [helper.make_tensor("version_offset", onnx_type, [], [offset])]
        versions[version] = onnx_model(name, nodes, ins, outs, inits)

    def verify(session, version):
        a, b = int32_pair((3, 16) if batching else (16,), seed=version)
        # Small values: int8 sums and differences must not wrap.
        a, b = (a % 50).astype(np_name), (b % 50).astype(np_name)
        got = run(session, {"INPUT0": a, "INPUT1": b})
        assert_equal(got["OUTPUT0"], a + b + np.dtype(np_name).type(offsets[version]), f"{name} v{version} OUTPUT0")
        assert_equal(got["OUTPUT1"], a - b, f"{name} v{version} OUTPUT1")

    config = config_pbtxt(name, MAX_BATCH if batching else 0, ins, outs, extra_config)
    return Model(name, versions, config, verify)


def simple_string() -> Model:
    name = "simple_string"
    ins = [Tensor(n, "TYPE_STRING", TensorProto.STRING, ["N", 16], [16]) for n in ("INPUT0", "INPUT1")]
    outs = [Tensor(n, "TYPE_STRING", TensorProto.STRING, ["N", 16], [16]) for n in ("OUTPUT0", "OUTPUT1")]
    to_int = lambda src, dst: helper.make_node("Cast", [src], [dst], to=TensorProto.INT32)
    to_str = lambda src, dst: helper.make_node("Cast", [src], [dst], to=TensorProto.STRING)
    nodes = [
        to_int("INPUT0", "a"),
        to_int("INPUT1", "b"),
        *add_sub_nodes("a", "b", "sum", "diff"),
        to_str("sum", "OUTPUT0"),
        to_str("diff", "OUTPUT1"),
    ]
    model = onnx_model(name, nodes, ins, outs)

    def verify(session, version):
        a, b = int32_pair((2, 16), seed=7)
        text = np.vectorize(str, otypes=[object])
        got = run(session, {"INPUT0": text(a), "INPUT1": text(b)})
        assert_strings_equal(got["OUTPUT0"], text(a + b), f"{name} OUTPUT0")
        assert_strings_equal(got["OUTPUT1"], text(a - b), f"{name} OUTPUT1")

    return Model(name, {1: model}, config_pbtxt(name, MAX_BATCH, ins, outs), verify)


def simple_identity() -> Model:
    name = "simple_identity"
    i = Tensor("INPUT0", "TYPE_STRING", TensorProto.STRING, ["N", "L"], [-1])
    o = Tensor("OUTPUT0", "TYPE_STRING", TensorProto.STRING, ["N", "L"], [-1])
    model = onnx_model(name, [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], [i], [o])

    def verify(session, version):
        x = np.array([["", "a", "hello world"], ["naïve", "0", "x" * 300]], dtype=object)
        assert_strings_equal(run(session, {"INPUT0": x})["OUTPUT0"], x, f"{name} OUTPUT0")

    return Model(name, {1: model}, config_pbtxt(name, MAX_BATCH, [i], [o]), verify)


def identity_sample(np_dtype) -> np.ndarray:
    if np_dtype == np.bool_:
        return np.array([[True, False, True], [False, False, True]])
    if np.issubdtype(np_dtype, np.integer):
        info = np.iinfo(np_dtype)
        return np.array([[info.min, 0, 1], [info.max, 7, info.max - 1]], dtype=np_dtype)
    # Floats (bfloat16 included): extremes, signed zero, infinities and NaN must pass through bit-exact.
    return np.array([[1.5, -0.0, np.inf], [-np.inf, np.nan, -2.75e-3]], dtype=np_dtype)


def identity(suffix: str) -> Model:
    import ml_dtypes  # installed with onnx; only bf16 needs it

    name = f"identity_{suffix}"
    config_type, onnx_type, dtype_name = IDENTITY_TYPES[suffix]
    np_dtype = ml_dtypes.bfloat16 if dtype_name == "bfloat16" else np.dtype(dtype_name)
    i = Tensor("INPUT0", config_type, onnx_type, ["N", "L"], [-1])
    o = Tensor("OUTPUT0", config_type, onnx_type, ["N", "L"], [-1])
    model = onnx_model(name, [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], [i], [o])

    def verify(session, version):
        x = identity_sample(np_dtype)
        if onnx_type == TensorProto.BFLOAT16:
            got = run_bf16(session, x)
        else:
            got = run(session, {"INPUT0": x})["OUTPUT0"]
        assert_equal(got, x, f"{name} OUTPUT0")

    return Model(name, {1: model}, config_pbtxt(name, MAX_BATCH, [i], [o]), verify)


def run_bf16(session, x):
    """onnxruntime's Python API has no numpy mapping for bfloat16 in either direction, so the input goes
    in as an OrtValue built from the raw bits and the output bits are read from the CPU buffer."""
    import ctypes

    import onnxruntime as ort

    value = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(np.ascontiguousarray(x).view(np.uint16), TensorProto.BFLOAT16)
    out = session.run_with_ort_values(["OUTPUT0"], {"INPUT0": value})[0]
    assert out.data_type() == "tensor(bfloat16)", out.data_type()
    shape = tuple(out.shape())
    raw = ctypes.string_at(out.data_ptr(), 2 * int(np.prod(shape)))
    return np.frombuffer(raw, dtype=x.dtype).reshape(shape)


def add_sub_autocomplete() -> Model:
    name = "add_sub_autocomplete"
    ins = [Tensor(n, None, TensorProto.FLOAT, ["batch", 4]) for n in ("x", "y")]
    outs = [Tensor(n, None, TensorProto.FLOAT, ["batch", 4]) for n in ("sum", "diff")]
    model = onnx_model(name, add_sub_nodes("x", "y", "sum", "diff"), ins, outs)

    def verify(session, version):
        x = np.arange(12, dtype=np.float32).reshape(3, 4) / 4
        y = np.full((3, 4), 0.5, dtype=np.float32)
        got = run(session, {"x": x, "y": y})
        assert_equal(got["sum"], x + y, f"{name} sum")
        assert_equal(got["diff"], x - y, f"{name} diff")

    # No config.pbtxt on purpose: this model exercises auto-complete.
    return Model(name, {1: model}, None, verify)


def all_models() -> list[Model]:
    return [
        int32_add_sub("simple", batching=True),
        simple_string(),
        simple_identity(),
        *(identity(suffix) for suffix in IDENTITY_TYPES),
        int32_add_sub("simple_nobatch", batching=False),
        add_sub_autocomplete(),
        int32_add_sub(
            "simple_versions",
            batching=True,
            offsets={1: 0, 2: 1, 3: 2},
            extra_config="version_policy: { latest: { num_versions: 2 } }\n",
        ),
    ]


DENSENET_SOURCE = os.path.join("backend", "test", "data", "light", "light_densenet121.onnx")


def densenet_onnx() -> Model:
    """onnx's own light DenseNet-121 test model as Triton's image examples know it: data_0 FP32
    [3,224,224] (NCHW) reshaped to the graph's [1,3,224,224], fc6_1 [1000] from [1,1000,1,1], and a
    labels file of 1000 lines. The graph lists its initializers as inputs (IR 3); they are dropped from
    the inputs (IR 4) so data_0 is the only one."""
    name = "densenet_onnx"
    source = onnx.load(os.path.join(os.path.dirname(onnx.__file__), DENSENET_SOURCE))
    weights = {t.name for t in source.graph.initializer}
    keep = [i for i in source.graph.input if i.name not in weights]
    del source.graph.input[:]
    source.graph.input.extend(keep)
    source.ir_version = max(source.ir_version, 4)
    source.producer_name, source.producer_version = PRODUCER_NAME, PRODUCER_VERSION
    onnx.checker.check_model(source)
    config = (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        "max_batch_size: 0\n"
        "input [\n  {\n"
        '    name: "data_0"\n    data_type: TYPE_FP32\n    format: FORMAT_NCHW\n'
        "    dims: [ 3, 224, 224 ]\n    reshape: { shape: [ 1, 3, 224, 224 ] }\n"
        "  }\n]\n"
        "output [\n  {\n"
        '    name: "fc6_1"\n    data_type: TYPE_FP32\n    dims: [ 1000 ]\n'
        "    reshape: { shape: [ 1, 1000, 1, 1 ] }\n"
        '    label_filename: "densenet_labels.txt"\n'
        "  }\n]\n"
    )
    labels = "".join(f"CLASS_{i:04d}\n" for i in range(1000))

    def verify(session, version):
        x = np.linspace(0, 1, 3 * 224 * 224, dtype=np.float32).reshape(1, 3, 224, 224)
        got = run(session, {"data_0": x})["fc6_1"]
        assert got.shape == (1, 1000, 1, 1) and got.dtype == np.float32, (got.shape, got.dtype)

    return Model(name, {1: source}, config, verify, {"densenet_labels.txt": labels})


def example_models() -> list[Model]:
    return [
        int32_add_sub("simple_int8", batching=True, element="int8"),
        densenet_onnx(),
    ]


# ---------------------------------------------------------------------------------------------


def verify_all(models: list[Model]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    for m in models:
        for version, proto in m.versions.items():
            session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
            m.verify(session, version)
    print(f"gen_models: onnxruntime {ort.__version__} verified {sum(len(m.versions) for m in models)} model versions")


def write_all(models: list[Model], out: str):
    os.makedirs(out, exist_ok=True)
    for m in models:
        model_dir = os.path.join(out, m.name)
        shutil.rmtree(model_dir, ignore_errors=True)
        for version, proto in m.versions.items():
            os.makedirs(os.path.join(model_dir, str(version)))
            with open(os.path.join(model_dir, str(version), "model.onnx"), "wb") as f:
                f.write(proto.SerializeToString(deterministic=True))
        if m.config is not None:
            with open(os.path.join(model_dir, "config.pbtxt"), "w", encoding="utf-8", newline="\n") as f:
                f.write(m.config)
        for file_name, text in m.files.items():
            with open(os.path.join(model_dir, file_name), "w", encoding="utf-8", newline="\n") as f:
                f.write(text)
    print(f"gen_models: wrote {len(models)} models to {out}")


def main(argv=None, models_of=None, default_out=None, doc=None) -> int:
    """The command line; another generator passes its own models, output folder and doc."""
    parser = argparse.ArgumentParser(description=doc or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    if models_of is None:
        parser.add_argument("--examples", action="store_true", help="the client examples' models (default --out: client_examples_repository)")
    parser.add_argument("--out", default=None, help="repository root to write (default: %s)" % os.path.relpath(default_out or os.path.join(ROOT, "model_repository"), ROOT))
    parser.add_argument("--verify", action="store_true", help="run every model through onnxruntime before writing")
    parser.add_argument("--list", action="store_true", help="print the model folders this script owns and exit")
    args = parser.parse_args(argv)

    examples = getattr(args, "examples", False)
    if models_of is not None:
        models = models_of()
    else:
        models = example_models() if examples else all_models()
    if args.out is None:
        args.out = default_out or os.path.join(ROOT, "client_examples_repository" if examples else "model_repository")
    if args.list:
        print("\n".join(m.name for m in models))
        return 0
    if args.verify:
        verify_all(models)
    write_all(models, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
