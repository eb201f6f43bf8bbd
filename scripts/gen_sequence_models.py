#!/usr/bin/env python3
"""Writes the sequence models of Triton's client examples: <out>/simple_sequence and
<out>/simple_dyna_sequence, each config.pbtxt + 1/model.onnx (sequence-batching.md §10).

Both graphs are stateless over the control inputs the sequence batcher feeds, as Triton's own
ONNX versions of these models are:
  simple_sequence       OUTPUT = READY * (INPUT + START)                  (direct, 1 instance)
  simple_dyna_sequence  OUTPUT = READY * (INPUT + START + END * CORRID)   (oldest, 2 instances)
So a sequence's first request answers INPUT + 1, the others INPUT, and a padding row (READY 0)
answers 0. Output is deterministic (the building blocks of gen_models.py), so
scripts/check_models.sh proves the committed files regenerate byte for byte.

Usage: gen_sequence_models.py [--out DIR] [--verify] [--list]
"""

from __future__ import annotations

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


def config(name: str, strategy: str, idle_us: int, controls: list[str], instances: int) -> str:
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {MAX_BATCH}\n"
        "sequence_batching {\n"
        f"  max_sequence_idle_microseconds: {idle_us}\n"
        f"{strategy}"
        "  control_input [\n" + ",\n".join(controls) + "\n  ]\n"
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

    strategy = "  oldest {\n    max_candidate_sequences: 1024\n    max_queue_delay_microseconds: 10000\n  }\n"
    cfg = config(
        name,
        strategy,
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


def all_models() -> list[Model]:
    return [simple_sequence(), simple_dyna_sequence()]


if __name__ == "__main__":
    sys.exit(main(models_of=all_models, default_out=os.path.join(ROOT, "client_examples_repository"), doc=__doc__))
