"""The rooms and the one-way flow, checked on the import graph (docs/architecture.md)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("appliance", "firmware_bridge", "image")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def graph() -> dict:
    """Each of our modules -> our modules it imports, at the top or inside functions."""
    modules = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    edges = {}
    for name, path in modules.items():
        found = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    found.add(target)
        edges[name] = found
    return edges


def reaches(edges: dict, start: str) -> set:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


EDGES = graph()


def test_no_module_imports_itself_through_a_circle():
    circles = sorted(name for name in EDGES if name in reaches(EDGES, name))
    assert not circles, f"import circles through: {circles}"


def test_appliance_itself_holds_only_a_few_modules():
    loose = sorted(p.name for p in (ROOT / "appliance").glob("*.py"))
    assert loose == ["__init__.py", "errors.py"]


@pytest.mark.parametrize("room, forbidden", [
    ("appliance.engine", ("appliance.outputs", "appliance.core", "appliance.cli",
                          "firmware_bridge")),
    ("appliance.outputs", ("appliance.engine", "appliance.core", "appliance.cli")),
    ("appliance.persona", ("appliance.core.loop", "firmware_bridge.host", "appliance.cli")),
    ("firmware_bridge.board", ("firmware_bridge.host", "appliance")),
])
def test_rooms_import_only_what_the_flow_allows(room, forbidden):
    members = [name for name in EDGES if name == room or name.startswith(room + ".")]
    for name in members:
        bad = sorted(t for t in reaches(EDGES, name) if t.startswith(forbidden))
        assert not bad, f"{name} reaches {bad}"


def test_the_persona_tools_run_without_the_daemon_or_the_link():
    reached = reaches(EDGES, "appliance.cli.persona")
    assert not {"appliance.core.loop", "firmware_bridge.host.link"} & reached


def test_the_cli_loads_neither_the_loop_nor_the_link_nor_pyserial_until_a_verb_needs_them():
    """`typewriter persona list` on a Pi: the parser and the persona tools, nothing more."""
    import subprocess
    import sys

    probe = ("import sys; import appliance.cli; appliance.cli.parser(); "
             "import appliance.cli.persona; print(sorted(m for m in sys.modules if "
             "m.startswith(('serial', 'appliance.core.loop', 'firmware_bridge.host.link', "
             "'torch', 'transformers'))))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, check=True).stdout.strip()
    assert loaded == "[]"
