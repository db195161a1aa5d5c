#!/usr/bin/env python3
"""Cairn's layering, checked (ARCHITECTURE.md, "Layers"). Exits 1 on any departure.

1. Crate rules: which workspace crates each crate may depend on (normal dependencies; tests
   and benches may use anything).
2. Module cycles: inside each crate, no two top-level modules import each other, directly or
   around a loop (read from `crate::NAME` paths in the source, tests excluded).

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
    for line in problems:
        print("- " + line)
    print(f"layers: {len(problems)} departure(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
