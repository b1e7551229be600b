"""`mlfork branch`: one test per semantics row of issue 3, on real projects, checked with the
real `git` and `dvc` CLIs, real Hydra and the MLflow client.

`base_project` (conftest) is a copy of a project with a completed 3-iteration run `base`
(iterations 0, 1, 2; stages data_split, train, evaluate). `lineage` is a copy of a project
built once per session (shared by the xdist workers) with three runs:

    A: iterations 0..5, overrides model.lr=0.02 timeout=999 exploration_iterations=2,
       --timeout 999 --stage-timeout 500, tag x
    B: forks A at the end of iteration 3, --iterations 4: runs 4..7
    C: forks B at the end of iteration 6, budget kept (8): runs 7
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import cli, copy_project, dvc, git, ok, shared_build, snapshot

import mlfork
from mlfork.errors import AmbiguousRun

STAGES = ["data_split", "train", "evaluate"]
RECORD = ".mlfork/run.yaml"
TRAILERS = (
    "%H%x09%(trailers:key=Mlfork-Run,valueonly,separator=%x2C)"
    "%x09%(trailers:key=Mlfork-Iteration,valueonly,separator=%x2C)"
    "%x09%(trailers:key=Mlfork-Step,valueonly,separator=%x2C)"
)


# -- readers: the git CLI, the dvc CLI, the MLflow client --------------------------------------


def checkpoints(root: Path, rev: str) -> dict[tuple[int, str], tuple[str, str]]:
    """(iteration, step) -> (sha, owning run), read by `git log --first-parent` from the
    commit trailers; where two commits claim the same checkpoint the newest wins."""
    found: dict[tuple[int, str], tuple[str, str]] = {}
    for line in git(root, "log", "--first-parent", f"--format={TRAILERS}", rev).splitlines():
        parts = line.split("\t")
        if len(parts) != 4 or not parts[2]:
            continue
        sha, run, iteration, step = parts
        found.setdefault((int(iteration), step), (sha, run))
    return found


def own_checkpoints(root: Path, since: str, rev: str) -> list[tuple[str, int, str]]:
    """(run, iteration, step) of the checkpoint commits in since..rev, oldest first."""
    out = git(root, "log", "--first-parent", "--reverse", f"--format={TRAILERS}", f"{since}..{rev}")
    rows = []
    for line in out.splitlines():
        _, run, iteration, step = line.split("\t")
        if iteration:
            rows.append((run, int(iteration), step))
    return rows


def rev(root: Path, spec: str) -> str:
    return git(root, "rev-parse", spec).strip()


def show_yaml(root: Path, spec: str) -> Any:
    return yaml.safe_load(git(root, "show", spec))


def record(root: Path, run: str) -> dict[str, Any]:
    """The run record as committed at the tip of the run's branch."""
    return show_yaml(root, f"mlfork/{run}:{RECORD}")


def params(root: Path, run: str) -> dict[str, Any]:
    return show_yaml(root, f"mlfork/{run}:params.yaml")


def tracking(root: Path) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri="sqlite:///" + str(root / ".mlfork" / "local" / "mlflow.db"))


def mlflow_run(client: Any, run: str) -> Any:
    experiments = [e.experiment_id for e in client.search_experiments()]
    found = client.search_runs(experiments, filter_string=f"tags.`mlfork.run` = '{run}'")
    assert len(found) == 1, f"expected one MLflow run for {run}, found {len(found)}"
    return found[0]


def history(client: Any, run_id: str, key: str = "accuracy") -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def metric_at(root: Path, spec: str, key: str = "accuracy") -> float:
    return float(json.loads(git(root, "show", f"{spec}:metrics/val.json"))[key])


def fork(root: Path, **options: Any) -> Any:
    """mlfork.branch in-process (the Python API); the CLI is used where its output matters."""
    return mlfork.branch(path=str(root), **options)


# -- the shared lineage A -> B -> C ------------------------------------------------------------


def _build_lineage(template: Path, dest: Path) -> None:
    copy_project(template, dest)
    mlfork.run(
        path=str(dest),
        name="A",
        iterations=6,
        timeout=999,
        stage_timeout=500,
        tags=["x"],
        overrides=["model.lr=0.02", "timeout=999", "exploration_iterations=2"],
    )
    mlfork.branch(path=str(dest), source="A", from_iteration=3, name="B", iterations=4, run=True)
    mlfork.branch(path=str(dest), source="B", from_iteration=6, name="C", run=True)
    git(dest, "switch", "-q", "mlfork/A")
    ok(dvc(dest, "checkout"))


@pytest.fixture(scope="session")
def lineage_template(
    tmp_path_factory: pytest.TempPathFactory, template: Path, worker_id: str
) -> Path:
    """Built once per session: under xdist the workers share it through a file lock."""
    return shared_build(
        tmp_path_factory, worker_id, "fork-lineage", lambda dest: _build_lineage(template, dest)
    )


@pytest.fixture
def lineage(tmp_path: Path, lineage_template: Path) -> Path:
    return copy_project(lineage_template, tmp_path / "proj")


# -- Source --------------------------------------------------------------------------------------


def test_source_by_run_name(base_project: Path) -> None:
    result = fork(base_project, source="base", from_iteration=1, name="f", switch=False)
    assert (result.source, result.fork_run) == ("base", "base")
    assert record(base_project, "f")["parent"]["run"] == "base"
    assert (
        rev(base_project, "mlfork/f^")
        == checkpoints(base_project, "mlfork/base")[(1, "evaluate")][0]
    )


@pytest.mark.parametrize("spec", ["mlfork/base", "refs/heads/mlfork/base"])
def test_source_by_branch(base_project: Path, spec: str) -> None:
    fork(base_project, name="other", switch=False)  # a second run, so the choice matters
    result = fork(base_project, source=spec, name="f", switch=False)
    assert result.source == "base"
    assert rev(base_project, "mlfork/f^") == rev(base_project, "mlfork/base")


def test_source_by_unique_prefix(base_project: Path) -> None:
    fork(base_project, name="zeta", from_iteration=0, switch=False)
    result = fork(base_project, source="bas", name="f", switch=False)
    assert result.source == "base"
    assert rev(base_project, "mlfork/f^") == rev(base_project, "mlfork/base")
    result = fork(base_project, source="ze", name="g", switch=False)
    assert result.source == "zeta"


def test_source_defaults_to_the_run_checked_out(base_project: Path) -> None:
    fork(base_project, source="base", from_iteration=1, name="g")  # switches to g
    assert git(base_project, "symbolic-ref", "HEAD").strip() == "refs/heads/mlfork/g"
    result = fork(base_project, name="h", switch=False)
    # g's latest checkpoint is base's end of iteration 1 (g has not run yet), not base's tip
    assert result.source == "g"
    assert result.fork_run == "base"
    assert (result.fork_iteration, result.fork_step) == (1, "evaluate")
    assert (
        rev(base_project, "mlfork/h^")
        == checkpoints(base_project, "mlfork/base")[(1, "evaluate")][0]
    )


def test_source_ambiguous_prefix_lists_the_candidates(base_project: Path) -> None:
    fork(base_project, name="bat", switch=False)
    with pytest.raises(AmbiguousRun) as info:
        fork(base_project, source="ba", name="f", switch=False)
    assert info.value.candidates == ["base", "bat"]
    proc = cli(base_project, "branch", "--from", "ba", "--name", "f", "--no-switch")
    assert proc.returncode == 6, proc.stderr
    assert "base" in proc.stderr and "bat" in proc.stderr and "ambiguous" in proc.stderr
    assert git(base_project, "branch", "--list", "mlfork/f") == ""


# -- Checkpoint ----------------------------------------------------------------------------------


def test_checkpoint_default_is_the_latest(base_project: Path) -> None:
    result = fork(base_project, source="base", name="f", switch=False)
    tip = rev(base_project, "mlfork/base")
    assert checkpoints(base_project, "mlfork/base")[(2, "evaluate")][0] == tip
    assert result.fork_commit == tip
    assert (result.fork_iteration, result.fork_step) == (2, "evaluate")
    assert rev(base_project, "mlfork/f^") == tip


def test_checkpoint_from_iteration_is_the_end_of_that_iteration(base_project: Path) -> None:
    result = fork(base_project, source="base", from_iteration=1, name="f", switch=False)
    sha, owner = checkpoints(base_project, "mlfork/base")[(1, "evaluate")]
    assert owner == "base"
    assert result.fork_commit == sha
    assert (result.fork_iteration, result.fork_step) == (1, "evaluate")
    assert rev(base_project, "mlfork/f^") == sha
    assert record(base_project, "f")["parent"] == {
        "run": "base",
        "iteration": 1,
        "step": "evaluate",
        "commit": sha,
    }


def test_checkpoint_from_step_is_the_most_recent_iteration_that_ran_it(base_project: Path) -> None:
    result = fork(base_project, source="base", from_step="train", name="f", switch=False)
    sha = checkpoints(base_project, "mlfork/base")[(2, "train")][0]
    assert result.fork_commit == sha
    assert (result.fork_iteration, result.fork_step) == (2, "train")
    assert rev(base_project, "mlfork/f^") == sha


def test_checkpoint_from_iteration_and_step(base_project: Path) -> None:
    result = fork(
        base_project, source="base", from_iteration=1, from_step="train", name="f", switch=False
    )
    sha = checkpoints(base_project, "mlfork/base")[(1, "train")][0]
    assert result.fork_commit == sha
    assert (result.fork_iteration, result.fork_step) == (1, "train")
    assert rev(base_project, "mlfork/f^") == sha
    assert record(base_project, "f")["parent"]["step"] == "train"


# -- Iterations ----------------------------------------------------------------------------------


def test_iterations_count_from_the_fork_point(base_project: Path) -> None:
    result = fork(base_project, source="base", name="f", iterations=2, switch=False)
    assert (result.budget, result.start_iteration) == (5, 3)
    assert record(base_project, "f")["iterations"] == 5
    assert params(base_project, "f")["iterations"] == 5
    done = mlfork.resume(path=str(base_project), run="f")
    assert (done.status, done.done, done.budget) == ("completed", 5, 5)
    own = own_checkpoints(base_project, "mlfork/base", "mlfork/f")
    assert own == [("f", i, s) for i in (3, 4) for s in STAGES]


def test_iterations_omitted_keeps_the_source_budget(base_project: Path) -> None:
    result = fork(base_project, source="base", from_iteration=1, name="f", switch=False)
    assert (result.budget, result.start_iteration) == (3, 2)
    assert record(base_project, "f")["iterations"] == 3
    mlfork.resume(path=str(base_project), run="f")
    base_cp = checkpoints(base_project, "mlfork/base")[(1, "evaluate")][0]
    own = own_checkpoints(base_project, base_cp, "mlfork/f")
    assert own == [("f", 2, s) for s in STAGES]


def test_relative_key_counts_from_the_fork_point(base_project: Path) -> None:
    fork(
        base_project,
        source="base",
        from_iteration=1,
        name="f",
        switch=False,
        overrides=["exploration_iterations=2"],
    )
    assert params(base_project, "f")["exploration_iterations"] == 4  # 2 completed + 2
    assert record(base_project, "f")["own_overrides"] == ["exploration_iterations=4"]


def test_relative_iterations_override_is_like_the_flag(base_project: Path) -> None:
    result = fork(
        base_project,
        source="base",
        from_iteration=1,
        name="f",
        switch=False,
        overrides=["iterations=3"],
    )
    assert result.budget == 5
    assert record(base_project, "f")["iterations"] == 5
    assert params(base_project, "f")["iterations"] == 5


def test_relative_key_not_given_is_inherited(lineage: Path) -> None:
    # A set exploration_iterations=2; B (forked at the end of 3) did not: it keeps 2, not 4 + 2
    assert params(lineage, "A")["exploration_iterations"] == 2
    fork(lineage, source="A", from_iteration=3, name="f", switch=False)
    assert params(lineage, "f")["exploration_iterations"] == 2
    assert params(lineage, "B")["exploration_iterations"] == 2


# -- Inherited -----------------------------------------------------------------------------------


def test_fork_inherits_the_parent_overrides_and_adds_its_own(lineage: Path) -> None:
    fork(
        lineage,
        source="A",
        from_iteration=2,
        name="f",
        switch=False,
        overrides=["model.alpha=0.001"],
    )
    composed = params(lineage, "f")["model"]
    assert (composed["lr"], composed["alpha"]) == (0.02, 0.001)
    rec = record(lineage, "f")
    assert rec["own_overrides"] == ["model.alpha=0.001"]
    assert rec["overrides"] == ["model.lr=0.02", "exploration_iterations=2", "model.alpha=0.001"]
    mlflow_params = mlflow_run(tracking(lineage), "f").data.params
    assert float(mlflow_params["model.lr"]) == 0.02
    assert float(mlflow_params["model.alpha"]) == 0.001


def test_group_switch_is_composed_by_hydra(lineage: Path, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    result = fork(
        lineage, source="A", from_iteration=2, name="f", switch=False, overrides=["model=mlp"]
    )
    parent_model = params(lineage, "A")["model"]
    model = params(lineage, "f")["model"]
    assert parent_model["name"] == "sgd" and "hidden" not in parent_model

    # Hydra itself, on conf/ as committed at the checkpoint, with the lineage's overrides
    # then the fork's; the switch drops the inherited override inside the switched group
    # (model.lr=0.02 was set for the sgd model).
    conf = tmp_path / "export"
    conf.mkdir()
    archive = subprocess.run(
        ["git", "archive", result.fork_commit, "conf"],
        cwd=lineage,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(conf)], input=archive, check=True)
    with initialize_config_dir(config_dir=str(conf / "conf"), version_base="1.3"):
        expected = OmegaConf.to_container(
            compose("config", overrides=["exploration_iterations=2", "model=mlp"]),
            resolve=True,
        )
    assert model == expected["model"]  # type: ignore[index]
    mlp = show_yaml(lineage, f"{result.fork_commit}:conf/model/mlp.yaml")
    sgd = show_yaml(lineage, f"{result.fork_commit}:conf/model/sgd.yaml")
    assert model["name"] == "mlp" and model["hidden"] == mlp["hidden"]
    assert set(model) == set(mlp)  # group-aware: the sgd group's keys are gone ...
    assert not (set(sgd) - set(mlp)) & set(model)
    assert model["alpha"] == mlp["alpha"]
    assert model["lr"] == mlp["lr"]  # ... and so is the parent's model.lr override
    assert "model.lr=0.02" not in result.overrides
    assert "exploration_iterations=2" in result.overrides  # outside the group: inherited
    # not a dict merge with the parent's composed model: that would keep lr 0.02
    assert model == mlp and parent_model["lr"] == 0.02


def test_not_inherited_keys_are_back_to_their_defaults(lineage: Path) -> None:
    assert params(lineage, "A")["timeout"] == 999
    assert record(lineage, "A")["options"] == {"timeout": 999.0, "stage_timeout": 500.0}
    fork(lineage, source="A", from_iteration=2, name="f", switch=False)
    assert params(lineage, "f")["timeout"] is None
    assert params(lineage, "f")["stage_timeout"] is None
    rec = record(lineage, "f")
    assert rec["options"] == {"timeout": None, "stage_timeout": None}
    assert not any(o.startswith("timeout") for o in rec["overrides"])


def test_not_inherited_keys_given_again_apply_to_the_fork(lineage: Path) -> None:
    fork(lineage, source="A", from_iteration=2, name="f", switch=False, timeout=30)
    assert record(lineage, "f")["options"] == {"timeout": 30.0, "stage_timeout": None}
    assert params(lineage, "f")["timeout"] is None
    # as an override, like `mlfork run timeout=40` does
    fork(
        lineage,
        source="A",
        from_iteration=2,
        name="g",
        switch=False,
        overrides=["stage_timeout=40"],
    )
    assert params(lineage, "g")["stage_timeout"] == 40
    assert record(lineage, "g")["options"] == {"timeout": None, "stage_timeout": 40}


# -- Locked (the refusals are in test_fork_errors.py) --------------------------------------------


def test_locked_keys_set_to_their_current_value_are_allowed(base_project: Path) -> None:
    same = ["dataset=digits", "dataset.test_size=0.25", "val_metric=accuracy"]
    fork(base_project, source="base", from_iteration=1, name="f", switch=False, overrides=same)
    parent = show_yaml(base_project, "mlfork/f^:params.yaml")
    composed = params(base_project, "f")
    assert composed["dataset"] == parent["dataset"]
    assert composed["val_metric"] == parent["val_metric"]


# -- Tags ----------------------------------------------------------------------------------------


def test_tags_are_not_inherited_by_default(lineage: Path) -> None:
    assert record(lineage, "A")["tags"] == ["x"]
    assert mlflow_run(tracking(lineage), "A").data.tags.get("x") == "true"
    fork(lineage, source="A", from_iteration=2, name="f", switch=False)
    assert record(lineage, "f")["tags"] == []
    assert "x" not in mlflow_run(tracking(lineage), "f").data.tags


def test_inherit_tags_merges_without_duplicates(lineage: Path) -> None:
    fork(
        lineage,
        source="A",
        from_iteration=2,
        name="f",
        switch=False,
        inherit_tags=True,
        tags=["x", "y"],
    )
    assert record(lineage, "f")["tags"] == ["x", "y"]
    tags = mlflow_run(tracking(lineage), "f").data.tags
    assert (tags.get("x"), tags.get("y")) == ("true", "true")


# -- Lineage resolution --------------------------------------------------------------------------


@pytest.mark.slow
def test_lineage_is_built_as_described(lineage: Path) -> None:
    owners = {k: run for k, (_, run) in checkpoints(lineage, "mlfork/C").items()}
    assert {i for (i, _), run in owners.items() if run == "A"} == {0, 1, 2, 3}
    assert {i for (i, _), run in owners.items() if run == "B"} == {4, 5, 6}
    assert {i for (i, _), run in owners.items() if run == "C"} == {7}
    assert len(owners) == 8 * len(STAGES)
    assert {i for (i, _), (_, r) in checkpoints(lineage, "mlfork/B").items() if r == "B"} == {
        4,
        5,
        6,
        7,
    }


def _check_resolved(root: Path, name: str, parent: str, chain: list[str]) -> None:
    rec = record(root, name)
    assert rec["parent"]["run"] == parent
    client = tracking(root)
    fork_run = mlflow_run(client, name)
    tags = fork_run.data.tags
    assert tags["mlfork.parent_run"] == parent
    assert tags["mlflow.parentRunId"] == mlflow_run(client, parent).info.run_id
    assert tags["mlfork.root_run"] == "A"
    assert int(tags["mlfork.depth"]) == len(chain) - 1
    assert [c["run"] for c in json.loads(tags["mlfork.lineage"])] == chain


@pytest.mark.slow
def test_lineage_fork_of_c_at_an_iteration_b_ran_resolves_to_b(lineage: Path) -> None:
    result = fork(lineage, source="C", from_iteration=5, name="f", switch=False)
    assert (result.source, result.fork_run, result.fork_iteration) == ("C", "B", 5)
    assert result.fork_commit == checkpoints(lineage, "mlfork/B")[(5, "evaluate")][0]
    _check_resolved(lineage, "f", "B", ["A", "B", "f"])


@pytest.mark.slow
def test_lineage_fork_of_c_at_an_iteration_a_ran_resolves_to_a(lineage: Path) -> None:
    result = fork(lineage, source="C", from_iteration=2, name="f", switch=False)
    assert (result.source, result.fork_run, result.fork_iteration) == ("C", "A", 2)
    assert result.fork_commit == checkpoints(lineage, "mlfork/A")[(2, "evaluate")][0]
    _check_resolved(lineage, "f", "A", ["A", "f"])


@pytest.mark.slow
def test_lineage_fork_of_c_at_its_own_iteration_resolves_to_c(lineage: Path) -> None:
    result = fork(lineage, source="C", from_iteration=7, name="f", switch=False)
    assert result.fork_run == "C"
    _check_resolved(lineage, "f", "C", ["A", "B", "C", "f"])
    chain = json.loads(mlflow_run(tracking(lineage), "f").data.tags["mlfork.lineage"])
    assert [(c["run"], c.get("iteration")) for c in chain] == [
        ("A", None),
        ("B", 3),
        ("C", 6),
        ("f", 7),
    ]


# -- Nothing copied ------------------------------------------------------------------------------


def test_fork_is_the_checkpoint_plus_one_commit(base_project: Path) -> None:
    proc = cli(
        base_project,
        "branch",
        "--from",
        "base",
        "--from-iteration",
        "1",
        "--name",
        "f",
        "--no-switch",
        "model.lr=0.05",
    )
    assert proc.returncode == 0, proc.stderr
    cp = checkpoints(base_project, "mlfork/base")[(1, "evaluate")][0]
    assert git(base_project, "rev-list", f"{cp}..mlfork/f").split() == [
        rev(base_project, "mlfork/f")
    ]
    assert git(base_project, "rev-list", "--parents", "-n1", "mlfork/f").split()[1:] == [cp]
    changed = git(base_project, "diff", "--name-only", cp, "mlfork/f").split()
    assert sorted(changed) == [RECORD, "params.yaml"]


def _machine_paths(root: Path, tmp_root: Path) -> set[str]:
    """The project, every pytest temporary folder (base_project was built in another one),
    HOME, the interpreter's prefixes and the mlfork source tree `mlfork init` copied from."""
    paths = {str(root), str(root.resolve()), os.environ["HOME"], sys.prefix, sys.exec_prefix}
    paths |= {str(Path(sys.executable).parent), str(tmp_root), str(tmp_root.resolve())}
    paths.add(str(Path(mlfork.__file__).resolve().parents[1]))
    return {p for p in paths if len(p) > 4}


def test_no_machine_path_is_committed(
    base_project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    machine = _machine_paths(base_project, tmp_path_factory.getbasetemp().parent)
    proc = cli(
        base_project,
        "branch",
        "--from",
        "base",
        "--from-iteration",
        "1",
        "--name",
        "f",
        "model.lr=0.05",
        "--run",
    )
    assert proc.returncode == 0, proc.stderr
    commits = git(base_project, "rev-list", "--all").split()
    args = ["grep", "-I", "-l", "-F"]
    for path in sorted(machine):
        args += ["-e", path]
    found = subprocess.run(
        ["git", *args, *commits], cwd=base_project, capture_output=True, text=True, check=False
    )
    assert found.returncode == 1, f"machine paths committed in: {found.stdout}"
    messages = git(base_project, "log", "--all", "--format=%B")
    assert not [p for p in machine if p in messages]


def _cache_object(root: Path, md5: str) -> Path:
    return root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def _outputs(root: Path) -> dict[str, str]:
    """Every DVC output of the workspace (dvc.lock outs and .dvc files) -> its md5."""
    outs = {}
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    for stage in lock["stages"].values():
        for out in stage.get("outs") or []:
            outs[out["path"]] = out["md5"]
    for dvcfile in root.rglob("*.dvc"):
        if not dvcfile.is_file() or dvcfile.relative_to(root).parts[0] in (".dvc", ".git"):
            continue
        for out in yaml.safe_load(dvcfile.read_text())["outs"]:
            outs[str((dvcfile.parent / out["path"]).relative_to(root))] = out["md5"]
    return outs


def test_outputs_are_linked_from_the_cache_after_the_switch(base_project: Path) -> None:
    fork(base_project, source="base", from_iteration=1, name="f")
    outs = _outputs(base_project)
    assert {"models/checkpoint", "models/resume", "data/train.npz"} <= set(outs)
    metrics_uncached = {"metrics/val.json"}
    for path, md5 in outs.items():
        if path in metrics_uncached:
            continue
        target, cached = base_project / path, _cache_object(base_project, md5)
        assert cached.is_file(), path
        if target.is_symlink():
            assert target.resolve() == cached.resolve(), path
        else:
            assert os.stat(target).st_ino == os.stat(cached).st_ino, f"{path} is a copy"


def _usage(root: Path) -> tuple[int, int, int]:
    """(bytes of the workspace and cache counted once per inode, without .git, .dvc/tmp and
    .mlfork/local; number of cache objects; bytes of .git)."""
    seen: set[int] = set()
    total = git_bytes = 0
    for path in root.rglob("*"):
        rel = path.relative_to(root).parts
        if path.is_symlink() or not path.is_file():
            continue
        size = path.stat().st_size
        if rel[0] == ".git":
            git_bytes += size
            continue
        if rel[:2] in ((".dvc", "tmp"), (".mlfork", "local")):
            continue
        ino = path.stat().st_ino
        if ino not in seen:
            seen.add(ino)
            total += size
    objects = sum(1 for p in (root / ".dvc" / "cache").rglob("*") if p.is_file())
    return total, objects, git_bytes


def test_forking_does_not_grow_the_cache_or_the_disk(base_project: Path) -> None:
    before = _usage(base_project)
    fork(base_project, source="base", from_iteration=1, name="f", overrides=["model.lr=0.05"])
    after = _usage(base_project)
    assert after[1] == before[1], "the fork added DVC cache objects"
    assert after[0] - before[0] < 4096, f"the workspace grew by {after[0] - before[0]} bytes"
    assert after[2] - before[2] < 64 * 1024, f".git grew by {after[2] - before[2]} bytes"


# -- Switch --------------------------------------------------------------------------------------


def test_switch_moves_the_workspace_to_the_fork(base_project: Path) -> None:
    result = fork(base_project, source="base", from_iteration=1, name="f")
    assert result.switched
    assert git(base_project, "symbolic-ref", "HEAD").strip() == "refs/heads/mlfork/f"
    assert (base_project / "params.yaml").read_text() == git(
        base_project, "show", "mlfork/f:params.yaml"
    )
    assert git(base_project, "status", "--porcelain", "--untracked-files=all") == ""
    status = ok(dvc(base_project, "status", "--json"))
    assert json.loads(status.stdout or "{}") == {}


def _without_local(snap: dict[str, Any]) -> dict[str, Any]:
    snap = dict(snap)
    snap.pop("refs")
    snap["files"] = {k: v for k, v in snap["files"].items() if not k.startswith(".mlfork/local/")}
    return snap


def test_no_switch_leaves_the_workspace_alone(base_project: Path) -> None:
    before = snapshot(base_project)
    result = fork(
        base_project,
        source="base",
        from_iteration=1,
        name="f",
        switch=False,
        overrides=["model.lr=0.05"],
    )
    assert not result.switched
    after = snapshot(base_project)
    assert _without_local(after) == _without_local(before)
    assert after["refs"] != before["refs"]
    assert git(base_project, "symbolic-ref", "HEAD").strip() == "refs/heads/mlfork/base"


# -- MLflow --------------------------------------------------------------------------------------


def test_mlflow_lineage_tags_and_note(base_project: Path) -> None:
    result = fork(
        base_project,
        source="base",
        from_iteration=1,
        name="f",
        switch=False,
        overrides=["model.lr=0.05"],
    )
    client = tracking(base_project)
    tags = mlflow_run(client, "f").data.tags
    assert tags["mlfork.parent_run"] == "base"
    assert tags["mlfork.fork_iteration"] == "1"
    assert tags["mlfork.fork_step"] == "evaluate"
    assert tags["mlfork.fork_commit"] == result.fork_commit
    assert tags["mlfork.root_run"] == "base"
    assert tags["mlfork.depth"] == "1"
    assert tags["mlfork.inherited_until"] == "1"
    chain = json.loads(tags["mlfork.lineage"])
    assert [c["run"] for c in chain] == ["base", "f"]
    assert chain[1]["iteration"] == 1 and chain[1]["step"] == "evaluate"
    assert len(tags["mlfork.lineage"]) <= 8000
    assert tags["mlflow.parentRunId"] == mlflow_run(client, "base").info.run_id
    note = tags["mlflow.note.content"]
    assert "base" in note and "iteration 1" in note and "evaluate" in note
    assert "model.lr=0.05" in note
    assert "dataset" in note and "val_metric" in note  # the locked keys (issue 3, MLflow row)


def test_mlflow_metric_history_is_one_continuous_curve(base_project: Path) -> None:
    fork(
        base_project,
        source="base",
        from_iteration=1,
        name="f",
        switch=False,
        overrides=["model.lr=0.05"],
    )
    client = tracking(base_project)
    parent = history(client, mlflow_run(client, "base").info.run_id)
    assert [s for s, _ in parent] == [0, 1, 2]
    fork_id = mlflow_run(client, "f").info.run_id
    inherited = history(client, fork_id)
    assert inherited == parent[:2]
    assert mlflow_run(client, "f").data.tags["mlfork.inherited_until"] == "1"

    mlfork.resume(path=str(base_project), run="f")
    after = history(client, fork_id)
    assert [s for s, _ in after] == [0, 1, 2]
    assert after[:2] == parent[:2]
    assert after[2][1] == pytest.approx(metric_at(base_project, "mlfork/f"))


# -- Python API and --run ------------------------------------------------------------------------


def test_python_api_returns_where_the_fork_came_from(base_project: Path) -> None:
    result = mlfork.branch(path=str(base_project), source="base", from_iteration=1, name="f")
    assert (result.fork_run, result.fork_iteration, result.fork_step) == ("base", 1, "evaluate")
    assert result.name == "f" and result.branch == "mlfork/f"
    assert result.commit == rev(base_project, "mlfork/f")


def test_branch_run_continues_at_once(base_project: Path) -> None:
    proc = cli(
        base_project,
        "branch",
        "--from",
        "base",
        "--from-iteration",
        "1",
        "--name",
        "f",
        "--run",
        "model.lr=0.05",
    )
    assert proc.returncode == 0, proc.stderr
    cp = checkpoints(base_project, "mlfork/base")[(1, "evaluate")][0]
    assert own_checkpoints(base_project, cp, "mlfork/f") == [("f", 2, s) for s in STAGES]
    assert git(base_project, "status", "--porcelain", "--untracked-files=all") == ""
    info = {r.name: r for r in mlfork.runs(str(base_project))}["f"]
    assert (info.status, info.done, info.budget) == ("completed", 3, 3)
    assert mlflow_run(tracking(base_project), "f").info.status == "FINISHED"
