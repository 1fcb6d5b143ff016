"""Architecture rules of the safecascade package, read from the source files with ``ast``.

Every module under ``safecascade.*`` (the real files: ``safecascade/``, and ``tiers/``, ``router/``,
``training/``, ``models/`` through the ``safecascade/<name>`` links) is parsed, never imported, and:

(a) no import points up a layer (``LAYERS`` below; docs/architecture.md explains them);
(b) the project's modules have no import cycle, counting module-level, function-level and
    ``TYPE_CHECKING`` imports alike;
(c) no private name (``_x``) of a project module is used from another module: neither
    ``from safecascade.x import _y`` nor ``x._y`` on an imported project module (the experiments/
    scripts are held to this too);
(d) a project module is imported at module level; a function-level import of a project module is
    allowed only when listed in ``FUNCTION_LEVEL_ALLOWED`` with its reason, and only while the target
    really pulls an optional third-party dependency at import time (checked here).

Imports by name in strings (the tier registry's ``"module:attr"`` entries, the CLI's command table)
are a plug-in mechanism, not import statements, and are not counted. ``safecascade/__init__.py``
is the public facade (lazy re-exports): exempt as an importer.

As a script, ``python tests/safecascade/test_architecture.py`` prints the violations and the lines
per layer; ``--before REV`` adds the line counts of a git revision (the tree mapped the same way) and
``--markdown PATH`` writes the per-layer table as Markdown.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "safecascade"

# --------------------------------------------------------------------------- the layer map
# Layers only point down: a module may import its own layer or a lower one. First match wins.
LAYER_NAMES = {
    0: "L0 core",
    1: "L1 tiers",
    2: "L2 router",
    3: "L3 serving/ops",
    4: "L4 training/tuning",
    5: "L5 CLI",
}
LAYERS: list[tuple[str, int | None]] = [
    ("safecascade", None),  # the public facade (lazy re-exports): exempt
    # L5 CLI: the command line and every *_cli module
    ("safecascade.cli", 5),
    ("safecascade.demo", 5),
    ("safecascade.training.train_cli", 5),
    ("*_cli", 5),
    # L0 core: paths, hashing, shipped models, MLflow store access, model data, the config / policy /
    # input / decision types, the Tier protocol
    ("safecascade.paths", 0),
    ("safecascade.hashing", 0),
    ("safecascade.shipped", 0),
    ("safecascade.mlflow_store", 0),
    ("safecascade.models", 0),
    ("safecascade.models.*", 0),
    ("safecascade.router", 0),  # the package marker (router/__init__.py) imports nothing
    ("safecascade.router.policy", 0),
    ("safecascade.router.inputs", 0),
    ("safecascade.router.decision", 0),
    ("safecascade.router.config", 0),
    ("safecascade.router.combine", 0),  # the combined-score arithmetic a tier config names
    ("safecascade.tiers.base", 0),
    # L1 tiers: every other module under tiers/ (and its subpackages)
    ("safecascade.tiers", 1),
    ("safecascade.tiers.*", 1),
    # L2 router: the cascade and what it runs on
    ("safecascade.router.cascade", 2),
    ("safecascade.router.budget", 2),
    ("safecascade.router.cache", 2),
    ("safecascade.router.microbatch", 2),
    # L3 serving and operations: server, post-moderation, verdict log, metrics, registry, pyfunc,
    # and any module split out of these
    ("safecascade.router.*", 3),
    # L4 training and tuning
    ("safecascade.training", 4),
    ("safecascade.training.*", 4),
]

# --------------------------------------------------------------------------- function-level imports
# (importer, imported project module) -> why the import sits inside a function. Allowed only while
# the imported module pulls an optional third-party dependency at import time (checked below).
FUNCTION_LEVEL_ALLOWED: dict[tuple[str, str], str] = {
    ("safecascade.router.registry", "safecascade.router.pyfunc_model"):
        "pyfunc_model subclasses mlflow.pyfunc.PythonModel, so importing it imports mlflow (optional extra)",
}

# Third-party packages every install has (pyproject [project].dependencies); any other third-party
# import is optional (an extra) or heavy, and justifies keeping its importer out of module level.
BASE_DEPENDENCIES = {"numpy", "yaml", "tqdm", "confusable_homoglyphs"}

# The folders the subpackages live in: importable as top-level names from the repository root, but
# only ever imported as safecascade.<name> (else a module would load twice, under two names).
SOURCE_FOLDERS = {"tiers", "router", "training", "models"}


# --------------------------------------------------------------------------- reading the source
@dataclass(frozen=True)
class Imp:
    """One import of a project module (or of names from one)."""

    importer: str
    target: str
    line: int
    where: str  # "module" | "function" | "type_checking"
    private: tuple[str, ...] = ()  # private names taken from the target


@dataclass
class Module:
    name: str
    path: Path  # under safecascade/ (through the links)
    lines: int
    imports: list[Imp] = field(default_factory=list)
    third_party: list[tuple[str, int, str]] = field(default_factory=list)  # (top-level name, line, where)
    private_attrs: list[tuple[str, str, int]] = field(default_factory=list)  # (module, attribute, line)
    folder_imports: list[tuple[str, int]] = field(default_factory=list)  # ("tiers.fast", line): not via safecascade.*


def layer_of(module: str) -> int | None:
    """The layer of ``module`` (``None`` for the facade); ``KeyError`` if the map has no entry."""
    for pattern, layer in LAYERS:
        if fnmatch.fnmatchcase(module, pattern):
            return layer
    raise KeyError(module)


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> file, for every module of the package (packages are folders with __init__.py)."""
    out: dict[str, Path] = {}

    def walk(folder: Path, prefix: str) -> None:
        for path in sorted(folder.iterdir()):
            if path.is_dir():
                if (path / "__init__.py").is_file() and path.name != "__pycache__":
                    walk(path, f"{prefix}.{path.name}")
            elif path.suffix == ".py":
                out[prefix if path.stem == "__init__" else f"{prefix}.{path.stem}"] = path

    walk(root / PACKAGE, PACKAGE)
    return out


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    parts = importer.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([module] if module else []))


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return None if inner is None else f"{inner}.{node.attr}"
    return None


def _known(name: str, modules: set[str]) -> str | None:
    """The longest prefix of ``name`` that is a project module."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        cand = ".".join(parts[:n])
        if cand in modules:
            return cand
    return None


def parse_source(name: str, source: str, modules: set[str], *, is_package: bool = False,
                 path: Path | None = None) -> Module:
    """The imports, third-party imports and private attribute uses of one module's source."""
    tree = ast.parse(source)
    mod = Module(name=name, path=path or Path(name), lines=len(source.splitlines()))
    aliases: dict[str, str] = {}  # local name -> project module bound to it

    def add_import(target: str, line: int, where: str, private: tuple[str, ...] = ()) -> None:
        mod.imports.append(Imp(importer=name, target=target, line=line, where=where, private=private))

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            w = where
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                w = "function"
            elif isinstance(child, ast.If) and where == "module" and "TYPE_CHECKING" in ast.unparse(child.test):
                for sub in child.body:
                    handle(sub, "type_checking")
                    visit(sub, "type_checking")
                for sub in child.orelse:
                    handle(sub, where)
                    visit(sub, where)
                continue
            handle(child, w)
            visit(child, w)

    def handle(node: ast.AST, where: str) -> None:
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                if top == PACKAGE:
                    target = _known(a.name, modules)
                    if target is not None:
                        add_import(target, node.lineno, where)
                        if a.asname:
                            aliases[a.asname] = target
                        else:
                            aliases.setdefault(PACKAGE, PACKAGE)
                elif top in SOURCE_FOLDERS:
                    mod.folder_imports.append((a.name, node.lineno))
                else:
                    mod.third_party.append((top, node.lineno, where))
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(name, is_package, node.level, node.module) if node.level
                    else (node.module or ""))
            if base.split(".")[0] in SOURCE_FOLDERS:
                mod.folder_imports.append((base, node.lineno))
                return
            if base.split(".")[0] != PACKAGE:
                mod.third_party.append((base.split(".")[0], node.lineno, where))
                return
            names_by_target: dict[str, list[str]] = {}
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in modules:  # a submodule
                    names_by_target.setdefault(sub, [])
                    aliases[a.asname or a.name] = sub
                else:
                    target = _known(base, modules)
                    if target is not None:
                        names_by_target.setdefault(target, []).append(a.name)
            for target, names in names_by_target.items():
                add_import(target, node.lineno, where, tuple(n for n in names if _is_private(n)))

    visit(tree, "module")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            dotted = _dotted(node.value)
            if dotted is None:
                continue
            head, _, rest = dotted.partition(".")
            if head not in aliases:
                continue
            target = _known(f"{aliases[head]}.{rest}" if rest else aliases[head], modules)
            if target is not None and target != name and (not rest or f"{aliases[head]}.{rest}" == target):
                mod.private_attrs.append((target, node.attr, node.lineno))
    return mod


def read_modules(root: Path = ROOT) -> dict[str, Module]:
    files = module_files(root)
    names = set(files)
    return {n: parse_source(n, p.read_text(encoding="utf-8"), names, is_package=p.name == "__init__.py", path=p)
            for n, p in files.items()}


def _rel(m: Module) -> str:
    try:
        return str(m.path.resolve().relative_to(ROOT))
    except ValueError:
        return str(m.path)


# --------------------------------------------------------------------------- the rules
def unmapped(mods: dict[str, Module]) -> list[str]:
    out = []
    for n in mods:
        try:
            layer_of(n)
        except KeyError:
            out.append(f"{n}: no layer in LAYERS")
    return out


def upward_imports(mods: dict[str, Module]) -> list[str]:
    out = []
    for m in mods.values():
        for folder_module, line in m.folder_imports:
            out.append(f"{_rel(m)}:{line}: {m.name} imports {folder_module!r}: import safecascade.{folder_module}")
        lo = layer_of(m.name)
        if lo is None:
            continue
        for imp in m.imports:
            lt = layer_of(imp.target)
            if lt is None:
                out.append(f"{_rel(m)}:{imp.line}: {m.name} ({LAYER_NAMES[lo]}) imports the facade "
                           f"'safecascade'; import from the defining module")
            elif lt > lo:
                out.append(f"{_rel(m)}:{imp.line}: {m.name} ({LAYER_NAMES[lo]}) -> {imp.target} "
                           f"({LAYER_NAMES[lt]}) [{imp.where}]")
    return out


def import_cycles(mods: dict[str, Module]) -> list[str]:
    """Each strongly connected component of the import graph (with more than one module, or a
    module importing itself), shown as one cycle through it with the importing lines."""
    edges: dict[str, dict[str, Imp]] = {n: {} for n in mods}
    for m in mods.values():
        for imp in m.imports:
            if imp.target in mods and imp.target != PACKAGE:
                edges[m.name].setdefault(imp.target, imp)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    sccs: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:  # Tarjan, iterative enough for this graph's depth
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
            if len(comp) > 1 or v in edges[v]:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(edges):
        if v not in index:
            strong(v)
    out = []
    for comp in sccs:
        members = set(comp)
        # one cycle through the component: BFS back to its first module
        start = comp[0]
        prev: dict[str, str] = {}
        queue = [start]
        found = None
        while queue and found is None:
            v = queue.pop(0)
            for w in sorted(edges[v]):
                if w not in members:
                    continue
                if w == start:
                    found = v
                    break
                if w not in prev:
                    prev[w] = v
                    queue.append(w)
        path = [start]
        v = found
        while v is not None and v != start:
            path.append(v)
            v = prev.get(v)
        path = [start] + list(reversed(path[1:])) + [start]
        steps = " -> ".join(
            f"{a} ({_rel(mods[a])}:{edges[a][b].line}, {edges[a][b].where})" for a, b in zip(path, path[1:]))
        out.append(f"cycle among {len(comp)} modules {comp}: {steps} -> {start}")
    return out


def private_imports(mods: dict[str, Module], extra: dict[str, Module] | None = None) -> list[str]:
    out = []
    for m in list(mods.values()) + list((extra or {}).values()):
        for imp in m.imports:
            if imp.private and imp.target != m.name:
                out.append(f"{_rel(m)}:{imp.line}: {m.name} imports {', '.join(imp.private)} from {imp.target}")
        for target, attr, line in m.private_attrs:
            out.append(f"{_rel(m)}:{line}: {m.name} uses {target}.{attr}")
    return out


def optional_dependency_chain(target: str, mods: dict[str, Module], seen: frozenset[str] = frozenset()) -> list[str] | None:
    """How importing ``target`` pulls an optional third-party package at import time (module-level
    imports, followed through project modules), or ``None`` if it does not."""
    m = mods.get(target)
    if m is None or target in seen:
        return None
    for top, line, where in m.third_party:
        if where == "module" and top not in BASE_DEPENDENCIES and top not in sys.stdlib_module_names and top != "__future__":
            return [f"{target}:{line} imports {top}"]
    for imp in m.imports:
        if imp.where == "module":
            chain = optional_dependency_chain(imp.target, mods, seen | {target})
            if chain is not None:
                return [f"{target}:{imp.line} imports {imp.target}"] + chain
    return None


def function_level_imports(mods: dict[str, Module]) -> list[str]:
    out = []
    seen: set[tuple[str, str]] = set()
    for m in mods.values():
        if layer_of(m.name) is None:
            continue
        for imp in m.imports:
            if imp.where != "function" or imp.target == m.name:
                continue
            key = (m.name, imp.target)
            seen.add(key)
            if key not in FUNCTION_LEVEL_ALLOWED:
                out.append(f"{_rel(m)}:{imp.line}: {m.name} imports {imp.target} inside a function "
                           f"(move it to module level, or justify it in FUNCTION_LEVEL_ALLOWED)")
    for (importer, target), reason in sorted(FUNCTION_LEVEL_ALLOWED.items()):
        if (importer, target) not in seen:
            out.append(f"FUNCTION_LEVEL_ALLOWED[{importer!r}, {target!r}]: stale (no such function-level import)")
        elif optional_dependency_chain(target, mods) is None:
            out.append(f"FUNCTION_LEVEL_ALLOWED[{importer!r}, {target!r}] ({reason}): {target} pulls no optional "
                       f"dependency at import time, so import it at module level")
        elif not reason.strip():
            out.append(f"FUNCTION_LEVEL_ALLOWED[{importer!r}, {target!r}]: give a reason")
    return out


def experiment_modules(mods: dict[str, Module]) -> dict[str, Module]:
    """The experiment scripts, as importers only (for the private-name rule)."""
    names = set(mods)
    out = {}
    for p in sorted((ROOT / "experiments").glob("*.py")):
        name = f"experiments.{p.stem}"
        out[name] = parse_source(name, p.read_text(encoding="utf-8"), names, path=p)
    return out


# --------------------------------------------------------------------------- the tests
MODS = read_modules()


def test_the_scan_sees_the_whole_package():
    # the links resolve and every layer has modules (an empty scan would pass every rule below)
    assert {"safecascade.tiers.fast", "safecascade.router.cascade", "safecascade.router.config",
            "safecascade.tiers.base", "safecascade.hashing"} <= set(MODS)
    assert any(n.startswith("safecascade.training.") for n in MODS)
    assert {layer_of(n) for n in MODS} >= set(LAYER_NAMES)
    assert unmapped(MODS) == []


def test_the_reader_finds_what_the_rules_check():
    names = {"safecascade.a", "safecascade.b", "safecascade.pkg", "safecascade.pkg.c"}
    src = (
        "from __future__ import annotations\n"
        "import json\n"
        "from typing import TYPE_CHECKING\n"
        "from safecascade.b import thing, _hidden\n"
        "from . import b as bee\n"
        "import safecascade.pkg.c as c\n"
        "if TYPE_CHECKING:\n"
        "    from safecascade.pkg import c as c2\n"
        "from router.cascade import Router\n"
        "def f():\n"
        "    import torch\n"
        "    from safecascade.pkg.c import x\n"
        "    return bee._private(c.public)\n"
    )
    m = parse_source("safecascade.a", src, names)
    got = {(i.target, i.where, i.private) for i in m.imports}
    assert got == {("safecascade.b", "module", ("_hidden",)), ("safecascade.b", "module", ()),
                   ("safecascade.pkg.c", "module", ()), ("safecascade.pkg.c", "type_checking", ()),
                   ("safecascade.pkg.c", "function", ())}
    assert m.private_attrs == [("safecascade.b", "_private", 13)]
    assert ("torch", 11, "function") in m.third_party
    assert m.folder_imports == [("router.cascade", 9)]
    b = parse_source("safecascade.b", "from safecascade.a import f\n", names)
    assert import_cycles({"safecascade.a": m, "safecascade.b": b})  # a <-> b is found


def test_no_import_points_up_a_layer():
    bad = upward_imports(MODS)
    assert bad == [], "imports that point up a layer:\n" + "\n".join(bad)


def test_no_import_cycles():
    bad = import_cycles(MODS)
    assert bad == [], "import cycles (module- and function-level imports):\n" + "\n".join(bad)


def test_no_private_name_crosses_modules():
    bad = private_imports(MODS, experiment_modules(MODS))
    assert bad == [], "private names used across modules:\n" + "\n".join(bad)


def test_project_modules_are_imported_at_module_level():
    bad = function_level_imports(MODS)
    assert bad == [], "function-level imports of project modules:\n" + "\n".join(bad)


# --------------------------------------------------------------------------- script mode
def _module_path_at(rev: str, path: str) -> str | None:
    """``safecascade.*`` module name of a repo path as the package mapped it (top-level folders)."""
    if not path.endswith(".py"):
        return None
    parts = path[:-3].split("/")
    if parts[0] in ("tiers", "router", "training", "models"):
        parts = [PACKAGE] + parts
    elif parts[0] != PACKAGE:
        return None
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def lines_at(rev: str) -> dict[str, int]:
    """Module -> line count in git revision ``rev`` (only folders that are packages there)."""
    files = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", rev],
                           capture_output=True, text=True, check=True).stdout.split()
    inits = {f.rsplit("/", 1)[0] for f in files if f.endswith("/__init__.py")}
    out = {}
    for f in files:
        folder = f.rsplit("/", 1)[0] if "/" in f else ""
        if folder not in inits or folder.startswith(("tests", "experiments")):
            continue
        name = _module_path_at(rev, f)
        if name is None:
            continue
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{f}"], capture_output=True, text=True,
                              check=True).stdout
        out[name] = len(text.splitlines())
    return out


def _layer_label(name: str) -> str:
    try:
        layer = layer_of(name)
    except KeyError:
        return "unmapped"
    return "facade" if layer is None else LAYER_NAMES[layer]


def layer_table(after: dict[str, int], before: dict[str, int] | None) -> str:
    """Markdown: per layer, its modules with their line counts (before -> after)."""
    labels = ["facade"] + [LAYER_NAMES[k] for k in sorted(LAYER_NAMES)] + ["unmapped"]
    rows = []
    summary = ["| layer | modules before | lines before | modules after | lines after |", "|---|---:|---:|---:|---:|"]
    for label in labels:
        names = sorted(n for n in set(after) | set(before or {}) if _layer_label(n) == label)
        if not names:
            continue
        b = {n: (before or {}).get(n) for n in names}
        a = {n: after.get(n) for n in names}
        summary.append(f"| {label} | {sum(v is not None for v in b.values()) if before is not None else ''} | "
                       f"{sum(v or 0 for v in b.values()) if before is not None else ''} | "
                       f"{sum(v is not None for v in a.values())} | {sum(v or 0 for v in a.values())} |")
        rows.append(f"\n### {label}\n")
        rows.append("| module | lines before | lines after |" if before is not None else "| module | lines |")
        rows.append("|---|---:|---:|" if before is not None else "|---|---:|")
        for n in names:
            fmt = lambda v: "—" if v is None else str(v)  # noqa: E731
            rows.append(f"| {n} | {fmt(b[n])} | {fmt(a[n])} |" if before is not None else f"| {n} | {fmt(a[n])} |")
    return "\n".join(summary + rows) + "\n"


def module_list(mods: dict[str, Module]) -> str:
    """Markdown: per layer, each module with its file, lines and the first sentence of its docstring
    (the module list of docs/architecture.md is written from this)."""
    out = []
    labels = ["facade"] + [LAYER_NAMES[k] for k in sorted(LAYER_NAMES)]
    for label in labels:
        names = sorted(n for n in mods if _layer_label(n) == label)
        if not names:
            continue
        out.append(f"\n### {label}\n")
        for n in names:
            m = mods[n]
            doc = ast.get_docstring(ast.parse(m.path.read_text(encoding="utf-8"))) or ""
            first = " ".join(doc.split("\n\n")[0].split())
            first = first.split(". ")[0].rstrip(".") + "." if first else "(no docstring)"
            out.append(f"- `{n}` ({_rel(m)}, {m.lines} lines): {first}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", metavar="REV", help="also count the lines per layer in this git revision")
    ap.add_argument("--markdown", metavar="PATH", help="write the per-layer table as Markdown")
    ap.add_argument("--modules", action="store_true", help="print each layer's modules with a line on each, and stop")
    args = ap.parse_args(argv)
    mods = read_modules()
    if args.modules:
        print(module_list(mods))
        return 0
    sections = [
        ("modules without a layer", unmapped(mods)),
        ("(a) imports that point up a layer", upward_imports(mods)),
        ("(b) import cycles", import_cycles(mods)),
        ("(c) private names used across modules", private_imports(mods, experiment_modules(mods))),
        ("(d) function-level imports of project modules", function_level_imports(mods)),
    ]
    total = 0
    for title, items in sections:
        print(f"== {title}: {len(items)}")
        for item in items:
            print(f"  {item}")
        total += len(items)
    after = {n: m.lines for n, m in mods.items()}
    table = layer_table(after, lines_at(args.before) if args.before else None)
    print("\n== lines per layer" + (f" ({args.before} -> working tree)" if args.before else ""))
    print(table)
    if args.markdown:
        head = (f"# Lines per layer: {args.before} -> working tree\n\n" if args.before else "# Lines per layer\n\n")
        head += ("Written by `python tests/safecascade/test_architecture.py"
                 + (f" --before {args.before}" if args.before else "") + " --markdown PATH`. Layers as in LAYERS "
                 "there; a module counts in the layer its name maps to today (training/mlflow_store.py in L4 before, "
                 "safecascade/mlflow_store.py in L0 after); — where the module does not exist on that side.\n\n")
        Path(args.markdown).write_text(head + table, encoding="utf-8")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
