"""
The import graph of primed's own code, read from the source (an AST walk,
nothing imported): no cycles anywhere, C{benchmarks/} included, and the
layering the design page describes (the client imports nothing of the
server but the wire format; the engine imports neither Twisted nor the rest
of primed).

Every import counts, those inside functions and C{try} blocks too: a cycle
hidden in a function still ties two modules together.
"""

import ast
import os
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def projectModules():
    """
    Every module of the project by dotted name, with its file: C{primed}
    and its subpackages, the twistd dropin, and the benchmark scripts, which
    import one another either as C{benchmarks.X} or, run as scripts from
    their own directory, as plain C{X}.
    """
    modules = {}
    for top in ("primed", "benchmarks"):
        for directory, dirs, files in os.walk(os.path.join(ROOT, top)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                path = os.path.join(directory, name)
                parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts.pop()
                modules[".".join(parts)] = path
    plugin = os.path.join(ROOT, "twisted", "plugins", "primed_plugin.py")
    modules["twisted.plugins.primed_plugin"] = plugin
    return modules


def importsOf(name, path, modules):
    """
    The project modules that module C{name} (file C{path}) imports.
    C{from package import name} is an import of C{package.name} when that
    is a module, of C{package} otherwise.
    """
    isPackage = os.path.basename(path) == "__init__.py"
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()

    def resolve(dotted):
        if dotted in modules:
            return dotted
        # A benchmark script imports its siblings as plain names.
        if name.startswith("benchmarks.") and "benchmarks." + dotted in modules:
            return "benchmarks." + dotted
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = resolve(alias.name)
                if target:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = name.split(".")
                if not isPackage:
                    package.pop()
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                target = resolve(base + "." + alias.name) or resolve(base)
                if target:
                    found.add(target)
    found.discard(name)
    return found


def importGraph():
    modules = projectModules()
    return {name: importsOf(name, path, modules) for name, path in modules.items()}


def cycles(graph):
    """
    The strongly connected components of C{graph} with more than one
    module (Tarjan's algorithm), each sorted: every import cycle.
    """
    index, low, onStack, stack, found = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        onStack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in onStack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                onStack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


class ImportGraphTests(unittest.TestCase):

    def test_graphIsRead(self):
        """
        The walk sees the imports it must judge: a plain one, a relative
        one, one inside a function, and a benchmark's sibling by plain name.
        """
        graph = importGraph()
        self.assertIn("primed.wire", graph["primed.client.base"])
        self.assertIn("primed.client.tcp", graph["primed.client"])
        self.assertIn("benchmarks._servers", graph["benchmarks.load"])
        # load.py imports _metricscost inside main(), for --metrics only.
        self.assertIn("benchmarks._metricscost", graph["benchmarks.load"])
        self.assertIn("twisted.plugins.primed_plugin", graph)

    def test_cyclesFound(self):
        """
        L{cycles} finds a cycle of two and one of three, and nothing in a
        chain.
        """
        graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"},
                 "f": {"a", "c"}, "g": set()}
        self.assertEqual(cycles(graph), [["a", "b"], ["c", "d", "e"]])
        self.assertEqual(cycles({"a": {"b"}, "b": {"c"}, "c": set()}), [])

    def test_noCycles(self):
        """
        No module of primed, its dropin or its benchmarks imports, however
        indirectly, a module that imports it.
        """
        self.assertEqual(cycles(importGraph()), [])

    def test_clientImportsOnlyTheWireFormat(self):
        """
        C{primed/client/} imports nothing of the server but C{primed.wire}:
        a client installed next to no daemon needs no more.
        """
        graph = importGraph()
        server = {
            target
            for name, targets in graph.items() if name.startswith("primed.client")
            for target in targets
            if not target.startswith("primed.client")
        }
        self.assertEqual(server, {"primed.wire"})

    def test_engineIsPure(self):
        """
        C{primed.primality} imports neither Twisted nor any other module of
        primed: it is the bottom layer.
        """
        with open(projectModules()["primed.primality"], encoding="utf-8") as f:
            tree = ast.parse(f.read())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names.add(node.module.split(".")[0])
        self.assertEqual(names & {"twisted", "primed"}, set())
