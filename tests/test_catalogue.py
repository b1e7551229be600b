"""The catalogue of bad inputs: every case is refused with its documented exit code and
exactly one line on stderr, and leaves refs, HEAD, index, working tree (untracked files
and DVC outputs included), the DVC cache and the tracking store exactly as they were."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import cli, copy_project, git, lock_path, snapshot

import mlfork

pytestmark = pytest.mark.slow

Setup = Callable[[Path], None]


@dataclass
class Case:
    id: str
    args: tuple[str, ...]
    code: int
    fragment: str = ""
    setup: Setup | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""  # a folder below the project to run from


def refused(root: Path, case: Case) -> None:
    if case.setup is not None:
        case.setup(root)
    before = snapshot(root)
    proc = cli(root / case.cwd, *case.args, env=case.env)
    assert proc.returncode == case.code, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("mlfork: error: "), lines[0]
    assert case.fragment in lines[0], lines[0]
    assert snapshot(root) == before


# -- set-ups -----------------------------------------------------------------------------------


def commit(root: Path, message: str) -> None:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)


def remote(url: str) -> Setup:
    def setup(root: Path) -> None:
        git(root, "remote", "add", "origin", url)
    return setup


def two_remotes(root: Path) -> None:
    git(root, "remote", "add", "alice", "/nonexistent/a.git")
    git(root, "remote", "add", "bob", "/nonexistent/b.git")


def edit(rel: str, text: str = "\n# an edit\n") -> Setup:
    def setup(root: Path) -> None:
        path = root / rel
        path.write_text(path.read_text() + text)
    return setup


def new_file(rel: str, stage: bool = False) -> Setup:
    def setup(root: Path) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("new\n")
        if stage:
            git(root, "add", rel)
    return setup


def committed(rel: str, change: Callable[[str], str]) -> Setup:
    """`rel` changed by `change` and committed on the branch checked out."""
    def setup(root: Path) -> None:
        path = root / rel
        path.write_text(change(path.read_text()))
        commit(root, f"change {rel}")
    return setup


def remove(rel: str) -> Setup:
    return lambda root: (root / rel).unlink()


def on_main(root: Path) -> None:
    git(root, "checkout", "-q", "main")


def detached(root: Path) -> None:
    git(root, "checkout", "-q", "--detach", "mlfork/base~1")


def record_branch(record: str) -> Setup:
    """A branch `mlfork/bad` whose run record is `record` (written by hand)."""
    def setup(root: Path) -> None:
        git(root, "checkout", "-q", "-b", "mlfork/bad", "main")
        (root / ".mlfork").mkdir(exist_ok=True)
        (root / ".mlfork" / "run.yaml").write_text(record)
        commit(root, "bad: start run\n\nMlfork-Run: bad")
        git(root, "checkout", "-q", "main")
    return setup


RECORD = ("name: bad\niterations: 2\nstages: [data_split, train, evaluate]\n"
          "base_commit: {base}\nschema: 1\n")


def bad_record(**changes: object) -> Setup:
    def setup(root: Path) -> None:
        base = git(root, "rev-parse", "main").strip()
        text = RECORD.format(base=base)
        for key, value in changes.items():
            lines = [ln for ln in text.splitlines() if not ln.startswith(f"{key}:")]
            text = "\n".join(lines) + ("" if value is None else f"\n{key}: {value}") + "\n"
        record_branch(text)(root)
    return setup


def in_a_worktree(run: str) -> Setup:
    """The run's branch checked out in the user's own `git worktree` beside the project."""
    def setup(root: Path) -> None:
        git(root, "worktree", "add", "-q", str(root.parent / f"wt-{run}"), f"mlfork/{run}")
    return setup


def locked_by_another(root: Path) -> None:
    """Another live process holds the project lock (a child that keeps it)."""
    path = lock_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        ["python3", "-c", (
            "import fcntl, json, os, sys, time\n"
            f"fh = open({str(path)!r}, 'a+')\n"
            "fcntl.flock(fh, fcntl.LOCK_EX)\n"
            "fh.seek(0); fh.truncate()\n"
            "fh.write(json.dumps({'pid': os.getpid(), 'run': 'other', 'command': 'run'}))\n"
            "fh.flush(); print('held', flush=True); time.sleep(120)\n"
        )],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    HOLDERS.append(holder)


HOLDERS: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _release_holders() -> object:
    yield
    while HOLDERS:
        HOLDERS.pop().kill()


LONG = "k" * 251
HUGE = "v" * 8001

# -- cases on a fresh project (no run yet) ----------------------------------------------------

FRESH = [
    Case("unknown-command", ("brnch",), 2, "did you mean 'branch'"),
    Case("unknown-command-2", ("frobnicate",), 2, "unknown command 'frobnicate'"),
    Case("unknown-option", ("run", "--bogus"), 2, "No such option"),
    Case("iterations-0", ("run", "--iterations", "0"), 2, "--iterations"),
    Case("iterations-negative", ("run", "--iterations", "-1"), 2, "--iterations"),
    Case("iterations-text", ("run", "--iterations", "x"), 2, "--iterations"),
    Case("iterations-float", ("run", "--iterations", "1e20"), 2, "--iterations"),
    Case("iterations-huge", ("run", "--iterations", "99999999999"), 2, "--iterations"),
    Case("timeout-0", ("run", "--timeout", "0"), 2, "--timeout"),
    Case("timeout-negative", ("run", "--timeout", "-5"), 2, "--timeout"),
    Case("timeout-nan", ("run", "--timeout", "nan"), 2, "--timeout"),
    Case("timeout-text", ("run", "--timeout", "abc"), 2, "--timeout"),
    Case("stage-timeout-0", ("run", "--stage-timeout", "0"), 2, "--stage-timeout"),
    Case("stage-timeout-negative", ("run", "--stage-timeout", "-1"), 2, "--stage-timeout"),
    Case("name-empty", ("run", "--name", ""), 5, "invalid run name ''"),
    Case("name-space", ("run", "--name", "a b"), 5, "invalid run name"),
    Case("name-dotdot-path", ("run", "--name", "../x"), 5, "invalid run name"),
    Case("name-lock", ("run", "--name", "x.lock"), 5, "invalid run name"),
    Case("name-dotdot", ("run", "--name", "x..y"), 5, "invalid run name"),
    Case("name-ref", ("run", "--name", "refs/heads/x"), 5, "invalid run name"),
    Case("name-colon", ("run", "--name", "a:b"), 5, "invalid run name"),
    Case("name-tilde", ("run", "--name", "a~1"), 5, "invalid run name"),
    Case("name-too-long", ("run", "--name", "n" * 65), 5, "invalid run name"),
    Case("name-trailing-dot", ("run", "--name", "x."), 5, "invalid run name"),
    Case("name-newline", ("run", "--name", "a\nb"), 5, "invalid run name"),
    Case("override-unknown-key", ("run", "--name", "x", "model.nope=1"), 2, "model.nope"),
    Case("override-unparsable", ("run", "--name", "x", "model.lr=[1,"), 2, "model.lr=[1,"),
    Case("override-unknown-group", ("run", "--name", "x", "model=nope"), 2, "model=nope"),
    Case("override-append-existing", ("run", "--name", "x", "+model.lr=1"), 2, "+model.lr=1"),
    Case("override-delete-missing", ("run", "--name", "x", "~nope"), 2, "~nope"),
    Case("override-managed-iteration", ("run", "--name", "x", "iteration=3"), 2, "iteration"),
    Case("override-policy", ("run", "--name", "x", "mlfork.locked=[]"), 2, "policy"),
    Case("override-env-resolver", ("run", "--name", "x", "+leak=${oc.env:HOME}"), 2,
         "resolver 'oc.env'"),
    Case("override-decode-resolver", ("run", "--name", "x", "+y=${oc.decode:1}"), 2,
         "resolver 'oc.decode'"),
    Case("override-sweep", ("run", "--name", "x", "model.lr=0.1,0.2"), 2, "sweep"),
    Case("override-package", ("run", "--name", "x", "model@pkg=sgd"), 2, "package"),
    Case("override-missing-params-file", ("run", "--name", "x", "missing.yaml:lr=1"), 2,
         "params file 'missing.yaml' does not exist"),
    Case("override-params-file-outside", ("run", "--name", "x", "../x.yaml:lr=1"), 2,
         "inside the project"),
    Case("override-params-file-absolute", ("run", "--name", "x", "/etc/x.yaml:lr=1"), 2,
         "inside the project"),
    Case("override-params-file-bad-key", ("run", "--name", "x", "dvc.yaml:nope=1"), 2,
         "dvc.yaml:nope=1"),
    Case("tag-empty", ("run", "--name", "x", "--tag", ""), 2, "its key is empty"),
    Case("tag-bad-characters", ("run", "--name", "x", "--tag", "a!b"), 2, "may only hold"),
    Case("tag-mlflow", ("run", "--name", "x", "--tag", "mlflow.runName=x"), 2, "MLflow's"),
    Case("tag-mlfork", ("run", "--name", "x", "--tag", "mlfork.run=x"), 2, "mlfork's own"),
    Case("tag-long-key", ("run", "--name", "x", "--tag", LONG), 2, "longer than 250"),
    Case("tag-long-value", ("run", "--name", "x", "--tag", f"k={HUGE}"), 2, "its value"),
    Case("tag-dotdot", ("run", "--name", "x", "--tag", "../x"), 2, "'..'"),
    Case("tag-absolute", ("run", "--name", "x", "--tag", "/x"), 2, "'/'"),
    Case("dirty-modified", ("run", "--name", "x"), 4, "pipelines/train.py",
         edit("pipelines/train.py")),
    Case("dirty-untracked", ("run", "--name", "x"), 4, "notes.txt", new_file("notes.txt")),
    Case("dirty-staged", ("run", "--name", "x"), 4, "staged.txt",
         new_file("staged.txt", stage=True)),
    Case("dirty-deleted", ("run", "--name", "x"), 4, "pipelines/common.py",
         remove("pipelines/common.py")),
    Case("dirty-conf", ("run", "--name", "x"), 4, "conf/model/sgd.yaml",
         edit("conf/model/sgd.yaml", "# tuned\n")),
    Case("dirty-params", ("run", "--name", "x"), 4, "params.yaml", edit("params.yaml", "#\n")),
    Case("dirty-dvc-yaml", ("run", "--name", "x"), 4, "dvc.yaml", edit("dvc.yaml", "#\n")),
    Case("dirty-nested-untracked", ("run", "--name", "x"), 4, "deep/er/x.txt",
         new_file("deep/er/x.txt")),
    Case("locked", ("run", "--name", "x"), 12, "another mlfork process", locked_by_another),
    Case("locked-branch", ("branch", "--from", "x"), 12, "another mlfork process",
         locked_by_another),
    Case("missing-conf-entry", ("run", "--name", "x"), 3, "Could not find 'model/missing'",
         committed("conf/config.yaml", lambda t: t.replace("model: sgd", "model: missing"))),
    Case("conf-not-yaml", ("run", "--name", "x"), 3, "conf",
         committed("conf/config.yaml", lambda t: "defaults: [\n")),
    Case("no-stages", ("run", "--name", "x"), 3, "no stages",
         committed("dvc.yaml", lambda t: "stages: {}\n")),
    Case("resume-no-run", ("resume",), 6, "no run is checked out and none exists"),
    Case("resume-unknown", ("resume", "nope"), 6, "unknown run 'nope'"),
    Case("log-no-run", ("log",), 6, "no run is checked out"),
    Case("branch-no-run", ("branch",), 6, "no run is checked out"),
    Case("init-not-empty", ("init", "/etc"), 2, "exists and is not empty"),
    Case("init-proc", ("init", "/proc/x/y"), 2, "cannot create"),
    Case("init-bogus-option", ("init", "--bogus"), 2, "No such option"),
    Case("ui-port-0", ("ui", "--port", "0"), 2, "--port"),
    Case("ui-port-too-big", ("ui", "--port", "70000"), 2, "--port"),
    Case("sync-bad-uri", ("sync",), 10, "no scheme MLflow knows",
         env={"MLFLOW_TRACKING_URI": "htp:/x::y"}),
    Case("sync-file-store", ("sync",), 10, "plain file store",
         env={"MLFLOW_TRACKING_URI": "file:///tmp/mlruns"}),
    Case("sync-bogus-option", ("sync", "--bogus"), 2, "No such option"),
    Case("no-identity", ("run", "--name", "x"), 11, "no git identity",
         env={"GIT_CONFIG_GLOBAL": "/dev/null", "HOME": "/nonexistent"}),
    Case("record-newer-schema", ("resume", "bad"), 14, "schema 99", bad_record(schema=99)),
    Case("record-negative-iterations", ("resume", "bad"), 14, "'iterations' is -3",
         bad_record(iterations=-3)),
    Case("record-no-iterations", ("resume", "bad"), 14, "'iterations'",
         bad_record(iterations=None)),
    Case("record-other-name", ("resume", "bad"), 14, "names run 'other'",
         bad_record(name="other")),
    Case("record-not-yaml", ("resume", "bad"), 14, ".mlfork/run.yaml",
         record_branch("name: [bad\n")),
    Case("record-not-mapping", ("resume", "bad"), 14, ".mlfork/run.yaml",
         record_branch("- a list\n")),
    Case("record-text-iterations", ("resume", "bad"), 14, "'iterations' must be an integer",
         bad_record(iterations="many")),
]


@pytest.mark.parametrize("case", FRESH, ids=[c.id for c in FRESH])
def test_refused_on_a_fresh_project(project: Path, case: Case) -> None:
    refused(project, case)


# -- cases on a project with a run (checked out) and a fork ---------------------------------


@pytest.fixture(scope="session")
def forked_template(tmp_path_factory: pytest.TempPathFactory, base_template: Path) -> Path:
    """base_template with a fork `lr` of base at iteration 1 and a second root run `other`
    started from main; `mlfork/base` checked out."""
    root = copy_project(base_template, tmp_path_factory.mktemp("forked") / "proj")
    mlfork.branch(path=str(root), source="base", from_iteration=1, name="lr",
                  overrides=["model.lr=0.05"], switch=False)
    git(root, "checkout", "-q", "main")
    mlfork.run(path=str(root), name="other", iterations=1)
    git(root, "checkout", "-q", "mlfork/base")
    mlfork.sync(str(root))
    return root


@pytest.fixture
def forked(tmp_path: Path, forked_template: Path) -> Path:
    return copy_project(forked_template, tmp_path / "proj")


def a_dir(root: Path) -> None:
    (root / "adir").mkdir()
    (root / "adir" / ".gitkeep").write_text("")
    commit(root, "a folder")


WITH_RUNS = [
    Case("run-on-a-run", ("run", "--name", "x"), 2, "HEAD is on run 'base'"),
    Case("run-detached", ("run", "--name", "x"), 2, "HEAD is detached at a commit", detached),
    Case("run-name-taken", ("run", "--name", "base"), 5, "branch 'mlfork/base' exists", on_main),
    Case("resume-ambiguous", ("resume", ""), 6, "is ambiguous: base, lr, other"),
    Case("resume-iterations-0", ("resume", "--iterations", "0"), 2, "--iterations"),
    Case("resume-timeout", ("resume", "--timeout", "-1"), 2, "--timeout"),
    Case("resume-stage-timeout", ("resume", "--stage-timeout", "0"), 2, "--stage-timeout"),
    Case("resume-dirty", ("resume", "--iterations", "1"), 4, "pipelines/train.py",
         edit("pipelines/train.py")),
    Case("resume-params-edit", ("resume", "--iterations", "1"), 4, "params.yaml",
         edit("params.yaml", "#\n")),
    Case("resume-other-dirty", ("resume", "lr"), 4, "notes.txt", new_file("notes.txt")),
    Case("branch-unknown-source", ("branch", "--from", "nope"), 6, "unknown run 'nope'"),
    Case("branch-prefix-ambiguous", ("branch", "--from", "zz"), 6, "unknown run 'zz'"),
    Case("branch-iteration-missing", ("branch", "--from-iteration", "9"), 6,
         "iteration 9 of 'base' is not completed"),
    Case("branch-iteration-negative", ("branch", "--from-iteration", "-1"), 2,
         "--from-iteration"),
    Case("branch-iteration-text", ("branch", "--from-iteration", "x"), 2,
         "--from-iteration"),
    Case("branch-step-unknown", ("branch", "--from-step", "nope"), 6, "unknown stage 'nope'"),
    Case("branch-step-in-missing-iteration", ("branch", "--from-iteration", "7",
                                               "--from-step", "train"), 6,
         "did not run in iteration 7"),
    Case("branch-iterations-negative", ("branch", "--iterations", "-1"), 2, "--iterations"),
    Case("branch-run-no-switch", ("branch", "--no-switch", "--run"), 2, "--no-switch"),
    Case("branch-locked-dataset", ("branch", "dataset=wine"), 7, "locked key 'dataset'"),
    Case("branch-locked-metric", ("branch", "val_metric=f1_macro"), 7,
         "locked key 'val_metric'"),
    Case("branch-locked-nested", ("branch", "dataset.name=wine"), 7, "locked key 'dataset'"),
    Case("branch-locked-delete", ("branch", "~val_metric"), 7, "locked key 'val_metric'"),
    Case("branch-unknown-key", ("branch", "model.nope=1"), 2, "model.nope"),
    Case("branch-unparsable", ("branch", "model.lr=)"), 2, "model.lr=)"),
    Case("branch-name-empty", ("branch", "--name", ""), 5, "invalid run name ''"),
    Case("branch-name-space", ("branch", "--name", "a b"), 5, "invalid run name"),
    Case("branch-name-taken", ("branch", "--name", "lr"), 5, "branch 'mlfork/lr' exists"),
    Case("branch-name-taken-base", ("branch", "--name", "base"), 5, "mlfork/base"),
    Case("branch-tag-empty", ("branch", "--tag", ""), 2, "its key is empty"),
    Case("branch-tag-reserved", ("branch", "--tag", "mlflow.parentRunId=x"), 2, "MLflow's"),
    Case("branch-managed", ("branch", "iteration=2"), 2, "iteration"),
    Case("branch-resolver", ("branch", "+x=${oc.env:HOME}"), 2, "resolver"),
    Case("branch-timeout", ("branch", "--timeout", "0"), 2, "--timeout"),
    Case("branch-relative-text", ("branch", "exploration_iterations=x"), 2,
         "counts iterations from the fork point"),
    Case("branch-relative-negative", ("branch", "exploration_iterations=-1"), 2,
         "counts iterations from the fork point"),
    Case("branch-iterations-override-text", ("branch", "iterations=many"), 2,
         "counts iterations"),
    Case("branch-dirty", ("branch",), 4, "pipelines/train.py", edit("pipelines/train.py")),
    Case("branch-dirty-staged", ("branch",), 4, "staged.txt",
         new_file("staged.txt", stage=True)),
    Case("branch-from-ref-syntax", ("branch", "--from", "base~1"), 6, "unknown run"),
    Case("branch-policy-override", ("branch", "mlfork.locked=[]"), 2, "policy"),
    Case("log-unknown", ("log", "nope"), 6, "unknown run 'nope'"),
    Case("log-bogus", ("log", "--bogus"), 2, "No such option"),
    Case("log-extra", ("log", "base", "lr"), 2, "unexpected extra argument"),
    Case("runs-bogus", ("runs", "--bogus"), 2, "No such option"),
    Case("runs-extra", ("runs", "base"), 2, "unexpected extra argument"),
    Case("tree-extra", ("tree", "base"), 2, "unexpected extra argument"),
    Case("metrics-unknown", ("metrics", "nope"), 6, "unknown run 'nope'"),
    Case("metrics-unknown-metric", ("metrics", "base", "--metric", "nope"), 6,
         "metric 'nope'"),
    Case("metrics-format", ("metrics", "base", "--format", "xml"), 2, "--format"),
    Case("metrics-source", ("metrics", "base", "--source", "nope"), 2, "--source"),
    Case("metrics-tracking-bad-uri", ("metrics", "base", "--source", "tracking"), 10,
         "no scheme MLflow knows", env={"MLFLOW_TRACKING_URI": "htp:/x::y"}),
    Case("diff-one-run", ("diff", "base"), 2, "Missing argument 'B'"),
    Case("diff-unknown-b", ("diff", "base", "nope"), 6, "unknown run 'nope'"),
    Case("diff-unknown-a", ("diff", "nope", "base"), 6, "unknown run 'nope'"),
    Case("diff-json-md", ("diff", "base", "lr", "--json", "--md"), 2, "exclude each other"),
    Case("diff-source", ("diff", "base", "lr", "--source", "nope"), 2, "--source"),
    Case("plot-unknown", ("plot", "nope"), 6, "unknown run 'nope'"),
    Case("plot-unknown-metric", ("plot", "base", "--metric", "nope"), 6, "metric 'nope'"),
    Case("plot-format", ("plot", "base", "-o", "x.jpg"), 2, ".png or .svg"),
    Case("plot-missing-folder", ("plot", "base", "-o", "/nonexistent/dir/x.png"), 15,
         "does not exist"),
    Case("plot-into-folder", ("plot", "base", "-o", "adir"), 2, ".png or .svg", a_dir),
    Case("plot-into-folder-png", ("plot", "base", "-o", "adir.png"), 15, "it is a folder",
         new_file("adir.png/keep")),
    Case("plot-x", ("plot", "base", "--x", "nope"), 2, "--x"),
    Case("report-not-a-fork", ("report", "base"), 2, "is not a fork"),
    Case("report-unknown", ("report", "nope"), 6, "unknown run 'nope'"),
    Case("report-base-itself", ("report", "lr", "--base", "lr"), 2, "itself"),
    Case("report-base-unknown", ("report", "lr", "--base", "nope"), 6, "unknown run 'nope'"),
    Case("report-base-unrelated", ("report", "lr", "--base", "other"), 2,
         "not an ancestor"),
    Case("report-missing-folder", ("report", "lr", "-o", "/nonexistent/r.md"), 15,
         "does not exist"),
    Case("report-assets-a-file", ("report", "lr", "--assets", "dvc.yaml"), 15, "it is a file"),
    Case("replay-unknown", ("replay", "nope"), 6, "unknown run 'nope'"),
    Case("replay-iteration-missing", ("replay", "base", "--iteration", "9"), 6,
         "iteration 9 of 'base' is not completed"),
    Case("replay-iteration-negative", ("replay", "base", "--iteration", "-1"), 2,
         "--iteration"),
    Case("replay-launch-name-taken", ("replay", "base", "--launch", "--name", "lr"), 5,
         "mlfork/lr"),
    Case("replay-launch-name-empty", ("replay", "base", "--launch", "--name", ""), 5,
         "invalid run name"),
    Case("replay-launch-dirty", ("replay", "base", "--launch"), 4, "notes.txt",
         new_file("notes.txt")),
    Case("verify-unknown", ("verify", "nope", "--from-iteration", "0"), 6, "unknown run"),
    Case("verify-iteration-missing", ("verify", "base", "--from-iteration", "9"), 6,
         "not completed"),
    Case("verify-last-iteration", ("verify", "base", "--from-iteration", "2"), 2,
         "last completed iteration"),
    Case("verify-negative", ("verify", "base", "--from-iteration", "-1"), 2,
         "--from-iteration"),
    Case("verify-iterations-0", ("verify", "base", "--from-iteration", "0", "--iterations",
                                 "0"), 2, "--iterations"),
    Case("verify-iterations-past", ("verify", "base", "--from-iteration", "0",
                                    "--iterations", "5"), 2, "goes past"),
    Case("verify-no-iteration", ("verify", "base"), 2, "--from-iteration"),
    Case("verify-dirty", ("verify", "base", "--from-iteration", "0"), 4, "notes.txt",
         new_file("notes.txt")),
    Case("verify-detached", ("verify", "base", "--from-iteration", "0"), 2,
         "HEAD is detached", detached),
    Case("rm-unknown", ("rm", "nope"), 6, "unknown run 'nope'"),
    Case("rm-prefix", ("rm", "ba"), 6, "unknown run 'ba'"),
    Case("rm-checked-out", ("rm", "base"), 2, "is checked out"),
    Case("rm-with-forks", ("rm", "base"), 2, "fork 'base' (lr)", on_main),
    Case("rm-missing-arg", ("rm",), 2, "Missing argument 'RUN'"),
    Case("rm-locked", ("rm", "lr"), 12, "another mlfork process", locked_by_another),
    Case("resume-locked", ("resume",), 12, "another mlfork process", locked_by_another),
    Case("verify-locked", ("verify", "base", "--from-iteration", "0"), 12,
         "another mlfork process", locked_by_another),
    Case("push-no-remote", ("push",), 2, "has no git remote"),
    Case("push-bad-remote", ("push", "--remote", "nope"), 2, "no git remote 'nope'"),
    Case("push-unknown-run", ("push", "nope"), 6, "unknown run 'nope'",
         remote("/nonexistent/team.git")),
    Case("push-unreachable", ("push", "base"), 18, "git push to 'origin' failed",
         remote("/nonexistent/team.git")),
    Case("push-two-remotes", ("push",), 2, "several git remotes", two_remotes),
    Case("pull-no-remote", ("pull",), 2, "has no git remote"),
    Case("pull-unreachable", ("pull",), 18, "git fetch from 'origin' failed",
         remote("/nonexistent/team.git")),
    Case("sweep-nothing", ("sweep", "--from", "base", "model.lr=0.1"), 2, "nothing to sweep"),
    Case("sweep-interval", ("sweep", "--from", "base", "model.lr=interval(0,1)"), 2,
         "an interval is for an optimizer"),
    Case("sweep-glob", ("sweep", "--from", "base", "model=glob(*)"), 2, "list the values"),
    Case("sweep-unknown-run", ("sweep", "--from", "nope", "model.lr=0.1,0.2"), 6,
         "unknown run 'nope'"),
    Case("sweep-locked-key", ("sweep", "--from", "base", "val_metric=accuracy,f1_macro"), 7,
         "val_metric"),
    Case("sweep-bad-override", ("sweep", "--from", "base", "model.lr=0.1,0.2", "nokey"), 2,
         "nokey"),
    Case("sweep-bad-prefix", ("sweep", "--from", "base", "--name-prefix", "a/b",
                              "model.lr=0.1,0.2"), 2, "cannot start a run name"),
    Case("sweep-jobs-zero", ("sweep", "--from", "base", "--jobs", "0", "model.lr=0.1,0.2"), 2,
         "--jobs"),
    Case("sweep-bad-executor", ("sweep", "--from", "base", "--executor", "k8s",
                                "model.lr=0.1,0.2"), 2, "k8s"),
    Case("sweep-param-local", ("sweep", "--from", "base", "--executor-param", "x=1",
                               "model.lr=0.1,0.2"), 2, "is for --executor submitit"),
    Case("sweep-param-shape", ("sweep", "--from", "base", "--executor", "submitit",
                               "--executor-param", "nokey", "model.lr=0.1,0.2"), 2,
         "expected KEY=VALUE"),
    Case("sweep-param-unknown", ("sweep", "--from", "base", "--executor", "submitit",
                                 "--executor-param", "cluster=local", "--executor-param",
                                 "bogus=1", "model.lr=0.1,0.2"), 2, "--executor-param"),
    Case("sweep-no-values", ("sweep", "--from", "base"), 2, "Missing argument"),
    Case("sweep-locked", ("sweep", "--from", "base", "model.lr=0.1,0.2"), 12,
         "another mlfork process", locked_by_another),
    Case("resume-jobs-here", ("resume", "base", "lr", "--jobs", "2"), 2,
         "is checked out here"),
    Case("resume-jobs-unknown", ("resume", "lr", "nope", "--jobs", "2"), 6,
         "unknown run 'nope'"),
    Case("resume-jobs-zero", ("resume", "lr", "--jobs", "0"), 2, "--jobs"),
    Case("resume-in-worktree", ("resume", "lr"), 12, "checked out in the worktree",
         in_a_worktree("lr")),
    Case("resume-jobs-in-worktree", ("resume", "lr", "other", "--jobs", "2"), 12,
         "checked out in the worktree", in_a_worktree("lr")),
    Case("rm-in-worktree", ("rm", "lr"), 12, "checked out in the worktree",
         in_a_worktree("lr")),
    Case("sync-rebuild-bad-uri", ("sync", "--rebuild"), 10, "no scheme",
         env={"MLFLOW_TRACKING_URI": "htp:/x::y"}),
    Case("ui-bad-uri", ("ui",), 2, "cannot serve tracking URI",
         env={"MLFLOW_TRACKING_URI": "postgresql://h/db"}),
]


@pytest.mark.parametrize("case", WITH_RUNS, ids=[c.id for c in WITH_RUNS])
def test_refused_on_a_project_with_runs(forked: Path, case: Case) -> None:
    refused(forked, case)


# -- a project in a subfolder, a project with params files ------------------------------------


def test_the_catalogue_holds_at_least_150_cases() -> None:
    assert len(FRESH) + len(WITH_RUNS) >= 150, len(FRESH) + len(WITH_RUNS)


def test_json_output_is_json_even_when_refused(forked: Path) -> None:
    """A refused `--json` command prints nothing on stdout (the error is on stderr)."""
    proc = cli(forked, "runs", "--json")
    assert json.loads(proc.stdout)
    refused_json = cli(forked, "log", "nope", "--json")
    assert refused_json.returncode == 6 and refused_json.stdout == ""
