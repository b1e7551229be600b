"""Tracking writes delivered in the background (no command waits for MLflow unless asked),
and writes that send only what the store lacks."""

from __future__ import annotations

import fcntl
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import cli, git
from mlflow.tracking import MlflowClient

import mlfork
from mlfork.testing import background_syncs, settle

ASYNC = {"MLFORK_WAIT": "0"}  # the default a user gets: the tests' environment waits


def client(root: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{root}/.mlfork/local/mlflow.db")


def mlflow_run(root: Path, name: str) -> Any:
    c = client(root)
    exp = c.get_experiment_by_name(root.name)
    if exp is None:
        return None
    found = c.search_runs([exp.experiment_id], filter_string=f"tags.`mlfork.run` = '{name}'")
    return found[0] if found else None


def poll(root: Path, name: str, what: Any, timeout: float = 30.0) -> Any:
    """The MLflow run of `name` once `what(run)` holds (None if it never does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (root / ".mlfork/local/mlflow.db").exists():
            found = mlflow_run(root, name)
            if found is not None and what(found):
                return found
        time.sleep(0.2)
    return None


def outbox(root: Path) -> list[Path]:
    folder = root / ".mlfork/local/outbox"
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def metric_steps(root: Path, name: str) -> dict[str, list[int]]:
    found = mlflow_run(root, name)
    c = client(root)
    return {key: sorted(m.step for m in c.get_metric_history(found.info.run_id, key))
            for key in found.data.metrics}


def test_branch_returns_before_mlflow_and_the_fork_appears(base_project: Path) -> None:
    root = base_project
    forked = cli(root, "branch", "--from", "base", "--from-iteration", "1", "--name", "f",
                 "--no-switch", "--json", env=ASYNC)
    assert forked.returncode == 0, forked.stderr
    assert json.loads(forked.stdout)["tracking"] == "background"
    try:
        found = poll(root, "f", lambda r: "mlfork.mirrored" in r.data.tags)
        assert found is not None, (root / ".mlfork/local/sync.log").read_text()
    finally:
        settle(root)
    # read again once every write is in: MLflow's sqlite reads are several SELECTs, not one
    # snapshot, and a read during the write can see its last tag with the status before it
    found = mlflow_run(root, "f")
    # a fork not run yet is "stopped" in `mlfork runs`, KILLED in MLflow: not SCHEDULED
    runs = json.loads(cli(root, "runs", "--json").stdout)
    assert {r["name"]: r["status"] for r in runs}["f"] == "stopped"
    assert found.info.status == "KILLED"
    # its inherited points (iterations 0 and 1 of base), once
    assert set(metric_steps(root, "f")["log_loss"]) == {0, 1}
    assert found.data.tags["mlfork.parent_run"] == "base"
    assert outbox(root) == []
    log = (root / ".mlfork/local/sync.log").read_text()
    done = json.loads(log.strip().splitlines()[-1])
    assert done["delivered"] >= 1 and "error" not in done
    assert git(root, "status", "--porcelain") == ""


def test_wait_delivers_in_the_foreground(base_project: Path) -> None:
    root = base_project
    forked = cli(root, "branch", "--from", "base", "--from-iteration", "1", "--name", "w",
                 "--no-switch", "--wait", "--json", env=ASYNC)
    assert forked.returncode == 0, forked.stderr
    assert json.loads(forked.stdout)["tracking"] == "delivered"
    assert background_syncs(root) == []
    found = mlflow_run(root, "w")
    assert found is not None and found.info.status == "KILLED"
    assert outbox(root) == []


def test_a_killed_background_sync_loses_nothing(base_project: Path) -> None:
    root = base_project
    # the store is held by this test: the background sync waits for it, and is killed there
    lock = open(root / ".mlfork/local/sync.lock", "a+")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        forked = cli(root, "branch", "--from", "base", "--name", "k", "--no-switch",
                     env=ASYNC)
        assert forked.returncode == 0, forked.stderr
        assert [p.name for p in outbox(root)] and mlflow_run(root, "k") is None
        for proc in background_syncs(root):
            proc.kill()
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    settle(root)
    assert outbox(root), "the write must wait in the outbox"
    synced = cli(root, "sync", "--json")
    assert synced.returncode == 0, synced.stderr
    assert json.loads(synced.stdout)["delivered"] >= 1
    assert outbox(root) == []
    assert mlflow_run(root, "k").data.tags["mlfork.parent_run"] == "base"


def test_one_background_sync_at_a_time(base_project: Path) -> None:
    """A second background sync finds the delivery lock taken and leaves the outbox alone;
    the first, once free, delivers it."""
    root = base_project
    mlfork.branch(str(root), "base", name="one", switch=False, wait=False)
    settle(root)
    mlfork.rm(str(root), run="one", wait=False)
    lock = open(root / ".mlfork/local/sync.lock", "a+")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        settle(root)  # the spawned one left: the lock was taken
        busy = cli(root, "sync", "--background")
        assert busy.returncode == 0, busy.stderr
        assert json.loads(busy.stdout).get("busy") is True
        assert outbox(root), "nothing is delivered while another holds the lock"
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    done = cli(root, "sync", "--background")
    assert json.loads(done.stdout)["delivered"] == 1
    assert outbox(root) == []
    assert mlflow_run(root, "one") is None  # marked deleted


def test_foreground_sync_waits_for_the_background_one(base_project: Path) -> None:
    root = base_project
    lock = open(root / ".mlfork/local/sync.lock", "a+")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)
    released = []

    def release() -> None:
        time.sleep(2.0)
        released.append(time.monotonic())
        fcntl.flock(lock, fcntl.LOCK_UN)

    thread = threading.Thread(target=release)
    thread.start()
    try:
        synced = cli(root, "sync")
        finished = time.monotonic()
    finally:
        thread.join()
        lock.close()
    assert synced.returncode == 0, synced.stderr
    assert released and finished >= released[0]


def test_run_end_is_delivered_in_the_background(project: Path) -> None:
    root = project
    ran = cli(root, "run", "--name", "bg", "--iterations", "2", env=ASYNC)
    assert ran.returncode == 0, ran.stderr
    try:
        found = poll(root, "bg", lambda r: r.info.status == "FINISHED"
                     and "mlfork.mirrored" in r.data.tags)
        assert found is not None, (root / ".mlfork/local/sync.log").read_text()
    finally:
        settle(root)
    found = mlflow_run(root, "bg")  # whole, once every write is in
    assert found.info.status == "FINISHED"
    assert metric_steps(root, "bg")["log_loss"] == [0, 1]
    mark = json.loads(found.data.tags["mlfork.mirrored"])
    assert mark["commit"] == git(root, "rev-parse", "mlfork/bg").strip()
    assert mark["status"] == "FINISHED" and mark["step"] == 1


def test_sync_sends_only_what_the_store_lacks(base_project: Path) -> None:
    root = base_project
    first = json.loads(cli(root, "sync", "--json").stdout)
    assert first["runs"] == [] and first["current"] == ["base"] and first["points"] == 0
    before = metric_steps(root, "base")
    resumed = cli(root, "resume", "base", "--iterations", "2")
    assert resumed.returncode == 0, resumed.stderr
    # git moved on: the store's watermark says where it stands; rebuild it to lose track
    c = client(root)
    rid = mlflow_run(root, "base").info.run_id
    mark = json.loads(mlflow_run(root, "base").data.tags["mlfork.mirrored"])
    assert mark["step"] == 4
    c.set_tag(rid, "mlfork.mirrored", json.dumps({**mark, "commit": "0" * 40, "step": 2,
                                                  "ts": _end_ts(root, "base", 2)}))
    again = json.loads(cli(root, "sync", "--json").stdout)
    assert again["runs"] == ["base"]
    keys = len(before)
    assert again["points"] == 2 * keys  # iterations 3 and 4 only
    assert metric_steps(root, "base") == {k: [0, 1, 2, 3, 4] for k in before}
    third = json.loads(cli(root, "sync", "--json").stdout)
    assert third["runs"] == [] and third["points"] == 0


def test_a_rewritten_history_is_sent_whole(base_project: Path) -> None:
    """A watermark naming a checkpoint the run no longer has (history rewritten) is not
    trusted: every point is sent again (the store keeps each point once)."""
    root = base_project
    rid = mlflow_run(root, "base").info.run_id
    client(root).set_tag(rid, "mlfork.mirrored",
                         json.dumps({"commit": "x", "status": "FINISHED", "step": 2, "ts": 1}))
    synced = json.loads(cli(root, "sync", "--json").stdout)
    assert synced["runs"] == ["base"]
    assert synced["points"] == 3 * len(metric_steps(root, "base"))
    assert metric_steps(root, "base") == {k: [0, 1, 2] for k in metric_steps(root, "base")}


def test_rebuild_sends_every_point_once(base_project: Path) -> None:
    root = base_project
    mlfork.branch(str(root), "base", from_iteration=0, name="g", switch=False)
    rebuilt = json.loads(cli(root, "sync", "--rebuild", "--json").stdout)
    keys = len(metric_steps(root, "base"))
    # base: iterations 0..2; g: the one it inherits (0)
    assert rebuilt["points"] == (3 + 1) * keys
    assert sorted(rebuilt["runs"]) == ["base", "g"]


def _end_ts(root: Path, run: str, iteration: int) -> int:
    """The timestamp mlfork gives the points of `iteration`: its last checkpoint's time."""
    for line in git(root, "log", "--format=%ct %B%x00", f"mlfork/{run}").split("\0"):
        if f"Mlfork-Iteration: {iteration}\n" in line + "\n" and "Mlfork-Step: evaluate" in line:
            return int(line.split()[0]) * 1000
    pytest.fail(f"no end of iteration {iteration}")


def test_readers_say_when_the_store_lags_and_read_git(base_project: Path) -> None:
    """While writes wait in the outbox, metrics/diff/report read git and say so on stderr;
    `ui` says the UI may lag."""
    root = base_project
    lock = open(root / ".mlfork/local/sync.lock", "a+")  # noqa: SIM115
    fcntl.flock(lock, fcntl.LOCK_EX)  # the background delivery cannot start
    try:
        forked = cli(root, "branch", "--from", "base", "--from-iteration", "1", "--name",
                     "lag", "--no-switch", env=ASYNC)
        assert forked.returncode == 0, forked.stderr
        settle(root)
        assert outbox(root)
        shown = cli(root, "metrics", "lag", "--json")
        assert shown.returncode == 0, shown.stderr
        assert "wait in the outbox" in shown.stderr and "read from git" in shown.stderr
        from_git = cli(root, "metrics", "lag", "--source", "git", "--json")
        assert json.loads(shown.stdout) == json.loads(from_git.stdout)
        for argv in (("diff", "base", "lag"), ("report", "lag", "-o", "r.md")):
            done = cli(root, *argv)
            assert done.returncode == 0, done.stderr
            assert "wait in the outbox" in done.stderr, argv
        ui = cli(root, "ui", "--print-only")
        assert ui.returncode == 0, ui.stderr
        assert "may lag git" in ui.stderr
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    assert cli(root, "sync").returncode == 0
    assert "outbox" not in cli(root, "metrics", "lag").stderr
