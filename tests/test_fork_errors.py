"""`mlfork branch` on bad input: each refusal is the documented exit code, one line
`mlfork: error: ...` on stderr, and refs, HEAD, index, working tree, DVC cache and tracking
store exactly as they were (conftest.snapshot). Plus: racing processes for one name.

`errors_project` is `base` (3 completed iterations, checked out) with two forks that did
not run: `bat` (at base's latest checkpoint, so `ba` is an ambiguous prefix) and `mid`
(after train of iteration 2, so evaluate never ran in mid's iteration 2).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli, copy_project, git, snapshot

import mlfork

TRAILERS = (
    "%H%x09%(trailers:key=Mlfork-Iteration,valueonly,separator=%x2C)"
    "%x09%(trailers:key=Mlfork-Step,valueonly,separator=%x2C)"
)


@pytest.fixture(scope="session")
def errors_template(tmp_path_factory: pytest.TempPathFactory, base_template: Path) -> Path:
    root = copy_project(base_template, tmp_path_factory.mktemp("fork-errors") / "proj")
    mlfork.branch(path=str(root), source="base", name="bat", switch=False)
    mlfork.branch(path=str(root), source="base", from_step="train", name="mid", switch=False)
    assert git(root, "symbolic-ref", "HEAD").strip() == "refs/heads/mlfork/base"
    return root


@pytest.fixture
def errors_project(tmp_path: Path, errors_template: Path) -> Path:
    return copy_project(errors_template, tmp_path / "proj")


def checkpoint(root: Path, rev: str, iteration: int, step: str) -> str:
    for line in git(root, "log", "--first-parent", f"--format={TRAILERS}", rev).splitlines():
        sha, it, st = line.split("\t")
        if it and (int(it), st) == (iteration, step):
            return sha
    raise AssertionError(f"no checkpoint {iteration}/{step} on {rev}")


def refused(root: Path, args: list[str], code: int, *needles: str) -> str:
    """Run `mlfork branch ARGS`; check the exit code, the one-line message and that
    nothing changed. Returns the message."""
    before = snapshot(root)
    proc = cli(root, "branch", *args)
    assert proc.returncode == code, f"exit {proc.returncode}: {proc.stdout}{proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlfork: error: "), proc.stderr
    assert proc.stdout == ""
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert snapshot(root) == before
    return lines[0]


def test_unknown_run(errors_project: Path) -> None:
    refused(errors_project, ["--from", "nope", "--name", "f"], 6, "unknown run 'nope'")


def test_ambiguous_prefix_lists_the_candidates(errors_project: Path) -> None:
    message = refused(errors_project, ["--from", "ba", "--name", "f"], 6, "ambiguous")
    assert "base" in message and "bat" in message


@pytest.mark.parametrize(
    ("source", "iteration"),
    [("base", "3"), ("base", "99"), ("mid", "2")],  # mid stopped after train of iteration 2
)
def test_iteration_not_completed(errors_project: Path, source: str, iteration: str) -> None:
    refused(
        errors_project,
        ["--from", source, "--from-iteration", iteration, "--name", "f"],
        6,
        f"iteration {iteration} of '{source}' is not completed",
    )


def test_negative_iteration(errors_project: Path) -> None:
    refused(errors_project, ["--from-iteration", "-1", "--name", "f"], 2, "-1")


def test_unknown_stage(errors_project: Path) -> None:
    message = refused(errors_project, ["--from-step", "nope", "--name", "f"], 6, "'nope'")
    assert "data_split" in message and "evaluate" in message  # the stages it knows


def test_stage_that_never_ran_in_that_iteration(errors_project: Path) -> None:
    # mid holds base's iterations 0, 1 and iteration 2 up to train: evaluate never ran in 2
    refused(
        errors_project,
        ["--from", "mid", "--from-iteration", "2", "--from-step", "evaluate", "--name", "f"],
        6,
        "'evaluate'",
        "iteration 2",
    )


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("dataset=wine", "dataset"),
        ("dataset.test_size=0.5", "dataset"),
        ("+dataset.extra=1", "dataset"),
        ("val_metric=f1_macro", "val_metric"),
        ("~val_metric", "val_metric"),
    ],
)
def test_locked_override(errors_project: Path, override: str, key: str) -> None:
    message = refused(
        errors_project, ["--from", "base", "--name", "f", override], 7, f"'{key}'", override
    )
    assert "comparable" in message


def test_unparsable_override(errors_project: Path) -> None:
    refused(errors_project, ["--name", "f", "model.lr=[1,"], 2, "'model.lr=[1,'")


@pytest.mark.parametrize(
    "override",
    [
        "exploration_iterations=-1",
        "exploration_iterations=abc",
        "exploration_iterations=1.5",
        "iterations=-2",
    ],
)
def test_relative_override_must_be_a_count(errors_project: Path, override: str) -> None:
    refused(errors_project, ["--name", "f", override], 2, f"'{override}'", "non-negative integer")


@pytest.mark.parametrize("name", ["base", "bat"])
def test_name_taken(errors_project: Path, name: str) -> None:
    refused(errors_project, ["--name", name], 5, f"'mlfork/{name}' exists")


@pytest.mark.parametrize("name", ["../x", "a b", "refs/heads/x", "-x", "x.lock", "x..y"])
def test_name_invalid(errors_project: Path, name: str) -> None:
    # `--name=-x`: as `--name -x`, click could take -x for an option
    refused(errors_project, [f"--name={name}"], 5, "invalid run name", repr(name))


def _make_dirty(root: Path) -> None:
    with open(root / "conf" / "config.yaml", "a") as fh:
        fh.write("# a local edit\n")


def test_dirty_working_tree_refuses_the_switch(errors_project: Path) -> None:
    _make_dirty(errors_project)
    refused(errors_project, ["--name", "f"], 4, "uncommitted changes", "conf/config.yaml")


def test_dirty_working_tree_is_fine_with_no_switch(errors_project: Path) -> None:
    _make_dirty(errors_project)
    edited = (errors_project / "conf" / "config.yaml").read_text()
    status = git(errors_project, "status", "--porcelain")
    proc = cli(errors_project, "branch", "--from", "base", "--name", "f", "--no-switch")
    assert proc.returncode == 0, proc.stderr
    assert (errors_project / "conf" / "config.yaml").read_text() == edited
    assert git(errors_project, "status", "--porcelain") == status
    assert git(errors_project, "symbolic-ref", "HEAD").strip() == "refs/heads/mlfork/base"
    assert (
        git(errors_project, "rev-parse", "mlfork/f^").strip()
        == git(errors_project, "rev-parse", "mlfork/base").strip()
    )
    # the fork's committed config is composed from conf/ as committed, not the local edit
    assert "a local edit" not in git(errors_project, "show", "mlfork/f:conf/config.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("racers", [2, 8])
def test_racing_for_one_name_has_exactly_one_winner(errors_project: Path, racers: int) -> None:
    from mlflow.tracking import MlflowClient

    root = errors_project
    cp = checkpoint(root, "mlfork/base", 1, "evaluate")
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/.mlfork/local/mlflow.db")
    for round_ in range(3):
        name = f"same-{round_}"
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mlfork",
                    "branch",
                    "--no-switch",
                    "--from",
                    "base",
                    "--from-iteration",
                    "1",
                    "--name",
                    name,
                ],
                cwd=root,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(racers)
        ]
        outcomes = [(p.wait(timeout=300), *p.communicate()) for p in procs]
        codes = sorted(code for code, _, _ in outcomes)
        # one winner; the others find the name taken, or (while the winner still holds
        # the project lock after the wait) the project busy
        assert codes[0] == 0 and set(codes[1:]) <= {5, 12}, outcomes
        for code, _, err in outcomes:
            if code == 5:
                assert err.strip() == (
                    f"mlfork: error: branch 'mlfork/{name}' exists: pick another --name"
                )
            if code == 12:
                assert "another mlfork process" in err and len(err.strip().splitlines()) == 1
        fsck = subprocess.run(
            ["git", "fsck", "--no-dangling"], cwd=root, capture_output=True, text=True, check=False
        )
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        assert git(root, "rev-list", "--parents", "-n1", f"mlfork/{name}").split()[1:] == [cp]
        assert git(root, "rev-list", "--count", f"{cp}..mlfork/{name}").strip() == "1"
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(experiments, filter_string=f"tags.`mlfork.run` = '{name}'")
        assert len(runs) == 1
    assert git(root, "symbolic-ref", "HEAD").strip() == "refs/heads/mlfork/base"
    assert git(root, "status", "--porcelain") == ""
