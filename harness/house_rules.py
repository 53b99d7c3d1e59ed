"""The house rules of ``nodes/`` (DEVELOPERS.md), checked by reading the imports (ast), never by
importing anything:

1. only ``nodes/registry.py`` imports node modules (``nodes_*.py``);
2. a family (``nodes/<family>/``) imports from the pack only ``core``, ``host`` and itself;
3. pure modules (all of ``core/``, and in a family everything but ``engine_*`` / ``nodes_*``)
   import no ComfyUI (``COMFY_TOP_LEVEL``), also not inside a function;
4. ``core`` imports nothing from ``host`` or a family; ``host`` only ``core``;
5. no import cycles between the pack's modules;
6. no file over ``MAX_LINES`` lines.

``python -m harness.house_rules`` prints the violations of this checkout.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

COMFY_TOP_LEVEL = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "server", "execution",
                   "latent_preview", "app"}
SHARED = ("core", "host")
MAX_LINES = 500


def module_name(path: Path, root: Path) -> str:
    """nodes/movie/engine_guidance.py -> "movie.engine_guidance"; a package's __init__ -> its name."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_package(root: Path, name: str) -> bool:
    return (root.joinpath(*name.split(".")) / "__init__.py").exists() if name else True


def _resolve(root: Path, here: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    """The pack modules a relative ``from ... import ...`` reaches ("" is nodes/ itself)."""
    base = here.split(".") if here else []
    if not is_pkg:
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
    target = ".".join(base + (node.module.split(".") if node.module else []))
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}" if target else alias.name
        if root.joinpath(*sub.split(".")).with_suffix(".py").exists() or _is_package(root, sub):
            out.append(sub)  # a submodule
        else:
            out.append(target)  # a name defined in the module / package
    return out


def imports(path: Path, root: Path) -> tuple[set[str], set[str]]:
    """(pack modules, top-level external modules) that ``path`` imports anywhere in its code."""
    here = module_name(path, root)
    is_pkg = path.name == "__init__.py"
    pack, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level:
            pack.update(_resolve(root, here, is_pkg, node))
        elif isinstance(node, ast.ImportFrom):
            external.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            external.update(a.name.split(".")[0] for a in node.names)
    pack.discard(here)
    return pack, external


def _area(name: str, packages: set[str]) -> str:
    """"core", "host", a family's name, or "" for the top of nodes/ (registry.py, __init__.py)."""
    first = name.split(".")[0]
    return first if first in packages else ""


def _is_pure(name: str, area: str) -> bool:
    leaf = name.split(".")[-1]
    if area == "core":
        return True
    if area in ("host", ""):
        return False
    return not (leaf.startswith("engine_") or leaf.startswith("nodes_"))


def violations(root: Path) -> list[str]:
    """Every broken rule under ``root`` (the pack's ``nodes/`` folder), one line each."""
    root = Path(root)
    files = sorted(root.rglob("*.py"))
    packages = {p.parent.name for p in root.glob("*/__init__.py")}
    graph: dict[str, set[str]] = {}
    out = []
    for path in files:
        name = module_name(path, root)
        rel = path.relative_to(root.parent)
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            out.append(f"{rel}: {lines} lines, over {MAX_LINES}")
        pack, external = imports(path, root)
        graph[name] = pack
        area = _area(name, packages)
        for dep in sorted(pack):
            dep_area = _area(dep, packages)
            if dep.split(".")[-1].startswith("nodes_") and name != "registry":
                out.append(f"{rel}: imports the node module {dep} (only registry.py may)")
            if area == "core" and dep_area != "core":
                out.append(f"{rel}: core imports {dep or 'nodes'} (core imports only core)")
            elif area == "host" and dep_area not in ("core", "host"):
                out.append(f"{rel}: host imports {dep or 'nodes'} (host imports only core)")
            elif area not in ("", "core", "host") and dep_area not in ("core", "host", area):
                out.append(f"{rel}: the {area} family imports {dep or 'nodes'} (a family imports only core, host "
                           "and itself)")
        if _is_pure(name, area):
            for ext in sorted(external & COMFY_TOP_LEVEL):
                out.append(f"{rel}: pure module imports ComfyUI's '{ext}' (put ComfyUI-bound code in an "
                           "engine_*.py, nodes_*.py or host/)")
    out += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of modules that import each other (Tarjan), a
    package's import of its own __init__ included."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group) + [sorted(group)[0]])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    root = Path(__file__).resolve().parent.parent / "nodes"
    bad = violations(root)
    print("\n".join(bad) if bad else f"house rules hold for {root}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
