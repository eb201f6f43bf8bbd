#!/usr/bin/env python3
"""Writes the sequence models of Triton's client examples: <out>/simple_sequence,
<out>/simple_dyna_sequence and <out>/simple_string_dyna_sequence, each config.pbtxt +
1/model.onnx (sequence-batching.md §10), and <out>/simple_initial_state, a model whose implicit
state starts from a data file (config.pbtxt + 1/model.onnx + initial_state/offset.bin, §7).

Both graphs are stateless over the control inputs the sequence batcher feeds, as Triton's own
ONNX versions of these models are:
  simple_sequence       OUTPUT = READY * (INPUT + START)                  (direct, 1 instance)
  simple_dyna_sequence  OUTPUT = READY * (INPUT + START + END * CORRID)   (oldest, 2 instances)
So a sequence's first request answers INPUT + 1, the others INPUT, and a padding row (READY 0)
answers 0. The other two keep an implicit state ACC (state input ACC, output ACC_OUT):
  simple_string_dyna_sequence  acc = (1 - START) * ACC + INPUT, plus int32(CORRID) on END
                               (CORRID TYPE_STRING, parsed by ONNX Cast(string->int32) of
                               Where(END, CORRID, "0")); OUTPUT = READY * acc   (oldest, 2 instances)
  simple_initial_state         acc = ACC + INPUT, OUTPUT = acc; ACC starts at 100 from
                               initial_state/offset.bin                         (direct, 1 instance) Output is deterministic (the building blocks of gen_models.py), so
scripts/check_models.sh proves the committed files regenerate byte for byte.

Usage: gen_sequence_models.py [--out DIR] [--verify] [--list]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from onnx import TensorProto, helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_models import ROOT, Model, Tensor, assert_equal, main, onnx_model, run  # noqa: E402

MAX_BATCH = 8


def control(name: str, kind: str, form: str) -> str:
    return f'    {{\n      name: "{name}"\n      control [ {{ kind: {kind} {form} }} ]\n    }}'


def flag(name: str, kind: str) -> str:
    return control(name, kind, "int32_false_true: [ 0, 1 ]")


def config(name: str, strategy: str, idle_us: int, controls: list[str], instances: int, state: str = "") -> str:
    control_block = "  control_input [\n" + ",\n".join(controls) + "\n  ]\n" if controls else ""
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {MAX_BATCH}\n"
        "sequence_batching {\n"
        f"  max_sequence_idle_microseconds: {idle_us}\n"
        f"{strategy}"
        f"{control_block}"
        f"{state}"
        "}\n"
        'input [\n  {\n    name: "INPUT"\n    data_type: TYPE_INT32\n    dims: [ 1 ]\n  }\n]\n'
        'output [\n  {\n    name: "OUTPUT"\n    data_type: TYPE_INT32\n    dims: [ 1 ]\n  }\n]\n'
        f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]\n"
    )


def int32(name: str) -> Tensor:
    return Tensor(name, "TYPE_INT32", TensorProto.INT32, ["N", 1], [1])


def column(values) -> np.ndarray:
    return np.array(values, dtype=np.int32).reshape(-1, 1)


def simple_sequence() -> Model:
    name = "simple_sequence"
    nodes = [
        helper.make_node("Add", ["INPUT", "START"], ["sum"]),
        helper.make_node("Mul", ["READY", "sum"], ["OUTPUT"]),
    ]
    graph = onnx_model(name, nodes, [int32("INPUT"), int32("START"), int32("READY")], [int32("OUTPUT")])

    def verify(session, version):
        x, start, ready = column([0, 11, -7, 5]), column([1, 0, 1, 0]), column([1, 1, 1, 0])
        got = run(session, {"INPUT": x, "START": start, "READY": ready})
        assert_equal(got["OUTPUT"], ready * (x + start), f"{name} OUTPUT")

    cfg = config(
        name,
        "",
        5000000,
        [flag("START", "CONTROL_SEQUENCE_START"), flag("READY", "CONTROL_SEQUENCE_READY")],
        1,
    )
    return Model(name, {1: graph}, cfg, verify)


def simple_dyna_sequence() -> Model:
    name = "simple_dyna_sequence"
    corrid = Tensor("CORRID", None, TensorProto.UINT64, ["N", 1])
    nodes = [
        helper.make_node("Cast", ["CORRID"], ["corrid32"], to=TensorProto.INT32),
        helper.make_node("Mul", ["END", "corrid32"], ["end_corrid"]),
        helper.make_node("Add", ["INPUT", "START"], ["with_start"]),
        helper.make_node("Add", ["with_start", "end_corrid"], ["sum"]),
        helper.make_node("Mul", ["READY", "sum"], ["OUTPUT"]),
    ]
    inputs = [int32("INPUT"), int32("START"), int32("END"), int32("READY"), corrid]
    graph = onnx_model(name, nodes, inputs, [int32("OUTPUT")])

    def verify(session, version):
        x = column([0, 11, -1, 5])
        start, end, ready = column([1, 0, 0, 0]), column([0, 0, 1, 1]), column([1, 1, 1, 0])
        ids = np.array([1000, 1001, 1000, 7], dtype=np.uint64).reshape(-1, 1)
        got = run(session, {"INPUT": x, "START": start, "END": end, "READY": ready, "CORRID": ids})
        want = ready * (x + start + end * ids.astype(np.int32))
        assert_equal(got["OUTPUT"], want, f"{name} OUTPUT")

    cfg = config(
        name,
        OLDEST,
        10000000,
        [
            flag("START", "CONTROL_SEQUENCE_START"),
            flag("END", "CONTROL_SEQUENCE_END"),
            flag("READY", "CONTROL_SEQUENCE_READY"),
            control("CORRID", "CONTROL_SEQUENCE_CORRID", "data_type: TYPE_UINT64"),
        ],
        2,
    )
    return Model(name, {1: graph}, cfg, verify)


def acc_state(initial: str = "") -> str:
    return (
        "  state [\n    {\n"
        '      input_name: "ACC"\n'
        '      output_name: "ACC_OUT"\n'
        "      data_type: TYPE_INT32\n"
        "      dims: [ 1 ]\n"
        f"{initial}"
        "    }\n  ]\n"
    )


OLDEST = "  oldest {\n    max_candidate_sequences: 1024\n    max_queue_delay_microseconds: 10000\n  }\n"


def simple_string_dyna_sequence() -> Model:
    name = "simple_string_dyna_sequence"
    corrid = Tensor("CORRID", None, TensorProto.STRING, ["N", 1])
    one = helper.make_tensor("one", TensorProto.INT32, [1], [1])
    zero_id = helper.make_tensor("zero_id", TensorProto.STRING, [1], [b"0"])
    nodes = [
        helper.make_node("Sub", ["one", "START"], ["keep"]),
        helper.make_node("Mul", ["keep", "ACC"], ["kept"]),
        helper.make_node("Add", ["kept", "INPUT"], ["acc"]),
        helper.make_node("Cast", ["END"], ["end_flag"], to=TensorProto.BOOL),
        helper.make_node("Where", ["end_flag", "CORRID", "zero_id"], ["end_id"]),
        helper.make_node("Cast", ["end_id"], ["end_value"], to=TensorProto.INT32),
        helper.make_node("Add", ["acc", "end_value"], ["total"]),
        helper.make_node("Mul", ["READY", "total"], ["OUTPUT"]),
        helper.make_node("Identity", ["total"], ["ACC_OUT"]),
    ]
    inputs = [int32("INPUT"), int32("START"), int32("END"), int32("READY"), corrid, int32("ACC")]
    graph = onnx_model(name, nodes, inputs, [int32("OUTPUT"), int32("ACC_OUT")], [one, zero_id])

    def verify(session, version):
        x, acc = column([20, -11, -1, 5]), column([0, 20, 7, 3])
        start, end, ready = column([1, 0, 0, 0]), column([0, 0, 1, 0]), column([1, 1, 1, 1])
        ids = np.array([["1002"], ["1002"], ["1002"], [""]], dtype=object)
        feeds = {"INPUT": x, "START": start, "END": end, "READY": ready, "CORRID": ids, "ACC": acc}
        got = run(session, feeds)
        assert_equal(got["OUTPUT"], column([20, 9, 7 - 1 + 1002, 8]), f"{name} OUTPUT")
        assert_equal(got["ACC_OUT"], column([20, 9, 7 - 1 + 1002, 8]), f"{name} ACC_OUT")

    cfg = config(
        name,
        OLDEST,
        10000000,
        [
            flag("START", "CONTROL_SEQUENCE_START"),
            flag("END", "CONTROL_SEQUENCE_END"),
            flag("READY", "CONTROL_SEQUENCE_READY"),
            control("CORRID", "CONTROL_SEQUENCE_CORRID", "data_type: TYPE_STRING"),
        ],
        2,
        acc_state(),
    )
    return Model(name, {1: graph}, cfg, verify)


INITIAL_ACC = 100
# Files a model holds besides config.pbtxt and its versions: model -> {path: bytes}.
EXTRA_FILES = {"simple_initial_state": {"initial_state/offset.bin": np.array([INITIAL_ACC], dtype="<i4").tobytes()}}


def simple_initial_state() -> Model:
    name = "simple_initial_state"
    nodes = [
        helper.make_node("Add", ["ACC", "INPUT"], ["ACC_OUT"]),
        helper.make_node("Identity", ["ACC_OUT"], ["OUTPUT"]),
    ]
    graph = onnx_model(name, nodes, [int32("INPUT"), int32("ACC")], [int32("OUTPUT"), int32("ACC_OUT")])

    def verify(session, version):
        x, acc = column([1, 2]), column([INITIAL_ACC, 7])
        got = run(session, {"INPUT": x, "ACC": acc})
        assert_equal(got["OUTPUT"], column([101, 9]), f"{name} OUTPUT")

    initial = (
        "      initial_state [\n        {\n"
        "          data_type: TYPE_INT32\n"
        "          dims: [ 1 ]\n"
        '          name: "offset"\n'
        '          data_file: "offset.bin"\n'
        "        }\n      ]\n"
    )
    cfg = config(name, "", 5000000, [], 1, acc_state(initial))
    return Model(name, {1: graph}, cfg, verify)


def all_models() -> list[Model]:
    return [simple_sequence(), simple_dyna_sequence(), simple_string_dyna_sequence(), simple_initial_state()]


def write_extra_files(out: str):
    for model, files in EXTRA_FILES.items():
        for rel, data in files.items():
            path = os.path.join(out, model, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)


if __name__ == "__main__":
    default_out = os.path.join(ROOT, "client_examples_repository")
    status = main(models_of=all_models, default_out=default_out, doc=__doc__)
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--out", default=default_out)
    extra.add_argument("--list", action="store_true")
    args, _ = extra.parse_known_args()
    if status == 0 and not args.list:
        write_extra_files(args.out)
    sys.exit(status)
