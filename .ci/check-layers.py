#!/usr/bin/env python3
"""Cairn's layering, checked (ARCHITECTURE.md, "Layers"). Exits 1 on any departure.

1. Crate rules: which workspace crates each crate may depend on (normal dependencies; tests
   and benches may use anything).
2. Module cycles: inside each crate, no two top-level modules import each other, directly or
   around a loop (read from `crate::NAME` paths in the source, tests excluded). In the crates of
   NESTED, the same inside every folder module: its children do not import each other back,
   nor the items of the folder's own `mod.rs` (read from `super::` paths).

Run from the project root: python3 .ci/check-layers.py
"""
import json
import os
import re
import subprocess
import sys
from collections import defaultdict

# crate (package name without "cairn-") -> the Cairn crates it may depend on
ALLOWED = {
    "engine": set(),
    "proto": set(),
    "raft": {"engine", "proto"},
    "master": {"engine", "proto", "raft"},
    "chunkserver": {"engine", "proto"},
    # raft for its client RPC vocabulary and the in-process master shortcut
    "client": {"engine", "proto", "raft"},
    "api": {"engine", "proto", "client", "master"},
}


def short(name):
    return name[len("cairn-"):] if name.startswith("cairn-") else name


def sccs(nodes, edges):
    """Tarjan's strongly connected components."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def module_edges(src):
    mods = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            top = os.path.relpath(path, src).split(os.sep)[0]
            top = top[:-3] if top.endswith(".rs") else top
            if top in ("lib", "main"):
                continue
            mods.setdefault(top, []).append(path)
    edges = defaultdict(set)
    for m, paths in mods.items():
        for path in paths:
            with open(path, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
            text = re.split(r"#\[cfg\(test\)\]\s*mod\s+tests", text)[0]
            for used in re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text):
                if used in mods and used != m:
                    edges[m].add(used)
            for group in re.findall(r"\buse\s+crate::\{([^;]*)\}", text, re.S):
                for used in re.findall(r"(?:^|[,{\s])([a-z_][a-z0-9_]*)", group):
                    if used in mods and used != m:
                        edges[m].add(used)
    return set(mods), edges


# Crates whose folder modules are held to the rule too (the issue that set it named these;
# the engine's `state/` and `chunk/` keep shared types in their `mod.rs`, which their children
# use, the ordinary Rust layout for one subsystem).
NESTED = {"api", "master", "chunkserver", "proto", "client"}


def nested_edges(folder):
    """The modules of one folder module (`x/mod.rs` and its `x/*.rs`): an edge child -> sibling
    for each `super::sibling`, child -> `mod` for each item of `mod.rs` a child imports
    (`super::Item`), and `mod` -> every child (it declares them)."""
    children = {}
    for f in os.listdir(folder):
        path = os.path.join(folder, f)
        if f.endswith(".rs") and f not in ("mod.rs", "tests.rs"):
            children[f[:-3]] = path
        elif os.path.isdir(path):
            if os.path.exists(os.path.join(path, "mod.rs")):
                children[f] = path
    nodes = set(children) | {"mod"}
    edges = defaultdict(set)
    for c in children:
        edges["mod"].add(c)
    for c, path in children.items():
        files = [path] if path.endswith(".rs") else [
            os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs if f.endswith(".rs")]
        for fp in files:
            with open(fp, encoding="utf-8", errors="replace") as fh:
                text = fh.read()
            text = re.split(r"#\[cfg\(test\)\]\s*mod\s+tests", text)[0]
            text = re.sub(r"//[^\n]*", "", text)
            used = re.findall(r"\bsuper::([A-Za-z_][A-Za-z0-9_]*)", text)
            for group in re.findall(r"\buse\s+super::\{([^;]*)\}", text, re.S):
                used += re.findall(r"(?:^|[,{\s])([A-Za-z_][A-Za-z0-9_]*)", group)
            for u in used:
                if u in ("self", "super"):
                    continue
                target = u if u in children else "mod"
                if target != c:
                    edges[c].add(target)
    return nodes, edges


def main():
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--no-deps", "--format-version", "1"],
        capture_output=True, text=True, check=True).stdout)
    members = {p["name"]: p for p in meta["packages"]}
    problems = []
    for name, p in sorted(members.items()):
        deps = {d["name"] for d in p["dependencies"]
                if d.get("kind") is None and d["name"] in members}
        rule = ALLOWED.get(short(name))
        if rule is None:
            continue
        for d in sorted(deps):
            if short(d) not in rule:
                problems.append(f"crate {name} depends on {d} (allowed: "
                                f"{', '.join(sorted(rule)) or 'no Cairn crate'})")
    for name, p in sorted(members.items()):
        src = os.path.join(os.path.dirname(p["manifest_path"]), "src")
        if not os.path.isdir(src):
            continue
        nodes, edges = module_edges(src)
        for comp in sccs(nodes, edges):
            if len(comp) > 1:
                problems.append(f"modules of {name} import each other: {', '.join(sorted(comp))}")
        # Folder modules: their children must not import each other back, nor the items
        # of the folder's own mod.rs (which imports them).
        for root, _, files in os.walk(src):
            if short(name) in NESTED and root != src and "mod.rs" in files:
                nodes, edges = nested_edges(root)
                rel = os.path.relpath(root, src)
                for comp in sccs(nodes, edges):
                    if len(comp) > 1:
                        problems.append(
                            f"modules of {name}::{rel.replace(os.sep, '::')} import each "
                            f"other: {', '.join(sorted(comp))}")
    for line in problems:
        print("- " + line)
    print(f"layers: {len(problems)} departure(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
