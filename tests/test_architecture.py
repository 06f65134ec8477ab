"""The layering rules of the README's "Architecture" section, checked on the source: scripts are thin
CLIs that import only the `mapalign` package (never another script), the package's import graph
(function-level imports included) has no cycle, and nothing edits sys.path."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT_DIRS = ("", "plot", "submit", "benchmarks")


def python_files(folder):
    return sorted(os.path.join(folder, f) for f in os.listdir(os.path.join(ROOT, folder)) if f.endswith(".py"))


def package_modules():
    """{dotted name: path} of every module of the mapalign package."""
    out = {}
    for dirpath, dirs, files in os.walk(os.path.join(ROOT, "mapalign")):
        dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = os.path.join(dirpath, f)
    return out


def imported_modules(path, known):
    """The dotted names (among `known`) that the file imports anywhere in it, functions included."""
    tree = ast.parse(open(path).read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


def test_scripts_import_the_package_and_never_another_script():
    scripts = {f for d in SCRIPT_DIRS for f in python_files(d)}
    script_names = {os.path.basename(f)[:-3] for f in scripts} | {"plot", "submit", "benchmarks", "tests"}
    bad = {}
    for f in sorted(scripts) + python_files("tests"):
        edges = imported_modules(os.path.join(ROOT, f), script_names)
        if edges:
            bad[f] = sorted(edges)
    assert not bad, f"scripts must import only the mapalign package, found script imports: {bad}"


def test_the_package_has_no_import_cycle():
    modules = package_modules()
    graph = {m: sorted(imported_modules(p, modules) - {m, "mapalign"}) for m, p in modules.items()}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in graph[m]:
            if state.get(n) == "open":
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_package_never_imports_a_script_or_the_tests():
    modules = package_modules()
    outside = {os.path.basename(f)[:-3] for d in SCRIPT_DIRS for f in python_files(d)} | {"conftest"}
    bad = {m: sorted(imported_modules(p, outside)) for m, p in modules.items() if imported_modules(p, outside)}
    assert not bad, bad


def test_nothing_edits_sys_path():
    offenders = []
    for d in SCRIPT_DIRS + ("tests",):
        for f in python_files(d):
            if f.endswith("test_architecture.py"):
                continue
            offenders += [f] if "sys.path." in open(os.path.join(ROOT, f)).read() else []
    for p in package_modules().values():
        offenders += [p] if "sys.path." in open(p).read() else []
    assert not offenders, offenders


def test_only_the_entry_points_import_the_cli_layer():
    # cli.py is the entry layer (fire, one-line input errors); library code parses its list arguments with
    # arguments.py. pipeline.main is the submit/ scripts' entry point.
    modules = package_modules()
    bad = sorted(m for m, p in modules.items()
                 if m not in ("mapalign.cli", "mapalign.pipeline") and "mapalign.cli" in imported_modules(p, modules))
    assert not bad, f"library modules importing mapalign.cli: {bad}"
