#!/usr/bin/env python3
"""Finds import cycles between the files of each crate of the workspace.

A file imports another when it names an item of that file's module by a
`crate::`, `super::` or `self::` path (in a `use` or inline). Cycles are the
strongly connected components of that graph with more than one file.
`mod x;` declarations are not imports, and a file naming its own items is
no edge. Prints each cycle and exits 1 if there is any.
"""
import os
import re
import sys


def modules(src):
    """Maps module path tuples to files for one crate's src directory."""
    out = {}
    for root, _, files in os.walk(src):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, src)[:-3].split(os.sep)
            if rel[-1] in ("lib", "main") and len(rel) == 1:
                mod = ()
            elif rel[-1] == "mod":
                mod = tuple(rel[:-1])
            else:
                mod = tuple(rel)
            if rel[0] == "bin":
                continue
            out[mod] = path
    return out


def expand(tree):
    """`a::{b, c::{d, e}}` -> [a::b, a::c::d, a::c::e] (roughly)."""
    tree = re.sub(r"\s+", "", tree)
    depth, start, parts = 0, 0, []
    # split at top-level commas
    for i, ch in enumerate(tree):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(tree[start:i])
            start = i + 1
    parts.append(tree[start:])
    out = []
    for p in parts:
        if not p:
            continue
        m = re.match(r"^(.*?)::\{(.*)\}$", p)
        if m:
            out += [m.group(1) + "::" + q for q in expand(m.group(2))]
        elif p.startswith("{") and p.endswith("}"):
            out += expand(p[1:-1])
        else:
            out.append(p)
    return out


def strip_comments(text):
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def edges(mods):
    files = {v: k for k, v in mods.items()}
    graph = {f: set() for f in files}
    for path, mod in files.items():
        text = strip_comments(open(path).read())
        # Inline `#[cfg(test)] mod tests { ... }` blocks name the file's own
        # items through `super::`; their `super` is this file's module.
        # Inline `mod x { ... }` blocks (tests, mostly) are one module level
        # deeper than the file: their `super` is the file's own module.
        blocks = []
        for m in re.finditer(r"\bmod\s+[A-Za-z_][A-Za-z0-9_]*\s*\{", text):
            depth, i = 0, m.end() - 1
            while i < len(text):
                if text[i] == "{":
                    depth += 1
                elif text[i] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                i += 1
            blocks.append((m.start(), i))
        found = []
        for m in re.finditer(r"\buse\s+([^;]+);", text):
            found += [(m.start(), p) for p in expand(m.group(1))]
        for m in re.finditer(r"\b((?:crate|super|self)(?:::[A-Za-z_][A-Za-z0-9_]*)+)", text):
            found.append((m.start(), m.group(1)))
        for pos, p in found:
            segs = [s for s in p.split("::") if s]
            if not segs or segs[0] not in ("crate", "super", "self"):
                continue
            inner = sum(1 for a, b in blocks if a <= pos <= b)
            if segs[0] == "crate":
                base, rest = (), segs[1:]
            else:
                cur = list(mod)
                rest = segs
                while rest and rest[0] in ("self", "super"):
                    if rest[0] == "super":
                        if inner:
                            inner -= 1
                        elif cur:
                            cur = cur[:-1]
                    rest = rest[1:]
                base = tuple(cur)
            full = base + tuple(s for s in rest if s not in ("*",))
            # longest module prefix that is a file
            target = None
            for n in range(len(full), -1, -1):
                if full[:n] in mods:
                    target = mods[full[:n]]
                    break
            if target and target != path:
                graph[path].add(target)
    return graph


def sccs(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
            out.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    return [c for c in out if len(c) > 1]


def main(roots):
    bad = 0
    checked = 0
    for src in roots:
        mods = modules(src)
        graph = edges(mods)
        checked += len(graph)
        for comp in sccs(graph):
            bad += 1
            print("import cycle: " + " -> ".join(sorted(comp)), file=sys.stderr)
    print(f"import cycles: {checked} files in {len(roots)} crates, {bad} cycles")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
