"""mlfork for a user who also uses plain git and DVC: commits on a run branch, `git checkout
main` after a run, `mlfork run` where HEAD is a run, plain `dvc repro` on a run branch,
removing runs, and failures that leave everything as it was."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import checkpoint_log, cli, dvc, git, ok, snapshot, without_local

pytestmark = pytest.mark.slow


def jcli(root: Path, *args: str) -> object:
    return json.loads(ok(cli(root, *args, "--json")).stdout)


def refuse(root: Path, code: int, *args: str, fragments: tuple[str, ...] = ()) -> str:
    """Run a command that must be refused: its exit code, one line on stderr, and the
    repository, workspace, DVC cache and tracking store exactly as they were."""
    before = snapshot(root)
    proc = cli(root, *args)
    assert proc.returncode == code, proc.stdout + proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in line, line
    assert snapshot(root) == before
    return line


def pairs(root: Path, run: str) -> list[tuple[int, str]]:
    return [
        (int(c["trailers"]["Mlfork-Iteration"]), c["trailers"]["Mlfork-Step"])
        for c in checkpoint_log(root, f"mlfork/{run}")
        if c["trailers"].get("Mlfork-Run") == run and "Mlfork-Step" in c["trailers"]
    ]


# -- a plain commit on a run branch ---------------------------------------------------------


def test_a_user_commit_on_a_run_branch_is_part_of_the_run(base_project: Path) -> None:
    """A code fix committed on `mlfork/base` after iteration 2: the run's progress and
    checkpoints are unchanged, forking from an earlier iteration works, and resume goes on
    with iteration 3, whose first checkpoint and manifest name the user's commit."""
    root = base_project
    before = pairs(root, "base")
    evaluate = root / "pipelines" / "evaluate.py"
    evaluate.write_text(evaluate.read_text() + "\n# a fix between iterations\n")
    git(root, "commit", "-q", "-am", "a fix between iterations")
    fix = git(root, "rev-parse", "HEAD").strip()

    (info,) = jcli(root, "runs")  # type: ignore[misc]
    assert (info["status"], info["done"], info["budget"]) == ("completed", 3, 3)
    log = jcli(root, "log", "base")
    assert [(c["iteration"], c["step"]) for c in log] == before  # type: ignore[union-attr]
    assert [c["metrics"] != {} for c in log][-1]  # type: ignore[union-attr]
    ok(cli(root, "branch", "--from-iteration", "1", "--name", "early", "--no-switch"))

    resumed = ok(cli(root, "resume", "base", "--iterations", "1"))
    assert "run 'base' completed: 4/4 iterations" in resumed.stderr
    after = pairs(root, "base")
    assert after == [*before, (3, "data_split"), (3, "train"), (3, "evaluate")]
    assert len(set(after)) == len(after)  # nothing redone, nothing twice
    first = [c for c in checkpoint_log(root, "mlfork/base")
             if c["subject"] == "base: iteration 3 data_split"][0]
    assert fix[:10] in first["body"] and "a fix between iterations" in first["body"]
    manifest = json.loads(git(root, "show", "mlfork/base:.mlfork/replay.json"))
    assert manifest["user_commits"] == [fix]
    assert fix in git(root, "rev-list", "--first-parent", "mlfork/base")
    history = jcli(root, "metrics", "base", "--source", "tracking")
    assert sorted({p["iteration"] for p in history}) == [0, 1, 2, 3]  # type: ignore[union-attr]


# -- back on the base branch --------------------------------------------------------------------


def test_outputs_left_by_git_checkout_never_block(base_project: Path) -> None:
    """After a run, `git checkout main` leaves DVC's outputs in the workspace; git ignores
    them on main too (mlfork init wrote the .gitignore entries), and `mlfork run` starts."""
    root = base_project
    git(root, "checkout", "-q", "main")
    assert (root / "data" / "train.npz").exists() and (root / "models" / "checkpoint").exists()
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    ran = ok(cli(root, "run", "--name", "k", "--iterations", "1"))
    assert "run 'k' completed: 1/1 iterations" in ran.stderr


def test_declared_outputs_in_the_way_of_a_switch_never_block(base_project: Path) -> None:
    """On main, the user runs the evaluate script by hand: metrics/val.json, a declared
    output, is untracked there and tracked on the run branch. `mlfork resume base` moves it
    out of git's way (kept under .mlfork/local/displaced/) instead of refusing."""
    root = base_project
    git(root, "checkout", "-q", "main")
    evaluate = subprocess.run([sys.executable, "pipelines/evaluate.py"], cwd=root,
                              capture_output=True, text=True, check=False)
    assert evaluate.returncode == 0, evaluate.stderr
    assert "metrics/val.json" in git(root, "status", "--porcelain", "--untracked-files=all")
    resumed = ok(cli(root, "resume", "base", "--iterations", "1"))
    assert "moved 'metrics/val.json'" in resumed.stderr
    assert list((root / ".mlfork" / "local" / "displaced").rglob("val.json"))
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""


# -- mlfork run where HEAD is a run -------------------------------------------------------------


def test_run_on_a_run_branch_is_refused_and_points_at_branch(base_project: Path) -> None:
    root = base_project
    assert git(root, "branch", "--show-current").strip() == "mlfork/base"
    refuse(root, 2, "run", "--name", "k", fragments=(
        "HEAD is on run 'base'", "mlfork branch --from base", "git switch main"))


def test_run_at_a_detached_checkpoint_is_refused(base_project: Path) -> None:
    root = base_project
    git(root, "checkout", "-q", "--detach", "mlfork/base~2")
    refuse(root, 2, "run", "--name", "k", "--iterations", "1", fragments=(
        "HEAD is detached at a commit of run 'base'", "mlfork branch --from base"))


# -- plain dvc repro on a run branch -----------------------------------------------------------


def test_a_plain_dvc_repro_on_a_run_branch_is_recorded_not_discarded(base_project: Path) -> None:
    """On a completed run, a user edits a param and runs `dvc repro`; the next mlfork command
    records that as a commit of the run (the committed dvc.lock matches the workspace, DVC
    finds nothing to do), and the run's checkpoints are unchanged."""
    root = base_project
    before = pairs(root, "base")
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("lr: 0.3", "lr: 0.25"))
    repro = dvc(root, "repro")
    assert repro.returncode == 0, repro.stderr
    reproduced = (root / "dvc.lock").read_bytes()

    resumed = ok(cli(root, "resume"))
    assert "recorded the results of a plain 'dvc repro'" in resumed.stderr
    assert "params.yaml is composed from conf/" in resumed.stderr
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    assert git(root, "show", "mlfork/base:dvc.lock").encode() == reproduced
    assert "lr: 0.25" in git(root, "show", "mlfork/base:params.yaml")
    assert "up to date" in dvc(root, "status").stdout
    assert pairs(root, "base") == before
    subject = git(root, "log", "-1", "--format=%s", "mlfork/base").strip()
    assert subject == "base: record a plain 'dvc repro' (train, evaluate)"


def test_uncommitted_param_edits_are_the_users_and_are_refused(base_project: Path) -> None:
    root = base_project
    params = root / "params.yaml"
    params.write_text(params.read_text().replace("lr: 0.3", "lr: 0.25"))
    refuse(root, 4, "resume", "--iterations", "1", fragments=("params.yaml", "commit them"))


# -- mlfork rm ---------------------------------------------------------------------------------


def test_rm_removes_a_run_and_frees_its_name(base_project: Path) -> None:
    from mlfork.adapters.tracking.writer import Tracker

    root = base_project
    ok(cli(root, "branch", "--from-iteration", "1", "--name", "f", "--no-switch",
           "model.lr=0.1"))
    ok(cli(root, "sync"))
    refuse(root, 2, "rm", "base", fragments=("checked out", "git switch"))
    git(root, "checkout", "-q", "main")
    refuse(root, 2, "rm", "base", fragments=("1 run(s) fork 'base' (f)", "--force"))
    refuse(root, 6, "rm", "nope", fragments=("unknown run 'nope'",))
    refuse(root, 6, "rm", "ba", fragments=("unknown run 'ba'",))  # never a prefix

    removed = ok(cli(root, "rm", "f"))
    assert "removed run 'f'" in removed.stdout and "git branch mlfork/f" in removed.stderr
    assert git(root, "branch", "--list", "mlfork/f") == ""
    tracker = Tracker(f"sqlite:///{root / '.mlfork' / 'local' / 'mlflow.db'}")
    assert tracker.find_run("proj", "f") is None
    assert tracker.find_run("proj", "base") is not None
    cache = sorted(p.name for p in (root / ".dvc" / "cache").rglob("*") if p.is_file())
    forced = ok(cli(root, "rm", "base", "--force"))
    assert "removed run 'base'" in forced.stdout
    assert sorted(p.name for p in (root / ".dvc" / "cache").rglob("*") if p.is_file()) == cache
    assert jcli(root, "runs") == []
    ok(cli(root, "run", "--name", "f", "--iterations", "1"))  # the name is free again


# -- failures leave everything as it was -------------------------------------------------------


def test_a_run_whose_first_stage_fails_puts_everything_back(project: Path) -> None:
    """The user ran `dvc repro` on main (its outputs in the workspace, not committed);
    `mlfork run` then fails in its first stage: no branch, HEAD, index, workspace (those
    outputs included) and DVC cache as they were; the message says to run it again."""
    root = project
    repro = dvc(root, "repro")
    assert repro.returncode == 0, repro.stderr
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "reproduced on main")
    split = root / "pipelines" / "data_split.py"
    broken = split.read_text().replace("def main():", "def main():\n    raise SystemExit(3)")
    split.write_text(broken)
    git(root, "commit", "-q", "-am", "a broken split")
    (root / "data" / "train.npz").unlink()  # a stale output: DVC must rerun data_split
    before = snapshot(root)
    failed = cli(root, "run", "--name", "x", "--iterations", "1")
    assert failed.returncode == 8, failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert "stage 'data_split' of iteration 0 failed with exit code 3" in line
    assert "run 'mlfork run --name x --iterations 1' again (nothing was kept)" in line
    assert without_local(snapshot(root)) == without_local(before)
    assert git(root, "branch", "--list", "mlfork/*") == ""
    db = root / ".mlfork" / "local" / "mlflow.db"
    if db.exists():  # the tracking store never heard of the run
        from mlfork.adapters.tracking.writer import Tracker

        assert Tracker(f"sqlite:///{db}").find_run("proj", "x") is None


def test_a_fork_that_cannot_fetch_its_inputs_is_taken_back(base_project: Path,
                                                          tmp_path: Path) -> None:
    """The fork point's checkpoint is not in the cache and the DVC remote cannot provide it:
    `mlfork branch` fails with exit 17 after creating the branch, and takes it all back."""
    root = base_project
    unreachable = tmp_path / "no-such-remote"
    assert dvc(root, "remote", "add", "--local", "-d", "gone", str(unreachable)).returncode == 0
    lock = yaml.safe_load(git(root, "show", "mlfork/base~3:dvc.lock"))
    (ckpt,) = [o for o in lock["stages"]["train"]["outs"] if o["path"] == "models/checkpoint"]
    obj = root / ".dvc" / "cache" / "files" / "md5" / ckpt["md5"][:2] / ckpt["md5"][2:]
    obj.unlink()  # only the fork point's checkpoint is missing
    before = snapshot(root)
    failed = cli(root, "branch", "--from-iteration", "1", "--name", "f")
    assert failed.returncode == 17, failed.stderr
    assert "'gone'" in failed.stderr and "dvc pull models/checkpoint" in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert without_local(snapshot(root)) == without_local(before)
    assert git(root, "branch", "--list", "mlfork/f") == ""


def test_a_fork_point_without_its_checkpoint_and_no_remote_is_refused(
    base_project: Path,
) -> None:
    root = base_project
    lock = yaml.safe_load(git(root, "show", "mlfork/base~3:dvc.lock"))
    (ckpt,) = [o for o in lock["stages"]["train"]["outs"] if o["path"] == "models/checkpoint"]
    (root / ".dvc" / "cache" / "files" / "md5" / ckpt["md5"][:2] / ckpt["md5"][2:]).unlink()
    refuse(root, 17, "branch", "--from-iteration", "1", "--name", "f", fragments=(
        "models/checkpoint", "no DVC remote is configured", "dvc pull models/checkpoint"))


# -- budgets and timeouts ----------------------------------------------------------------------


def test_run_without_iterations_runs_the_configs_budget(project: Path) -> None:
    root = project
    ran = ok(cli(root, "run", "--name", "b"))
    assert "run 'b' completed: 4/4 iterations" in ran.stderr
    assert yaml.safe_load(git(root, "show", "mlfork/b:.mlfork/run.yaml"))["iterations"] == 4


def test_the_hint_after_a_run_names_a_key_of_the_project(tmp_path: Path) -> None:
    import projects

    root = tmp_path / "p"
    projects.plain(root)
    ok(cli(root, "init"))
    ran = ok(cli(root, "run", "--name", "a", "lr=0.4"))
    hint = [line for line in ran.stderr.splitlines() if line.startswith("next:")][0]
    assert "lr=0.2" in hint and "model.lr" not in hint
    manifest = json.loads(git(root, "show", "mlfork/a:.mlfork/replay.json"))
    assert "pipeline" not in manifest["seed"]


def test_a_failed_start_in_a_fresh_clone_removes_the_cache_object_it_added(
    tmp_path: Path,
) -> None:
    """A fresh clone of a project with a checkpoint hand-off: the first iteration's empty
    resume input is mlfork's to write (never "missing data"), and when the first stage
    fails, the cache object mlfork added for it goes too: the cache is as it was."""
    import projects

    origin = tmp_path / "origin"
    projects.dvclive(origin)
    train = origin / "train.py"
    train.write_text("raise SystemExit(5)\n" + train.read_text())
    git(origin, "commit", "-q", "-am", "a broken training script")
    root = projects.clone(origin, tmp_path / "clone")
    ok(cli(root, "init"))
    before = snapshot(root)
    failed = cli(root, "run", "--name", "a", "--iterations", "1")
    assert failed.returncode == 8, failed.stderr
    assert "exit code 5" in failed.stderr and "nothing was kept" in failed.stderr
    assert without_local(snapshot(root)) == without_local(before)
    assert not list((root / ".dvc" / "cache").rglob("*")) or all(
        p.is_dir() for p in (root / ".dvc" / "cache").rglob("*"))
