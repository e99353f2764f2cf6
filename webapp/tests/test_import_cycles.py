"""No import cycle among the modules of our packages (tests and migrations aside), counting imports inside
functions too: a lazy import hides a cycle from Python, not from a reader. import-linter has no cycle
contract, so this test asks grimp (installed with import-linter) for the strongly connected components."""
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("preferences", "annotation", "training", "lab", "webapp")

FIND_CYCLES = textwrap.dedent("""
    import sys
    import grimp

    packages = sys.argv[1:]
    graph = grimp.build_graph(*packages, cache_dir=None)
    modules = sorted(m for m in graph.modules if ".tests" not in m and ".migrations" not in m)
    ours = set(modules)
    edges = {m: sorted(ours & graph.find_modules_directly_imported_by(m)) for m in modules}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(" <-> ".join(sorted(component)))

    sys.setrecursionlimit(10_000)
    for module in modules:
        if module not in index:
            visit(module)
    print("\\n".join(cycles))
""")


def _cycles(cwd: Path, packages) -> list[str]:
    result = subprocess.run([sys.executable, "-c", FIND_CYCLES, *packages], cwd=cwd, capture_output=True,
                            text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(cwd)})
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_no_import_cycle_among_our_modules():
    assert _cycles(ROOT, PACKAGES) == []


def test_a_lazy_import_cycle_is_found(tmp_path):
    files = {
        "app/__init__.py": "",
        "app/services.py": "def run_create():\n    from app.tasks import execute_run\n",  # lazy: still a cycle
        "app/tasks.py": "from app.services import run_create\n",
        "app/selectors.py": "import app.services\n",
        "app/tests/__init__.py": "",
        "app/tests/test_x.py": "import app.selectors\nimport app.tests\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert _cycles(tmp_path, ["app"]) == ["app.services <-> app.tasks"]
