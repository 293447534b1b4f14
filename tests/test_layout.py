"""The repository's shape: stage packages with CLIs, the layering, an installable package, a lint-clean
workflow whose conda environment carries the lock file's pins, and the hygiene of the tree."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "workflow" / "pvs"
STAGES = ("data", "train", "prune", "evaluate", "report")
SHARED = ("config", "study", "sweep", "regime", "modeling", "compute", "resources", "budget", "cli", "versions", "lock")
# the one part of a stage package the shared layer reads: the methods' facts (pure data, no torch)
SHARED_MAY_READ = ("pvs.prune.registry", "pvs.prune.shapes")
# the GPU-memory check runs one step of every job type (train, prune, evaluate): a tool above the stages,
# called by train.smk's local rule before any GPU job
PREFLIGHT = {"train": {"pvs.memory"}}


def all_modules() -> set[str]:
    return {module_name(p) for p in PACKAGE.rglob("*.py")}


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every pvs module a file imports: ``from pvs.x import y`` is pvs.x.y when that is a module, else pvs.x."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pvs")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pvs"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            found |= subs or {node.module}
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_each_stage_is_a_package_with_a_cli_and_each_rule_file_calls_only_its_own():
    for stage in STAGES:
        assert (PACKAGE / stage / "__init__.py").is_file() and (PACKAGE / stage / "__main__.py").is_file(), stage
    rules = ROOT / "workflow" / "rules"
    assert sorted(p.stem for p in rules.glob("*.smk")) == sorted(("common",) + STAGES)
    for stage in STAGES:
        calls = {c.split()[0] for c in __import__("re").findall(r"-m (pvs[.\w]*)", (rules / f"{stage}.smk").read_text())}
        calls -= PREFLIGHT.get(stage, set())
        assert calls and all(c == f"pvs.{stage}" or c.startswith(f"pvs.{stage}.") for c in calls), (stage, calls)


def test_no_shared_module_imports_a_stage_and_there_are_no_cycles():
    modules = all_modules()
    graph = {module_name(p): imports_of(p, modules) for p in PACKAGE.rglob("*.py")}
    for name in SHARED:
        stage_imports = {i for i in graph[f"pvs.{name}"] if i.split(".")[1] in STAGES and i in modules}
        assert stage_imports <= set(SHARED_MAY_READ), (name, stage_imports)
    for allowed in SHARED_MAY_READ:
        assert {i for i in graph[allowed] if i.split(".")[1] in STAGES and i in modules} <= set(SHARED_MAY_READ)
    # no cycles among module-level imports
    edges = {m: {i for i in deps if i in modules and i != m} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in edges[node]:
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize("cli", ["pvs.data", "pvs.data.shards", "pvs.train", "pvs.train.parent", "pvs.train.budget",
                                 "pvs.train.lr_choose", "pvs.prune", "pvs.evaluate", "pvs.evaluate.tasks",
                                 "pvs.evaluate.sets", "pvs.report", "pvs.report.regime",
                                 "pvs.study", "pvs.config", "pvs.resources", "pvs.lock"])
def test_every_cli_answers_help_from_any_directory(cli, tmp_path):
    """Only the venv's bin on PATH, no PYTHONPATH, a directory outside the checkout: the installed package."""
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(["python", "-m", cli, "--help"], cwd=tmp_path, capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"python -m {cli}" in result.stdout and "usage:" in result.stdout


def test_snakemake_lint_has_no_warnings():
    for config in ("config.yaml", "configs/smoke.yaml", "configs/paper.yaml", "configs/smollm2.yaml",
                   "configs/cpu_full.yaml", "configs/cpu_setting3.yaml"):
        result = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "--configfile", config], cwd=ROOT,
                                capture_output=True, text=True, timeout=300)
        out = result.stdout + result.stderr
        assert result.returncode == 0 and "Congratulations, your workflow is in a good condition!" in out, out[-3000:]
        assert "Lints for" not in out, out[-3000:]


def test_every_rule_declares_the_conda_environment():
    """Every rule that runs a command names envs/environment.yaml (Snakemake resolves it from the rule file)."""
    for path in (ROOT / "workflow" / "rules").glob("*.smk"):
        text = path.read_text()
        assert text.count("conda:\n") == text.count("shell:\n"), path.name
        for chunk in text.split("conda:\n")[1:]:
            assert chunk.splitlines()[0].strip() == '"../../envs/environment.yaml"', path.name
    assert (ROOT / "workflow" / "rules" / ".." / ".." / "envs" / "environment.yaml").resolve().is_file()


def normalized(pin: str) -> str:
    """A pin with its project name normalized (PEP 503): 'PyYAML==6.0.3' -> 'pyyaml==6.0.3'."""
    name, _, version = pin.partition("==")
    return __import__("re").sub(r"[-_.]+", "-", name).lower() + "==" + version


def test_the_conda_environment_pins_exactly_the_lock_file():
    lock = [line.strip() for line in (ROOT / "envs" / "requirements.lock.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    env = yaml.safe_load((ROOT / "envs" / "environment.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert pip == lock
    assert "python=3.11" in env["dependencies"]
    top = [line.split("#")[0].strip() for line in (ROOT / "envs" / "requirements.txt").read_text().splitlines()]
    assert {normalized(t) for t in top if t} <= {normalized(x) for x in lock}   # top-level pins = locked versions
    assert "torch==2.13.0" in lock and not any("+cpu" in line for line in lock)
    deploy = ROOT / "envs" / "environment.post-deploy.sh"
    assert os.access(deploy, os.X_OK) and "pip install --no-deps" in deploy.read_text()


def test_the_tree_holds_no_wheels_and_ignores_them():
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert not [t for t in tracked if t.endswith(".whl")]
    assert "*.whl" in (ROOT / ".gitignore").read_text().split()
    assert (ROOT / "pyproject.toml").is_file()
