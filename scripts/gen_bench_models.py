#!/usr/bin/env python3
"""Writes the dynamic-batching bench repository (default .bench/model_repository, git-ignored).

Source: a network from the installed `onnx` wheel's light model zoo (onnx/backend/test/data/light/),
a Caffe2 export (opset 9) whose weights are `ConstantOfShape(shape) = 0.02` nodes. Two are known:

  alexnet   light_bvlc_alexnet.onnx (default): five convolutions, then three fully connected layers
            holding 58 M of its 61 M parameters. At batch 1 those layers are bound by memory
            bandwidth, so batching raises throughput on a CPU (about 40 -> 56 infer/s from batch 1
            to 8 on the 2-core bench machine): the case dynamic batching exists for.
  resnet50  light_resnet50.onnx: compute-bound on a CPU at every batch size (batch 1 and batch 8
            both about 18 infer/s on 2 cores), so batching has next to nothing to win there.

Every layer's weights are that one constant, so the network's output is the same for every input:
the compute is real, but nothing can be checked against it. This script therefore:

  1. makes the batch dimension symbolic ("N") on the graph input and output, and rewrites the one
     node that hard-codes batch 1 (the Reshape before the first fully connected Gemm, shape
     [1, K] -> [0, K], 0 = copy the batch dimension); checks there is nothing else (Flatten axis,
     other Reshapes, value_info) that pins it;
  2. replaces each `ConstantOfShape` weight with a seeded random initializer of the same shape
     (He-normal conv and hidden-layer weights, plausible BatchNorm statistics, a small classifier),
     so the outputs depend on the input - the topology and FLOPs are exactly those of the light model;
  3. runs onnx.checker (full) and strict shape inference, then verifies with onnxruntime:
       - the original light model reproduces its reference output (<source>_output_0.pb) and
         the symbolic-batch model with the original constant weights gives the same output;
       - at batch 1 the served model equals the original static-batch-1 topology carrying the same
         random weights (pre-softmax logits and softmax output);
       - at batch 1, 2, 4 and 8 each row of the batched output equals that row run alone at batch 1;
     tolerance: max |diff| <= 1e-4 * max(1, max |reference|), on both logits and softmax output;
  4. writes `<net>` (no dynamic batching) and `<net>_dynamic` (dynamic_batching with no preferred
     sizes and no queue delay, see DYNAMIC), both max_batch_size 8, KIND_CPU, by default 2 instances
     x 1 intra-op thread (inter-op 1), sharing the same model.onnx (hard link, or a copy where links
     are not possible).
     The output folder holds one network at a time.

Idempotent: a stamp in the output folder records a hash of this script, the network, the source
model and the options; when it matches, the script exits at once without importing onnx.

    scripts/gen_bench_models.py [--net alexnet|resnet50] [--out DIR] [--instances N] [--threads T]
                                [--dynamic-instances N] [--dynamic-threads T] [--force]

--instances/--threads set both models' instance_group count and intra_op_thread_count;
--dynamic-* override them for <net>_dynamic only (for trying e.g. 2 x 1 thread against 1 x 2).
"""

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time

NETWORKS = {
    "alexnet": "light_bvlc_alexnet",
    "resnet50": "light_resnet50",
}
BATCH_DIM = "N"
SEED = 20240601
MAX_BATCH = 8
VERIFY_BATCHES = (1, 2, 4, 8)
REL_TOL = 1e-4

CONFIG = """name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {max_batch}
input [
  {{
    name: "{input}"
    data_type: TYPE_FP32
    dims: [ 3, 224, 224 ]
  }}
]
output [
  {{
    name: "{output}"
    data_type: TYPE_FP32
    dims: [ 1000 ]
  }}
]
{batching}instance_group [ {{ count: {instances} kind: KIND_CPU }} ]
parameters {{ key: "intra_op_thread_count" value: {{ string_value: "{threads}" }} }}
parameters {{ key: "inter_op_thread_count" value: {{ string_value: "1" }} }}
"""
# Triton's starting point: no preferred sizes, no queue delay. A free instance takes everything that
# queued while both were busy (up to max_batch_size), so batches grow with the load and no core idles
# waiting for a fuller batch. Measured on the 2-core machine, AlexNet 2 x 1 thread, dynamic / none at
# concurrency 4, 8, 16: 1.05x, 1.24x, 1.41x; with preferred [4, 8] and a 2 ms delay: 1.01x, 1.13x,
# 1.30x (one run each), because a batch of 4 on one instance left the other idle.
DYNAMIC = "dynamic_batching {\n  max_queue_delay_microseconds: 0\n}\n"


def light_dir():
    spec = importlib.util.find_spec("onnx")
    if spec is None or not spec.origin:
        sys.exit("gen_bench_models: the onnx package is not installed (run scripts/setup-python.sh)")
    return os.path.join(os.path.dirname(spec.origin), "backend", "test", "data", "light")


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def log(msg):
    print(f"gen_bench_models: {msg}", flush=True)


# --------------------------------------------------------------------------------------------------
# Graph surgery


def make_symbolic(model):
    """Returns a copy of `model` whose batch dimension is symbolic; raises if something pins it."""
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    init_names = {t.name for t in g.initializer}

    # IR 3 lists every initializer as a graph input too; ONNX Runtime then treats them as
    # overridable inputs. Keep only the real input (IR >= 4 allows initializers that are not inputs).
    real_inputs = [i for i in g.input if i.name not in init_names]
    del g.input[:]
    g.input.extend(real_inputs)
    m.ir_version = max(m.ir_version, 7)

    for vi in list(g.input) + list(g.output):
        dims = vi.type.tensor_type.shape.dim
        if not dims or dims[0].dim_value != 1:
            raise SystemExit(f"gen_bench_models: {vi.name} does not start with batch 1: {dims}")
        dims[0].Clear()
        dims[0].dim_param = BATCH_DIM

    # Stale intermediate shapes would carry batch 1; shape inference recomputes them.
    del g.value_info[:]

    # The Caffe2 export carries an initializer no node reads (a data-queue blob); ORT warns about it.
    used = {i for n in g.node for i in n.input}
    unused = [t.name for t in g.initializer if t.name not in used]
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)

    fixed = []
    inits = {t.name: t for t in g.initializer}
    for node in g.node:
        if node.op_type == "Reshape":
            shape_name = node.input[1]
            if shape_name not in inits:
                raise SystemExit(f"gen_bench_models: Reshape {node.output[0]} has a computed shape; cannot check it")
            shape = numpy_helper.to_array(inits[shape_name]).copy()
            if shape[0] == 1:
                # Opset 9 Reshape: 0 copies the input's dimension, here the batch.
                shape[0] = 0
                inits[shape_name].CopyFrom(numpy_helper.from_array(shape, shape_name))
                fixed.append(f"fixed Reshape '{node.output[0]}': shape initializer '{shape_name}' [1, ...] -> {shape.tolist()}")
            elif shape[0] not in (0, -1):
                raise SystemExit(f"gen_bench_models: Reshape {node.output[0]} hard-codes dim 0 = {shape[0]}")
        elif node.op_type == "Flatten":
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if axis != 1:
                raise SystemExit(f"gen_bench_models: Flatten {node.output[0]} has axis {axis}, which mixes the batch")
        elif node.op_type in ("Expand", "Tile", "Slice", "Constant", "Split", "Squeeze", "Unsqueeze", "Transpose", "Concat"):
            # None of these occurs in the known networks; refuse rather than guess if a future wheel adds one.
            raise SystemExit(f"gen_bench_models: unexpected {node.op_type} node; check it for a hard-coded batch")
    fixed += [f"dropped unused initializer '{n}'" for n in unused]
    return m, fixed


def initial_weight(name, shape, rng):
    """A seeded random value for the Caffe2 weight blob `name` (both networks use Caffe2's names)."""
    import numpy as np

    if name.endswith("_bn_s_0"):  # BatchNorm scale
        return rng.uniform(0.3, 0.7, shape)
    if name.endswith(("_bn_b_0", "_bn_rm_0")):  # BatchNorm bias, running mean
        return rng.normal(0.0, 0.1, shape)
    if name.endswith("_bn_riv_0"):  # running variance
        return rng.uniform(0.5, 1.5, shape)
    if name.endswith("_w_0") and len(shape) == 4:  # conv weight, He normal (grouped: fan-in per group)
        return rng.normal(0.0, np.sqrt(2.0 / (shape[1] * shape[2] * shape[3])), shape)
    if name in ("gpu_0/pred_w_0", "fc8_w_0"):  # classifier [1000, K]: logits of order 1
        return rng.normal(0.0, 1.0 / np.sqrt(shape[1]), shape)
    if name.endswith("_w_0") and len(shape) == 2:  # hidden fully connected layer (Relu follows), He normal
        return rng.normal(0.0, np.sqrt(2.0 / shape[1]), shape)
    if name in ("gpu_0/pred_b_0", "fc8_b_0"):  # classifier bias
        return rng.normal(0.0, 0.1, shape)
    if name.endswith("_b_0") and len(shape) == 1:  # conv / hidden fully connected bias
        return rng.normal(0.0, 0.01, shape)
    raise SystemExit(f"gen_bench_models: do not know how to initialise weight '{name}' {shape}")


def randomize_weights(model, seed):
    """Replaces each ConstantOfShape(initializer) weight with a seeded random initializer."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    rng = np.random.default_rng(seed)
    inits = {t.name: t for t in g.initializer}
    keep_nodes, new_inits, shape_inits = [], [], set()
    for node in g.node:
        if node.op_type == "ConstantOfShape" and node.input and node.input[0] in inits:
            shape = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
            name = node.output[0]
            w = initial_weight(name, shape, rng)
            new_inits.append(numpy_helper.from_array(w.astype(np.float32), name))
            shape_inits.add(node.input[0])
        else:
            keep_nodes.append(node)
    if not new_inits:
        raise SystemExit("gen_bench_models: found no ConstantOfShape weights to replace")
    still_used = {i for n in keep_nodes for i in n.input}
    kept_inits = [t for t in g.initializer if t.name not in shape_inits or t.name in still_used]
    del g.node[:]
    g.node.extend(keep_nodes)
    del g.initializer[:]
    g.initializer.extend(kept_inits + new_inits)
    # IR 3: initializers must also be graph inputs (only matters for the static reference copy).
    if m.ir_version < 4:
        input_names = {i.name for i in g.input}
        for t in new_inits:
            if t.name not in input_names:
                g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        live = {t.name for t in g.initializer}
        real = [i for i in g.input if i.name in live or i.name not in shape_inits]
        del g.input[:]
        g.input.extend(real)
    return m, len(new_inits)


def with_logits(model):
    """A copy that also outputs the classifier's pre-softmax logits (for verification only)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    softmax = [n for n in m.graph.node if n.op_type == "Softmax"]
    if len(softmax) != 1 or softmax[0].output[0] != m.graph.output[0].name:
        raise SystemExit("gen_bench_models: expected one Softmax node, producing the graph output")
    m.graph.output.append(onnx.helper.make_tensor_value_info(softmax[0].input[0], onnx.TensorProto.FLOAT, None))
    return m


# --------------------------------------------------------------------------------------------------
# Verification


def session(model_bytes):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def max_rel_diff(a, b):
    import numpy as np

    scale = max(1.0, float(np.max(np.abs(b))))
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) / scale


def verify(original, original_ref, symbolic_const, served, static_random):
    import numpy as np

    report = {}

    def check(what, got, want):
        d = max_rel_diff(got, want)
        report[what] = d
        if not np.all(np.isfinite(got)) or d > REL_TOL:
            raise SystemExit(f"gen_bench_models: verification failed: {what}: max |diff|/scale = {d:.3g} > {REL_TOL:g}")

    rng = np.random.default_rng(SEED + 1)
    x1 = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)

    # (a) the light model as shipped, and the symbolic-batch copy with the same constant weights.
    s_orig = session(original.SerializeToString())
    in_name = s_orig.get_inputs()[0].name
    y_orig = s_orig.run(None, {in_name: x1})[0]
    check("original light model vs its reference output", y_orig, original_ref)
    s_sym = session(symbolic_const.SerializeToString())
    check("symbolic (constant weights) vs original, batch 1", s_sym.run(None, {in_name: x1})[0], y_orig)
    for b in (2, 8):
        xb = rng.standard_normal((b, 3, 224, 224)).astype(np.float32)
        y = s_sym.run(None, {in_name: xb})[0]
        check(f"symbolic (constant weights), batch {b} rows vs original", y, np.repeat(y_orig, b, axis=0))

    # (b) the served model (random weights) at batch 1 vs the original static topology with the
    #     same weights: logits and softmax.
    s_static = session(with_logits(static_random).SerializeToString())
    s_served = session(with_logits(served).SerializeToString())
    out_static = s_static.run(None, {in_name: x1})
    out_served = s_served.run(None, {in_name: x1})
    check("served vs original topology, batch 1, logits", out_served[1], out_static[1])
    check("served vs original topology, batch 1, softmax", out_served[0], out_static[0])
    logits = out_served[1]
    report["logits std / max |logit| at batch 1"] = [float(np.std(logits)), float(np.max(np.abs(logits)))]
    report["softmax max at batch 1"] = float(np.max(out_served[0]))

    # (c) batched rows vs the same rows alone.
    for b in VERIFY_BATCHES:
        xb = rng.standard_normal((b, 3, 224, 224)).astype(np.float32)
        prob_b, logit_b = s_served.run(None, {in_name: xb})
        assert prob_b.shape == (b, 1000) and logit_b.shape == (b, 1000), (prob_b.shape, logit_b.shape)
        rows = [s_served.run(None, {in_name: xb[i : i + 1]}) for i in range(b)]
        check(f"served batch {b} vs per-row batch 1, logits", logit_b, np.concatenate([r[1] for r in rows]))
        check(f"served batch {b} vs per-row batch 1, softmax", prob_b, np.concatenate([r[0] for r in rows]))
        if b > 1:
            # Distinct inputs must give distinct rows, or the row check proves nothing.
            spread = float(np.max(np.abs(logit_b[0] - logit_b[1])))
            if spread < 1e-2:
                raise SystemExit(f"gen_bench_models: rows of different inputs agree ({spread:.3g}); weights are degenerate")
    return report


# --------------------------------------------------------------------------------------------------


def write_repo(out, net, model_bytes, input_name, output_name, layouts):
    tmp = tempfile.mkdtemp(prefix=".gen-", dir=os.path.dirname(os.path.abspath(out)) or ".")
    try:
        first = None
        for name, batching in ((net, ""), (f"{net}_dynamic", DYNAMIC)):
            instances, threads = layouts[name]
            vdir = os.path.join(tmp, name, "1")
            os.makedirs(vdir)
            path = os.path.join(vdir, "model.onnx")
            if first is None:
                with open(path, "wb") as f:
                    f.write(model_bytes)
                first = path
            else:
                try:
                    os.link(first, path)
                except OSError:
                    shutil.copyfile(first, path)
            with open(os.path.join(tmp, name, "config.pbtxt"), "w") as f:
                f.write(CONFIG.format(name=name, max_batch=MAX_BATCH, input=input_name, output=output_name,
                                      batching=batching, instances=instances, threads=threads))
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--net", choices=sorted(NETWORKS), default="alexnet", help="network (default alexnet)")
    ap.add_argument("--out", default=".bench/model_repository", help="repository folder (replaced as a whole)")
    # 2 x 1 thread measured faster than 1 x 2 threads on the 2-core bench machine, in raw ORT and in
    # the server, for both networks (see scripts/bench.sh, BENCH_LAYOUT).
    ap.add_argument("--instances", type=int, default=2, help="instance_group count (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="intra_op_thread_count per instance (default 1)")
    ap.add_argument("--dynamic-instances", type=int, help="<net>_dynamic only (default: --instances)")
    ap.add_argument("--dynamic-threads", type=int, help="<net>_dynamic only (default: --threads)")
    ap.add_argument("--force", action="store_true", help="regenerate even when the stamp matches")
    args = ap.parse_args()

    src_dir = light_dir()
    net = args.net
    source = NETWORKS[net] + ".onnx"
    src = os.path.join(src_dir, source)
    if not os.path.isfile(src):
        have = sorted(f for f in os.listdir(src_dir) if f.endswith(".onnx")) if os.path.isdir(src_dir) else []
        sys.exit(f"gen_bench_models: {src} not found; light models present: {have}")

    stamp_path = os.path.join(args.out, ".stamp")
    with open(os.path.abspath(__file__), "rb") as f:
        script_hash = hashlib.sha256(f.read()).hexdigest()
    layouts = {net: (args.instances, args.threads),
               f"{net}_dynamic": (args.dynamic_instances or args.instances, args.dynamic_threads or args.threads)}
    want = json.dumps({"script": script_hash, "net": net, "source": sha256_file(src), "layouts": layouts},
                      sort_keys=True)
    models = [os.path.join(args.out, m, "1", "model.onnx") for m in layouts]
    if not args.force and os.path.isfile(stamp_path) and all(os.path.isfile(p) for p in models):
        with open(stamp_path) as f:
            have = f.read()
        if have == want:
            log(f"{args.out} up to date")
            return
        try:
            same_model = {k: v for k, v in json.loads(have).items() if k != "layouts"} == \
                {k: v for k, v in json.loads(want).items() if k != "layouts"}
        except ValueError:
            same_model = False
        if same_model:
            # Only the instance layout changed: rewrite the configs, keep the verified model.
            for name, (instances, threads) in layouts.items():
                cfg = os.path.join(args.out, name, "config.pbtxt")
                with open(cfg) as f:
                    text = f.read()
                text = re.sub(r"count: \d+ kind", f"count: {instances} kind", text)
                text = re.sub(r'("intra_op_thread_count" value: \{ string_value: ")\d+', rf"\g<1>{threads}", text)
                with open(cfg, "w") as f:
                    f.write(text)
            with open(stamp_path, "w") as f:
                f.write(want)
            log(f"{args.out}: model up to date; instance layout set to "
                + ", ".join(f"{m} {i} x {t}" for m, (i, t) in layouts.items()))
            return

    t0 = time.monotonic()
    import numpy as np
    import onnx
    import onnxruntime

    original = onnx.load(src, load_external_data=False)
    external = [t.name for t in original.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        sys.exit(f"gen_bench_models: {source} references external data for {len(external)} tensors; pick another model")
    ref = onnx.TensorProto()
    with open(os.path.join(src_dir, NETWORKS[net] + "_output_0.pb"), "rb") as f:
        ref.ParseFromString(f.read())
    original_ref = onnx.numpy_helper.to_array(ref)

    symbolic_const, fixed = make_symbolic(original)
    served, n_weights = randomize_weights(symbolic_const, SEED)
    static_random, _ = randomize_weights(original, SEED)

    onnx.checker.check_model(served, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(served, check_type=True, strict_mode=True)
    out_vi = inferred.graph.output[0]
    out_dims = [d.dim_param or d.dim_value for d in out_vi.type.tensor_type.shape.dim]
    if out_dims != [BATCH_DIM, 1000]:
        sys.exit(f"gen_bench_models: shape inference gives output {out_vi.name} dims {out_dims}, want [N, 1000]")
    pinned = [vi.name for vi in inferred.graph.value_info
              if vi.type.tensor_type.shape.dim and vi.type.tensor_type.shape.dim[0].dim_param != BATCH_DIM
              and not vi.name.endswith("__SHAPE")]
    if pinned:
        sys.exit(f"gen_bench_models: intermediate tensors without the symbolic batch dimension: {pinned[:5]}")

    report = verify(original, original_ref, symbolic_const, served, static_random)

    model_bytes = served.SerializeToString()
    input_name, output_name = served.graph.input[0].name, served.graph.output[0].name
    write_repo(args.out, net, model_bytes, input_name, output_name, layouts)
    with open(stamp_path, "w") as f:
        f.write(want)

    params = sum(int(np.prod(t.dims)) for t in served.graph.initializer)
    log(f"source {src} (onnx {onnx.__version__}), verified with onnxruntime {onnxruntime.__version__}")
    for line in fixed:
        log(line)
    log(f"replaced {n_weights} ConstantOfShape(0.02) weights with seeded random initializers ({params / 1e6:.1f} M parameters)")
    log(f"checker (full) and strict shape inference pass; output {output_name} dims {out_dims}")
    for what, v in report.items():
        log(f"  {what}: {v if isinstance(v, list) else f'{v:.3g}'}")
    log(f"all checks within max |diff| <= {REL_TOL:g} x max(1, max |reference|)")
    log(f"wrote {args.out}/{net} and {net}_dynamic ({len(model_bytes) / 1e6:.1f} MB model.onnx, "
        f"instances x intra_op threads: " + ", ".join(f"{m} {i} x {t}" for m, (i, t) in layouts.items())
        + f") in {time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    main()
