#!/usr/bin/env python3
"""The layer check (docs/architecture.md, "Layers"): fails when a module imports from a layer
above its own, when sibling modules import each other in a cycle, or when a door crate
(`ort::`, `tokenizers::`, `cudarc::`, `tonic::`, `axum::`, `object_store::`) is named outside its door.

    python3 scripts/check_layers.py [SRC_DIR]      # default: src/ next to this script
    python3 scripts/check_layers.py --self-test    # plants violations in a copy; each must fail

Imports are read from the source text: every `crate::a::b` path (also inside `use crate::{..}`
groups) and every `super::` path, resolved against the file's own module path. Comments are
ignored. Standard library only, so it runs before any virtual environment exists.
"""

import os
import re
import shutil
import sys
import tempfile

# Layers, lowest first. A module may import from modules in a strictly lower layer, and not
# from its own layer or above. Same-layer modules that may import each other are in ALLOWED.
LAYERS = [
    ["error"],
    ["pb"],
    ["tensor"],
    ["request"],
    ["model"],
    ["shm"],
    ["validate", "backend"],
    ["preprocess", "telemetry"],
    ["scheduler"],
    ["lifecycle"],
    ["core"],
    ["frontend"],
    ["cli"],
    ["server"],
    ["main", "bin"],
]
# Edges the layer order would allow but the map forbids: the four middle modules depend only
# on validate < preprocess and backend < telemetry.
FORBIDDEN = {
    ("preprocess", "backend"),
    ("telemetry", "validate"),
}
ROOT_ONLY = {"lib"}  # src/lib.rs declares the modules; it may name them all.

# Door crates: the path prefixes (relative to src/) where each may be named.
DOORS = {
    "ort": ["backend/ort/"],
    "tokenizers": ["preprocess/tokenizer.rs"],
    "cudarc": ["backend/devices.rs"],
    "tonic": ["frontend/", "pb.rs"],
    "axum": ["frontend/", "telemetry/metrics.rs"],
    "object_store": ["lifecycle/remote/store.rs"],
}

RANK = {m: i for i, layer in enumerate(LAYERS) for m in layer}


def strip_comments(text):
    """Removes // and /* */ comments and the contents of string literals (keeping line breaks),
    so that a path in a doc comment or a message is not read as an import."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if text[i] == "\n":
                        out.append("\n")
                    i += 1
        elif c == '"' or (c == "r" and re.match(r'r#*"', text[i:i + 8]) and not
                          (i and (text[i - 1].isalnum() or text[i - 1] == "_"))):
            if c == "r":
                m = re.match(r'r(#*)"', text[i:])
                end = '"' + m.group(1)
                j = text.find(end, i + m.end())
                j = n if j < 0 else j + len(end)
            else:
                j = i + 1
                while j < n and text[j] != '"':
                    j += 2 if text[j] == "\\" else 1
                j += 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]):
            m = re.match(r"'(\\.|[^\\'])'", text[i:])
            out.append("' '")
            i += m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def module_path(rel):
    """`core/admission.rs` -> ["core", "admission"]; `model/mod.rs` -> ["model"]; a top-level
    `validate_tests.rs` (included by `#[path]` as `validate::tests`) -> ["validate", "tests"]."""
    parts = rel[:-3].split("/")
    if parts[-1] == "mod":
        parts.pop()
    if len(parts) == 1 and parts[0].endswith("_tests"):
        parts = [parts[0][: -len("_tests")], "tests"]
    return parts


def imported_paths(code, mod):
    """Absolute module paths (lists of idents, from the crate root) the code refers to."""
    paths = []
    for m in re.finditer(r"\bcrate::\{([^}]*)\}", code):
        for item in m.group(1).split(","):
            item = item.strip()
            if item:
                paths.append(re.split(r"::|\s", item))
    for m in re.finditer(r"\bcrate::([A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)", code):
        paths.append(m.group(1).split("::"))
    for m in re.finditer(r"(?<![A-Za-z0-9_:])((?:super::)+)([A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)?", code):
        ups = m.group(1).count("super::")
        if ups > len(mod):
            continue
        base = mod[: len(mod) - ups]
        rest = (m.group(2) or "").split("::") if m.group(2) else []
        paths.append(base + rest)
    return [p for p in paths if p and p[0]]


def check(src):
    errors = []
    files = []
    for dirpath, _, names in os.walk(src):
        for name in names:
            if name.endswith(".rs"):
                full = os.path.join(dirpath, name)
                files.append((os.path.relpath(full, src).replace(os.sep, "/"), full))
    files.sort()
    # Sibling edges per parent module, for the cycle check.
    sibling_edges = {}
    for rel, full in files:
        with open(full, encoding="utf-8") as f:
            code = strip_comments(f.read())
        mod = module_path(rel)
        top = "bin" if rel.startswith("bin/") else mod[0]
        if top in ROOT_ONLY:
            continue
        if top not in RANK:
            errors.append(f"{rel}: module '{top}' has no layer in scripts/check_layers.py")
            continue
        for path in imported_paths(code, mod):
            target = path[0]
            if target == top or target not in RANK:
                continue
            if (top, target) in FORBIDDEN or RANK[target] >= RANK[top]:
                errors.append(f"{rel}: '{top}' imports '{'::'.join(path)}' from layer '{target}', "
                              f"which is not below it")
        # Sibling cycles: within one parent module, which child refers to which other child.
        for path in imported_paths(code, mod):
            for depth in range(1, min(len(path), len(mod)) + 1):
                if path[:depth - 1] != mod[:depth - 1]:
                    break
                a, b = mod[depth - 1], path[depth - 1]
                if a != b:
                    parent = "::".join(mod[:depth - 1]) or "crate"
                    sibling_edges.setdefault(parent, set()).add((a, b))
                    break
        for crate, doors in DOORS.items():
            for m in re.finditer(rf"(?<![A-Za-z0-9_:]){crate}::", code):
                line = code.count("\n", 0, m.start()) + 1
                if not any(rel.startswith(d) for d in doors):
                    errors.append(f"{rel}:{line}: '{crate}::' outside its door ({', '.join(doors)})")
    for parent, edges in sorted(sibling_edges.items()):
        for cycle in cycles(edges):
            errors.append(f"import cycle in '{parent}': {' -> '.join(cycle + [cycle[0]])}")
    return errors


def cycles(edges):
    """Strongly connected components of more than one node (Tarjan), each as a node list."""
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def self_test(src):
    """Each planted violation must be reported; the untouched tree must pass."""
    plants = [
        ("model/mod.rs", "\nuse crate::scheduler::Scheduler;\n", "imports 'scheduler::Scheduler'"),
        ("preprocess/post.rs", "\nfn _x() { let _ = crate::backend::devices::visible_gpus; }\n",
         "from layer 'backend'"),
        ("core/admission.rs", "\nuse super::super::frontend;\n", "imports 'frontend'"),
        ("scheduler/queue.rs", "\nfn _x(_: ort::value::DynValue) {}\n", "'ort::' outside its door"),
        ("core/mod.rs", "\nfn _x(_: tonic::Status) {}\n", "'tonic::' outside its door"),
        ("lifecycle/loader.rs", "\nuse super::manager::ModelManager as _M;\n",
         "import cycle in 'lifecycle'"),
    ]
    failures = 0
    if check(src):
        print("self-test: the tree itself does not pass; fix that first")
        return 1
    for rel, text, expect in plants:
        with tempfile.TemporaryDirectory() as tmp:
            copy = os.path.join(tmp, "src")
            shutil.copytree(src, copy)
            with open(os.path.join(copy, rel), "a", encoding="utf-8") as f:
                f.write(text)
            found = [e for e in check(copy) if expect in e]
            if found:
                print(f"self-test: planted in {rel}: caught: {found[0]}")
            else:
                print(f"self-test: planted in {rel}: NOT caught (expected '{expect}')")
                failures += 1
    return 1 if failures else 0


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    args = [a for a in argv if a != "--self-test"]
    src = args[0] if args else os.path.join(here, "..", "src")
    if "--self-test" in argv:
        return self_test(src)
    errors = check(src)
    for e in errors:
        print(f"layer check: {e}")
    if not errors:
        print("layer check: ok")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
