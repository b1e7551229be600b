"""`mlfork resume` after a crash, a kill, Ctrl-C or a timeout, and on a completed run.

Runs are stopped in the middle of a stage deterministically: the project's stages first run
`delay.py` (see `delay_template`), and the test waits until the lock file lists the stage's
processes before it sends a signal. Everything is checked with the git and dvc CLIs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import (
    checkpoint_log,
    cli,
    dvc,
    git,
    lock_info,
    snapshot,
    wait_for,
    without_local,
)

import mlfork

STAGES = ["data_split", "train", "evaluate"]


def start_run(root: Path, tmp_path: Path, *args: str, delay: str,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`python -m mlfork run ...` in its own session (process group), output to files;
    the stage named in `delay` marks tmp_path/marks/<stage>-<iteration> as it sleeps."""
    (tmp_path / "marks").mkdir()
    out = open(tmp_path / "run.out", "wb")  # noqa: SIM115 - the child owns it
    err = open(tmp_path / "run.err", "wb")  # noqa: SIM115
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "mlfork", "run", *args],
            cwd=root,
            env={**os.environ, **(env or {}), "MLFORK_TEST_DELAY": delay,
                 "MLFORK_TEST_DELAY_MARKS": str(tmp_path / "marks")},
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    finally:
        out.close()
        err.close()


def wait_mid_stage(root: Path, tmp_path: Path, proc: subprocess.Popen[bytes], run: str,
                   it: int, stage: str) -> None:
    """Until `stage` of iteration `it` runs: mlfork has listed its processes in the lock
    file, and the stage's command is past its start-up (it sleeps in delay.py)."""
    log = root / ".mlfork" / "local" / "logs" / run / f"{it:05d}-{stage}.log"
    mark = tmp_path / "marks" / f"{stage}-{it}"

    def running() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"mlfork exited early with {proc.returncode}")
        return log.exists() and mark.exists() and bool(lock_info(root).get("children"))

    wait_for(running, what=f"{run} iteration {it} {stage} to run")


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill what is left of the process group this test started (orphaned stages)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def assert_complete(root: Path, run: str, iterations: int) -> None:
    """Every (iteration, stage) committed exactly once; git and DVC agree with the tip."""
    commits = checkpoint_log(root, f"mlfork/{run}")
    pairs = Counter(
        (int(c["trailers"]["Mlfork-Iteration"]), c["trailers"]["Mlfork-Step"])
        for c in commits
        if "Mlfork-Iteration" in c["trailers"]
    )
    expected = {(i, s) for i in range(iterations) for s in STAGES}
    assert set(pairs) == expected
    assert all(n == 1 for n in pairs.values()), pairs
    ordered = [
        (int(c["trailers"]["Mlfork-Iteration"]), c["trailers"]["Mlfork-Step"])
        for c in commits
        if "Mlfork-Iteration" in c["trailers"]
    ]
    assert ordered == [(i, s) for i in range(iterations) for s in STAGES]
    fsck = subprocess.run(
        ["git", "fsck", "--no-dangling"], cwd=root, capture_output=True, text=True
    )
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert "error" not in fsck.stdout + fsck.stderr
    assert git(root, "symbolic-ref", "--short", "HEAD").strip() == f"mlfork/{run}"
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    status = dvc(root, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == {}
    params = yaml.safe_load(git(root, "show", f"mlfork/{run}:params.yaml"))
    assert params["iteration"] == iterations - 1
    runs = json.loads(cli(root, "runs", "--json").stdout)
    (info,) = [r for r in runs if r["name"] == run]
    assert (info["status"], info["done"], info["budget"]) == ("completed", iterations, iterations)
    # MLflow: one point per iteration, however often a write was retried
    assert mlflow_run(root, run).info.status == "FINISHED"
    assert [step for step, _ in mlflow_history(root, run, "accuracy")] == list(range(iterations))


def alive(pid: int, created: float) -> bool:
    """Whether that process (not a later one with a reused pid) still runs."""
    try:
        proc = psutil.Process(pid)
        return abs(proc.create_time() - created) < 0.01 and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def committed_pairs(root: Path, run: str) -> list[tuple[int, str]]:
    return [
        (int(c["trailers"]["Mlfork-Iteration"]), c["trailers"]["Mlfork-Step"])
        for c in checkpoint_log(root, f"mlfork/{run}")
        if "Mlfork-Iteration" in c["trailers"]
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "it", "stage"), [("mlfork", 1, "train"), ("group", 0, "data_split")]
)
def test_sigkill_mid_stage_then_resume_commits_each_iteration_once(
    delay_project: Path, tmp_path: Path, target: str, it: int, stage: str
) -> None:
    """kill -9 of mlfork alone in the middle of iteration 1's train stage (the stage keeps
    running as an orphan and writes outputs while `resume` starts), or of its whole process
    group in its first stage (while the tracking store is being set up in the background);
    `mlfork resume` finishes the run with nothing committed twice or lost in MLflow."""
    root = delay_project
    proc = start_run(root, tmp_path, "--name", "k", "--iterations", "2",
                     delay=f"{stage}:{it}:5")
    try:
        wait_mid_stage(root, tmp_path, proc, "k", it, stage)
        before = committed_pairs(root, "k")
        stage_procs = lock_info(root)["children"]
        if target == "mlfork":
            os.kill(proc.pid, signal.SIGKILL)
        else:
            os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        if target == "mlfork":  # the stage runs on without mlfork ...
            assert [p for p in stage_procs if alive(*p)]
        else:  # ... or dies with its group
            wait_for(lambda: not [p for p in stage_procs if alive(*p)], timeout=30,
                     what="the killed group to end")
        assert committed_pairs(root, "k") == before
        pairs = [(i, s) for i in range(2) for s in STAGES]
        assert before == pairs[: pairs.index((it, stage))]  # all before the killed stage

        resumed = cli(root, "resume")
        assert resumed.returncode == 0, resumed.stderr
        assert not [p for p in stage_procs if alive(*p)]
    finally:
        stop_group(proc)
    assert_complete(root, "k", 2)
    # the orphan's output was replaced by what iteration 1's train commit recorded
    lock = yaml.safe_load(git(root, "show", "mlfork/k:dvc.lock"))
    md5 = lock["stages"]["train"]["outs"][0]["md5"]
    cached = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    assert (root / "models" / "checkpoint").read_bytes() == cached.read_bytes()


@pytest.mark.slow
def test_ctrl_c_mid_stage_exits_130_and_resume_completes(
    delay_project: Path, tmp_path: Path
) -> None:
    root = delay_project
    proc = start_run(root, tmp_path, "--name", "c", "--iterations", "2", delay="train:0:30")
    try:
        wait_mid_stage(root, tmp_path, proc, "c", 0, "train")
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        stop_group(proc)
    stderr = (tmp_path / "run.err").read_text()
    assert "mlfork resume c" in stderr
    assert committed_pairs(root, "c") == [(0, "data_split")]
    runs = json.loads(cli(root, "runs", "--json").stdout)
    assert [(r["name"], r["status"], r["done"]) for r in runs] == [("c", "interrupted", 0)]

    resumed = cli(root, "resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_complete(root, "c", 2)


def mlflow_run(root: Path, name: str):  # noqa: ANN201 - an mlflow Run
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/.mlfork/local/mlflow.db")
    exps = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(exps, filter_string=f"tags.`mlfork.run` = '{name}'")
    return run


@pytest.mark.slow
def test_ctrl_c_is_an_interruption_whatever_the_stage_exits_with(
    delay_project: Path, tmp_path: Path
) -> None:
    """A stage that exits 1 on Ctrl-C (as many tools do) is still an interruption: exit 130,
    state 'interrupted', and resume completes the run."""
    root = delay_project
    proc = start_run(root, tmp_path, "--name", "c", "--iterations", "1", delay="train:0:30",
                     env={"MLFORK_TEST_DELAY_SIGINT_EXIT": "1"})
    try:
        wait_mid_stage(root, tmp_path, proc, "c", 0, "train")
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        stop_group(proc)
    assert code == 130, (tmp_path / "run.err").read_text()
    assert "mlfork resume c" in (tmp_path / "run.err").read_text()
    runs = json.loads(cli(root, "runs", "--json").stdout)
    assert [(r["name"], r["status"]) for r in runs] == [("c", "interrupted")]
    resumed = cli(root, "resume")
    assert resumed.returncode == 0, resumed.stderr
    assert_complete(root, "c", 1)


@pytest.mark.slow
@pytest.mark.parametrize("stage_ignores", [False, True], ids=["stage-obeys", "stage-ignores"])
def test_sigint_to_mlfork_alone_stops_the_stage_too(
    delay_project: Path, tmp_path: Path, stage_ignores: bool
) -> None:
    """`kill -INT <mlfork>` (not the terminal's Ctrl-C, which reaches the whole group): the
    stage did not get the signal, so mlfork passes it on after a grace period (and kills a
    stage that ignores it after another), exits 130 and leaves no stage process behind."""
    import psutil

    root = delay_project
    env = {"MLFORK_TEST_DELAY_IGNORE_SIGINT": "1"} if stage_ignores else {}
    proc = start_run(root, tmp_path, "--name", "c", "--iterations", "1", delay="train:0:60",
                     env=env)
    try:
        wait_mid_stage(root, tmp_path, proc, "c", 0, "train")
        stage = psutil.Process(proc.pid).children(recursive=True)
        assert stage
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        psutil.wait_procs(stage, timeout=10)
        running = [p for p in stage if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        stop_group(proc)
    assert code == 130, (tmp_path / "run.err").read_text()
    assert not running, (tmp_path / "run.err").read_text()
    assert committed_pairs(root, "c") == [(0, "data_split")]


@pytest.mark.slow
def test_run_timeout_before_the_first_checkpoint_keeps_nothing(project: Path) -> None:
    """A run-level --timeout shorter than the set-up stops the run before its first stage:
    exit 9, and since no checkpoint was made, nothing is kept: no branch, HEAD, index and
    workspace as they were; the message names the command to run again and the option
    that raises the limit. With a longer --timeout the same command completes."""
    root = project
    before = snapshot(root)
    stopped = cli(root, "run", "--name", "t", "--iterations", "1", "--timeout", "0.001")
    assert stopped.returncode == 9, stopped.stderr
    line = stopped.stderr.strip()
    assert len(line.splitlines()) == 1, stopped.stderr
    assert "--timeout" in line and "mlfork run --name t --iterations 1" in line, line
    assert "nothing was kept" in line
    assert without_local(snapshot(root)) == without_local(before)
    assert git(root, "branch", "--list", "mlfork/*") == ""

    again = cli(root, "run", "--name", "t", "--iterations", "1", "--timeout", "600")
    assert again.returncode == 0, again.stderr
    assert_complete(root, "t", 1)
    assert mlflow_run(root, "t").info.status == "FINISHED"


@pytest.mark.slow
def test_stage_timeout_kills_the_stage_keeps_commits_and_resume_completes(
    delay_project: Path,
) -> None:
    root = delay_project
    first = mlfork.run(path=str(root), name="s", iterations=1)
    assert first.status == "completed"
    done = committed_pairs(root, "s")
    tip = git(root, "rev-parse", "mlfork/s").strip()

    stopped = cli(
        root, "resume", "--iterations", "1", "--stage-timeout", "0.05",
        env={"MLFORK_TEST_DELAY": "train:1:60"},
    )
    assert stopped.returncode == 9, stopped.stderr
    assert "stage 'train' timeout" in stopped.stderr and "mlfork resume s" in stopped.stderr
    assert committed_pairs(root, "s") == [*done, (1, "data_split")]
    assert tip in git(root, "rev-list", "mlfork/s")  # nothing committed was lost
    killed = lock_info(root).get("children")
    assert killed  # the stage's processes, as the watchdog saw them ...
    wait_for(lambda: not any(alive(pid, created) for pid, created in killed),
             timeout=30, what="the timed-out stage's processes to end")  # ... are gone
    runs = json.loads(cli(root, "runs", "--json").stdout)
    assert [(r["status"], r["done"], r["budget"]) for r in runs] == [("timeout", 1, 2)]

    # the run now keeps --stage-timeout 0.05: a plain resume stops again, and its message
    # names the option that raises the limit
    again = cli(root, "resume", env={"MLFORK_TEST_DELAY": "train:1:60"})
    assert again.returncode == 9, again.stderr
    assert "--stage-timeout" in again.stderr and "mlfork resume s" in again.stderr
    resumed = cli(root, "resume", "--stage-timeout", "600")  # replaces the stored value
    assert resumed.returncode == 0, resumed.stderr
    assert_complete(root, "s", 2)
    record = yaml.safe_load(git(root, "show", "mlfork/s:.mlfork/run.yaml"))
    assert record["options"]["stage_timeout"] == 600


@pytest.mark.slow
def test_resume_iterations_on_a_completed_run_adds_exactly_one(base_project: Path) -> None:
    root = base_project
    before = checkpoint_log(root, "mlfork/base")
    resumed = cli(root, "resume", "--iterations", "1")
    assert resumed.returncode == 0, resumed.stderr
    after = checkpoint_log(root, "mlfork/base")
    assert after[: len(before)] == before  # history kept as it was
    assert [(c["trailers"]["Mlfork-Iteration"], c["trailers"]["Mlfork-Step"])
            for c in after[len(before):]] == [("3", s) for s in STAGES]
    record = yaml.safe_load(git(root, "show", "mlfork/base:.mlfork/run.yaml"))
    assert record["iterations"] == 4  # the budget was raised, and committed
    assert_complete(root, "base", 4)
    # iteration 3 resumed from iteration 2's checkpoint
    end2 = next(c["sha"] for c in after if c["subject"] == "base: iteration 2 evaluate")
    lock2 = yaml.safe_load(git(root, "show", f"{end2}:dvc.lock"))
    resume3 = yaml.safe_load(git(root, "show", "mlfork/base:models/resume.dvc"))
    assert resume3["outs"][0]["md5"] == lock2["stages"]["train"]["outs"][0]["md5"]
    history = mlflow_history(root, "base", "accuracy")
    assert [step for step, _ in history] == [0, 1, 2, 3]


def mlflow_history(root: Path, name: str, key: str) -> list[tuple[int, float]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root}/.mlfork/local/mlflow.db")
    run = mlflow_run(root, name)
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def test_resume_on_a_completed_run_does_nothing(base_project: Path) -> None:
    root = base_project
    before = snapshot(root)
    resumed = cli(root, "resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "completed: 3/3" in resumed.stderr
    after = snapshot(root)
    for key in ("refs", "head", "index", "status"):
        assert after[key] == before[key], key
    workspace = {k: v for k, v in before["files"].items() if not k.startswith(".mlfork/local")}
    assert {k: v for k, v in after["files"].items() if k in workspace} == workspace
