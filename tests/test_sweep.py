"""Fork sweeps and `resume A B C --jobs J`: forks run side by side, each in a git worktree
of its own sharing the DVC cache and the tracking store, on local processes and on
submitit's local executor; the main workspace is never touched, a failed job is reported
with its resume command while the others go on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import projects
import pytest
from conftest import cli, copy_project, git, ok, shared_build, snapshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def monorepo(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Path:
    """The `subdir` fixture (a DVC project in `ml/` of a monorepo), adopted, with a run
    `base` of two iterations, back on `main` as a user leaves it."""

    def build(root: Path) -> None:
        projects.subdir(root)
        ml = root / "ml"
        ok(cli(ml, "init"))
        ok(cli(ml, "run", "--name", "base", "--iterations", "2"))
        git(root, "switch", "-q", "main")

    return shared_build(tmp_path_factory, worker_id, "sweep-monorepo", build)


def workspace(root: Path) -> dict[str, object]:
    """What a sweep must not touch: HEAD, index, status and every file of the main
    worktree but mlfork's machine-local state (where the jobs' worktrees and logs live) and
    the DVC cache (which the jobs share, and add their outputs to)."""
    snap = snapshot(root)
    files = {k: v for k, v in snap["files"].items()  # type: ignore[attr-defined]
             if ".mlfork/local/" not in k and ".dvc/cache/" not in k}
    return {"head": snap["head"], "index": snap["index"], "status": snap["status"],
            "files": files}


def runs(ml: Path) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in json.loads(ok(cli(ml, "runs", "--json")).stdout)}


def mlflow_runs(ml: Path) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri="sqlite:///" + str(ml / ".mlfork/local/mlflow.db"))
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert len(experiments) == 1, [e.name for e in experiments]  # one for every worktree
    found = client.search_runs([experiments[0].experiment_id])
    names = [r.data.tags["mlfork.run"] for r in found]
    assert len(names) == len(set(names)), names  # one MLflow run per run, no duplicate
    return {r.data.tags["mlfork.run"]: r for r in found}


def no_worktrees(root: Path) -> None:
    listed = git(root, "worktree", "list", "--porcelain")
    assert listed.count("worktree ") == 1, listed
    assert not list((root / "ml/.mlfork/local/worktrees").glob("*"))


EXECUTORS = {
    "local": (),
    "submitit": ("--executor", "submitit", "--executor-param", "cluster=local"),
}


@pytest.mark.parametrize("executor", sorted(EXECUTORS))
def test_a_sweep_runs_three_forks_two_at_a_time(monorepo: Path, tmp_path: Path,
                                                executor: str) -> None:
    """`mlfork sweep --from base --from-iteration 0 lr=0.3,0.5,0.7 --jobs 2` from `main`,
    on local processes and on submitit's local executor: three forks named after their
    values, each with its own iteration 1 (its score says which lr it ran with), three
    MLflow runs nested under `base`, the workspace untouched and no worktree left."""
    root = copy_project(monorepo, tmp_path / "repo")
    ml = root / "ml"
    before = workspace(root)
    proc = ok(cli(ml, "sweep", "--from", "base", "--from-iteration", "0", "lr=0.3,0.5,0.7",
                  "--jobs", "2", *EXECUTORS[executor], "--json"))
    result = json.loads(proc.stdout)
    assert (result["executor"], result["parallel"], result["failed"]) == (executor, 2, [])
    names = ["base-lr0.3", "base-lr0.5", "base-lr0.7"]
    assert [job["run"] for job in result["jobs"]] == names
    assert workspace(root) == before
    no_worktrees(root)

    listed = runs(ml)
    tracked = mlflow_runs(ml)
    for name, lr in zip(names, (0.3, 0.5, 0.7), strict=True):
        info = listed[name]
        assert (info["status"], info["done"], info["budget"]) == ("completed", 2, 2)
        assert info["parent"]["run"] == "base" and info["parent"]["iteration"] == 0
        assert info["headline_value"] == pytest.approx(lr * 10 + 3)  # prep's 3 rows
        tags = tracked[name].data.tags
        assert tags["mlflow.parentRunId"] == tracked["base"].info.run_id
        assert tracked[name].info.status == "FINISHED"
        assert tracked[name].data.metrics["score"] == pytest.approx(lr * 10 + 3)
    # each fork's iteration 1 is a commit of its own branch, on top of the fork point
    for name in names:
        log = git(root, "log", "--format=%(trailers:key=Mlfork-Run,valueonly)",
                  f"mlfork/{name}", "-n", "3")
        assert log.split()[0] == name


@pytest.mark.parametrize("executor", sorted(EXECUTORS))
def test_resume_jobs_goes_on_past_a_failed_job(
    monorepo: Path, tmp_path: Path, executor: str
) -> None:
    """Forks made with `sweep --no-run` (one of them with a value its stage cannot use),
    then `mlfork resume A B C --jobs 2` (local processes; submitit's local executor): two
    complete, the failed one is reported with its log and resume command (exit 19), its
    branch keeps what it committed before the failure, nothing is left in the workspace or
    in worktrees."""
    root = copy_project(monorepo, tmp_path / "repo")
    ml = root / "ml"
    made = json.loads(ok(cli(ml, "sweep", "--from", "base", "--from-iteration", "0",
                             "--name-prefix", "s", "lr=0.3,0.5,boom", "--no-run",
                             "--json")).stdout)
    names = [f["name"] for f in made["forks"]]
    assert names == ["s-lr0.3", "s-lr0.5", "s-lrboom"]
    assert made["jobs"] == []
    before = workspace(root)
    tips = {n: git(root, "rev-parse", f"mlfork/{n}").strip() for n in names}

    proc = cli(ml, "resume", *names, "--jobs", "2", *EXECUTORS[executor])
    assert proc.returncode == 19, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "mlfork: error: 1 of 3 job(s) failed (s-lrboom)")
    assert "go on with: mlfork resume s-lrboom" in proc.stderr
    assert f"{executor}, 2 at a time" in proc.stderr
    assert workspace(root) == before
    no_worktrees(root)

    listed = runs(ml)
    assert listed["s-lr0.3"]["status"] == listed["s-lr0.5"]["status"] == "completed"
    assert listed["s-lrboom"]["done"] == 1  # the fork point: nothing of its own committed
    # its iteration 1 stopped at `fit`: `prep`'s checkpoint is committed, nothing after
    steps = git(root, "log", "--format=%(trailers:key=Mlfork-Step,valueonly)",
                f"{tips['s-lrboom']}..mlfork/s-lrboom").split()
    assert steps == ["prep"]
    log = (ml / ".mlfork/local/logs/s-lrboom/job.log").read_text()
    assert "mlfork: error:" in log and "fit" in log
    tracked = mlflow_runs(ml)
    assert tracked["s-lr0.5"].data.metrics["score"] == pytest.approx(8.0)


def test_a_run_in_a_worktree_is_not_resumed_twice(monorepo: Path, tmp_path: Path) -> None:
    """A run checked out in the user's own `git worktree` is refused by `resume` and `rm`
    here (exit 12) with where it is, and everything stays as it was; from inside that
    worktree, `mlfork resume` runs it with the project's tracking store and states."""
    root = copy_project(monorepo, tmp_path / "repo")
    ml = root / "ml"
    ok(cli(ml, "branch", "--from", "base", "--from-iteration", "0", "--name", "wt",
           "--no-switch", "lr=0.9"))
    other = tmp_path / "other"
    git(root, "worktree", "add", "-q", str(other), "mlfork/wt")
    for args in (("resume", "wt"), ("rm", "wt")):
        before = snapshot(root)
        proc = cli(ml, *args)
        assert proc.returncode == 12, proc.stdout + proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert f"checked out in the worktree {other}" in line
        assert snapshot(root) == before
    proc = cli(ml, "resume", "base", "wt", "--jobs", "2")
    assert proc.returncode == 12 and "checked out in the worktree" in proc.stderr

    seen = json.loads(ok(cli(other / "ml", "runs", "--json")).stdout)
    assert {r["name"]: r["checked_out"] for r in seen} == {"base": False, "wt": True}
    (other / "ml/.dvc/config.local").write_text(
        f"[cache]\n    dir = {ml / '.dvc/cache'}\n")
    ok(cli(other / "ml", "resume"))
    assert runs(ml)["wt"]["status"] == "completed"
    assert mlflow_runs(ml)["wt"].data.metrics["score"] == pytest.approx(12.0)
    assert not (other / "ml/.mlfork/local/mlflow.db").exists()


@pytest.mark.parametrize("values,fragment", [
    (("lr=0.1",), "nothing to sweep"),
    (("lr=interval(0,1)",), "an interval is for an optimizer"),
    (("lr=glob(*)",), "list the values"),
])
def test_a_sweep_without_values_is_refused(monorepo: Path, tmp_path: Path,
                                           values: tuple[str, ...], fragment: str) -> None:
    root = copy_project(monorepo, tmp_path / "repo")
    before = snapshot(root)
    proc = cli(root / "ml", "sweep", "--from", "base", *values)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert fragment in line
    assert snapshot(root) == before


def test_sweep_names(tmp_path: Path) -> None:
    from mlfork.ops.running.fanout import sweep_names

    assert sweep_names("base-", [[("model.lr", "0.1"), ("seed", "2")]]) == ["base-lr0.1-seed2"]
    assert sweep_names("b-", [[("m", "'a b'")], [("m", "ab")]]) == ["b-mab", "b-mab-2"]
    assert sweep_names("", [[("model", "mlp")]]) == ["modelmlp"]



def in_train(root: Path, n: int, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Wait until `n` jobs are in their `train` stage (their worktree's lock says so)."""
    deadline = time.monotonic() + timeout
    while True:
        working = []
        for lock in (root / ".git" / "worktrees").glob("*/mlfork/project.lock"):
            try:
                working.append(json.loads(lock.read_text() or "{}").get("working") or {})
            except ValueError:
                continue
        if sum(w.get("stage") == "train" for w in working) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"the jobs did not start: {working}"
        time.sleep(0.2)


def sweep_in_background(root: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mlfork", "sweep", "--from", "base", "--from-iteration", "0",
         "--name-prefix", "s", "model.lr=0.01,0.02,0.03", "--jobs", "2"],
        cwd=root, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True)


def test_ctrl_c_stops_the_jobs_and_removes_their_worktrees(
    delay_project: Path, tmp_path: Path
) -> None:
    """Ctrl-C while two jobs are in their train stage: the sweep stops them (exit 130, the
    resume command of the unfinished forks), removes their worktrees, leaves the workspace
    as it was; the forks then go on with `mlfork resume`."""
    root = delay_project
    ok(cli(root, "run", "--name", "base", "--iterations", "2"))
    before = snapshot(root)["status"]
    proc = sweep_in_background(root, {"MLFORK_TEST_DELAY": "train:1:120"})
    in_train(root, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == (
        "mlfork: error: interrupted; the running jobs were stopped, everything they committed"
        " is kept: run 'mlfork resume s-lr0.01 s-lr0.02 s-lr0.03 --jobs 2' to go on")
    assert git(root, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert not list((root / ".mlfork/local/worktrees").glob("*"))
    assert snapshot(root)["status"] == before
    listed = runs(root)
    assert all(listed[n]["status"] != "running" for n in listed)
    ok(cli(root, "resume", "s-lr0.01", "s-lr0.02", "s-lr0.03", "--jobs", "2"))
    assert {listed["status"] for listed in runs(root).values()} == {"completed"}


def test_a_killed_sweep_leaves_nothing_in_the_way(delay_project: Path, tmp_path: Path) -> None:
    """The sweep killed (SIGKILL) while its jobs run: each job goes on in its worktree and
    its run shows as running (a `resume` of it here is refused, exit 12); once the jobs
    end, the next command removes the worktrees they leave and works."""
    root = delay_project
    ok(cli(root, "run", "--name", "base", "--iterations", "2"))
    proc = sweep_in_background(root, {"MLFORK_TEST_DELAY": "train:1:6"})
    in_train(root, 2, proc)
    proc.kill()
    proc.communicate()
    assert runs(root)["s-lr0.01"]["status"] == "running"
    busy = cli(root, "resume", "s-lr0.01")
    assert busy.returncode == 12 and "checked out in the worktree" in busy.stderr
    deadline = time.monotonic() + 120
    while any(r["status"] == "running" for r in runs(root).values()):
        assert time.monotonic() < deadline, runs(root)
        time.sleep(0.5)
    listed = runs(root)
    assert listed["s-lr0.01"]["status"] == listed["s-lr0.02"]["status"] == "completed"
    ok(cli(root, "resume", "s-lr0.03"))  # the third never started; the stale worktrees go
    ok(cli(root, "rm", "s-lr0.01"))
    assert git(root, "worktree", "list", "--porcelain").count("worktree ") <= 2
    git(root, "switch", "-q", "main")  # resume ran s-lr0.03 here: it is checked out
    ok(cli(root, "resume", "s-lr0.02", "s-lr0.03", "--jobs", "2"))  # nothing left to do
    assert git(root, "worktree", "list", "--porcelain").count("worktree ") == 1
