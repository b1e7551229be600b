"""kill -9 at named points of every writing command (mlfork/faults.py), then the documented
recovery: afterwards every (run, iteration, stage) is committed exactly once, `git fsck` is
clean, the workspace is clean, and the tracking store equals git.

The suite runs a sample of the cases each day (the seed is the day, or MLFORK_KILL_SEED);
MLFORK_KILL_SAMPLE=all runs every case, MLFORK_KILL_SAMPLE=N runs N of them."""

from __future__ import annotations

import datetime
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import checkpoint_log, cli, copy_project, git, ok

import mlfork

pytestmark = pytest.mark.slow

RUN = ("run", "--name", "r", "--iterations", "2")
RESUME = ("resume", "--iterations", "1")
BRANCH = ("branch", "--from-iteration", "1", "--name", "f", "model.lr=0.1")
BRANCH_RUN = (*BRANCH, "--run")
BRANCH_NO_SWITCH = (*BRANCH, "--no-switch")
SYNC = ("sync",)
REBUILD = ("sync", "--rebuild")
REPLAY = ("replay", "base", "--launch")
VERIFY = ("verify", "base", "--from-iteration", "0")
RM = ("rm", "f")
INIT = ("init", "p")


@dataclass(frozen=True)
class Kill:
    point: str  # `<point>` or `<point>:<n>` (the n-th time it is reached)
    start: str  # "empty", "project" (no run), "base" (a run `base`), "forked" (and fork f),
    # "behind" (base, with a tracking store that lacks it)
    argv: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.argv[0]}{'-' + self.argv[-1] if self.argv[0] == 'branch' else ''}" \
               f"@{self.point}"


CASES = [
    Kill("init.git", "empty", INIT),
    Kill("init.dvc", "empty", INIT),
    Kill("init.committed", "empty", INIT),
    Kill("run.object", "project", RUN),
    Kill("run.created", "project", RUN),
    Kill("run.head", "project", RUN),
    Kill("run.started", "project", RUN),
    Kill("stage.prologue", "project", RUN),
    Kill("stage.resume", "project", RUN),
    Kill("stage.ran", "project", RUN),
    Kill("stage.ran:5", "project", RUN),
    Kill("stage.manifest", "project", RUN),
    Kill("stage.committed", "project", RUN),
    Kill("stage.committed:4", "project", RUN),
    Kill("iteration.sent", "project", RUN),
    Kill("mirror.created", "project", RUN),
    Kill("mirror.tags:2", "project", RUN),
    Kill("mirror.metrics:3", "project", RUN),
    Kill("stage.ran", "base", RESUME),
    Kill("stage.committed:2", "base", RESUME),
    Kill("branch.object", "base", BRANCH_NO_SWITCH),
    Kill("branch.created", "base", BRANCH_NO_SWITCH),
    Kill("mirror.tags", "base", BRANCH_NO_SWITCH),
    Kill("branch.created", "base", BRANCH),
    Kill("switch.git", "base", BRANCH),
    Kill("branch.switched", "base", BRANCH),
    Kill("branch.mirrored", "base", BRANCH),
    Kill("stage.committed", "base", BRANCH_RUN),
    Kill("sync.flushed", "base", SYNC),
    Kill("sync.wrote", "behind", SYNC),
    Kill("sync.deleted", "base", REBUILD),
    Kill("sync.wrote", "base", REBUILD),
    Kill("replay.created", "base", REPLAY),
    Kill("replay.switched", "base", REPLAY),
    Kill("stage.committed:2", "base", REPLAY),
    Kill("verify.forked", "base", VERIFY),
    Kill("verify.compared", "base", VERIFY),
    Kill("verify.back", "base", VERIFY),
    Kill("rm.deleted", "forked", RM),
]


def sampled() -> list[Kill]:
    want = os.environ.get("MLFORK_KILL_SAMPLE", "8")
    if want == "all":
        return CASES
    seed = int(os.environ.get("MLFORK_KILL_SEED") or datetime.date.today().toordinal())
    return sorted(random.Random(seed).sample(CASES, min(int(want), len(CASES))),
                  key=CASES.index)


def test_there_are_at_least_30_kill_points() -> None:
    assert len(CASES) >= 30 and len({c.point.split(":")[0] for c in CASES}) >= 30


@pytest.fixture(scope="session")
def forked_template(tmp_path_factory: pytest.TempPathFactory, base_template: Path) -> Path:
    root = copy_project(base_template, tmp_path_factory.mktemp("kill-forked") / "proj")
    mlfork.branch(path=str(root), source="base", from_iteration=1, name="f",
                  overrides=["model.lr=0.1"], switch=False)
    mlfork.sync(str(root))
    return root


@pytest.mark.parametrize("case", sampled(), ids=lambda c: c.id)
def test_kill_then_recover(case: Kill, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if case.start == "empty":
        root, where = tmp_path, tmp_path
    else:
        template = {"project": "template", "base": "base_template", "behind": "base_template",
                    "forked": "forked_template"}[case.start]
        root = copy_project(request.getfixturevalue(template), tmp_path / "proj")
        where = root
        if case.start == "behind":  # a store that lacks the runs: sync has them to write
            (root / ".mlfork" / "local" / "mlflow.db").unlink()
    killed = cli(where, *case.argv, env={"MLFORK_FAULT": case.point})
    assert killed.returncode == -9, (  # the point was reached
        f"{case.point} not reached: exit {killed.returncode}\n{killed.stderr}")

    if case.argv == INIT:
        ok(cli(tmp_path, *INIT))
        root = tmp_path / "p"
        ok(cli(root, "run", "--name", "a", "--iterations", "1"))
    else:
        recover(root, case.argv)
    ok(cli(root, "sync"))
    check_invariants(root)


def branches(root: Path) -> list[str]:
    return git(root, "for-each-ref", "--format=%(refname:short)", "refs/heads/mlfork/").split()


def recover(root: Path, argv: tuple[str, ...]) -> None:
    """The documented recovery of each command."""
    have = set(branches(root))
    if argv == RUN:
        ok(cli(root, "resume", "r") if "mlfork/r" in have else cli(root, *RUN))
    elif argv == RESUME:
        ok(cli(root, "resume", "base"))
    elif argv[0] == "branch":
        if "mlfork/f" not in have:
            ok(cli(root, *argv))
        ok(cli(root, "resume", "f"))
    elif argv[0] == "sync":
        ok(cli(root, *argv))
    elif argv == REPLAY:
        if "mlfork/base-replay-1" in have:
            ok(cli(root, "resume", "base-replay-1"))
        else:
            ok(cli(root, *REPLAY))
    elif argv == VERIFY:
        ok(cli(root, "resume", "base"))  # back on the run (leftovers put back)
        if "mlfork/base-verify-1" in set(branches(root)):
            ok(cli(root, "rm", "base-verify-1"))
    elif argv == RM:
        if "mlfork/f" in have:
            ok(cli(root, *RM))
    else:
        raise AssertionError(f"no recovery for {argv}")


def check_invariants(root: Path) -> None:
    fsck = git(root, "fsck", "--no-dangling", check=False)
    assert "error" not in fsck.lower() and "missing" not in fsck.lower(), fsck
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    runs = json.loads(ok(cli(root, "runs", "--json")).stdout)
    for info in runs:
        name = info["name"]
        own = [
            (c["trailers"]["Mlfork-Iteration"], c["trailers"]["Mlfork-Step"])
            for c in checkpoint_log(root, f"mlfork/{name}")
            if c["trailers"].get("Mlfork-Run") == name and "Mlfork-Step" in c["trailers"]
        ]
        assert len(own) == len(set(own)), f"{name} committed a stage twice: {own}"
        assert info["done"] == info["budget"] or info["status"] != "completed", info
        from_git = json.loads(ok(cli(root, "metrics", name, "--source", "git",
                                     "--format", "json")).stdout)
        from_store = json.loads(ok(cli(root, "metrics", name, "--source", "tracking",
                                       "--format", "json")).stdout)
        assert from_store == from_git, name
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / '.mlfork' / 'local' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(root.name)
    indexed = [r.data.tags.get("mlfork.run") for r in client.search_runs(
        [experiment.experiment_id])] if experiment else []
    assert sorted(indexed) == sorted(r["name"] for r in runs)  # one MLflow run each
