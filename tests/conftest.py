"""Fixtures: every test is isolated from the machine (HOME, git identity, DVC and MLflow
config), and works on a copy of a project built once per session (per xdist worker)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import mlfork

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    gitconfig = home / ".gitconfig"
    gitconfig.write_text(
        "[user]\n\tname = mlfork tests\n\temail = tests@mlfork.invalid\n"
        "[init]\n\tdefaultBranch = main\n"
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
        mp.setenv("GIT_CONFIG_GLOBAL", str(gitconfig))
        mp.setenv("XDG_CONFIG_HOME", str(home / ".config"))
        mp.setenv("XDG_CACHE_HOME", str(home / ".cache"))
        mp.setenv("DVC_NO_ANALYTICS", "1")
        mp.setenv("DVC_SITE_CACHE_DIR", str(home / "dvc-site-cache"))
        mp.setenv("DVC_GLOBAL_CONFIG_DIR", str(home / "dvc-global"))
        mp.setenv("DVC_SYSTEM_CONFIG_DIR", str(home / "dvc-system"))
        mp.setenv("PYTHONDONTWRITEBYTECODE", "1")
        for var in (
            "MLFLOW_TRACKING_URI",
            "GIT_AUTHOR_NAME",
            "GIT_AUTHOR_EMAIL",
            "GIT_COMMITTER_NAME",
            "GIT_COMMITTER_EMAIL",
            "GIT_DIR",
            "GIT_WORK_TREE",
        ):
            mp.delenv(var, raising=False)
        # pygit2 reads the global config once per process: point it at ours.
        import pygit2

        pygit2.settings.search_path[pygit2.enums.ConfigLevel.GLOBAL] = str(home)
        pygit2.settings.search_path[pygit2.enums.ConfigLevel.SYSTEM] = str(home / "nosystem")
        pygit2.settings.search_path[pygit2.enums.ConfigLevel.XDG] = str(home / "noxdg")
        yield home


def copy_project(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    lock = dest / ".mlfork" / "local" / "lock"
    if lock.exists():
        lock.unlink()
    return dest


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
        if rel.parts[0] == ".git" or rel.parts[:3] == (".mlfork", "local", "lock"):
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
