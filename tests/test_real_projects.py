"""mlfork on DVC projects it did not make: the walk a new user takes, on projects of every
shape in tests/projects.py, through the real CLI, and the things such projects do that
mlfork's own example does not (params files, metrics anywhere, dvclive, subfolders, an
empty cache)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import projects
import pytest
import yaml
from conftest import cli, copy_project, dvc, git, ok, shared_build

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Callable[[str], Path]:
    """name -> a fixture project built once per session (shared by the xdist workers)."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = shared_build(tmp_path_factory, worker_id, f"fixture-{name}",
                                       projects.BUILDERS[name])
        return cache[name]

    return get


def fixture(built: Callable[[str], Path], name: str, tmp_path: Path) -> Path:
    return copy_project(built(name), tmp_path / name)


def jcli(root: Path, *args: str) -> object:
    return json.loads(ok(cli(root, *args, "--json")).stdout)


def assert_clean(root: Path) -> None:
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""


# -- the walk ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(projects.WALKS))
def test_the_walk_of_a_new_user(built: Callable[[str], Path], tmp_path: Path, name: str) -> None:
    """init, run with an override, runs, log, metrics, branch with an override, resume,
    plain git + DVC on the fork, diff, report, plot, replay, verify, rm: every command
    exits 0 and the workspace ends clean."""
    folder, run_override, fork_override = projects.WALKS[name]
    repo = fixture(built, name, tmp_path)
    root = repo / folder

    ok(cli(root, "init"))
    assert_clean(root)
    ran = ok(cli(root, "run", "--name", "base", "--iterations", "2", run_override))
    assert "run 'base' completed: 2/2 iterations" in ran.stderr
    assert_clean(root)

    (info,) = jcli(root, "runs")  # type: ignore[misc]
    assert (info["name"], info["status"], info["done"], info["budget"]) == (
        "base", "completed", 2, 2)
    assert info["headline"] is not None and info["headline_value"] is not None
    record = yaml.safe_load(git(root, "show", "mlfork/base:./.mlfork/run.yaml"))
    assert record["overrides"] == [run_override]

    log = jcli(root, "log", "base")
    assert {c["iteration"] for c in log} == {0, 1}  # type: ignore[union-attr]
    assert all(c["run"] == "base" for c in log)  # type: ignore[union-attr]
    ends = [c for c in log if c["metrics"]]  # type: ignore[union-attr]
    assert [c["iteration"] for c in ends] == [0, 1]

    points = jcli(root, "metrics", "base")
    assert {p["iteration"] for p in points} == {0, 1}  # type: ignore[union-attr]

    ok(cli(root, "branch", "--from-iteration", "0", "--name", "fork", fork_override))
    assert git(root, "branch", "--show-current").strip() == "mlfork/fork"
    assert_clean(root)
    resumed = ok(cli(root, "resume"))
    assert "run 'fork' completed: 2/2 iterations" in resumed.stderr
    assert_clean(root)
    fork_record = yaml.safe_load(git(root, "show", "mlfork/fork:./.mlfork/run.yaml"))
    assert fork_record["overrides"] == [run_override, fork_override]
    stitched = jcli(root, "metrics", "fork")
    owners = {(p["iteration"], p["owner"]) for p in stitched}  # type: ignore[union-attr]
    assert {(0, "base"), (1, "fork")} <= owners

    # plain git and DVC on the fork, as a teammate would: nothing for DVC to redo
    git(root, "checkout", "-q", "main")
    git(root, "checkout", "-q", "mlfork/fork")
    assert dvc(root, "checkout").returncode == 0
    repro = dvc(root, "repro")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    status = dvc(root, "status")
    assert "up to date" in status.stdout, status.stdout
    assert_clean(root)

    diff = jcli(root, "diff", "base", "fork")
    assert diff["overrides"]["only_b"] == [fork_override]  # type: ignore[index]
    assert diff["b_iteration"] == 1  # type: ignore[index]
    ok(cli(root, "report", "fork", "-o", str(tmp_path / "report.md")))
    text = (tmp_path / "report.md").read_text()
    assert "forks **`base`** after iteration 0" in text and "ran iteration 1" in text
    ok(cli(root, "plot", "base", "fork", "-o", str(tmp_path / "curves.png")))
    assert (tmp_path / "curves.png").stat().st_size > 1000
    replay = ok(cli(root, "replay", "fork"))
    assert "mlfork branch --from base --from-iteration 0" in replay.stdout
    verify = ok(cli(root, "verify", "base", "--from-iteration", "0"))
    assert "identical" in verify.stdout + verify.stderr
    assert git(root, "branch", "--show-current").strip() == "mlfork/fork"
    assert_clean(root)

    git(root, "checkout", "-q", "main")
    ok(cli(root, "rm", "fork"))
    assert git(root, "branch", "--list", "mlfork/fork") == ""
    assert [r["name"] for r in jcli(root, "runs")] == ["base"]  # type: ignore[union-attr]
    assert_clean(root)
