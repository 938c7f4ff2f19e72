"""qdnn's import structure: which module imports which (deferred imports inside functions
included), collapsed to the top-level modules and subpackages of ``qdnn_cli``, checked
against the floors below: a module imports only from its own floor or lower ones.

    python scripts/import_graph.py            # the floors, each unit's imports, and any violation
    python scripts/import_graph.py --mermaid  # the picture in docs/architecture.md (Mermaid)
"""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "qdnn_cli"

# bottom to top; a unit may import from its floor and those below it
FLOORS = [
    ("ground", ["errors", "schema", "startup", "words"]),
    ("quantization", ["quant"]),
    ("networks and data", ["models", "data"]),
    ("costs", ["cost"]),
    ("training engine", ["engine"]),
    ("configuration", ["config"]),
    ("trained runs", ["loaded_run"]),
    ("tools on runs", ["report", "search", "launch", "bench", "export"]),
    ("commands", ["commands"]),
    ("command line", ["cli"]),
]


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _imported(name: str, path: Path, modules: dict) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("qdnn_cli"):
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("qdnn_cli")}
    return found


def unit(module: str) -> str:
    """``qdnn_cli.engine.loop`` → ``engine``: a top-level module or subpackage."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def unit_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        u = unit(name)
        if not u:
            continue
        graph.setdefault(u, set()).update(unit(t) for t in _imported(name, path, modules) if unit(t) not in ("", u))
    return graph


def floor_of(u: str) -> int:
    for i, (_, units) in enumerate(FLOORS):
        if u in units:
            return i
    raise KeyError(f"qdnn_cli.{u} is on no floor: add it to FLOORS in scripts/import_graph.py")


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Upward imports and cycles between units, as sentences."""
    out = [f"{a} (floor {floor_of(a)}) imports {b} (floor {floor_of(b)}), which is above it"
           for a, targets in sorted(graph.items()) for b in sorted(targets) if floor_of(b) > floor_of(a)]

    def reaches(a, b, seen):
        for n in graph.get(a, ()):
            if n == b or (n not in seen and (seen.add(n) or reaches(n, b, seen))):
                return True
        return False
    units = sorted(graph)
    out += [f"{a} and {b} import each other (a circle)" for i, a in enumerate(units) for b in units[i + 1:]
            if reaches(a, b, set()) and reaches(b, a, set())]
    return out


def mermaid(graph: dict[str, set[str]]) -> str:
    lines = ["flowchart BT"]
    for i, (title, units) in enumerate(FLOORS):
        lines.append(f'  subgraph f{i}["{title}"]')
        lines += [f"    {u}" for u in units]
        lines.append("  end")
    for a in sorted(graph):
        lines += [f"  {a} --> {b}" for b in sorted(graph[a])]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mermaid", action="store_true", help="print the graph as a Mermaid flowchart")
    args = ap.parse_args()
    graph = unit_graph()
    if args.mermaid:
        print(mermaid(graph))
        return
    for i, (title, units) in reversed(list(enumerate(FLOORS))):
        print(f"{i} {title}: " + "; ".join(f"{u} -> {', '.join(sorted(graph.get(u, ()))) or '-'}" for u in units))
    problems = violations(graph)
    print("\n".join(problems) if problems else "no circle, no upward import")
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
