"""Existing DVC projects work: `mlfork init` adopts a third-party git+DVC project (no conf/,
no checkpoint hand-off) without changing a tracked file, and `mlfork run` drives it with the
override grammar applied to its params.yaml."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import checkpoint_log, cli, copy_project, dvc, git, snapshot

PREPARE = """\
import yaml
params = yaml.safe_load(open("params.yaml"))
with open("data.txt", "w") as f:
    f.write(f"lr={params['lr']}\\n" * 3)
"""

FIT = """\
import json
import yaml
params = yaml.safe_load(open("params.yaml"))
rows = open("data.txt").read().splitlines()
score = float(params["lr"]) * int(params.get("epochs", 1)) + len(rows)
with open("metrics.json", "w") as f:
    json.dump({"score": score, "rows": len(rows)}, f)
"""

PIPELINE = """\
stages:
  prepare:
    cmd: python prepare.py
    deps:
      - prepare.py
    params:
      - lr
    outs:
      - data.txt
  fit:
    cmd: python fit.py
    deps:
      - fit.py
      - data.txt
    params:
      - params.yaml:
    metrics:
      - metrics.json:
          cache: false
"""


@pytest.fixture(scope="module")
def thirdparty_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small DVC project made by hand with the git and dvc CLIs, before `mlfork init`."""
    root = tmp_path_factory.mktemp("thirdparty") / "proj"
    root.mkdir()
    git(root, "init", "-q")
    init = dvc(root, "init")
    assert init.returncode == 0, init.stderr
    (root / "params.yaml").write_text("lr: 0.1\nepochs: 2\n")
    (root / "prepare.py").write_text(PREPARE)
    (root / "fit.py").write_text(FIT)
    (root / "dvc.yaml").write_text(PIPELINE)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "a third-party DVC project")
    return root


@pytest.fixture
def thirdparty(tmp_path: Path, thirdparty_template: Path) -> Path:
    return copy_project(thirdparty_template, tmp_path / "proj")


@pytest.fixture
def adopted(thirdparty: Path) -> Path:
    result = cli(thirdparty, "init")
    assert result.returncode == 0, result.stderr
    return thirdparty


def commits_of(root: Path, run: str) -> list[dict]:
    return [c for c in checkpoint_log(root, f"mlfork/{run}")
            if c["trailers"].get("Mlfork-Run") == run]


def test_init_adopts_without_changing_a_tracked_file(thirdparty: Path) -> None:
    root = thirdparty
    head = git(root, "rev-parse", "HEAD")
    config = (root / ".dvc" / "config").read_text()
    assert dvc(root, "config", "cache.type").stdout.strip() == ""

    result = cli(root, "init")
    assert result.returncode == 0, result.stderr
    assert "adopted" in result.stdout
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    # one commit, adding one file: the team's MLflow experiment (the repository's name)
    assert git(root, "rev-parse", "HEAD~1") == head
    assert git(root, "diff", "--name-status", head.strip(), "HEAD") == "A\t.mlfork/config.yaml\n"
    assert "experiment: " in (root / ".mlfork" / "config.yaml").read_text()
    assert git(root, "branch", "--list", "mlfork/*") == ""
    again = cli(root, "init")  # adopting again commits nothing
    assert again.returncode == 0, again.stderr
    assert git(root, "rev-parse", "HEAD~1") == head
    assert (root / ".dvc" / "config").read_text() == config
    local = dvc(root, "config", "--local", "cache.type")
    assert local.returncode == 0, local.stderr
    assert set(local.stdout.strip().split(",")) >= {"hardlink", "symlink"}
    assert (root / ".dvc" / "config.local").is_file()


def test_run_edits_params_yaml_and_commits_each_stage(adopted: Path) -> None:
    root = adopted
    result = cli(root, "run", "--name", "a", "--iterations", "2", "lr=0.2")
    assert result.returncode == 0, result.stderr

    assert yaml.safe_load(git(root, "show", "mlfork/a:params.yaml")) == {"lr": 0.2, "epochs": 2}
    assert yaml.safe_load(git(root, "show", "main:params.yaml")) == {"lr": 0.1, "epochs": 2}
    record = yaml.safe_load(git(root, "show", "mlfork/a:.mlfork/run.yaml"))
    assert (record["overrides"], record["iterations"]) == (["lr=0.2"], 2)

    record_commit, *stages = commits_of(root, "a")
    assert record_commit["subject"] == "a: start run"
    assert [c["subject"] for c in stages] == [
        f"a: iteration {i} {s}" for i in range(2) for s in ("prepare", "fit")
    ]
    for c in stages:
        assert set(c["trailers"]) == {"Mlfork-Run", "Mlfork-Iteration", "Mlfork-Step"}
    # iteration 0 ran both stages; iteration 1 changed no parameter, so both are up to date
    # and still get their commits: prepare's is empty (the same tree as its parent), fit's,
    # the end of the iteration, only carries the iteration's replay manifest
    everything = checkpoint_log(root, "mlfork/a")
    parent_tree = {c["sha"]: p["tree"] for p, c in zip(everything, everything[1:], strict=False)}
    for c in stages[:2]:
        assert "ran in" in c["body"]
        assert c["tree"] != parent_tree[c["sha"]]
    for c in stages[2:]:
        assert "up to date" in c["body"]
    prepare1, fit1 = stages[2:]
    assert prepare1["tree"] == parent_tree[prepare1["sha"]]
    assert git(root, "diff", "--name-only", f"{prepare1['sha']}^", prepare1["sha"]) == ""
    changed = git(root, "diff", "--name-only", f"{fit1['sha']}^", fit1["sha"]).split()
    assert changed == [".mlfork/replay.json"]

    assert (root / "data.txt").read_text() == "lr=0.2\n" * 3
    metrics = json.loads(git(root, "show", "mlfork/a:metrics.json"))
    assert metrics == {"score": pytest.approx(0.2 * 2 + 3), "rows": 3}
    lock = yaml.safe_load(git(root, "show", "mlfork/a:dvc.lock"))
    md5 = next(o["md5"] for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data.txt")
    cached = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    data = root / "data.txt"
    assert data.is_symlink() or data.stat().st_ino == cached.stat().st_ino  # linked, not copied
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    status = dvc(root, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == {}
    log = json.loads(cli(root, "log", "--json").stdout)
    assert [(e["iteration"], e["step"], e["metrics"].get("score")) for e in log] == [
        (0, "prepare", None), (0, "fit", pytest.approx(3.4)),
        (1, "prepare", None), (1, "fit", pytest.approx(3.4)),
    ]


def test_override_grammar_adds_and_deletes_keys(adopted: Path) -> None:
    root = adopted
    result = cli(root, "run", "--name", "b", "--iterations", "1", "+new=1", "~epochs", "lr=0.3")
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(git(root, "show", "mlfork/b:params.yaml")) == {"lr": 0.3, "new": 1}
    lock = yaml.safe_load(git(root, "show", "mlfork/b:dvc.lock"))
    assert lock["stages"]["fit"]["params"]["params.yaml"] == {"lr": 0.3, "new": 1}
    assert json.loads(git(root, "show", "mlfork/b:metrics.json"))["score"] == pytest.approx(3.3)


def test_an_unknown_key_is_refused_before_anything_is_written(adopted: Path) -> None:
    root = adopted
    before = snapshot(root)
    result = cli(root, "run", "--name", "c", "--iterations", "1", "nope=1")
    assert result.returncode == 2, result.stderr
    assert "nope=1" in result.stderr
    after = snapshot(root)
    assert after == before
    assert git(root, "branch", "--list", "mlfork/*") == ""


def test_init_refuses_a_non_empty_folder_that_is_not_a_repository(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "todo.txt").write_text("buy milk\n")
    result = cli(folder, "init")
    assert result.returncode == 2, result.stderr
    assert "not empty" in result.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["todo.txt"]
    assert (folder / "todo.txt").read_text() == "buy milk\n"
    probe = subprocess.run(["git", "rev-parse", "--git-dir"], cwd=folder, capture_output=True)
    assert probe.returncode != 0  # no repository was made


def test_init_refuses_a_git_repository_without_dvc(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    git(root, "init", "-q")
    (root / "a.txt").write_text("a\n")
    result = cli(root, "init")
    assert result.returncode == 3, result.stderr
    assert "dvc init" in result.stderr
    assert not (root / ".dvc").exists()
