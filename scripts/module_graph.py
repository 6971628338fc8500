#!/usr/bin/env python3
"""The module graph of a crate, from its `crate::` paths, and its import cycles.

    scripts/module_graph.py consumer/src          # edges and cycles
    scripts/module_graph.py consumer/src --dot    # Graphviz, for a picture
    scripts/module_graph.py consumer/src --check  # exit 1 if there is a cycle,
                                                  # or a file over MAX_LINES

A module is a top-level file or folder of the crate's `src/` (`reader.rs`,
`checkpoint/`); an edge `a -> b` means code in `a` names `crate::b` (in a
`use`, a path or a doc link outside comments). Test modules (`*_tests.rs`,
`tests.rs`) are left out: tests may reach across. Cycles are the strongly
connected components with more than one module.
"""

import re
import sys
from pathlib import Path

# `crate::name` and `crate::{a, b::c}`.
PATH = re.compile(r"\bcrate::(\{[^}]*\}|[a-z_][a-z0-9_]*)")


def module_of(src: Path, file: Path) -> str:
    rel = file.relative_to(src)
    top = rel.parts[0]
    return top[:-3] if top.endswith(".rs") else top


def is_test(file: Path) -> bool:
    return file.name.endswith("_tests.rs") or file.name == "tests.rs"


def code_lines(text: str):
    """Lines without `//` comments (doc comments included) and test modules."""
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith("//"):
            continue
        if stripped.startswith("#[cfg(test)]"):
            # Inline tests come last in a file, by house style.
            return
        yield line


def graph(src: Path) -> dict[str, set[str]]:
    modules = {module_of(src, f) for f in src.rglob("*.rs") if not is_test(f)} - {"main", "lib"}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for file in src.rglob("*.rs"):
        if is_test(file):
            continue
        me = module_of(src, file)
        if me not in edges:
            continue
        for line in code_lines(file.read_text()):
            for m in PATH.finditer(line):
                group = m.group(1)
                names = re.findall(r"[{,]\s*([a-z_][a-z0-9_]*)", group) if group.startswith("{") else [group]
                for name in names:
                    if name in modules and name != me:
                        edges[me].add(name)
    return edges


# House style: a file a newcomer reads in one sitting. Test files (`tests.rs`,
# `*_tests.rs`) may be longer.
MAX_LINES = 600


def long_files(src: Path) -> list[tuple[Path, int]]:
    """Source files (not tests) over MAX_LINES lines."""
    found = []
    for file in sorted(src.rglob("*.rs")):
        lines = file.read_text().count("\n")
        if not is_test(file) and lines > MAX_LINES:
            found.append((file, lines))
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(sorted(scc))

    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    edges = graph(Path(args[0]))
    found = cycles(edges)
    if "--dot" in sys.argv:
        print("digraph modules {")
        for a in sorted(edges):
            for b in sorted(edges[a]):
                print(f'  "{a}" -> "{b}";')
        print("}")
        return 0
    if "--check" not in sys.argv:
        for a in sorted(edges):
            print(f"{a} -> {', '.join(sorted(edges[a])) or '(nothing)'}")
    for scc in found:
        print(f"cycle: {' <-> '.join(scc)}")
    if not found:
        print(f"{args[0]}: {len(edges)} modules, no import cycle")
    long = long_files(Path(args[0]))
    for file, lines in long:
        print(f"{file}: {lines} lines, over {MAX_LINES}: split it by concept (docs/design.md)")
    return 1 if (found or long) and "--check" in sys.argv else 0


if __name__ == "__main__":
    sys.exit(main())
