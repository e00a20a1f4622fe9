"""Layering: training, evaluation and the rollout name no task (they see tasks only through `envs.protocol`), and
training does not import evaluation (the jobs compose them). Read from the source (every import statement,
function-level ones included), so a new import that breaks a rule fails here."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jaxrl_vlm"
TASK_MODULES = ("jaxrl_vlm.envs.general_points", "jaxrl_vlm.envs.virl", "jaxrl_vlm.data.gp_expert",
                "jaxrl_vlm.data.virl_expert", "jaxrl_vlm.tasks")


def imports(path: pathlib.Path) -> set[str]:
    """Absolute names of every module imported anywhere in a file (`from a import b` gives a and a.b)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def sources(*parts: str) -> list[pathlib.Path]:
    path = PACKAGE.joinpath(*parts)
    return [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))


@pytest.mark.parametrize("where", [("training",), ("evaluation",), ("rollout.py",)])
def test_no_task_is_named_below_the_jobs(where):
    bad = {str(p.relative_to(PACKAGE)): sorted(n for n in imports(p) if n.startswith(TASK_MODULES))
           for p in sources(*where)}
    assert not {k: v for k, v in bad.items() if v}, "import a task only in jaxrl_vlm/tasks.py or the jobs"


def test_training_does_not_import_evaluation():
    bad = {str(p.relative_to(PACKAGE)): sorted(n for n in imports(p) if n.startswith("jaxrl_vlm.evaluation"))
           for p in sources("training")}
    assert not {k: v for k, v in bad.items() if v}
