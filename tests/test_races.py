"""Races between mlfork processes: two resumes of one run, and `mlfork sync` started while
`mlfork run` writes to the tracking store. In every round: one process runs the stages,
nothing is committed twice, and the store holds one MLflow run per run with each point
once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import checkpoint_log, cli, ok

pytestmark = pytest.mark.slow


def start(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mlfork", *args], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def own_pairs(root: Path, run: str) -> list[tuple[str, str]]:
    return [
        (c["trailers"]["Mlfork-Iteration"], c["trailers"]["Mlfork-Step"])
        for c in checkpoint_log(root, f"mlfork/{run}")
        if c["trailers"].get("Mlfork-Run") == run and "Mlfork-Step" in c["trailers"]
    ]


def store(root: Path) -> object:
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{root / '.mlfork' / 'local' / 'mlflow.db'}")


def one_run_each_point_once(root: Path, runs: list[str]) -> None:
    client = store(root)
    exp = client.get_experiment_by_name(root.name)  # type: ignore[attr-defined]
    found = client.search_runs([exp.experiment_id])  # type: ignore[attr-defined]
    names = [r.data.tags.get("mlfork.run") for r in found]
    assert sorted(names) == sorted(runs), names
    for r in found:
        for key in r.data.metrics:
            steps = [m.step for m in client.get_metric_history(  # type: ignore[attr-defined]
                r.info.run_id, key)]
            assert len(steps) == len(set(steps)), (r.data.tags.get("mlfork.run"), key, steps)


def test_two_resumes_of_one_run(base_project: Path) -> None:
    root = base_project
    ok(cli(root, "resume", "--iterations", "1"))  # budget 4: one iteration left to race for
    ok(cli(root, "branch", "--from-iteration", "1", "--name", "f", "--iterations", "2"))
    for _round in range(2):
        procs = [start(root, "resume", "f") for _ in range(2)]
        outcomes = [(p.wait(timeout=300), *p.communicate()) for p in procs]
        assert sorted(code for code, _, _ in outcomes)[0] == 0, outcomes
        for code, _, err in outcomes:
            assert code in (0, 12), err
        ran = [out for code, out, err in outcomes if "iteration 2/3" in err]
        assert len(ran) <= 1, outcomes  # the stages ran in one process only
        pairs = own_pairs(root, "f")
        assert len(pairs) == len(set(pairs)), pairs
        assert pairs == [(str(i), s) for i in (2, 3) for s in ("data_split", "train",
                                                                "evaluate")]
    ok(cli(root, "sync"))
    one_run_each_point_once(root, ["base", "f"])


@pytest.mark.parametrize("delay", [0.5, 1.5, 3.0])
def test_sync_while_a_run_writes(project: Path, delay: float) -> None:
    root = project
    run = start(root, "run", "--name", "r", "--iterations", "3")
    time.sleep(delay)
    sync = start(root, "sync")
    assert sync.wait(timeout=300) == 0, sync.communicate()
    assert run.wait(timeout=300) == 0, run.communicate()
    ok(cli(root, "sync"))  # the repair pass (and a no-op for the points)
    one_run_each_point_once(root, ["r"])
    git_points = ok(cli(root, "metrics", "r", "--source", "git", "--json")).stdout
    store_points = ok(cli(root, "metrics", "r", "--source", "tracking", "--json")).stdout
    assert git_points == store_points
