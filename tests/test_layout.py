"""The house rules (README "Layout"): imports point down only, no cycles, and every command the docs name exists.

Floors, bottom to top:
  core      para.core (config-free harness pieces), para.tracking (loggers, W&B dashboard, sweep report)
  eval      eval/ (images → scores; never the trainer)
  methods   the PaRa method at the top of para/ (function, layers, layerwise, adapter, combine, the export
            package), baselines/
  run       para.run (registry, config registration, orchestration, model cards, `make weights`), para.api (the
            public API, which uploads model cards)
  top       experiments/, para.bench, run.py, para/__init__.py (exposes para.api lazily), the entry point
            `python -m para.export` (para/export/__main__.py)
  world     world/ (docs/world.md), in a room of its own: it may use the harness's pieces, but nothing of the
            harness imports it (the harness meets it only as a model folder, subject configs and a scoring
            protocol registered under an entry point)
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("para", "baselines", "eval", "experiments", "world")
METHOD_MODULES = {"para.function", "para.layers", "para.layerwise", "para.adapter", "para.combine", "para.batched_qr"}
ENTRY_POINTS = {"run", "para", "para.export.__main__"}  # command lines and the lazy public API
TRAINING = ("para.core.trainer", "para.core.checkpoint", "para.core.conditioning")


def module_files() -> dict[str, Path]:
    mods = {"run": ROOT / "run.py"}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return mods


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules `name` imports anywhere in its file (function-level imports count too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {c for c in candidates if c in known and c != name}
    return found


def floor(module: str) -> str:
    if module.startswith("world"):
        return "world"
    if module in ENTRY_POINTS or module.startswith(("experiments", "para.bench")):
        return "top"
    if module.startswith("para.run") or module == "para.api":
        return "run"
    if module in METHOD_MODULES or module.startswith(("baselines", "para.export")):
        return "methods"
    if module.startswith("eval"):
        return "eval"
    if module.startswith(("para.core", "para.tracking")):
        return "core"
    raise AssertionError(
        f"{module} belongs to no floor: place it in one of para's sub-packages (tests/test_layout.py)"
    )


ALLOWED = {  # which floors a floor may import
    "core": {"core"},
    "eval": {"core", "eval"},
    "methods": {"core", "methods"},
    "run": {"core", "eval", "methods", "run"},
    "top": {"core", "eval", "methods", "run", "top"},
    "world": {"core", "eval", "methods", "run", "world"},  # and no floor but its own imports it
}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = module_files()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_imports_point_down_only(graph):
    wrong = [
        f"{mod} ({floor(mod)}) imports {dep} ({floor(dep)})"
        for mod, deps in sorted(graph.items())
        for dep in sorted(deps)
        if floor(dep) not in ALLOWED[floor(mod)]
    ]
    assert not wrong, "imports running back up:\n" + "\n".join(wrong)


def test_core_splits_and_eval_knows_no_trainer(graph):
    # tracking is below the run but beside core: core itself never logs to W&B, and eval never trains
    assert not [
        (m, d) for m, ds in graph.items() if m.startswith("para.core") for d in ds if d.startswith("para.tracking")
    ]
    assert not [(m, d) for m, ds in graph.items() if m.startswith("eval") for d in ds if d.startswith(TRAINING)]
    # experiments and the bench both stand at the top, side by side
    assert not [
        (m, d) for m, ds in graph.items() if m.startswith("experiments") for d in ds if d.startswith("para.bench")
    ]
    assert not [
        (m, d) for m, ds in graph.items() if m.startswith("para.bench") for d in ds if d.startswith("experiments")
    ]


def test_no_import_cycles(graph):
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(mod: str, stack: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(graph[mod]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*stack[stack.index(dep) :], dep]))
            if dep not in state:
                visit(dep, [*stack, dep])
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod, [mod])


def test_module_names_do_not_repeat_their_folder():
    repeats = [
        str(path.relative_to(ROOT))
        for pkg in PACKAGES
        for path in (ROOT / pkg).rglob("*.py")
        if path.parent.name != pkg and path.stem.startswith(path.parent.name + "_")
    ]
    assert not repeats


# --- every command the docs name exists ------------------------------------------------------------------------


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def code_in(doc: Path) -> str:
    """The code of a markdown page: fenced blocks, indented blocks and inline `spans` (prose may say "make sure")."""
    text = doc.read_text()
    fenced = re.findall(r"```.*?```", text, re.S)
    indented = re.findall(r"^(?: {4}|\t).*$", text, re.M)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return "\n".join(fenced + indented + inline)


def make_targets() -> set[str]:
    out = subprocess.run(["make", "-qp", "-f", "Makefile"], cwd=ROOT, capture_output=True, text=True).stdout
    return {m.group(1) for m in re.finditer(r"^([a-zA-Z0-9_.-]+):(?!=)", out, re.M)}


def test_every_make_target_in_the_docs_exists():
    targets = make_targets()
    named = {
        (doc.name, t)
        for doc in doc_files()
        for t in re.findall(r"\bmake (?:-[-\w]+ (?:\d+ )?)*([a-z][\w-]+)", code_in(doc))
    }
    missing = sorted(f"{doc}: make {t}" for doc, t in named if t not in targets)
    assert named and not missing


def test_every_python_m_entry_point_in_the_docs_exists():
    named = {(doc.name, m) for doc in doc_files() for m in re.findall(r"python3? -m ([a-z_][\w.]*)", code_in(doc))}
    named = {(doc, m) for doc, m in named if m.split(".")[0] in PACKAGES and not m.endswith(".")}  # .<name>: a pattern
    missing = []
    for doc, module in sorted(named):
        path = ROOT / Path(*module.split("."))
        if not (path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()):
            missing.append(f"{doc}: python -m {module}")
    assert named and not missing


def test_bench_runs_as_a_package(monkeypatch, capsys):
    """`python -m para.bench --help`, run as `-m` runs it (runpy), in this process."""
    import runpy

    monkeypatch.setattr(sys, "argv", ["para.bench", "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("para.bench", run_name="__main__", alter_sys=True)
    assert exit_.value.code == 0 and "--models" in capsys.readouterr().out
