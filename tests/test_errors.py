"""Every refusal of `mlfork run` (and `mlfork resume`) through the real CLI: the documented
exit code, one `mlfork: error:` line that names the way out, and nothing changed on disk
(refs, HEAD, index, working tree, DVC outputs, tracking store)."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cli, copy_project, dvc, git, lock_path, snapshot

from mlfork import errors


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one `mlfork: error:` line of stderr (and it is one line)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("mlfork: error:")]
    assert len(lines) == 1, f"expected one error line, got stderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def assert_refused(
    proc: subprocess.CompletedProcess[str], code: int, *fragments: str
) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    line = error_line(proc)
    # refused before any work: the error is all that is printed
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [line], proc.stderr
    assert proc.stdout == ""
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    return line


def refuse(root: Path, code: int, *args: str, fragments: tuple[str, ...] = (),
           env: dict[str, str] | None = None) -> str:
    """Run `mlfork ARGS` in `root`, expect a refusal, and check nothing changed."""
    before = snapshot(root)
    proc = cli(root, *args, env=env)
    line = assert_refused(proc, code, *fragments)
    assert_unchanged(before, snapshot(root))
    return line


def assert_unchanged(before: dict[str, object], after: dict[str, object]) -> None:
    """snapshot() equality, with the changed files named when it fails."""
    old, new = before["files"], after["files"]
    assert isinstance(old, dict) and isinstance(new, dict)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    assert changed == [], f"files changed by a refused command: {changed}"
    assert after == before


def commit_all(root: Path, message: str) -> None:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)


# -- not a project -----------------------------------------------------------------------------


def files_of(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_not_a_git_repository(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    root.mkdir()
    (root / "notes.txt").write_text("not a project\n")
    assert git(root, "rev-parse", "--git-dir", check=False) == ""  # no repository above
    before = files_of(root)
    proc = cli(root, "run", "--name", "x")
    assert_refused(proc, 3, "not in a git repository", "mlfork init", "git init")
    assert errors.NotAGitRepository.exit_code == 3
    assert files_of(root) == before
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]


def test_git_repository_that_is_not_a_dvc_project(tmp_path: Path) -> None:
    root = tmp_path / "gitonly"
    root.mkdir()
    git(root, "init", "-q")
    (root / "train.py").write_text("print('hi')\n")
    commit_all(root, "initial")
    refuse(root, 3, "run", "--name", "x",
           fragments=("is not a DVC project", "mlfork init", "dvc init"))
    assert not (root / ".mlfork").exists()


def test_missing_conf_entry(project: Path) -> None:
    config = project / "conf" / "config.yaml"
    config.write_text(config.read_text().replace("model: sgd", "model: missing"))
    assert not (project / "conf" / "model" / "missing.yaml").exists()
    commit_all(project, "a defaults entry without its file")
    refuse(project, 3, "run", "--name", "x", "--iterations", "1",
           fragments=("Could not find 'model/missing'", "Available options in 'model': mlp, sgd",
                      "fix the files under conf/"))
    assert git(project, "branch", "--list", "mlfork/*") == ""


# -- working tree ------------------------------------------------------------------------------


def test_dirty_working_tree_names_the_files(project: Path) -> None:
    train = project / "pipelines" / "train.py"
    train.write_text(train.read_text() + "\n# an edit\n")
    (project / "notes.txt").write_text("untracked\n")
    line = refuse(project, 4, "run", "--name", "x", "--iterations", "1",
                  fragments=("uncommitted changes", "commit or stash"))
    assert "pipelines/train.py" in line
    assert "notes.txt" in line
    assert git(project, "branch", "--list", "mlfork/*") == ""


def test_dirty_working_tree_staged_file(project: Path) -> None:
    (project / "staged.txt").write_text("staged\n")
    git(project, "add", "staged.txt")
    refuse(project, 4, "run", "--name", "x", fragments=("staged.txt", "commit or stash"))


def test_ignored_files_do_not_make_the_tree_dirty(project: Path) -> None:
    """A git-ignored file is not a change (the refusal comes from the next check instead)."""
    (project / ".mlfork" / "local").mkdir(parents=True, exist_ok=True)
    (project / ".mlfork" / "local" / "scratch").write_text("ignored\n")
    refuse(project, 2, "run", "--name", "x", "model.nope=1", fragments=("model.nope",))


# -- run names ---------------------------------------------------------------------------------


def test_run_name_taken(base_project: Path) -> None:
    refuse(base_project, 5, "run", "--name", "base", "--iterations", "1",
           fragments=("branch 'mlfork/base' exists", "pick another --name"))


@pytest.mark.parametrize("name", ["../x", "a b", "-x", "refs/heads/x", "x.lock", "a" * 65])
def test_invalid_run_name(project: Path, name: str) -> None:
    line = refuse(project, 5, "run", "--name", name, "--iterations", "1",
                  fragments=(repr(name), "use 1-64 characters"))
    assert "starting with a letter or digit" in line
    assert git(project, "for-each-ref", "refs/heads/mlfork") == ""


# -- overrides and options ---------------------------------------------------------------------


def test_unknown_override_key(project: Path) -> None:
    line = refuse(project, 2, "run", "--name", "x", "--iterations", "1", "model.nope=1",
                  fragments=("override 'model.nope=1' is invalid",))
    # Hydra's own reason, which names the way out (`+key=value` to add a key)
    assert "Could not override 'model.nope'" in line
    assert "+model.nope=1" in line


def test_unparsable_override(project: Path) -> None:
    line = refuse(project, 2, "run", "--name", "x", "--iterations", "1", "model.lr=[1,",
                  fragments=("override 'model.lr=[1,' is invalid",))
    assert "no viable alternative" in line


def test_unknown_group_option(project: Path) -> None:
    line = refuse(project, 2, "run", "--name", "x", "--iterations", "1", "model=nope",
                  fragments=("override 'model=nope' is invalid",))
    # Hydra's reason, with the options to pick from
    assert "Could not find 'model/nope'" in line
    assert line.endswith("Available options in 'model': mlp, sgd")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("--iterations", "0"), "--iterations"),
        (("--iterations", "-3"), "--iterations"),
        (("--iterations", "many"), "--iterations"),
        (("--timeout", "-1"), "--timeout"),
        (("--timeout", "0"), "--timeout"),
        (("--stage-timeout", "-1"), "--stage-timeout"),
    ],
)
def test_bad_option_values(project: Path, args: tuple[str, ...], fragment: str) -> None:
    """click's own usage errors: exit 2, the option named, nothing written."""
    before = snapshot(project)
    proc = cli(project, "run", "--name", "x", *args)
    assert proc.returncode == 2, proc.stderr
    assert f"Invalid value for '{fragment}'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert_unchanged(before, snapshot(project))


# -- environment -------------------------------------------------------------------------------


def test_no_git_identity(project: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty-home"
    empty.mkdir()
    env = {
        "HOME": str(empty),
        "GIT_CONFIG_GLOBAL": str(empty / ".gitconfig"),
        "XDG_CONFIG_HOME": str(empty / ".config"),
    }
    # preconditions: neither git nor pygit2 finds an identity in that environment
    assert subprocess.run(["git", "config", "user.name"], cwd=project,
                          env={**os.environ, **env}, capture_output=True).returncode == 1
    probe = subprocess.run(
        [sys.executable, "-c",
         "import pygit2; c = pygit2.Repository('.').config;"
         " print('user.name' in c, 'user.email' in c)"],
        cwd=project, env={**os.environ, **env}, capture_output=True, text=True, check=True,
    )
    assert probe.stdout.split() == ["False", "False"]
    refuse(project, 11, "run", "--name", "x", "--iterations", "1", env=env,
           fragments=("no git identity", "git config --global user.name",
                      "git config --global user.email"))


def test_project_locked_by_another_process(project: Path) -> None:
    path = lock_path(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fh.write(json.dumps({"pid": 424242, "run": "other", "command": "run"}))
        fh.flush()
        refuse(project, 12, "run", "--name", "x", "--iterations", "1",
               fragments=("another mlfork process (pid 424242, run)", "wait for it"))
    assert git(project, "branch", "--list", "mlfork/*") == ""


# -- resume ------------------------------------------------------------------------------------


def test_resume_unknown_run(base_project: Path) -> None:
    refuse(base_project, 6, "resume", "nope",
           fragments=("unknown run 'nope'", "runs: base"))


def test_resume_unknown_run_without_any_run(project: Path) -> None:
    refuse(project, 6, "resume", "nope", fragments=("unknown run 'nope'", "'mlfork runs'"))


# -- a stage that fails ------------------------------------------------------------------------

FAIL_HOOK = '''def main():
    if os.path.exists("FAIL"):  # test hook: the project root holds a git-ignored FAIL file
        print("train: about to fail")
        raise SystemExit("boom")
'''


@pytest.fixture
def failing_project(tmp_path: Path, template: Path) -> Path:
    """The example project whose train stage fails while a (git-ignored) FAIL file exists."""
    root = copy_project(template, tmp_path / "proj")
    train = root / "pipelines" / "train.py"
    text = train.read_text()
    assert text.count("def main():\n") == 1
    train.write_text(text.replace("def main():\n", FAIL_HOOK))
    with open(root / ".gitignore", "a") as fh:
        fh.write("/FAIL\n")
    commit_all(root, "train fails while FAIL exists")
    return root


def run_commits(root: Path, run: str) -> list[tuple[str, str, str]]:
    """(run, iteration, step) trailers of the commits the run's branch adds, oldest first,
    read back by the git CLI."""
    fmt = (
        "%(trailers:key=Mlfork-Run,valueonly,separator=%x2C)|"
        "%(trailers:key=Mlfork-Iteration,valueonly,separator=%x2C)|"
        "%(trailers:key=Mlfork-Step,valueonly,separator=%x2C)"
    )
    out = git(root, "log", "--reverse", "--first-parent", f"--format={fmt}",
              f"main..mlfork/{run}")
    rows = []
    for line in out.splitlines():
        if line.strip():
            r, i, s = line.split("|")
            rows.append((r.strip(), i.strip(), s.strip()))
    return rows


def test_failed_stage_then_resume(failing_project: Path) -> None:
    root = failing_project
    (root / "FAIL").write_text("")
    assert git(root, "status", "--porcelain") == ""  # FAIL is ignored

    proc = cli(root, "run", "--name", "x", "--iterations", "1")
    assert proc.returncode == 8, proc.stderr
    line = error_line(proc)
    assert "stage 'train' of iteration 0 failed with exit code 1" in line
    assert "train: about to fail | boom;" in line  # the stage's last output lines, in order
    assert line.endswith("fix it, then run 'mlfork resume x'")
    # the run exists up to the failed stage: its record and the stage before train
    assert git(root, "symbolic-ref", "HEAD").strip() == "refs/heads/mlfork/x"
    assert run_commits(root, "x") == [("x", "", ""), ("x", "0", "data_split")]
    assert git(root, "show", "mlfork/x:.mlfork/run.yaml").count("name: x") == 1

    # remove the cause; resume does the rest, each stage committed exactly once
    (root / "FAIL").unlink()
    proc = cli(root, "resume", "x")
    assert proc.returncode == 0, proc.stderr
    assert run_commits(root, "x") == [
        ("x", "", ""),
        ("x", "0", "data_split"),
        ("x", "0", "train"),
        ("x", "0", "evaluate"),
    ]
    assert git(root, "status", "--porcelain", "--untracked-files=all") == ""
    status = dvc(root, "status")
    assert status.returncode == 0, status.stderr
    assert "up to date" in status.stdout, status.stdout
    runs = json.loads(cli(root, "runs", "--json").stdout)
    assert [(r["name"], r["status"], r["done"], r["budget"]) for r in runs] == [
        ("x", "completed", 1, 1)
    ]


# -- the error classes themselves ---------------------------------------------------------------


def all_error_classes() -> list[type[errors.MlforkError]]:
    found = []
    for value in vars(errors).values():
        if isinstance(value, type) and issubclass(value, errors.MlforkError):
            found.append(value)
    return found


def documented_exit_codes() -> set[int]:
    doc = errors.__doc__ or ""
    section = doc.split("Exit codes", 1)[1]
    return {int(line.split()[0]) for line in section.splitlines()
            if line.strip() and line.split()[0].isdigit()}


def test_every_exit_code_is_documented() -> None:
    documented = documented_exit_codes()
    assert {0, 1, 2, 3, 4, 5, 6, 8, 11} <= documented
    for cls in all_error_classes():
        assert cls.exit_code in documented, cls.__name__


def readme_table(heading: str) -> list[list[str]]:
    """The rows of the first Markdown table under `heading` in the README."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split(heading, 1)[1]
    rows = []
    for line in section.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]


def test_the_readme_exit_code_table_is_the_one_in_errors() -> None:
    table = {int(row[0]) for row in readme_table("## Exit codes")}
    assert table == documented_exit_codes() | {0}


def test_the_readme_command_table_lists_every_command() -> None:
    from mlfork.cli import COMMANDS

    table = readme_table("## CLI reference")
    named = {row[0].strip("`").split()[1] for row in table}
    assert named == set(COMMANDS)


@pytest.mark.parametrize(
    "err",
    [
        errors.OverrideError("model.lr=[1,", "no viable alternative\nat input '[1,'\n  see docs"),
        errors.StageFailed("x", 2, "train", 1, "line one\n\nline two\nboom\n"),
        errors.DirtyWorkingTree([f"f{i}.txt" for i in range(11)]),
        errors.UnknownRun("nope", [f"r{i}" for i in range(12)]),
        errors.AmbiguousRun("r", ["r1", "r2"]),
        errors.InvalidRunName("a\nb"),
        errors.RunTimeout("x", "stage 'train'", 1.5),
        errors.Interrupted("x"),
        errors.NoGitIdentity(),
        errors.ProjectLocked(12, "run"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_messages_are_one_line(err: errors.MlforkError) -> None:
    assert "\n" not in str(err)
    assert str(err) == err.message


def test_message_details() -> None:
    dirty = errors.DirtyWorkingTree([f"f{i:02d}.txt" for i in range(11)])
    assert "f00.txt, f01.txt" in str(dirty) and "f07.txt and 3 more" in str(dirty)
    assert "f08.txt" not in str(dirty) and len(dirty.paths) == 11
    failed = errors.StageFailed("x", 2, "train", 1, "a\nb\nc\nd\ne\nf\nboom\n")
    assert str(failed) == (
        "stage 'train' of iteration 2 failed with exit code 1: c | d | e | f | boom;"
        " fix it, then run 'mlfork resume x'"
    )
    assert str(errors.UnknownRun("nope")) == "unknown run 'nope' ('mlfork runs' lists them)"
