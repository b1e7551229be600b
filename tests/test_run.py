"""`mlfork run` end to end on an `mlfork init` project, read back with the git and dvc CLIs.

Most tests read `base_project`: a copy of the session's run `base` (3 iterations).
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from conftest import checkpoint_log, cli, copy_project, dvc, git, snapshot

import mlfork

STAGES = ["data_split", "train", "evaluate"]
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"
METRICS = {"accuracy", "f1_macro", "log_loss"}


def show(root: Path, rev: str, path: str) -> str:
    return git(root, "show", f"{rev}:{path}")


def checkpoints(root: Path, run: str) -> list[dict]:
    """The run's commits after `mlfork init` (the run record commit first)."""
    commits = checkpoint_log(root, f"mlfork/{run}")
    return [c for c in commits if c["trailers"].get("Mlfork-Run") == run]


def end_of_iteration(root: Path, run: str) -> dict[int, dict]:
    return {
        int(c["trailers"]["Mlfork-Iteration"]): c
        for c in checkpoints(root, run)
        if c["trailers"].get("Mlfork-Step") == STAGES[-1]
    }


def test_one_commit_per_stage_per_iteration_with_trailers(base_project: Path) -> None:
    root = base_project
    commits = checkpoints(root, "base")
    everything = checkpoint_log(root, "mlfork/base")
    assert len(everything) == len(commits) + 1  # + the `mlfork init` commit
    assert everything[0]["subject"].startswith("mlfork init")

    record, *stage_commits = commits
    assert record["subject"] == "base: start run"
    assert record["trailers"] == {"Mlfork-Run": "base"}
    assert len(stage_commits) == 9
    expected = [(i, s) for i in range(3) for s in STAGES]
    for commit, (i, stage) in zip(stage_commits, expected, strict=True):
        assert commit["subject"] == f"base: iteration {i} {stage}"
        assert commit["trailers"] == {
            "Mlfork-Run": "base",
            "Mlfork-Iteration": str(i),
            "Mlfork-Step": stage,
        }
    # a linear branch: each commit has exactly one parent, the one before it
    for parent, child in zip(everything, everything[1:], strict=False):
        assert git(root, "rev-parse", f"{child['sha']}^@").split() == [parent["sha"]]
    assert git(root, "symbolic-ref", "--short", "HEAD").strip() == "mlfork/base"
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""


def test_an_up_to_date_stage_still_gets_its_commit(base_project: Path) -> None:
    """data_split is up to date at iterations 1 and 2: its commit exists, says so, and
    changes nothing but the iteration's inputs (params.yaml's `iteration`, the resume
    pointer); dvc.lock and every output stay as the previous commit has them."""
    root = base_project
    commits = checkpoint_log(root, "mlfork/base")
    by_subject = {c["subject"]: (k, c) for k, c in enumerate(commits)}
    for i in (1, 2):
        k, commit = by_subject[f"base: iteration {i} data_split"]
        parent = commits[k - 1]
        assert parent["subject"] == f"base: iteration {i - 1} evaluate"
        assert "up to date" in commit["body"]
        changed = git(root, "diff", "--name-only", parent["sha"], commit["sha"]).split()
        assert sorted(changed) == ["models/resume.dvc", "params.yaml"]
        assert git(root, "rev-parse", f"{commit['sha']}:dvc.lock") == git(
            root, "rev-parse", f"{parent['sha']}:dvc.lock"
        )
    # stages that ran say so
    k, train = by_subject["base: iteration 1 train"]
    assert "ran in" in train["body"]
    assert "dvc.lock" in git(root, "diff", "--name-only", commits[k - 1]["sha"], train["sha"])


def test_dvc_finds_the_branch_and_each_iteration_up_to_date(base_project: Path) -> None:
    root = base_project
    status = dvc(root, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == {}
    # an earlier end of iteration, checked out with the git and dvc CLIs, is consistent too
    end0 = end_of_iteration(root, "base")[0]["sha"]
    git(root, "switch", "-q", "--detach", end0)
    checkout = dvc(root, "checkout", "--force")
    assert checkout.returncode == 0, checkout.stderr
    status = dvc(root, "status", "--json")
    assert json.loads(status.stdout) == {}
    assert yaml.safe_load((root / "params.yaml").read_text())["iteration"] == 0


def test_run_record_is_committed_by_the_first_commit(base_project: Path) -> None:
    root = base_project
    first = checkpoints(root, "base")[0]["sha"]
    added = git(root, "log", "--format=%H", "--diff-filter=A", "mlfork/base", "--",
                ".mlfork/run.yaml").split()
    assert added == [first]
    record = yaml.safe_load(show(root, "mlfork/base", ".mlfork/run.yaml"))
    assert record["name"] == "base"
    assert record["iterations"] == 3
    assert record["overrides"] == []
    assert record["schema"] == 1
    assert isinstance(record["argv"], list)
    assert datetime.fromisoformat(record["created"]).tzinfo is not None


def test_params_yaml_is_committed_per_iteration(base_project: Path) -> None:
    root = base_project
    for commit in checkpoints(root, "base")[1:]:
        params = yaml.safe_load(show(root, commit["sha"], "params.yaml"))
        assert params["iteration"] == int(commit["trailers"]["Mlfork-Iteration"])
        assert params["iterations"] == 3
        assert "mlfork" not in params  # the policy is not a parameter
    # and DVC recorded that value for the train stage of each iteration
    for i, commit in end_of_iteration(root, "base").items():
        lock = yaml.safe_load(show(root, commit["sha"], "dvc.lock"))
        assert lock["stages"]["train"]["params"]["params.yaml"]["iteration"] == i


def test_dvc_outputs_in_the_workspace_are_links_to_the_cache(base_project: Path) -> None:
    root = base_project
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    outs = {
        out["path"]: out["md5"]
        for stage in lock["stages"].values()
        for out in stage["outs"]
    }
    resume = yaml.safe_load((root / "models" / "resume.dvc").read_text())["outs"][0]
    outs["models/resume"] = resume["md5"]
    checked = 0
    for path, md5 in outs.items():
        if path == "metrics/val.json":  # cache: false, committed to git instead
            continue
        work = root / path
        cached = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
        assert cached.is_file(), path
        if work.is_symlink():
            assert work.resolve() == cached.resolve(), path
        else:
            st, cst = work.stat(), cached.stat()
            assert st.st_nlink > 1 and (st.st_dev, st.st_ino) == (cst.st_dev, cst.st_ino), path
        checked += 1
    assert checked == 4  # data/train.npz, data/val.npz, models/checkpoint, models/resume


def test_resume_input_points_at_the_previous_iterations_checkpoint(base_project: Path) -> None:
    root = base_project
    ends = end_of_iteration(root, "base")
    for commit in checkpoints(root, "base")[1:]:
        i = int(commit["trailers"]["Mlfork-Iteration"])
        pointer = yaml.safe_load(show(root, commit["sha"], "models/resume.dvc"))["outs"][0]
        if i == 0:
            assert pointer["md5"] == EMPTY_MD5
            assert pointer["size"] == 0
            continue
        previous = yaml.safe_load(show(root, ends[i - 1]["sha"], "dvc.lock"))
        checkpoint = previous["stages"]["train"]["outs"][0]
        assert checkpoint["path"] == "models/checkpoint"
        assert pointer["md5"] == checkpoint["md5"]
        assert pointer["size"] == checkpoint["size"]
    # and each train stage recorded that it resumed from it
    for commit in ends.values():
        lock = yaml.safe_load(show(root, commit["sha"], "dvc.lock"))
        deps = {d["path"]: d["md5"] for d in lock["stages"]["train"]["deps"]}
        pointer = yaml.safe_load(show(root, commit["sha"], "models/resume.dvc"))["outs"][0]
        assert deps["models/resume"] == pointer["md5"]
    models_at = [
        yaml.safe_load(show(root, ends[i]["sha"], "dvc.lock"))["stages"]["train"]["outs"][0]["md5"]
        for i in range(3)
    ]
    assert len(set(models_at)) == 3  # every iteration trained a new checkpoint


@pytest.mark.slow
def test_overrides_compose_the_model_group_and_are_recorded(project: Path) -> None:
    root = project
    result = cli(root, "run", "--name", "x", "--iterations", "1", "model=mlp", "model.lr=0.002")
    assert result.returncode == 0, result.stderr
    params = yaml.safe_load(show(root, "mlfork/x", "params.yaml"))
    mlp = yaml.safe_load(show(root, "mlfork/x", "conf/model/mlp.yaml"))
    sgd = yaml.safe_load(show(root, "mlfork/x", "conf/model/sgd.yaml"))
    assert params["model"]["name"] == "mlp"
    assert params["model"]["lr"] == 0.002
    assert set(params["model"]) == set(mlp)
    assert not (set(sgd) - set(mlp)) & set(params["model"])
    for key in set(mlp) - {"lr"}:
        assert params["model"][key] == mlp[key]
    record = yaml.safe_load(show(root, "mlfork/x", ".mlfork/run.yaml"))
    assert record["overrides"] == ["model=mlp", "model.lr=0.002"]
    assert record["iterations"] == 1
    assert record["argv"] == [
        "mlfork", "run", "--name", "x", "--iterations", "1", "model=mlp", "model.lr=0.002"
    ]
    lock = yaml.safe_load(show(root, "mlfork/x", "dvc.lock"))
    assert lock["stages"]["train"]["params"]["params.yaml"]["model"] == params["model"]
    assert [c["subject"] for c in checkpoints(root, "x")] == [
        "x: start run", *[f"x: iteration 0 {s}" for s in STAGES]
    ]
    # main's params.yaml is untouched: the run's config lives on its branch
    assert yaml.safe_load(show(root, "main", "params.yaml"))["model"]["name"] == "sgd"


def test_runs_json_describes_the_completed_run(base_project: Path) -> None:
    root = base_project
    result = cli(root, "runs", "--json")
    assert result.returncode == 0, result.stderr
    (info,) = json.loads(result.stdout)
    tip = git(root, "rev-parse", "mlfork/base").strip()
    accuracy = json.loads(show(root, tip, "metrics/val.json"))["accuracy"]
    assert info["name"] == "base"
    assert info["branch"] == "mlfork/base"
    assert info["parent"] is None
    assert info["status"] == "completed"
    assert (info["done"], info["budget"]) == (3, 3)
    assert info["headline"] == "accuracy"
    assert info["headline_value"] == pytest.approx(accuracy)
    assert info["tip"] == tip
    assert info["checked_out"] is True


def test_log_json_lists_the_nine_checkpoints_with_metrics(base_project: Path) -> None:
    root = base_project
    result = cli(root, "log", "--json", "base")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    commits = checkpoints(root, "base")[1:]
    assert len(entries) == 9
    for entry, commit in zip(entries, commits, strict=True):
        assert entry["commit"] == commit["sha"]
        assert entry["run"] == "base"
        assert (entry["iteration"], entry["step"]) == (
            int(commit["trailers"]["Mlfork-Iteration"]), commit["trailers"]["Mlfork-Step"]
        )
        if entry["step"] == "evaluate":
            on_disk = json.loads(show(root, commit["sha"], "metrics/val.json"))
            assert set(entry["metrics"]) == METRICS
            assert entry["metrics"] == pytest.approx(on_disk)
        else:
            assert entry["metrics"] == {}


@pytest.mark.slow
def test_python_api_works_from_another_projects_directory(
    tmp_path: Path, template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mlfork.run(path=...)` from inside another project with the same stage names runs
    the target's stages, and leaves the project it was called from alone."""
    target = copy_project(template, tmp_path / "target")
    bystander = copy_project(template, tmp_path / "bystander")
    before = snapshot(bystander)
    monkeypatch.chdir(bystander)
    result = mlfork.run(path=str(target), name="api", iterations=1)
    assert os.getcwd() == str(bystander)
    assert (result.status, result.done) == ("completed", 1)
    assert snapshot(bystander) == before
    assert [c["subject"] for c in checkpoints(target, "api")][-1] == "api: iteration 0 evaluate"
    assert json.loads(dvc(target, "status", "--json").stdout) == {}
