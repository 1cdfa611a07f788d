"""No import cycles among convroute's modules.

Module-level imports must form a DAG. Imports inside functions are collected too: the ones that would close a
cycle if moved to module level are reported, since they usually exist only to dodge one.
"""

import ast
from pathlib import Path

import convroute

PACKAGE = "convroute"
ROOT = Path(convroute.__file__).resolve().parent


def module_names():
    names = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join((PACKAGE, *parts))] = path
    return names


def _targets(node, module, is_package, known):
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = module.split(".")
        anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
        base = ".".join(anchor + ([base] if base else []))
    found = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        found.append(sub if sub in known else base)
    return found


def _owner(name, known):
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph():
    """(module-level edges, function-level edges): {module: {imported convroute module: line}}."""
    known = module_names()
    top, lazy = {}, {}
    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        top[module], lazy[module] = {}, {}
        is_package = path.name == "__init__.py"
        _collect(tree, module, is_package, known, top[module], lazy[module], inside_function=False)
    return top, lazy


def _collect(node, module, is_package, known, top, lazy, inside_function):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            for target in _targets(child, module, is_package, known):
                owner = _owner(target, known)
                if owner and owner != module:
                    (lazy if inside_function else top).setdefault(owner, child.lineno)
        nested = inside_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        _collect(child, module, is_package, known, top, lazy, nested)


def _with_parents(graph):
    """Importing a.b.c runs a/__init__ and a/b/__init__ first: add those edges."""
    full = {}
    for module, edges in graph.items():
        full[module] = set(edges)
        for target in edges:
            parent = target.rpartition(".")[0]
            while parent.startswith(PACKAGE) and parent != module and not module.startswith(parent + "."):
                full[module].add(parent)
                parent = parent.rpartition(".")[0]
    return full


def find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def reaches(graph, start, goal):
    seen, todo = set(), [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


def test_detector_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_cycle_among_module_level_imports():
    top, _ = import_graph()
    cycle = find_cycle(_with_parents(top))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_function_level_import_that_would_close_a_cycle():
    top, lazy = import_graph()
    graph = _with_parents(top)
    closing = [
        f"{module} (line {line}) imports {target}, which imports {module} back"
        for module, edges in lazy.items()
        for target, line in edges.items()
        if reaches(graph, target, module)
    ]
    assert not closing, "lazy imports dodging a cycle:\n" + "\n".join(closing)


def test_only_the_cli_imports_the_cli():
    top, lazy = import_graph()
    outside = [f"{module} imports {target}" for graph in (top, lazy) for module, edges in graph.items()
               for target in edges if target.startswith(f"{PACKAGE}.cli") and not module.startswith(f"{PACKAGE}.cli")]
    assert not outside, "\n".join(outside)
