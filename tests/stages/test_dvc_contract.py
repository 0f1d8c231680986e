"""The DVC contract: what each stage of ``dvc.yaml`` lists is what it reads.

DVC reruns a stage only when a listed dependency changes, so a module a stage imports but
does not list is a silent staleness bug, and a listed module it never imports reruns it
for nothing. The import closure is read from the source (every ``import``, including
those inside functions, and every string that names a ``pipeline_lib`` module, such as a
``python -m`` target or a package read with ``importlib.resources``), from the stage's
entry module in ``pipeline_lib.stages.MODULES``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from pipeline_lib.base.dvc_graph import lies_under
from pipeline_lib.base.params import parse_params
from pipeline_lib.stages import MODULES
from tests.conftest import REPO, shipped_params

NAMED = re.compile(r"pipeline_lib(\.[a-z_][a-z0-9_]*)+")


def module_file(name: str, repo: Path = REPO) -> Path | None:
    base = repo.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, name: str) -> set[str]:
    """The pipeline_lib modules one file loads when it runs."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {
        id(n)
        for top in ast.walk(tree)
        if isinstance(top, ast.If) and _is_type_checking(top)
        for n in ast.walk(top)
    }
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*parts, mod] if mod else parts)
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}  # submodules imported by name
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and path.name != "__init__.py"  # a registry names modules it loads lazily
            and NAMED.fullmatch(node.value)
        ):
            out.add(node.value)
    return {m for m in out if m.split(".")[0] == "pipeline_lib"}


def closure(entry: str, repo: Path = REPO) -> set[Path]:
    """Files of every pipeline_lib module ``entry`` loads, with their packages' __init__."""
    seen: set[str] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
            mod = ".".join(parts[:i])
            if mod in seen or module_file(mod, repo) is None:
                continue
            seen.add(mod)
            file = module_file(mod, repo)
            assert file is not None
            todo += sorted(_imports(file, mod))
    files = {module_file(m, repo) for m in seen}
    # a package read as data (importlib.resources) counts with every file in it
    for m in seen:
        f = module_file(m, repo)
        if f is not None and f.name == "__init__.py" and m.endswith(".data"):
            files |= {p for p in f.parent.rglob("*") if p.is_file()}
    return {f.relative_to(repo) for f in files if f is not None}


def _is_code(path: Path) -> bool:
    """False for data and for a package ``__init__.py`` that holds only its docstring."""
    if path.suffix != ".py":
        return False
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return not (
        path.name == "__init__.py"
        and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)
    )


def suggested_deps(stage: str, repo: Path = REPO) -> list[str]:
    """The code deps a stage should list: a folder when it loads every file in it, else
    each file it loads."""
    files = {f for f in closure(MODULES[stage][0], repo) if f.suffix != ".py" or _is_code(repo / f)}

    def every(folder: Path) -> set[Path]:
        return _files_under(repo / folder, repo)

    out: list[str] = []
    taken: set[Path] = set()
    for f in sorted(files, key=lambda p: (len(p.parts), str(p))):
        if f in taken:
            continue
        top = None
        for parent in reversed(f.parents[:-2]):  # widest first, below pipeline_lib/
            if every(parent) <= files | {
                p for p in every(parent) if p.name == "__init__.py" and not _is_code(repo / p)
            }:
                top = parent
                break
        if top is not None:
            out.append(str(top))
            taken |= every(top)
        else:
            out.append(str(f))
            taken.add(f)
    return sorted(out)


def _files_under(folder: Path, repo: Path) -> set[Path]:
    """Every file in ``folder``, relative to ``repo``, as DVC hashes a folder dep."""
    return {
        p.relative_to(repo)
        for p in folder.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def contract_problems(dvc: dict[str, dict[str, object]], repo: Path = REPO) -> list[str]:
    """One line per stage whose code deps miss a module it loads or list one it does not."""
    problems = []
    for stage, spec in dvc["stages"].items():
        deps = [str(d) for d in spec.get("deps") or []]  # type: ignore[attr-defined]
        code = [d for d in deps if d.startswith("pipeline_lib")]
        files = closure(MODULES[stage][0], repo)
        missing = sorted(
            str(f)
            for f in files
            if _is_code(repo / f) and not any(lies_under(f, Path(d)) for d in code)
        )
        if missing:
            problems.append(f"{stage}: loads {', '.join(missing)} but dvc.yaml does not list it")
        for dep in code:
            listed = _files_under(repo / dep, repo) if (repo / dep).is_dir() else {Path(dep)}
            unused = sorted(str(p) for p in listed if p not in files and _is_code(repo / p))
            if unused:
                problems.append(f"{stage}: lists {dep} but never loads {', '.join(unused)}")
    return problems


def shipped_dvc() -> dict[str, dict[str, object]]:
    doc: dict[str, dict[str, object]] = yaml.safe_load((REPO / "dvc.yaml").read_text("utf-8"))
    return doc


def test_every_stage_lists_exactly_the_code_it_loads() -> None:
    assert set(shipped_dvc()["stages"]) == set(MODULES)
    problems = contract_problems(shipped_dvc())
    hint = "\n".join(f"{s}: {suggested_deps(s)}" for s in MODULES)
    assert not problems, "\n".join(problems) + "\n\nthe code deps each stage should list:\n" + hint


@pytest.mark.parametrize(
    ("stage", "dep"),
    [("train", "pipeline_lib/detect/decision.py"), ("mine", "pipeline_lib/audio/features.py")],
)
def test_the_check_fails_when_a_dep_is_removed(stage: str, dep: str) -> None:
    dvc = shipped_dvc()
    deps = dvc["stages"][stage]["deps"]  # type: ignore[index]
    assert dep in deps
    deps.remove(dep)
    problems = contract_problems(dvc)
    assert any(p.startswith(f"{stage}: loads") and dep in p for p in problems), problems


def test_the_check_fails_when_a_stale_dep_is_listed() -> None:
    dvc = shipped_dvc()
    dvc["stages"]["split"]["deps"].append("pipeline_lib/detect/tflm.py")  # type: ignore[index]
    assert any(
        p.startswith("split: lists pipeline_lib/detect/tflm.py") for p in contract_problems(dvc)
    )


def test_every_path_param_of_the_default_project_lies_under_a_dep() -> None:
    from pipeline_lib.base.dvc_graph import uncovered_path_params

    assert uncovered_path_params(REPO, parse_params(shipped_params())) == []
    raw = shipped_params()
    raw["mine"]["audio"] = ["field"]
    problems = uncovered_path_params(REPO, parse_params(raw))
    assert len(problems) == 1 and problems[0].startswith("mine.audio[0]: field lies under none")
