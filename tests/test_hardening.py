"""Faults from outside: a broken or full tracking store, values MLflow would refuse or cut,
a read-only or full disk, a reader of stdout that goes away, processes mlfork must not
touch, and the lock seen by readers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import cli, copy_project, git, lock_path, ok, snapshot

import mlfork

pytestmark = pytest.mark.slow


def db(root: Path) -> Path:
    return root / ".mlfork" / "local" / "mlflow.db"


def client(root: Path) -> object:
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{db(root)}")


def one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# -- a broken tracking store -------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["folder", "garbage", "truncated", "empty"])
def test_a_broken_store_is_one_line_and_rebuild_recovers(base_project: Path,
                                                          damage: str) -> None:
    root = base_project
    path = db(root)
    if damage == "folder":
        path.unlink()
        path.mkdir()
        (path / "x").write_text("")
    elif damage == "garbage":
        path.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:2048])
    else:
        path.write_bytes(b"")
    synced = cli(root, "sync")
    assert synced.returncode == 10, synced.stderr
    line = one_line(synced)
    assert "is broken" in line and "mlfork sync --rebuild" in line
    rebuilt = ok(cli(root, "sync", "--rebuild"))
    assert "moved aside" in rebuilt.stderr
    assert list(path.parent.glob("mlflow.db.broken-*"))
    history = json.loads(ok(cli(root, "metrics", "base", "--source", "tracking",
                                "--json")).stdout)
    assert sorted({p["iteration"] for p in history}) == [0, 1, 2]
    assert ok(cli(root, "sync")).returncode == 0


def test_a_run_with_a_broken_store_commits_and_parks_its_writes(project: Path) -> None:
    root = project
    path = db(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / ".gitignore").write_text("*\n")
    path.mkdir()
    ran = ok(cli(root, "run", "--name", "r", "--iterations", "1"))
    assert "run 'r' completed: 1/1" in ran.stderr
    assert "is broken" in ran.stderr and "mlfork sync" in ran.stderr
    assert list((root / ".mlfork" / "local" / "outbox").glob("*.json"))


# -- writes the store refuses or cuts ----------------------------------------------------------


def test_an_outbox_entry_the_store_refuses_is_set_aside(base_project: Path) -> None:
    """Entries written by an older mlfork: a tag key MLflow refuses is left out with a
    warning; an entry that can never be written (a metric that is not a number) is set
    aside with one warning; neither blocks the others."""
    root = base_project
    outbox = root / ".mlfork" / "local" / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    entry = {"run": "base", "experiment": "proj", "start_time": 0, "tags": {},
             "params": {}, "metrics": [], "status": None, "end_time": None}
    (outbox / "00000000000000000001-base.json").write_text(
        json.dumps(dict(entry, tags={"bad key!": "x", "mlfork.tag.kept": "yes"})))
    (outbox / "00000000000000000002-base.json").write_text(
        json.dumps(dict(entry, metrics=[["accuracy", "not a number", 0, 0]])))
    (outbox / "00000000000000000003-base.json").write_text(
        json.dumps(dict(entry, tags={"mlfork.tag.good": "yes"})))
    synced = ok(cli(root, "sync"))
    assert "the tag key 'bad key!' of run 'base' was not sent" in synced.stderr
    assert "00000000000000000002-base.json set aside" in synced.stderr
    assert not list(outbox.glob("*.json"))
    assert [p.name for p in outbox.glob("*.bad")] == ["00000000000000000002-base.bad"]
    c = client(root)
    (run,) = c.search_runs([c.get_experiment_by_name("proj").experiment_id])  # type: ignore
    assert run.data.tags["mlfork.tag.kept"] == "yes" and run.data.tags["mlfork.tag.good"] == "yes"
    again = ok(cli(root, "sync"))
    assert "set aside" not in again.stderr


def test_values_mlflow_would_cut_stay_whole_as_artifacts(project: Path) -> None:
    root = project
    long_value = "x" * 7000
    ran = ok(cli(root, "run", "--name", "r", "--iterations", "1", f"+note={long_value}"))
    assert "more than MLflow keeps (6000)" in ran.stderr
    c = client(root)
    (run,) = c.search_runs([c.get_experiment_by_name("proj").experiment_id])  # type: ignore
    assert len(run.data.params["note"]) == 6000
    artifact = "mlfork/full-values/params/note.txt"
    text = Path(c.download_artifacts(run.info.run_id, artifact)).read_text()  # type: ignore
    assert text == long_value


def test_duplicate_mlflow_runs_are_repaired_by_sync(base_project: Path) -> None:
    root = base_project
    c = client(root)
    exp = c.get_experiment_by_name("proj")  # type: ignore[attr-defined]
    c.create_run(exp.experiment_id, tags={"mlfork.run": "base"},  # type: ignore[attr-defined]
                 run_name="base", start_time=int(time.time() * 1000) + 10_000)
    synced = ok(cli(root, "sync"))
    assert "1 duplicate MLflow run(s) removed" in synced.stderr
    found = c.search_runs([exp.experiment_id])  # type: ignore[attr-defined]
    assert [r.data.tags["mlfork.run"] for r in found] == ["base"]


# -- secrets through interpolation --------------------------------------------------------------


def test_a_conf_file_that_reads_the_environment_is_warned_about(project: Path) -> None:
    root = project
    (root / "conf" / "config.yaml").write_text(
        (root / "conf" / "config.yaml").read_text() + "token: ${oc.env:HOME}\n")
    git(root, "commit", "-q", "-am", "a key read from the environment")
    ran = ok(cli(root, "run", "--name", "r", "--iterations", "1"))
    assert "conf/config.yaml: 'token' calls the resolver 'oc.env'" in ran.stderr


# -- stdout ------------------------------------------------------------------------------------


def test_a_reader_that_goes_away_ends_the_command_quietly(base_project: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "mlfork", "log", "--json"],
                            cwd=base_project, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # like `| head -0`: the first write finds no reader
    code = proc.wait(timeout=120)
    assert code == 141, proc.stderr.read()
    assert proc.stderr.read() == b""


# -- the lock, seen by readers -------------------------------------------------------------------


@pytest.fixture
def holder(base_project: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds the project lock, as `mlfork run` of base would."""
    path = lock_path(base_project)
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", (
            "import fcntl, json, os, time, psutil\n"
            f"fh = open({str(path)!r}, 'a+')\n"
            "fcntl.flock(fh, fcntl.LOCK_EX)\n"
            "fh.seek(0); fh.truncate()\n"
            "fh.write(json.dumps({'pid': os.getpid(), 'run': 'base', 'command': 'run',\n"
            "  'started': psutil.Process().create_time()}))\n"
            "fh.flush(); print('held', flush=True); time.sleep(300)\n"
        )], stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield proc
    proc.kill()


def test_readers_never_take_the_lock_and_see_who_holds_it(base_project: Path,
                                                          holder: subprocess.Popen[str]) -> None:
    root = base_project
    for _ in range(20):
        runs = json.loads(ok(cli(root, "runs", "--json")).stdout)
        assert runs[0]["status"] == "running"
    ok(cli(root, "log"))
    ok(cli(root, "tree"))
    holder.kill()
    holder.wait()
    runs = json.loads(ok(cli(root, "runs", "--json")).stdout)
    assert runs[0]["status"] == "completed"  # a dead holder holds nothing


# -- processes mlfork does not own -----------------------------------------------------------


def test_a_stage_timeout_signals_the_stage_alone(delay_project: Path) -> None:
    """An API caller's own child process survives the watchdog killing a stage."""
    root = delay_project
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    env = dict(os.environ, MLFORK_TEST_DELAY="train:0:60")
    os.environ.update(env)
    try:
        with pytest.raises(mlfork.MlforkError, match="timeout"):
            mlfork.run(path=str(root), name="t", iterations=1, stage_timeout=2)
    finally:
        os.environ.pop("MLFORK_TEST_DELAY", None)
    assert bystander.poll() is None  # still alive
    bystander.send_signal(signal.SIGKILL)
    bystander.wait()


def test_library_calls_leave_logging_and_the_environment_alone(project: Path) -> None:
    import logging

    before = {name: logging.getLogger(name).level for name in ("dvc", "mlflow", "alembic")}
    env = dict(os.environ)
    mlfork.run(path=str(project), name="r", iterations=1)
    assert {name: logging.getLogger(name).level for name in before} == before
    assert dict(os.environ) == env


# -- a read-only project, a full disk ------------------------------------------------------------


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs (the suite runs as root in CI)."""
    point = tmp_path / "mnt"
    point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(point)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"mounting a tmpfs needs root: {done.stderr}"
    yield point
    subprocess.run(["umount", "-l", str(point)], check=False)


def test_a_read_only_project_lists_and_refuses_writes(mount: Path, base_template: Path) -> None:
    root = copy_project(base_template, mount / "proj")
    git(root, "checkout", "-q", "main")
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    before = snapshot(root)
    for args in (("runs",), ("log", "base"), ("tree",), ("metrics", "base", "--source", "git"),
                 ("diff", "base", "base"), ("replay", "base")):
        ok(cli(root, *args))
    for args in (("branch", "--from", "base", "--name", "f", "--no-switch"),
                 ("run", "--name", "x"), ("resume", "base"), ("rm", "base")):
        proc = cli(root, *args)
        assert proc.returncode == 15, proc.stderr
        assert "Read-only file system" in one_line(proc)
    assert snapshot(root) == before


def test_a_full_disk_refuses_in_one_line_and_writes_nothing(mount: Path,
                                                            base_template: Path) -> None:
    root = copy_project(base_template, mount / "proj")
    git(root, "checkout", "-q", "main")
    before = snapshot(root)
    fill = mount / "fill"
    with open(fill, "wb") as fh, pytest.raises(OSError):
        while True:
            fh.write(b"\0" * (1 << 20))
    for args in (("branch", "--from", "base", "--name", "f", "--no-switch"),
                 ("run", "--name", "x", "--iterations", "1")):
        proc = cli(root, *args)
        assert proc.returncode == 15, proc.stderr
        assert "No space left on device" in one_line(proc)
    fill.unlink()
    assert snapshot(root) == before
    ok(cli(root, "branch", "--from", "base", "--name", "f", "--no-switch"))
