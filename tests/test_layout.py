"""The layout rules that no linter checks: no module-level mutable state, a small root, no sys.path edits.

State a process keeps (caches, locks, thread pools, switches) lives on the object it is for (the
catalog, a searcher, an aligner) or in a settings dataclass passed in, so two of those objects in
one process never share it by accident and a test or benchmark passes settings instead of
assigning module globals. Constants stay module-level: an UPPER_CASE name bound to a container
is read as a constant, and nothing may mutate it. The few exceptions are listed below, each with
its reason.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "retrieval"

#: Constructors of objects that hold changing state: never a constant, whatever the name.
STATEFUL_CALLS = {
    "dict", "list", "set", "bytearray", "defaultdict", "OrderedDict", "Counter", "deque", "ChainMap",
    "WeakKeyDictionary", "WeakValueDictionary", "WeakSet",
    "Lock", "RLock", "Condition", "Semaphore", "BoundedSemaphore", "Event", "local", "Queue", "SimpleQueue",
    "ThreadPoolExecutor", "ProcessPoolExecutor",
}
#: Literal containers: mutable unless bound to an UPPER_CASE (constant) name.
LITERALS = (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)
#: Calls that change a container in place.
MUTATORS = {
    "add", "append", "appendleft", "clear", "discard", "extend", "insert", "pop", "popitem", "remove",
    "setdefault", "update", "__setitem__", "__delitem__",
}

#: (file under retrieval/, name) -> why the state may stay where it is.
ALLOWED = {
    ("aligners/registry.py", "LOADED"):
        "the process's one bounded LRU of loaded aligners (AlignerCache): loading a model takes "
        "seconds, and every caller in the process (CLI, server, api) shares the ones loaded",
    ("aligners/conse.py", "imagenet_classes"):
        "an lru_cache over immutable constant data (timm's packaged ImageNet class tables)",
    ("media/workers.py", "_job"):
        "a process-pool initializer can leave state only in the worker process's globals; sending "
        "the job (its set of known hashes) with every chunk instead would pickle it again per task",
    ("blas.py", "OneBlasThread._lock"):
        "numpy's BLAS thread count is itself process-wide: the nesting count that restores it is too",
    ("blas.py", "OneBlasThread._setters"): "(as OneBlasThread._lock) the process's BLAS libraries, found once",
    ("blas.py", "OneBlasThread._saved"): "(as OneBlasThread._lock) the thread counts to restore",
}


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(), str(path))


def _call_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        func = node.func
        return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
    return None


def _targets(node: ast.Assign | ast.AnnAssign) -> list[str]:
    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
    return [t.id for t in targets if isinstance(t, ast.Name)]


def _is_constant_name(name: str) -> bool:
    return name == "__all__" or name.lstrip("_").isupper()


def _state(body: list[ast.stmt], prefix: str = "") -> Iterator[tuple[str, int, str]]:
    """(name, line, what) for each mutable container or stateful object bound in `body`."""
    for node in body:
        if isinstance(node, ast.ClassDef):
            yield from _state(node.body, f"{prefix}{node.name}.")
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
            continue
        call = _call_name(node.value)
        for name in _targets(node):
            if call in STATEFUL_CALLS or (call or "").endswith("Cache"):
                yield prefix + name, node.lineno, f"{call}()"
            elif isinstance(node.value, LITERALS) and not _is_constant_name(name):
                yield prefix + name, node.lineno, "a mutable literal"


def test_no_module_level_mutable_state():
    found = []
    for rel, tree in _modules():
        found += [f"retrieval/{rel}:{line} {name} = {what}" for name, line, what in _state(tree.body)
                  if (rel, name) not in ALLOWED]
    assert not found, "state belongs on the object it is for, or in a settings dataclass:\n" + "\n".join(found)


def test_no_global_statements():
    found = [
        f"retrieval/{rel}:{node.lineno} global {name}"
        for rel, tree in _modules() for node in ast.walk(tree) if isinstance(node, ast.Global)
        for name in node.names if (rel, name) not in ALLOWED
    ]
    assert not found, "\n".join(found)


def test_module_constants_are_never_changed_in_place():
    found = []
    for rel, tree in _modules():
        names = {n for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign)) for n in _targets(node)}
        for node in ast.walk(tree):
            target = None
            if isinstance(node, ast.Subscript) and isinstance(node.ctx, (ast.Store, ast.Del)):
                target = node.value
            elif isinstance(node, ast.AugAssign):
                target = node.target
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
                target = node.func.value
            if isinstance(target, ast.Name) and target.id in names and (rel, target.id) not in ALLOWED:
                found.append(f"retrieval/{rel}:{node.lineno} changes {target.id}")
    assert not found, "\n".join(found)


def test_caches_on_functions_hold_constant_data_only():
    """An lru_cache on a function keeps what it returns for the whole process: fine for constant
    data, not for resources (thread pools, models), which belong to the object that uses them."""
    found = []
    for rel, tree in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for decorator in node.decorator_list:
                called = decorator.func if isinstance(decorator, ast.Call) else decorator
                name = called.attr if isinstance(called, ast.Attribute) else getattr(called, "id", "")
                if name in ("cache", "lru_cache") and (rel, node.name) not in ALLOWED:
                    found.append(f"retrieval/{rel}:{node.lineno} @{name} {node.name}")
    assert not found, "\n".join(found)


def test_no_module_switches_are_assigned_from_outside():
    """`some_module.SETTING = value` changes it for the whole process: pass settings instead."""
    found = []
    for folder in (PACKAGE, ROOT / "benchmarks"):
        for path in sorted(folder.rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            modules = set()
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("retrieval"):
                    for alias in node.names:
                        candidate = ROOT.joinpath(*f"{node.module}.{alias.name}".split("."))
                        if candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists():
                            modules.add(alias.asname or alias.name)
                elif isinstance(node, ast.Import):
                    modules.update(a.asname or a.name.split(".")[0] for a in node.names if a.name.startswith("retrieval"))
            for node in ast.walk(tree):
                if (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                        and isinstance(node.value, ast.Name) and node.value.id in modules
                        and _is_constant_name(node.attr)):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr} = ...")
    assert not found, "\n".join(found)


def test_the_root_holds_at_most_twelve_modules():
    # The root is for what every layer shares (errors, progress, paths...) and the entry points;
    # anything else has a subpackage named for what it owns.
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= 12, modules


def test_no_file_edits_sys_path():
    """Imports resolve as installed (pyproject's pytest pythonpath, PYTHONPATH for child processes)."""
    pattern = re.compile(r"sys\.path\.(insert|append|extend)\b|sys\.path\s*(\+=|=[^=])")
    found = []
    for folder, dirs, files in os.walk(ROOT):
        # Not the virtual environment, git's files or built indexes.
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("node_modules", "build", "indexes")]
        for path in (Path(folder, f) for f in files if f.endswith(".py")):
            found += [f"{path.relative_to(ROOT)}:{n}" for n, line in enumerate(path.read_text().splitlines(), 1)
                      if pattern.search(line)]
    assert not found, "\n".join(found)


def test_no_import_circles_between_modules():
    """No module imports, even lazily inside a function or under TYPE_CHECKING, one that imports it back.

    The layer contracts (pyproject's [tool.importlinter]) hold between packages; this holds between
    the modules inside one. A package ``__init__`` that re-exports its modules is imported by none of
    them: what they share lives in a leaf module (aligners.specs and aligners.registry, cli.app,
    cluster.settings).
    """
    import grimp  # comes with import-linter (the test extra)

    graph = grimp.build_graph("retrieval")
    pairs = {
        tuple(sorted((module, imported)))
        for module in graph.modules
        for imported in graph.find_modules_directly_imported_by(module)
        # (grimp refuses a chain from a module to itself: a module that imports itself is a circle too)
        if imported == module or graph.find_shortest_chain(importer=imported, imported=module)
    }
    found = [
        f"{a} -> {a}" if a == b else " -> ".join((*(graph.find_shortest_chain(importer=a, imported=b) or ()),
                                                 *(graph.find_shortest_chain(importer=b, imported=a) or ())[1:]))
        for a, b in sorted(pairs)
    ]
    assert not found, "import circles (move what both need into a leaf module, or pass it in):\n" + "\n".join(found)
