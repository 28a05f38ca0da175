"""`import revbifpn_mm`, the core and the models work with the mm stack blocked; the layering of
the package and the line between tools/ and tests/ hold."""
import ast
import os
import pathlib
import subprocess
import sys

CODE = """
import sys
for name in ('mmengine', 'mmcv', 'mmdet', 'mmseg'):
    sys.modules[name] = None  # any import of these now raises ImportError
import revbifpn_mm, revbifpn_mm.core, revbifpn_mm.models
import torch
m = revbifpn_mm.models.revbifpn_s0(num_classes=0).train()
feats = m(torch.randn(1, 3, 64, 64))
sum(f.sum() for f in feats).backward()
assert not any(k.split('.')[0] in ('mmengine', 'mmcv', 'mmdet', 'mmseg') and v is not None
               for k, v in sys.modules.items())
print('OK')
"""


def test_core_and_models_import_without_mm_stack():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("OK")


def test_core_and_models_do_not_import_mm_modules():
    root = pathlib.Path(__file__).resolve().parents[1] / "revbifpn_mm"
    for sub in ("core", "models"):
        for f in (root / sub).rglob("*.py"):
            tree = ast.parse(f.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for n in names:
                    assert n.split(".")[0] not in ("mmengine", "mmcv", "mmdet", "mmseg"), f"{f}: {n}"
                assert not (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "print"), f"print in {f}"


# --------------------------------------------------------------------------- tools <-> tests, layering
REPO = pathlib.Path(__file__).resolve().parents[1]
#: Calls that execute a file by path or widen the import path.
_PATH_LOADERS = {"spec_from_file_location", "run_path", "SourceFileLoader", "load_source", "exec_module"}


def _py_files(folder):
    return sorted(p for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _rel(path):
    return str(path.relative_to(REPO)) if REPO in path.parents else str(path)


def _imported_roots(tree):
    """Top-level module names of the absolute imports of ``tree``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node, a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node, node.module.split(".")[0]


def _call_name(node):
    f = node.func
    return f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")


def _strings(node):
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _is_sys_path_edit(node):
    """``sys.path.insert/append/extend(...)`` or ``sys.path[...] = ...`` / ``sys.path += ...``."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        owner = node.func.value
        return (node.func.attr in ("insert", "append", "extend") and isinstance(owner, ast.Attribute)
                and owner.attr == "path" and getattr(owner.value, "id", "") == "sys")
    if isinstance(node, (ast.Assign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for t in targets:
            t = t.value if isinstance(t, ast.Subscript) else t
            if isinstance(t, ast.Attribute) and t.attr == "path" and getattr(t.value, "id", "") == "sys":
                return True
    return False


def _tools_violations(files, test_modules):
    bad = []
    for f in files:
        tree = ast.parse(f.read_text(), str(f))
        for node, root in _imported_roots(tree):
            if root == "tests" or root in test_modules:
                bad.append(f"{f.name}:{node.lineno} imports test code ({root})")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _call_name(node) in _PATH_LOADERS:
                bad.append(f"{f.name}:{node.lineno} loads a file by path ({_call_name(node)})")
            if _is_sys_path_edit(node):
                bad.append(f"{f.name}:{node.lineno} edits sys.path")
    return bad


def _tests_violations(files, tool_modules):
    bad = []
    for f in files:
        tree = ast.parse(f.read_text(), str(f))
        for node, root in _imported_roots(tree):
            if root == "tools" or root in tool_modules:
                bad.append(f"{_rel(f)}:{node.lineno} imports a tool ({root})")
        for node in ast.walk(tree):
            loads = isinstance(node, ast.Call) and _call_name(node) in _PATH_LOADERS
            if (loads or _is_sys_path_edit(node)) and any("tools" in s for s in _strings(node)):
                bad.append(f"{_rel(f)}:{node.lineno} loads tools/ by path")
    return bad


def test_tools_do_not_import_tests_and_nothing_widens_the_path():
    """tools/ (scripts and their support modules) never import tests; tests may import the support
    modules of tools/ (pytest's ``pythonpath``), and nobody edits sys.path or loads files by path."""
    tool_files, test_files = _py_files("tools"), _py_files("tests")
    test_modules = {p.stem for p in test_files}
    assert not _tools_violations(tool_files, test_modules), _tools_violations(tool_files, test_modules)
    assert not _tests_violations(test_files, set()), _tests_violations(test_files, set())


def test_boundary_scan_catches_crossings(tmp_path):
    """The scan above sees the crossings it forbids (so that a clean result means something)."""
    tool = tmp_path / "tool.py"
    tool.write_text("import importlib.util, os, sys\n"
                    "spec = importlib.util.spec_from_file_location('h', os.path.join('tests', 'x.py'))\n"
                    "sys.path.insert(0, 'tests')\nfrom runner_configs import f\n")
    test = tmp_path / "test_x.py"
    test.write_text("import importlib.util, os\n"
                    "s = importlib.util.spec_from_file_location('f', os.path.join('..', 'tools', 'f.py'))\n")
    assert len(_tools_violations([tool], {"runner_configs"})) == 3
    assert len(_tests_violations([test], set())) == 1


def _support_imports(files, names):
    """``file:line`` of every import of a module in ``names`` (tools/ and tests/ modules) in ``files``."""
    bad = []
    for f in files:
        for node, root in _imported_roots(ast.parse(f.read_text(), str(f))):
            if root in names:
                bad.append(f"{_rel(f)}:{node.lineno} ({root})")
    return bad


def test_the_package_is_the_product(tmp_path):
    """revbifpn_mm (core, models, mm) imports no module of tools/ or tests/, and holds no harness:
    the modules a wheel ships are exactly the product's."""
    files = _py_files("revbifpn_mm")
    assert len(files) > 10
    packages = {p.parent.name for p in _py_files("tools") if p.name == "__init__.py"}  # bench, planner, preflight
    names = ({p.stem for p in _py_files("tools") + _py_files("tests")} - {"__init__"}) | packages | {"tools", "tests"}
    assert not _support_imports(files, names), _support_imports(files, names)
    probe = tmp_path / "probe.py"  # the scan sees each spelling
    probe.write_text("import preflight\nfrom bench.measure import Case\nimport synthetic_data as s\nimport torch\n")
    assert len(_support_imports([probe], names)) == 3
    subpackages = sorted(p.name for p in (REPO / "revbifpn_mm").iterdir() if p.is_dir() and p.name != "__pycache__")
    assert subpackages == ["core", "mm", "models"], subpackages


def test_curves_runs_as_documented(tmp_path):
    """`python tools/curves.py` (docs/fidelity.md's command) runs from the checkout: here up to its configs."""
    work = tmp_path / "curves"
    out = subprocess.run([sys.executable, str(REPO / "tools" / "curves.py"), "--dry-run", "--iters", "2",
                          "--images", "2", "--work-dir", str(work)], cwd=str(REPO), capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             [str(REPO), os.environ.get("PYTHONPATH", "")])})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    for name in ("rev", "plain", "plain32"):
        text = (work / f"{name}.py").read_text()
        assert f"data_root = {str(work / 'synthetic_coco') + '/'!r}" in text, text
    assert "memory_mode='plain'" in (work / "plain.py").read_text()
    assert "stream_dtype='float32'" in (work / "plain32.py").read_text()
    assert (work / "synthetic_coco" / "annotations" / "instances_train.json").is_file()


def _package_import_graph():
    """module -> modules of revbifpn_mm it imports (relative imports resolved, packages as their __init__)."""
    root = REPO / "revbifpn_mm"
    names = {}
    for f in _py_files("revbifpn_mm"):
        parts = list(f.relative_to(REPO).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        names[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    graph = {}
    for mod, (f, is_pkg) in names.items():
        pkg = mod if is_pkg else mod.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in names:
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != mod:
                    deps.add(t)
        graph[mod] = deps
    assert root.is_dir() and len(graph) > 10
    return graph


def test_the_package_imports_one_way_without_circles():
    """core <- models <- mm, and no import circle anywhere in the package."""
    graph = _package_import_graph()
    layer = {"core": 0, "models": 1, "mm": 2}
    for mod, deps in graph.items():
        parts = mod.split(".")
        if len(parts) < 2 or parts[1] not in layer:
            continue
        for d in deps:
            dp = d.split(".")
            assert len(dp) > 1 and dp[1] in layer and layer[dp[1]] <= layer[parts[1]], f"{mod} imports {d}"
    state = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError("import circle: " + " -> ".join(path + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for d in sorted(graph[m]):
            if not (d == m.rsplit(".", 1)[0]):  # a module importing its own package's __init__ is not a circle here
                visit(d, path + [m])
        state[m] = 2
    for m in sorted(graph):
        visit(m, [])
