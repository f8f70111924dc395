"""The project's import graph (runtime imports only: ``if TYPE_CHECKING`` blocks are left out).

    python scripts/import_graph.py            # modules, edges and every import cycle
    python scripts/import_graph.py --layers   # also each package layer and what it imports

Read from the source text (``ast``); nothing is imported or run.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ediff_core", "server", "demo")
# the library's folders, lowest first: a module imports only its own folder and those below it
LIBRARY_LAYERS = ("data", "encoders", "core", "features", "pipeline", "tools", "__main__")


def library_layer(module: str) -> int:
    """The rank of an ``ediff_core`` module in LIBRARY_LAYERS (-1: the package itself)."""
    parts = module.split(".")
    return LIBRARY_LAYERS.index(parts[1]) if len(parts) > 1 else -1


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(tree: ast.AST, here: str, is_pkg: bool) -> set[str]:
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                out.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = here if is_pkg else here.rpartition(".")[0]
                for _ in range(max(child.level - 1, 0)):
                    base = base.rpartition(".")[0]
                mod = (base + "." + child.module if child.module else base) if child.level else child.module or ""
                out.add(mod)
                out.update(f"{mod}.{a.name}" for a in child.names)
            visit(child)

    visit(tree)
    return out


def graph() -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")] + [ROOT / "app.py"]
    mods = {module_name(p): p for p in files}
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        found = _runtime_imports(ast.parse(path.read_text()), name, path.name == "__init__.py")
        edges[name] = {m for m in found if m in mods and m != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                strong(w)
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

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", action="store_true")
    args = p.parse_args()
    edges = graph()
    found = cycles(edges)
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} runtime imports, {len(found)} cycles")
    for c in found:
        print("cycle:", " <-> ".join(c))
    if args.layers:
        for pkg in ("ediff_core", "server", "demo", "app"):
            uses = sorted({t.split(".")[0] for s, ts in edges.items() if s.split(".")[0] == pkg for t in ts} - {pkg})
            print(f"{pkg} imports: {', '.join(uses) or 'nothing of the project'}")
        lib = {s: ts for s, ts in edges.items() if s.startswith("ediff_core.")}
        for layer in LIBRARY_LAYERS:
            uses = sorted({t.split(".")[1] for s, ts in lib.items() if s.split(".")[1] == layer for t in ts if t.startswith("ediff_core.")} - {layer})
            print(f"ediff_core.{layer} imports: {', '.join(uses) or 'nothing of the library'}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
