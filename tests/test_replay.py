"""`mlfork replay` and `mlfork verify` end to end: the real CLI on real projects, results read
back with the git and dvc CLIs and the MLflow client.

`base_project` (conftest) has a completed 3-iteration run `base` made at `main`. The example
pipeline is deterministic (every RNG state travels in the checkpoint), so a replay and a
fork without overrides must reproduce it bit for bit; a variant with a random nonce in the
checkpoint and a random metric shows what a divergence looks like.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import cli, dvc, git, snapshot

import mlfork

MANIFEST = ".mlfork/replay.json"
STAGES = ["data_split", "train", "evaluate"]
TRAILERS = (
    "%H%x09%(trailers:key=Mlfork-Run,valueonly,separator=%x2C)"
    "%x09%(trailers:key=Mlfork-Iteration,valueonly,separator=%x2C)"
    "%x09%(trailers:key=Mlfork-Step,valueonly,separator=%x2C)"
)


def ends(root: Path, run: str) -> dict[int, str]:
    """iteration -> end-of-iteration commit on `run`'s first-parent line (newest wins)."""
    found: dict[int, str] = {}
    log = git(root, "log", "--first-parent", f"--format={TRAILERS}", f"mlfork/{run}")
    for line in log.splitlines():
        sha, _, iteration, step = line.split("\t")
        if step == STAGES[-1]:
            found.setdefault(int(iteration), sha)
    return found


def outputs(root: Path, sha: str) -> dict[str, str]:
    lock = yaml.safe_load(git(root, "show", f"{sha}:dvc.lock"))
    return {o["path"]: o["md5"] for st in lock["stages"].values() for o in st.get("outs", [])}


def metrics(root: Path, sha: str) -> dict[str, float]:
    return dict(json.loads(git(root, "show", f"{sha}:metrics/val.json")))


def amend_manifest(root: Path, text: str | None) -> None:
    """Rewrite (or, with None, remove) the manifest of base's last iteration in place."""
    if text is None:
        git(root, "rm", "-q", MANIFEST)
        git(root, "commit", "-q", "--amend", "--no-edit")
    else:
        (root / MANIFEST).write_text(text)
        git(root, "commit", "-q", "--amend", "--no-edit", MANIFEST)


def refs(root: Path) -> str:
    return git(root, "for-each-ref", "--format=%(refname) %(objectname)")


def tracked_state(root: Path, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The snapshot without mlfork's machine-local folder (the tracking store, logs)."""
    snap = snapshot(root)
    snap["files"] = {k: v for k, v in snap["files"].items()  # type: ignore[attr-defined]
                     if not k.startswith((".mlfork/local/", *skip))}
    return snap


def mlflow_runs(root: Path) -> dict[str, dict[str, Any]]:
    """Active MLflow runs by name, with their tags."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{root / '.mlfork/local/mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_name: dict(r.data.tags) for r in client.search_runs(experiments)}


# -- replay: print ---------------------------------------------------------------------------


def test_replay_prints_the_command_the_environment_and_the_datasets(base_project: Path) -> None:
    root = base_project
    before = snapshot(root)
    main = git(root, "rev-parse", "main").strip()
    proc = cli(root, "replay", "base")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "replay of 'base' iteration 2 (manifest_version 1" in out
    assert f"reproduce from the base commit {main[:12]}:" in out
    assert f"  git switch --detach {main[:12]}\n" in out
    assert "  PYTHONHASHSEED=42 mlfork run --name base-replay-1 --iterations 3\n" in out
    assert "environment: identical to this machine's" in out
    assert "  data/train.npz: match (md5 " in out and "  data/val.npz: match (md5 " in out
    assert "config (composed for iteration 2):" in out and "    lr: 0.3" in out
    assert "config check" not in out  # the replay composes the same config
    assert proc.stderr == ""

    proc = cli(root, "replay", "base", "--iteration", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert (plan["run"], plan["original"], plan["iteration"], plan["kind"]) == (
        "base", "base", 1, "run")
    assert plan["commit"] == ends(root, "base")[1] and plan["start_commit"] == main
    assert plan["commands"][1] == "PYTHONHASHSEED=42 mlfork run --name base-replay-1 --iterations 3"
    assert plan["pythonhashseed"] == "42" and plan["config"]["iteration"] == 1
    assert plan["environment"] == [] and plan["config_changes"] == []
    assert {d["path"]: d["status"] for d in plan["datasets"]} == {
        "data/train.npz": "match", "data/val.npz": "match"}
    assert any("iterations 0 to 1 are the ones" in w for w in plan["warnings"])

    api = mlfork.replay(str(root), "base")
    assert api.commands == plan["commands"] and api.iteration == 2
    assert snapshot(root) == before  # replay without --launch only reads


def test_unknown_runs_and_iterations_exit_6(base_project: Path) -> None:
    root = base_project
    before = snapshot(root)
    for args, message in [
        (["replay", "nope"], "unknown run 'nope'"),
        (["replay", "base", "--iteration", "3"], "iteration 3 of 'base' is not completed"),
        (["replay", "base", "--iteration", "9", "--launch"], "not completed"),
        (["verify", "nope", "--from-iteration", "0"], "unknown run 'nope'"),
        (["verify", "base", "--from-iteration", "7"], "iteration 7 of 'base' is not completed"),
    ]:
        proc = cli(root, *args)
        assert proc.returncode == 6, (args, proc.stderr)
        assert proc.stderr.startswith("mlfork: error: ") and message in proc.stderr
        assert proc.stderr.count("\n") == 1
    for args, message in [
        (["verify", "base", "--from-iteration", "2"], "nothing after it to compare"),
        (["verify", "base", "--from-iteration", "0", "--iterations", "3"], "at most 2"),
        (["replay", "base", "--force"], "go with --launch"),
    ]:
        proc = cli(root, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr
    assert snapshot(root) == before


def test_a_missing_manifest_exits_6_and_a_malformed_one_14(base_project: Path) -> None:
    root = base_project
    amend_manifest(root, "{not json")
    before = snapshot(root)
    for args in (["replay", "base"], ["replay", "base", "--launch"]):
        proc = cli(root, *args)
        assert proc.returncode == 14, proc.stderr
        assert ".mlfork/replay.json of base iteration 2" in proc.stderr
        assert "is malformed: not JSON" in proc.stderr and proc.stderr.count("\n") == 1
    assert cli(root, "replay", "base", "--iteration", "1").returncode == 0  # the others are fine
    assert snapshot(root) == before

    amend_manifest(root, None)
    proc = cli(root, "replay", "base")
    assert proc.returncode == 6
    assert "iteration 2 of 'base' has no replay manifest" in proc.stderr


def test_a_newer_manifest_still_replays_with_a_warning(base_project: Path) -> None:
    root = base_project
    doc = json.loads((root / MANIFEST).read_text())
    doc.update({"manifest_version": 2, "environment": ["a", "new", "shape"], "datasets": None,
                "teleport": {"x": 1}})
    amend_manifest(root, json.dumps(doc))
    proc = cli(root, "replay", "base")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("mlfork: warning: .mlfork/replay.json of base iteration 2")
    assert "manifest_version 2, newer than this mlfork's 1" in proc.stderr
    assert "PYTHONHASHSEED=42 mlfork run --name base-replay-1 --iterations 3" in proc.stdout
    assert "config (composed for iteration 2):" in proc.stdout
    assert "environment and datasets: not compared" in proc.stdout


# -- replay: launch ------------------------------------------------------------------------------


def test_replay_launch_of_a_3_iteration_run_is_identical(base_project: Path) -> None:
    root = base_project
    main = git(root, "rev-parse", "main").strip()
    proc = cli(root, "replay", "base", "--launch", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["identical"] is True
    comparison = result["comparison"]
    assert comparison["iterations"] == [0, 1, 2] and comparison["missing"] == []
    assert [r["identical"] for r in comparison["rows"]] == [True, True, True]
    assert comparison["largest"] == [] and comparison["first_output"] is None
    assert result["run"]["name"] == "base-replay-1" and result["run"]["status"] == "completed"

    # independently: the git CLI, commit by commit
    assert git(root, "symbolic-ref", "HEAD").strip() == "refs/heads/mlfork/base-replay-1"
    assert git(root, "rev-list", "--max-parents=0", "mlfork/base-replay-1").strip() == \
        git(root, "rev-list", "--max-parents=0", "main").strip()
    assert git(root, "merge-base", "mlfork/base-replay-1", "mlfork/base").strip() == main
    original, replay = ends(root, "base"), ends(root, "base-replay-1")
    assert sorted(replay) == [0, 1, 2]
    for i in range(3):
        assert original[i] != replay[i]
        assert outputs(root, replay[i]) == outputs(root, original[i])
        assert metrics(root, replay[i]) == metrics(root, original[i])
        assert "models/checkpoint" in outputs(root, replay[i])
        # recomputed, not restored from DVC's run cache: the stage printed its line
        log = root / ".mlfork" / "local" / "logs" / "base-replay-1" / f"{i:05d}-train.log"
        assert f"train: iteration {i}" in log.read_text()
    record = yaml.safe_load(git(root, "show", "mlfork/base-replay-1:.mlfork/run.yaml"))
    assert record["tags"] == ["mlfork.replay_of=base", "mlfork.replay_iteration=2"]
    assert record["base_commit"] == main and record["parent"] is None
    m = json.loads(git(root, "show", f"mlfork/base-replay-1:{MANIFEST}"))
    assert m["seed"]["PYTHONHASHSEED"] == "42" and m["run"] == "base-replay-1"
    tags = mlflow_runs(root)["base-replay-1"]
    assert tags["mlfork.replay_of"] == "base" and tags["mlfork.replay_iteration"] == "2"
    assert dvc(root, "status").stdout.strip() == "Data and pipelines are up to date."


def test_replay_launch_of_a_fork_starts_at_its_fork_point(base_project: Path) -> None:
    root = base_project
    mlfork.branch(path=str(root), source="base", from_iteration=0, name="f", iterations=1,
                  overrides=["model.lr=0.05", "exploration_iterations=1"], run=True)
    own = yaml.safe_load(git(root, "show", "mlfork/f:.mlfork/run.yaml"))["own_overrides"]
    assert own == ["model.lr=0.05", "exploration_iterations=2"]  # relative: from the fork point

    proc = cli(root, "replay", "f", "--json")
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["kind"] == "fork" and plan["start_commit"] == ends(root, "base")[0]
    assert plan["commands"] == [
        "mlfork branch --from base --from-iteration 0 --name f-replay-1 --iterations 1"
        " model.lr=0.05 exploration_iterations=1",
        "PYTHONHASHSEED=42 mlfork resume f-replay-1",
    ]
    proc = cli(root, "replay", "f", "--launch")
    assert proc.returncode == 0, proc.stderr
    assert "identical: iteration 1 of 'f-replay-1' matches 'f' bit for bit" in proc.stdout
    record = yaml.safe_load(git(root, "show", "mlfork/f-replay-1:.mlfork/run.yaml"))
    assert record["own_overrides"] == own and record["parent"]["commit"] == plan["start_commit"]
    replay, original = ends(root, "f-replay-1"), ends(root, "f")
    assert outputs(root, replay[1]) == outputs(root, original[1])
    assert mlflow_runs(root)["f-replay-1"]["mlfork.parent_run"] == "base"


def test_a_changed_dataset_file_is_a_mismatch_and_refuses_the_launch(project: Path) -> None:
    root = project
    with open(root / ".gitignore", "a") as fh:
        fh.write("/raw/\n")
    git(root, "commit", "-q", "-am", "raw data stays outside git")
    (root / "raw").mkdir()
    data = bytearray(b"x,y\n" + b"".join(b"%d,%d\n" % (i, i * i) for i in range(5000)))
    (root / "raw" / "data.csv").write_bytes(data)
    proc = cli(root, "run", "--name", "r", "--iterations", "1", "+dataset.path=raw/data.csv")
    assert proc.returncode == 0, proc.stderr
    proc = cli(root, "replay", "r")
    assert proc.returncode == 0, proc.stderr
    assert "  raw/data.csv: match (sha256 " in proc.stdout

    data[100] ^= 1  # one byte, same size
    (root / "raw" / "data.csv").write_bytes(data)
    proc = cli(root, "replay", "r")
    assert proc.returncode == 13
    assert "  raw/data.csv: mismatch: the run used sha256 " in proc.stdout
    assert "the workspace has sha256 " in proc.stdout
    assert "  data/train.npz: match" in proc.stdout  # the others still match
    assert proc.stderr.startswith("mlfork: error: 1 dataset(s) differ from what 'r' used")

    before = snapshot(root)
    proc = cli(root, "replay", "r", "--launch")
    assert proc.returncode == 13
    assert "raw/data.csv: mismatch" in proc.stderr and "--force" in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert snapshot(root) == before  # nothing written, no branch

    (root / "raw" / "data.csv").unlink()
    proc = cli(root, "replay", "r", "--json")
    assert proc.returncode == 13
    checks = {d["path"]: d for d in json.loads(proc.stdout)["datasets"]}
    assert checks["raw/data.csv"]["status"] == "missing"

    (root / "raw" / "data.csv").write_bytes(data)  # changed again: --force goes on
    proc = cli(root, "replay", "r", "--launch", "--force", "--name", "forced")
    assert proc.returncode == 0, proc.stderr
    assert "--force: replaying although raw/data.csv: mismatch" in proc.stderr
    assert "identical" in proc.stdout  # the pipeline does not read that file
    assert "forced" in git(root, "branch", "--list", "mlfork/forced")


# -- verify --------------------------------------------------------------------------------------


def test_verify_the_example_run_is_identical_and_leaves_no_trace(base_project: Path) -> None:
    root = base_project
    before = tracked_state(root)
    proc = cli(root, "verify", "base", "--from-iteration", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["identical"] is True and result["iterations"] == 2
    assert result["scratch"] == "base-verify-1" and result["kept"] is False
    rows = result["comparison"]["rows"]
    assert [r["iteration"] for r in rows] == [1, 2] and all(r["identical"] for r in rows)
    original = ends(root, "base")
    assert [r["original_commit"] for r in rows] == [original[1], original[2]]
    assert all(r["replay_commit"] not in original.values() for r in rows)
    # the user's branch, working tree, DVC outputs and refs are as before; no scratch run
    assert tracked_state(root) == before
    assert dvc(root, "status").stdout.strip() == "Data and pipelines are up to date."
    assert "base-verify-1" not in mlflow_runs(root)
    assert not (root / ".mlfork" / "local" / "logs" / "base-verify-1").exists()

    proc = cli(root, "verify", "--from-iteration", "1", "--keep")  # the run checked out
    assert proc.returncode == 0, proc.stderr
    assert "verify 'base' from the end of iteration 1: scratch fork 'base-verify-1' ran 1" \
        in proc.stdout
    assert "identical: iteration 2 of 'base-verify-1' matches 'base' bit for bit" in proc.stdout
    assert git(root, "symbolic-ref", "HEAD").strip() == "refs/heads/mlfork/base"
    assert git(root, "status", "--porcelain") == ""
    assert "mlfork/base-verify-1" in git(root, "branch", "--list", "mlfork/base-verify-1")
    assert mlflow_runs(root)["base-verify-1"]["mlfork.verify_of"] == "base"


NONCE_TRAIN = '''
import os as _os
_save = state.save
state.save = lambda path, info=None, **kw: _save(
    path, info={**(info or {}), "nonce": _os.urandom(8).hex()}, **kw)
'''
NONCE_EVALUATE = '''
_write = common.atomic_write
common.atomic_write = lambda path, data: _write(path, (json.dumps(
    {**json.loads(data), "noise": int.from_bytes(os.urandom(4), "big") / 2**32}) + "\\n").encode())
'''


@pytest.fixture
def nondeterministic(project: Path) -> Path:
    """A project whose checkpoints carry a random nonce and whose metrics a random `noise`,
    with a completed 2-iteration run `r`."""
    root = project
    for name, patch in (("train", NONCE_TRAIN), ("evaluate", NONCE_EVALUATE)):
        path = root / "pipelines" / f"{name}.py"
        text = path.read_text()
        path.write_text(text.replace("\n\ndef main():", patch + "\n\ndef main():", 1))
    git(root, "commit", "-q", "-am", "a pipeline that is not reproducible")
    mlfork.run(path=str(root), name="r", iterations=2)
    return root


def test_verify_and_replay_report_where_a_run_diverged(nondeterministic: Path) -> None:
    root = nondeterministic
    # the scratch fork's new checkpoints stay in the DVC cache until `dvc gc`
    before = tracked_state(root, skip=(".dvc/cache/",))
    proc = cli(root, "verify", "r", "--from-iteration", "0")
    assert proc.returncode == 16, proc.stderr
    out = proc.stdout
    assert "diverged from 'r'; first at iteration 1; metric noise: " in out
    assert "  first differing output: models/checkpoint at iteration 1: md5 " in out
    assert "  largest divergence per metric:\n    noise: " in out
    assert "accuracy" not in out.split("largest divergence per metric:")[1]  # that one held
    assert proc.stderr.strip().splitlines()[-1].startswith("mlfork: error: diverged from 'r'")
    assert tracked_state(root, skip=(".dvc/cache/",)) == before  # put back, though diverged

    proc = cli(root, "replay", "r", "--iteration", "0", "--launch", "--json")
    assert proc.returncode == 16
    comparison = json.loads(proc.stdout)["comparison"]
    assert comparison["identical"] is False and comparison["first_iteration"] == 0
    assert comparison["first_output"]["path"] == "models/checkpoint"
    assert [d["metric"] for d in comparison["largest"]] == ["noise"]
    assert os.path.exists(root / ".mlfork" / "local" / "logs" / "r-replay-1")
