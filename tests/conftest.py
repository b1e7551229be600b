"""Fixtures: every test is isolated from the machine (HOME, git identity, DVC and MLflow
config), and works on a copy of a project built once per session (per xdist worker)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import mlfork
from mlfork import testing

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    env = testing.isolated_env(home)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    with pytest.MonkeyPatch.context() as mp:
        for var in set(os.environ) - set(env):
            mp.delenv(var)
        for var, value in env.items():
            mp.setenv(var, value)
        testing.isolate_pygit2(home)
        yield home


copy_project = testing.copy_project


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh `mlfork init` project (no run yet)."""
    root = tmp_path_factory.mktemp("template") / "proj"
    mlfork.init(str(root))
    return root


@pytest.fixture(scope="session")
def base_template(tmp_path_factory: pytest.TempPathFactory, template: Path) -> Path:
    """The template with a completed 3-iteration run `base`."""
    root = copy_project(template, tmp_path_factory.mktemp("base") / "proj")
    mlfork.run(path=str(root), name="base", iterations=3)
    return root


@pytest.fixture
def project(tmp_path: Path, template: Path) -> Path:
    return copy_project(template, tmp_path / "proj")


@pytest.fixture
def base_project(tmp_path: Path, base_template: Path) -> Path:
    return copy_project(base_template, tmp_path / "proj")


DELAY_SCRIPT = """\
import os, signal, sys, time
import yaml
if os.environ.get("MLFORK_TEST_DELAY_IGNORE_SIGINT"):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
stage = sys.argv[1]
iteration = (yaml.safe_load(open("params.yaml")) or {}).get("iteration")
for item in filter(None, os.environ.get("MLFORK_TEST_DELAY", "").split(",")):
    name, it, seconds = item.split(":")
    if name == stage and it in ("*", str(iteration)):
        marks = os.environ.get("MLFORK_TEST_DELAY_MARKS")
        if marks:
            open(os.path.join(marks, f"{stage}-{iteration}"), "w").close()
        try:
            time.sleep(float(seconds))
        except KeyboardInterrupt:
            if os.environ.get("MLFORK_TEST_DELAY_SIGINT_EXIT"):
                sys.exit(int(os.environ["MLFORK_TEST_DELAY_SIGINT_EXIT"]))
            raise
"""


@pytest.fixture(scope="session")
def delay_template(tmp_path_factory: pytest.TempPathFactory, template: Path) -> Path:
    """The template whose stages start with `python delay.py STAGE` (committed on main):
    with MLFORK_TEST_DELAY="train:1:30" the train stage of iteration 1 sleeps 30 s first
    (`*` for any iteration), so a test can stop a run in the middle of a chosen stage.
    With MLFORK_TEST_DELAY_MARKS=DIR it creates DIR/<stage>-<iteration> as it starts to
    sleep; with MLFORK_TEST_DELAY_SIGINT_EXIT=N it exits N on Ctrl-C (as some tools do), with
    MLFORK_TEST_DELAY_IGNORE_SIGINT=1 it ignores Ctrl-C."""
    import yaml

    root = copy_project(template, tmp_path_factory.mktemp("delay") / "proj")
    (root / "delay.py").write_text(DELAY_SCRIPT)
    pipeline = yaml.safe_load((root / "dvc.yaml").read_text())
    for name, stage in pipeline["stages"].items():
        stage["cmd"] = f"python delay.py {name} && {stage['cmd']}"
    (root / "dvc.yaml").write_text(yaml.safe_dump(pipeline, sort_keys=False))
    git(root, "add", "delay.py", "dvc.yaml")
    git(root, "commit", "-q", "-m", "stages with a test delay")
    return root


@pytest.fixture
def delay_project(tmp_path: Path, delay_template: Path) -> Path:
    return copy_project(delay_template, tmp_path / "proj")


def git(root: Path, *args: str, check: bool = True) -> str:
    """The real git CLI: an independent reader of what mlfork wrote."""
    proc = subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real dvc CLI."""
    exe = Path(sys.executable).parent / "dvc"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        [str(exe), *args], cwd=root, capture_output=True, text=True, env=env, check=False
    )


def cli(root: Path, *args: str, env: dict[str, str] | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """The real `mlfork` command in a subprocess, as a user types it."""
    return subprocess.run(
        [sys.executable, "-m", "mlfork", *args],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
        check=False,
    )


def snapshot(root: Path) -> dict[str, object]:
    """Everything a refused command must leave as it was: refs, HEAD, index, working tree
    (tracked and untracked files, DVC outputs), the DVC cache and the tracking store."""
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == ".git":
            continue
        if rel.parts[:2] == (".dvc", "tmp"):
            continue
        if path.is_file():
            files[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return {
        "refs": git(root, "for-each-ref", "--format=%(refname) %(objectname)"),
        "head": git(root, "symbolic-ref", "-q", "HEAD", check=False)
        + git(root, "rev-parse", "HEAD", check=False),
        "index": git(root, "ls-files", "--stage"),
        "status": git(root, "status", "--porcelain", "--untracked-files=all"),
        "files": files,
    }


def without_local(snap: dict[str, object]) -> dict[str, object]:
    """A snapshot without mlfork's machine-local state (.mlfork/local/: logs, status): what
    a failed command (not a refused one) may leave, as DVC leaves .dvc/tmp."""
    files = {k: v for k, v in snap["files"].items()  # type: ignore[attr-defined]
             if not k.startswith(".mlfork/local/")}
    return {**snap, "files": files}


def checkpoint_log(root: Path, rev: str) -> list[dict[str, str]]:
    """`git log --first-parent REV` read by the git CLI, oldest first: each commit's sha,
    tree, subject, body and trailers (`%(trailers)` parsed into a dict)."""
    out = git(
        root, "log", "--first-parent", "--reverse",
        "--format=%H%x1f%T%x1f%s%x1f%b%x1f%(trailers:only,unfold)%x1e", rev,
    )
    commits = []
    for record in filter(None, (r.strip("\n") for r in out.split("\x1e"))):
        sha, tree, subject, body, trailers = record.split("\x1f")
        parsed = dict(
            line.split(": ", 1) for line in trailers.splitlines() if ": " in line
        )
        commits.append(
            {"sha": sha, "tree": tree, "subject": subject, "body": body, "trailers": parsed}
        )
    return commits


def lock_path(root: Path) -> Path:
    """The project lock of the project at the top of repository `root`."""
    return root / ".git" / "mlfork" / "project.lock"


def lock_info(root: Path) -> dict[str, object]:
    """The JSON mlfork keeps in its project lock ({} while absent or half-written)."""
    import json

    try:
        return dict(json.loads(lock_path(root).read_text() or "{}"))
    except (OSError, ValueError):
        return {}


def wait_for(predicate: object, timeout: float = 120, what: str = "a condition") -> None:
    """Poll `predicate()` every 20 ms until it is true; fail the test after `timeout` s."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """`proc`, after asserting that it exited 0 (its output is the failure message)."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def shared_build(
    tmp_path_factory: pytest.TempPathFactory, worker_id: str, name: str,
    build: Callable[[Path], None],
) -> Path:
    """A project `build(dest)` makes once per session: under xdist the workers share one
    copy through a file lock (a worker that failed half-way leaves it to be rebuilt)."""
    if worker_id == "master":
        dest = tmp_path_factory.mktemp(name) / "proj"
        build(dest)
        return dest
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / name
    shared.mkdir(exist_ok=True)
    dest, done = shared / "proj", shared / "done"
    with FileLock(str(shared / "build.lock")):
        if not done.exists():
            if dest.exists():
                shutil.rmtree(dest)
            build(dest)
            done.touch()
    return dest
