"""Per-step series on one global step axis across iterations and forks: whatever the stage's
own step counter does (dvclive counting from 0 each time, `Live(resume=True)`, starting at
MLFORK_STEP_OFFSET, a CSV plots output counted in epochs), a fork of a fork reads its
grandparent's steps, then its parent's, then its own, with no gap and no duplicate; the
MLflow history matches point for point; `plot --x step`, the report and `verify` use them."""

from __future__ import annotations

import json
from pathlib import Path

import projects
import pytest
import yaml
from conftest import cli, ok

from mlfork.adapters.tracking.store import default_uri

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("steps")]

MODES = ["restart", "resume", "offset", "csv", "json"]


def jcli(root: Path, *args: str) -> object:
    return json.loads(ok(cli(root, *args, "--json")).stdout)


def series(rows: object, metric: str) -> list[tuple[int, str, float]]:
    assert isinstance(rows, list)
    return [(r["step"], r["owner"], r["value"]) for r in rows if r["metric"] == metric]


@pytest.fixture(scope="module")
def lineages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Per mode: base (2 iterations, lr 0.2); g1 forked from base after iteration 0
    (lr 0.5), which runs iteration 1; g2 forked from g1 after iteration 1 (lr 0.1), which
    runs iteration 2."""
    out = {}
    for mode in MODES:
        root = tmp_path_factory.mktemp(f"steps-{mode}")
        projects.steps(root, mode)
        ok(cli(root, "run", "--name", "base", "--iterations", "2", "lr=0.2"))
        ok(cli(root, "branch", "--from", "base", "--from-iteration", "0", "--name", "g1",
               "lr=0.5", "--run"))
        ok(cli(root, "branch", "--from", "g1", "--from-iteration", "1", "--name", "g2",
               "--iterations", "1", "lr=0.1", "--run"))
        out[mode] = root
    return out


@pytest.mark.parametrize("mode", MODES)
def test_a_fork_of_a_fork_reads_its_ancestors_steps_then_its_own(
    lineages: dict[str, Path], mode: str
) -> None:
    root = lineages[mode]
    metric = "loss"
    own = {run: series(jcli(root, "metrics", run, "--x", "step", "--own", "--source", "git"),
                       metric) for run in ("base", "g1", "g2")}
    # each run's own steps on the global axis: base 0..5, g1 3..5, g2 6..8
    assert [s for s, _, _ in own["base"]] == list(range(0, 6))
    assert [s for s, _, _ in own["g1"]] == list(range(3, 6))
    assert [s for s, _, _ in own["g2"]] == list(range(6, 9))
    expected = own["base"][:3] + own["g1"] + own["g2"]
    for source in ("git", "tracking", "auto"):
        stitched = series(jcli(root, "metrics", "g2", "--x", "step", "--source", source),
                          metric)
        assert stitched == expected, source  # no gap, no duplicate, the owners' values
    # the forks really trained differently from the fork point on
    assert own["g1"][0][2] != own["base"][3][2]


def test_the_mlflow_history_matches_point_for_point(lineages: dict[str, Path]) -> None:
    from mlflow.tracking import MlflowClient

    root = lineages["restart"]
    rows = jcli(root, "metrics", "g2", "--x", "step", "--source", "git")
    client = MlflowClient(default_uri(root))
    runs = {r.info.run_name: r for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()])}
    assert runs["g2"].data.tags["mlfork.steps_inherited_until"] == "5"
    assert runs["g1"].data.tags["mlfork.steps_inherited_until"] == "2"
    for metric in ("loss", "acc"):
        want = series(rows, metric)
        got = []
        for owner, (first, last) in {"base": (0, 2), "g1": (3, 5), "g2": (6, 8)}.items():
            history = client.get_metric_history(runs[owner].info.run_id, f"step/{metric}")
            got += [(m.step, owner, m.value) for m in sorted(history, key=lambda m: m.step)
                    if first <= m.step <= last]
        assert got == want
        # a fork's MLflow run holds its own steps only, on the global axis
        mine = client.get_metric_history(runs["g2"].info.run_id, f"step/{metric}")
        assert sorted(m.step for m in mine) == [6, 7, 8]
    # the per-iteration metrics keep their axis (one point per iteration)
    acc = client.get_metric_history(runs["g2"].info.run_id, "acc")
    assert sorted(m.step for m in acc) == [0, 1, 2]


def test_plot_report_and_verify_use_the_steps(lineages: dict[str, Path], tmp_path: Path) -> None:
    root = lineages["resume"]
    plotted = jcli(root, "plot", "base", "g1", "g2", "--x", "step", "-o",
                   str(tmp_path / "steps.png"))
    assert isinstance(plotted, dict)
    assert plotted["x"] == "step" and plotted["metric"] == "acc"
    assert [(f["run"], f["x"]) for f in plotted["fork_lines"]] == [("g1", 2.0), ("g2", 5.0)]
    assert (tmp_path / "steps.png").read_bytes()[:4] == b"\x89PNG"
    report = jcli(root, "report", "g2", "-o", str(tmp_path / "report.md"))
    assert isinstance(report, dict) and report["step_image"]
    text = (tmp_path / "report.md").read_text()
    assert "per step" in text and Path(report["step_image"]).is_file()
    verified = ok(cli(root, "verify", "base", "--from-iteration", "0"))
    assert "identical" in verified.stdout and "per-step point" in verified.stdout


def test_unknown_series_and_a_project_without_plots(lineages: dict[str, Path],
                                                    tmp_path: Path) -> None:
    root = lineages["offset"]
    proc = cli(root, "metrics", "g2", "--x", "step", "--metric", "nope")
    assert proc.returncode != 0 and "'nope'" in proc.stderr and "loss" in proc.stderr
    assert "Traceback" not in proc.stderr
    plain = tmp_path / "plain"
    plain.mkdir()
    projects.plain(plain)
    ok(cli(plain, "run", "--name", "a", "--iterations", "1", "lr=0.2"))
    quiet = ok(cli(plain, "metrics", "a", "--x", "step"))
    assert "no per-step series" in quiet.stderr
    refused = cli(plain, "plot", "a", "--x", "step")
    assert refused.returncode != 0 and "no per-step series" in refused.stderr


def test_a_stage_in_a_folder_dvc_yaml_feeds_the_replay_manifest(lineages: dict[str, Path]) -> None:
    """The `json` project's stage lives in train/dvc.yaml (its own dvc.lock) and reads the
    locked key `steps`: its data output is part of each iteration's dataset identity."""
    from conftest import git

    root = lineages["json"]
    manifest = json.loads(git(root, "show", "mlfork/base:.mlfork/replay.json"))
    lock = yaml.safe_load(git(root, "show", "mlfork/base:train/dvc.lock"))
    (rows,) = [o for o in lock["stages"]["train"]["outs"] if o["path"] == "logs/rows.txt"]
    assert manifest["datasets"]["train/logs/rows.txt"]["md5"] == rows["md5"]
    assert "train/model.json" not in manifest["datasets"]  # the checkpoint is not data


def test_a_clone_with_an_empty_cache_reads_the_same_steps(lineages: dict[str, Path],
                                                          tmp_path: Path) -> None:
    """The `json` project's series are cached DVC outputs: a teammate's clone, its cache
    empty, fetches them from the DVC remote and places them on the same axis; without a
    remote it says what to do rather than shifting the steps."""
    import shutil
    import subprocess
    import sys

    from conftest import git

    root = tmp_path / "alice"
    shutil.copytree(lineages["json"], root, symlinks=True)
    bare = tmp_path / "team.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    git(root, "switch", "-q", "main")
    git(root, "remote", "add", "origin", str(bare))
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "remote", "add", "-d", "store", str(tmp_path / "store")], cwd=root,
                   check=True, capture_output=True)
    git(root, "commit", "-qam", "the team's DVC remote")
    git(root, "push", "-q", "origin", "main")
    ok(cli(root, "push"))
    want = jcli(root, "metrics", "g2", "--x", "step", "--source", "git")
    clone = tmp_path / "bob"
    git(tmp_path, "clone", "-q", str(bare), str(clone))
    ok(cli(clone, "init"))
    cache = clone / ".dvc" / "cache"
    assert not [p for p in cache.rglob("*") if p.is_file()]  # nothing fetched yet
    assert jcli(clone, "metrics", "g2", "--x", "step", "--source", "git") == want
    bare_clone = tmp_path / "carol"
    git(tmp_path, "clone", "-q", str(bare), str(bare_clone))
    subprocess.run([dvc, "remote", "remove", "store"], cwd=bare_clone, check=True,
                   capture_output=True)
    ok(cli(bare_clone, "init"))
    refused = cli(bare_clone, "metrics", "g2", "--x", "step", "--source", "git")
    assert refused.returncode == 17 and "per-step series" in refused.stderr
    assert "Traceback" not in refused.stderr
