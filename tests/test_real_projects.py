"""mlfork on DVC projects it did not make: the walk a new user takes, on projects of every
shape in tests/projects.py, through the real CLI, and the things such projects do that
mlfork's own example does not (params files, metrics anywhere, dvclive, subfolders, an
empty cache)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import projects
import pytest
import yaml
from conftest import cli, copy_project, dvc, git, ok, shared_build, snapshot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Callable[[str], Path]:
    """name -> a fixture project built once per session (shared by the xdist workers)."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = shared_build(tmp_path_factory, worker_id, f"fixture-{name}",
                                       projects.BUILDERS[name])
        return cache[name]

    return get


def fixture(built: Callable[[str], Path], name: str, tmp_path: Path) -> Path:
    return copy_project(built(name), tmp_path / name)


def jcli(root: Path, *args: str) -> object:
    return json.loads(ok(cli(root, *args, "--json")).stdout)


def assert_clean(root: Path) -> None:
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""


# -- the walk ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(projects.WALKS))
def test_the_walk_of_a_new_user(built: Callable[[str], Path], tmp_path: Path, name: str) -> None:
    """init, run with an override, a commit of the user's on the run branch, runs, log,
    metrics, branch with an override, resume, plain git + DVC on the fork, diff, report,
    plot, replay, verify, `git checkout main` and a new run there, rm: every command exits
    0 and the workspace ends clean."""
    folder, run_override, fork_override, script = projects.WALKS[name]
    repo = fixture(built, name, tmp_path)
    root = repo / folder

    ok(cli(root, "init"))
    assert_clean(root)
    ran = ok(cli(root, "run", "--name", "base", "--iterations", "2", run_override))
    assert "run 'base' completed: 2/2 iterations" in ran.stderr
    assert_clean(root)

    (info,) = jcli(root, "runs")  # type: ignore[misc]
    assert (info["name"], info["status"], info["done"], info["budget"]) == (
        "base", "completed", 2, 2)
    assert info["headline"] is not None and info["headline_value"] is not None
    record = yaml.safe_load(git(root, "show", "mlfork/base:./.mlfork/run.yaml"))
    assert record["overrides"] == [run_override]
    fixed = root / script
    fixed.write_text(fixed.read_text() + "\n# a fix of the user's, committed on the run\n")
    git(root, "commit", "-q", "-am", "a fix between iterations")
    assert jcli(root, "runs")[0]["done"] == 2  # type: ignore[index]

    log = jcli(root, "log", "base")
    assert {c["iteration"] for c in log} == {0, 1}  # type: ignore[union-attr]
    assert all(c["run"] == "base" for c in log)  # type: ignore[union-attr]
    ends = [c for c in log if c["metrics"]]  # type: ignore[union-attr]
    assert [c["iteration"] for c in ends] == [0, 1]

    points = jcli(root, "metrics", "base")
    assert {p["iteration"] for p in points} == {0, 1}  # type: ignore[union-attr]
    synced = jcli(root, "sync")
    assert synced["runs"] == ["base"]  # type: ignore[index]

    ok(cli(root, "branch", "--from-iteration", "0", "--name", "fork", fork_override))
    assert git(root, "branch", "--show-current").strip() == "mlfork/fork"
    assert_clean(root)
    resumed = ok(cli(root, "resume"))
    assert "run 'fork' completed: 2/2 iterations" in resumed.stderr
    assert_clean(root)
    fork_record = yaml.safe_load(git(root, "show", "mlfork/fork:./.mlfork/run.yaml"))
    assert fork_record["overrides"] == [run_override, fork_override]
    stitched = jcli(root, "metrics", "fork")
    owners = {(p["iteration"], p["owner"]) for p in stitched}  # type: ignore[union-attr]
    assert {(0, "base"), (1, "fork")} <= owners

    # plain git and DVC on the fork, as a teammate would: nothing for DVC to redo
    git(root, "checkout", "-q", "main")
    git(root, "checkout", "-q", "mlfork/fork")
    assert dvc(root, "checkout").returncode == 0
    repro = dvc(root, "repro")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    status = dvc(root, "status")
    assert "up to date" in status.stdout, status.stdout
    assert_clean(root)

    (tree,) = jcli(root, "tree")  # type: ignore[misc]
    assert (tree["name"], [c["name"] for c in tree["children"]]) == ("base", ["fork"])
    diff = jcli(root, "diff", "base", "fork")
    assert diff["overrides"]["only_b"] == [fork_override]  # type: ignore[index]
    assert diff["b_iteration"] == 1  # type: ignore[index]
    ok(cli(root, "report", "fork", "-o", str(tmp_path / "report.md")))
    text = (tmp_path / "report.md").read_text()
    assert "forks **`base`** after iteration 0" in text and "ran iteration 1" in text
    ok(cli(root, "plot", "base", "fork", "-o", str(tmp_path / "curves.png")))
    assert (tmp_path / "curves.png").stat().st_size > 1000
    replay = ok(cli(root, "replay", "fork"))
    assert "mlfork branch --from base --from-iteration 0" in replay.stdout
    verify = ok(cli(root, "verify", "base", "--from-iteration", "0"))
    assert "identical" in verify.stdout + verify.stderr
    assert git(root, "branch", "--show-current").strip() == "mlfork/fork"
    assert_clean(root)

    git(root, "checkout", "-q", "main")
    again = ok(cli(root, "run", "--name", "again", "--iterations", "1"))
    assert "run 'again' completed: 1/1 iterations" in again.stderr
    git(root, "checkout", "-q", "main")
    ok(cli(root, "rm", "fork"))
    assert git(root, "branch", "--list", "mlfork/fork") == ""
    assert [r["name"] for r in jcli(root, "runs")] == [  # type: ignore[union-attr]
        "again", "base"]
    assert_clean(root)


# -- a clone whose cache is empty ------------------------------------------------------------


def cache_objects(root: Path) -> set[str]:
    base = root / ".dvc" / "cache" / "files" / "md5"
    return {p.parent.name + p.name for p in base.rglob("*") if p.is_file()} if base.is_dir() \
        else set()


@pytest.fixture(scope="session")
def locked_origins(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> dict[str, Path]:
    def with_remote(dest: Path) -> None:
        projects.locked(dest, dest.parent / "remote")

    def without_remote(dest: Path) -> None:
        projects.locked(dest, None)

    return {
        "remote": shared_build(tmp_path_factory, worker_id, "locked-remote", with_remote),
        "none": shared_build(tmp_path_factory, worker_id, "locked-none", without_remote),
    }


def test_a_fresh_clone_runs_fetching_only_the_inputs_a_stage_needs(
    locked_origins: dict[str, Path], tmp_path: Path
) -> None:
    """The clone's cache is empty: the outputs in dvc.lock are not required (the stages make
    them), the `.dvc` file no stage uses does not block, and the one input a stage reads
    comes from the DVC remote (and only it: one object), which the output says."""
    origin = locked_origins["remote"]
    root = projects.clone(origin, tmp_path / "clone")
    assert cache_objects(root) == set()
    ok(cli(root, "init"))
    ran = ok(cli(root, "run", "--name", "a", "--iterations", "1", "lr=0.2"))
    assert "fetched 1 object from DVC remote 'storage' for inputs/raw.csv" in ran.stderr
    raw = yaml.safe_load((root / "inputs" / "raw.csv.dvc").read_text())["outs"][0]["md5"]
    scan = yaml.safe_load((root / "docs" / "scan.bin.dvc").read_text())["outs"][0]["md5"]
    assert raw in cache_objects(root) and scan not in cache_objects(root)
    assert not (root / "docs" / "scan.bin").exists()
    assert (root / "inputs" / "raw.csv").read_text().startswith("id\n")
    assert "run 'a' completed: 1/1 iterations" in ran.stderr
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""


def test_a_fresh_clone_without_a_remote_names_the_missing_input(
    locked_origins: dict[str, Path], tmp_path: Path
) -> None:
    """No remote: one line names the input a stage needs and what to run; exit 17 (missing
    data, not "not an mlfork project"), and nothing changed."""
    origin = locked_origins["none"]
    root = projects.clone(origin, tmp_path / "clone")
    ok(cli(root, "init"))
    before = snapshot(root)
    proc = cli(root, "run", "--name", "a", "--iterations", "1")
    assert proc.returncode == 17, proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "inputs/raw.csv" in line and "dvc pull inputs/raw.csv" in line
    assert "no DVC remote is configured" in line
    assert snapshot(root) == before


def test_a_fork_in_a_fresh_clone_fetches_exactly_its_fork_points_objects(
    built: Callable[[str], Path], tmp_path: Path
) -> None:
    """Alice runs on a project with a checkpoint hand-off and pushes every checkpoint's
    data; Bob's clone (with the run branches fetched) forks iteration 0: the fork point's
    objects come from the remote, none of iteration 1's, and the fork resumes."""
    alice = fixture(built, "dvclive", tmp_path)
    remote = tmp_path / "dvc-remote"
    assert dvc(alice, "remote", "add", "-d", "storage", str(remote)).returncode == 0
    git(alice, "commit", "-q", "-am", "a DVC remote")
    ok(cli(alice, "init"))
    ok(cli(alice, "run", "--name", "base", "--iterations", "2"))
    pushed = dvc(alice, "push", "--all-branches")
    assert pushed.returncode == 0, pushed.stderr
    bare = tmp_path / "origin.git"
    git(tmp_path, "clone", "-q", "--bare", str(alice), str(bare))

    bob = tmp_path / "bob"
    git(tmp_path, "clone", "-q", "-b", "main", str(bare), str(bob))
    git(bob, "fetch", "-q", "origin", "refs/heads/mlfork/*:refs/heads/mlfork/*")
    ok(cli(bob, "init"))
    assert cache_objects(bob) == set()
    forked = ok(cli(bob, "branch", "--from", "base", "--from-iteration", "0", "--name", "f",
                    "lr=0.5"))
    fork_point = yaml.safe_load(git(bob, "show", "mlfork/base~1:dvc.lock"))
    wanted = {o["md5"] for s in fork_point["stages"].values() for o in s["outs"]}
    resume = yaml.safe_load(git(bob, "show", "mlfork/base~1:model_resume.json.dvc"))
    wanted.add(resume["outs"][0]["md5"])
    assert cache_objects(bob) == wanted
    assert f"fetched {len(wanted)} objects from DVC remote 'storage'" in forked.stderr
    later = yaml.safe_load(git(bob, "show", "mlfork/base:dvc.lock"))
    not_needed = {o["md5"] for s in later["stages"].values() for o in s["outs"]} - wanted
    assert not_needed and not not_needed & cache_objects(bob)  # iteration 1's: not fetched
    resumed = ok(cli(bob, "resume"))
    assert "run 'f' completed: 2/2 iterations" in resumed.stderr


# -- a project in a subfolder ------------------------------------------------------------------


def test_a_subfolder_project_is_adopted_and_works_from_any_folder_in_it(
    built: Callable[[str], Path], tmp_path: Path
) -> None:
    repo = fixture(built, "subdir", tmp_path)
    refused = cli(repo, "init")
    assert refused.returncode == 3
    assert "in no DVC project" in refused.stderr and "dvc init" in refused.stderr
    root = repo / "ml"
    adopted = ok(cli(root / "src", "init"))
    assert f"adopted mlfork project at {root.resolve()}" in adopted.stdout
    assert "project in folder 'ml'" in adopted.stderr
    ok(cli(root / "src", "run", "--name", "a", "--iterations", "1"))
    assert git(repo, "ls-tree", "--name-only", "mlfork/a", "ml/.mlfork/").split() == [
        "ml/.mlfork/config.yaml", "ml/.mlfork/replay.json", "ml/.mlfork/run.yaml"]
    # the team's experiment, committed by init: the repository's name, not the folder's
    assert "experiment: " in git(repo, "show", "mlfork/a:ml/.mlfork/config.yaml")
    assert json.loads(ok(cli(root / "data", "runs", "--json")).stdout)[0]["name"] == "a"
    manifest = json.loads(git(repo, "show", "mlfork/a:ml/.mlfork/replay.json"))
    assert "ml/" not in json.dumps(manifest["datasets"])  # paths relative to the DVC root


# -- metrics wherever DVC finds them, and none -------------------------------------------------


def test_a_project_without_metrics_says_so_and_everything_else_works(tmp_path: Path) -> None:
    root = tmp_path / "p"
    projects.plain(root)
    dvc_yaml = root / "dvc.yaml"  # metrics.json becomes a plain output: no metrics declared
    text = dvc_yaml.read_text()
    declared = ("    outs: [model.txt]\n    metrics:\n      - metrics.json:\n"
                "          cache: false\n")
    assert declared in text
    dvc_yaml.write_text(text.replace(declared, "    outs: [model.txt, metrics.json]\n"))
    git(root, "commit", "-q", "-am", "no metrics declared")
    ok(cli(root, "init"))
    ok(cli(root, "run", "--name", "a", "--iterations", "2"))
    ok(cli(root, "branch", "--from-iteration", "0", "--name", "f", "rows=4", "--run"))
    shown = ok(cli(root, "metrics", "f"))
    assert "the project logs no metrics" in shown.stderr and "declare one" in shown.stderr
    assert "None" not in shown.stderr + shown.stdout and "mlfork sync" not in shown.stderr
    ok(cli(root, "sync"))
    assert "mlfork sync" not in ok(cli(root, "metrics", "f")).stderr
    diff = ok(cli(root, "diff", "a", "f"))
    assert "the project logs no metrics" in diff.stdout and "it None" not in diff.stdout
    ok(cli(root, "report", "f", "-o", str(tmp_path / "r.md")))
    report = (tmp_path / "r.md").read_text()
    assert "ran iteration 1" in report and "no iteration of its own" not in report
    assert "The project logs no metrics" in report
    plot = cli(root, "plot", "f", "-o", str(tmp_path / "p.png"))
    assert plot.returncode == 6 and "the project logs no metrics" in plot.stderr
    assert len(plot.stderr.strip().splitlines()) == 1


def test_cached_and_templated_metrics_reach_mlflow(built: Callable[[str], Path],
                                                   tmp_path: Path) -> None:
    """A metrics file that is a cached output (read from the DVC cache) and metrics of
    `matrix` stages in YAML and TOML: each reaches the tracking store, step = iteration."""
    from mlflow.tracking import MlflowClient

    for name, override, expected in (
        ("cached_metrics", "scale=3", {"auc"}),
        ("multi", "config/train.yaml:lr=0.2", {"loss", "best_loss"}),
    ):
        root = fixture(built, name, tmp_path)
        ok(cli(root, "init"))
        ok(cli(root, "run", "--name", "a", "--iterations", "2", override))
        ok(cli(root, "sync"))
        client = MlflowClient(f"sqlite:///{root / '.mlfork' / 'local' / 'mlflow.db'}")
        (run,) = client.search_runs([client.get_experiment_by_name(root.name).experiment_id])
        assert set(run.data.metrics) == expected
        for key in expected:
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1]


# -- params beyond params.yaml ------------------------------------------------------------------


def test_overrides_of_another_params_file_use_dvcs_grammar(built: Callable[[str], Path],
                                                           tmp_path: Path) -> None:
    root = fixture(built, "multi", tmp_path)
    ok(cli(root, "init"))
    ok(cli(root, "run", "--name", "a", "--iterations", "1", "config/train.yaml:lr=0.2",
           "prep.rows=5"))
    train = git(root, "show", "mlfork/a:config/train.yaml")
    assert "lr: 0.2" in train and "# training settings" in train  # format and comments kept
    assert yaml.safe_load(git(root, "show", "mlfork/a:params.yaml"))["prep"]["rows"] == 5
    record = yaml.safe_load(git(root, "show", "mlfork/a:.mlfork/run.yaml"))
    assert record["overrides"] == ["config/train.yaml:lr=0.2", "prep.rows=5"]
    git(root, "checkout", "-q", "main")
    for args, fragment in (
        (("config/train.yaml:nope=1",), "config/train.yaml:nope=1"),
        (("missing.yaml:lr=1",), "params file 'missing.yaml' does not exist"),
        (("../up.yaml:lr=1",), "must be a path inside the project"),
    ):
        before = snapshot(root)
        proc = cli(root, "run", "--name", "b", *args)
        assert proc.returncode == 2, proc.stderr
        assert fragment in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert snapshot(root) == before


def test_an_override_no_stage_depends_on_is_warned_about(tmp_path: Path) -> None:
    root = tmp_path / "p"
    projects.plain(root)
    params = root / "params.yaml"
    params.write_text(params.read_text() + "unused: 1\n")
    git(root, "commit", "-q", "-am", "a key no stage reads")
    ok(cli(root, "init"))
    ran = ok(cli(root, "run", "--name", "a", "unused=2", "lr=0.3"))
    assert "no stage depends on the key of 'unused=2'" in ran.stderr
    assert "'lr=0.3'" not in ran.stderr


def test_a_param_named_size_is_not_mistaken_by_dvcs_run_cache(tmp_path: Path) -> None:
    """DVC's run-cache key leaves out keys named `size`: mlfork runs such stages without it,
    so a fork with another `size` really recomputes."""
    root = tmp_path / "p"
    projects.plain(root)
    for rel, old, new in (("params.yaml", "rows:", "size:"),
                          ("dvc.yaml", "params: [rows]", "params: [size]"),
                          ("src/prep.py", 'p["rows"]', 'p["size"]')):
        path = root / rel
        assert old in path.read_text()
        path.write_text(path.read_text().replace(old, new))
    git(root, "commit", "-q", "-am", "a param named size")
    ok(cli(root, "init"))
    ok(cli(root, "run", "--name", "a", "--iterations", "1"))
    ok(cli(root, "branch", "--from-iteration", "0", "--name", "f", "--iterations", "1",
           "size=5", "--run"))
    assert (root / "data" / "rows.txt").read_text().count("row") == 5


# -- stages that write files -------------------------------------------------------------------


def test_a_stray_file_a_stage_writes_is_named_not_committed(tmp_path: Path) -> None:
    root = tmp_path / "p"
    projects.plain(root)
    fit = root / "src" / "fit.py"
    fit.write_text(fit.read_text() + "import os\nos.makedirs('outputs', exist_ok=True)\n"
                   "open('outputs/debug.log', 'w').write('x')\n")
    git(root, "commit", "-q", "-am", "a stage that leaves a log behind")
    ok(cli(root, "init"))
    ran = ok(cli(root, "run", "--name", "a", "--iterations", "2"))
    warnings = [line for line in ran.stderr.splitlines() if "outputs/debug.log" in line]
    assert len(warnings) == 1 and "neither git nor DVC tracks" in warnings[0]
    assert "outputs/debug.log" not in git(root, "ls-tree", "-r", "--name-only", "mlfork/a")
    ok(cli(root, "branch", "--from-iteration", "0", "--name", "f", "lr=0.3", "--run"))


# -- pipelines that do not iterate --------------------------------------------------------------


def test_a_pipeline_that_does_not_iterate_is_told_and_verify_recomputes(tmp_path: Path) -> None:
    root = tmp_path / "p"
    projects.plain(root)
    ok(cli(root, "init"))
    ran = ok(cli(root, "run", "--name", "a", "--iterations", "2"))
    assert "this pipeline does not iterate" in ran.stderr
    assert "iteration 1/1 fit: up to date" in ran.stderr
    verify = ok(cli(root, "verify", "a", "--from-iteration", "0"))
    assert "identical" in verify.stdout
    frozen = root / "dvc.yaml"
    git(root, "checkout", "-q", "main")
    assert dvc(root, "repro").returncode == 0
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "reproduced on main")
    frozen.write_text(frozen.read_text().replace("    cmd: python src/prep.py",
                                                 "    frozen: true\n    cmd: python src/prep.py")
                      .replace("    cmd: python src/fit.py",
                               "    frozen: true\n    cmd: python src/fit.py"))
    git(root, "commit", "-q", "-am", "every stage frozen")
    ok(cli(root, "run", "--name", "z", "--iterations", "2"))
    nothing = cli(root, "verify", "z", "--from-iteration", "0")
    assert nothing.returncode == 16, nothing.stdout + nothing.stderr
    assert "identical" not in nothing.stdout
    assert "recomputed no stage" in nothing.stdout + nothing.stderr
