"""Contract tests of mlfork.adapters.git.GitRepo, each checked with an independent reader:
the real git CLI."""

from __future__ import annotations

import multiprocessing
import queue as queue_module
from pathlib import Path

import pytest
from conftest import git

from mlfork import naming
from mlfork.adapters.git import GitRepo
from mlfork.errors import MlforkError, RunNameTaken

RACERS = 8
ROUNDS = 20


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git repository made by the git CLI: two commits on main, an ignore rule."""
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text("*.log\n/ignored/\n")
    (root / "a.txt").write_text("a1\n")
    (root / "conf" / "model").mkdir(parents=True)
    (root / "conf" / "config.yaml").write_text("seed: 1\n")
    (root / "conf" / "model" / "sgd.yaml").write_text("lr: 0.1\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "first")
    (root / "a.txt").write_text("a2\n")
    (root / "b.txt").write_text("b\n")
    git(root, "rm", "-q", "conf/model/sgd.yaml")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "second")
    return root


def rev(root: Path, spec: str) -> str:
    return git(root, "rev-parse", spec).strip()


def trailer(root: Path, key: str, spec: str) -> str:
    return git(root, "log", "-1", f"--format=%(trailers:key={key},valueonly)", spec).strip()


def refs(root: Path) -> str:
    return git(root, "for-each-ref", "--format=%(refname) %(objectname)") + git(
        root, "symbolic-ref", "HEAD"
    )


# -- commit_paths ------------------------------------------------------------------------------


def test_commit_paths_writes_trailers_git_reads_back(repo: Path) -> None:
    g = GitRepo.open(repo)
    head = rev(repo, "HEAD")
    g.create_branch("mlfork/x", head)
    g.set_head("mlfork/x")
    (repo / "a.txt").write_text("a3\n")
    (repo / "new.txt").write_text("new\n")
    message = naming.format_checkpoint_message("x", 7, "train", "stage train ran in 1.00s")
    oid = g.commit_paths("mlfork/x", ["a.txt", "new.txt"], message, parent=head)

    assert rev(repo, "mlfork/x") == oid
    assert rev(repo, "main") == head  # only the named branch moves
    assert git(repo, "rev-list", "--parents", "-n", "1", oid).split() == [oid, head]
    assert trailer(repo, "Mlfork-Run", oid) == "x"
    assert trailer(repo, "Mlfork-Iteration", oid) == "7"
    assert trailer(repo, "Mlfork-Step", oid) == "train"
    assert git(repo, "log", "-1", "--format=%s", oid).strip() == "x: iteration 7 train"
    assert git(repo, "show", f"{oid}:a.txt") == "a3\n"
    assert git(repo, "show", f"{oid}:new.txt") == "new\n"
    assert git(repo, "log", "-1", "--format=%an <%ae>", oid).strip() == (
        "mlfork tests <tests@mlfork.invalid>"
    )
    # exactly the named paths are staged, the index matches the commit
    assert git(repo, "status", "--porcelain") == ""
    # and our own reader agrees with git's
    c = g.commit(oid)
    assert c.trailers == naming.Trailers("x", 7, "train")
    assert c.parents == (head,)


def test_commit_paths_stages_only_the_given_paths(repo: Path) -> None:
    g = GitRepo.open(repo)
    head = rev(repo, "HEAD")
    (repo / "a.txt").write_text("changed\n")
    (repo / "b.txt").unlink()
    (repo / "other.txt").write_text("not mine\n")
    (repo / "debug.log").write_text("ignored\n")
    oid = g.commit_paths("main", ["b.txt", "debug.log"], "delete b", parent=head)
    assert git(repo, "ls-tree", "-r", "--name-only", oid).split() == [
        ".gitignore", "a.txt", "conf/config.yaml"
    ]
    assert git(repo, "show", f"{oid}:a.txt") == "a2\n"
    assert sorted(git(repo, "status", "--porcelain").splitlines()) == [
        " M a.txt", "?? other.txt"
    ]


def test_commit_paths_with_unchanged_tree_still_commits(repo: Path) -> None:
    g = GitRepo.open(repo)
    head = rev(repo, "HEAD")
    oid = g.commit_paths(
        "main", ["a.txt"], naming.format_checkpoint_message("x", 0, "evaluate"), parent=head
    )
    assert oid != head
    assert rev(repo, "main") == oid
    assert rev(repo, f"{oid}^{{tree}}") == rev(repo, f"{head}^{{tree}}")
    assert rev(repo, f"{oid}^") == head
    assert trailer(repo, "Mlfork-Step", "main") == "evaluate"


def test_commit_paths_with_a_stale_parent_moves_nothing(repo: Path) -> None:
    g = GitRepo.open(repo)
    stale = rev(repo, "HEAD~1")
    before = refs(repo)
    objects = set(git(repo, "rev-list", "--all").split())
    (repo / "a.txt").write_text("a3\n")
    with pytest.raises(MlforkError, match="branch 'main' moved while mlfork was committing"):
        g.commit_paths("main", ["a.txt"], "late", parent=stale)
    assert refs(repo) == before
    assert set(git(repo, "rev-list", "--all").split()) == objects
    assert git(repo, "fsck", "--no-dangling").strip() == ""


# -- create_branch -----------------------------------------------------------------------------


def test_create_branch(repo: Path) -> None:
    g = GitRepo.open(repo)
    first = rev(repo, "HEAD~1")
    g.create_branch("mlfork/x", first)
    assert rev(repo, "refs/heads/mlfork/x") == first
    assert g.resolve_branch("mlfork/x") == first
    assert g.branches("mlfork/") == ["mlfork/x"]
    assert git(repo, "symbolic-ref", "HEAD").strip() == "refs/heads/main"  # HEAD stays


def test_create_existing_branch_raises_run_name_taken(repo: Path) -> None:
    g = GitRepo.open(repo)
    head, first = rev(repo, "HEAD"), rev(repo, "HEAD~1")
    git(repo, "branch", "mlfork/x", first)
    before = refs(repo)
    with pytest.raises(RunNameTaken, match="branch 'mlfork/x' exists") as info:
        g.create_branch("mlfork/x", head)
    assert info.value.name == "x"
    assert info.value.exit_code == 5
    assert refs(repo) == before
    assert not list((repo / ".git" / "refs" / "heads" / "mlfork").glob("*.lock"))


def test_create_branch_while_another_process_holds_the_ref_lock(repo: Path) -> None:
    """The losing side of a race, made deterministic: git's own `<ref>.lock` is held."""
    g = GitRepo.open(repo)
    lock = repo / ".git" / "refs" / "heads" / "mlfork" / "x.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text("")
    before = refs(repo)
    with pytest.raises(RunNameTaken) as info:
        g.create_branch("mlfork/x", rev(repo, "HEAD"))
    assert info.value.name == "x"
    assert refs(repo) == before
    assert lock.exists() and lock.read_text() == ""  # someone else's lock is left alone
    lock.unlink()
    g.create_branch("mlfork/x", rev(repo, "HEAD"))
    assert rev(repo, "mlfork/x") == rev(repo, "HEAD")


def _race(path: str, target: str, rounds: int, barrier: object, results: object) -> None:
    """One racer: in each round, open its own GitRepo, wait for the others, create the
    round's branch."""
    for k in range(rounds):
        g = GitRepo.open(path)
        barrier.wait()  # type: ignore[attr-defined]
        try:
            g.create_branch(f"mlfork/race-{k}", target)
            outcome = "created"
        except RunNameTaken as exc:
            outcome = f"taken {exc.name}"
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            outcome = f"error {type(exc).__name__}: {exc}"
        results.put((k, outcome))  # type: ignore[attr-defined]


def test_create_branch_race_has_exactly_one_winner(repo: Path) -> None:
    target = rev(repo, "HEAD~1")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(RACERS)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_race, args=(str(repo), target, ROUNDS, barrier, results))
        for _ in range(RACERS)
    ]
    for p in procs:
        p.start()
    outcomes: dict[int, list[str]] = {k: [] for k in range(ROUNDS)}
    try:
        for _ in range(RACERS * ROUNDS):
            k, outcome = results.get(timeout=120)
            outcomes[k].append(outcome)
    except queue_module.Empty:
        pytest.fail(f"racers stopped reporting: {outcomes}")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)

    for k in range(ROUNDS):
        assert sorted(outcomes[k]) == ["created"] + [f"taken race-{k}"] * (RACERS - 1), (
            k, outcomes[k]
        )
        assert rev(repo, f"refs/heads/mlfork/race-{k}") == target
        assert git(repo, "cat-file", "-t", f"mlfork/race-{k}").strip() == "commit"
    fsck = git(repo, "fsck", "--full", "--strict", "--no-dangling")
    assert fsck.strip() == ""
    assert not [p for p in (repo / ".git").rglob("*.lock")]
    assert len(git(repo, "for-each-ref", "refs/heads/mlfork/").splitlines()) == ROUNDS


# -- reading at a revision ---------------------------------------------------------------------


def test_read_and_has_path_at_a_revision(repo: Path) -> None:
    g = GitRepo.open(repo)
    first, second = rev(repo, "HEAD~1"), rev(repo, "HEAD")
    (repo / "a.txt").write_text("workspace\n")  # never read: history comes from trees

    assert g.read(first, "a.txt") == git(repo, "show", f"{first}:a.txt").encode() == b"a1\n"
    assert g.read(second, "a.txt") == b"a2\n"
    assert g.read(first, "conf/model/sgd.yaml") == b"lr: 0.1\n"
    assert g.read(second, "conf/model/sgd.yaml") is None
    assert g.read(first, "b.txt") is None
    assert g.read(second, "nope/x") is None
    assert g.read(first, "conf") is None  # a folder is not a file
    assert g.read("0" * 40, "a.txt") is None

    assert g.has_path(first, "conf/model/sgd.yaml")
    assert not g.has_path(second, "conf/model/sgd.yaml")
    assert g.has_path(second, "conf")
    assert not g.has_path(second, "conf/model")  # its only file was removed
    assert not g.has_path("0" * 40, "a.txt")


def test_export_dir_at_a_revision(repo: Path, tmp_path: Path) -> None:
    g = GitRepo.open(repo)
    first, second = rev(repo, "HEAD~1"), rev(repo, "HEAD")
    (repo / "conf" / "config.yaml").write_text("seed: 99\n")  # workspace differs

    dest = tmp_path / "first"
    assert g.export_dir(first, "conf", dest)
    exported = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    listed = git(repo, "ls-tree", "-r", "--name-only", first, "conf/").split()
    assert exported == sorted(p.removeprefix("conf/") for p in listed)
    for name in exported:
        assert (dest / name).read_bytes() == git(repo, "show", f"{first}:conf/{name}").encode()

    dest2 = tmp_path / "second"
    assert g.export_dir(second, "conf", dest2)
    assert sorted(str(p.relative_to(dest2)) for p in dest2.rglob("*") if p.is_file()) == [
        "config.yaml"
    ]
    assert (dest2 / "config.yaml").read_text() == "seed: 1\n"

    assert not g.export_dir(second, "nope", tmp_path / "nope")
    assert not g.export_dir(second, "a.txt", tmp_path / "file")  # a file is not a folder
    assert not (tmp_path / "nope").exists()
    assert not (tmp_path / "file").exists()


def test_first_parent_walk_matches_git(repo: Path) -> None:
    g = GitRepo.open(repo)
    assert [c.id for c in g.first_parent_walk(rev(repo, "HEAD"))] == git(
        repo, "rev-list", "--first-parent", "HEAD"
    ).split()


# -- working tree ------------------------------------------------------------------------------


def porcelain_paths(root: Path) -> list[str]:
    out = git(root, "status", "--porcelain", "--untracked-files=all", "--no-renames")
    return sorted(line[3:] for line in out.splitlines())


def test_dirty_paths(repo: Path) -> None:
    g = GitRepo.open(repo)
    assert g.dirty_paths() == []
    g.require_clean()

    (repo / "a.txt").write_text("modified\n")  # modified, not staged
    (repo / "staged.txt").write_text("staged\n")
    git(repo, "add", "staged.txt")  # staged new file
    (repo / "b.txt").write_text("b2\n")
    git(repo, "add", "b.txt")  # staged modification
    (repo / "conf" / "config.yaml").unlink()  # deleted
    (repo / "deep" / "er").mkdir(parents=True)
    (repo / "deep" / "er" / "untracked.txt").write_text("u\n")  # untracked, nested
    (repo / "debug.log").write_text("ignored\n")  # ignored by pattern
    (repo / "ignored").mkdir()
    (repo / "ignored" / "x.txt").write_text("ignored\n")  # ignored folder

    expected = [
        "a.txt", "b.txt", "conf/config.yaml", "deep/er/untracked.txt", "staged.txt"
    ]
    assert g.dirty_paths() == expected
    assert porcelain_paths(repo) == expected  # git agrees
    status = g.status()
    assert status.untracked == {"deep/er/untracked.txt", "staged.txt"} - {"staged.txt"}
    assert status.changed == {"a.txt", "b.txt", "conf/config.yaml", "staged.txt"}
    # a view of the folder conf/ (a project in a subfolder) names paths from there
    sub_view = g.at(repo / "conf")
    assert sub_view.dirty_paths() == ["../a.txt", "../b.txt", "../deep/er/untracked.txt",
                                      "../staged.txt", "config.yaml"]
    head = g.head_commit()
    assert head is not None
    assert sub_view.read(head, "config.yaml") == g.read(head, "conf/config.yaml")
    assert g.is_ignored("debug.log") and g.is_ignored("ignored/x.txt")
    assert not g.is_ignored("a.txt")
    with pytest.raises(MlforkError, match=r"uncommitted changes \(a.txt, b.txt") as info:
        g.require_clean()
    assert info.value.exit_code == 4


def test_open_outside_a_repository(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(MlforkError, match="not in a git repository") as info:
        GitRepo.open(plain)
    assert info.value.exit_code == 3


def test_open_from_a_subdirectory(repo: Path) -> None:
    g = GitRepo.open(repo / "conf")
    assert g.root == repo.resolve()
    assert g.head_branch() == "main"
    assert g.head_commit() == rev(repo, "HEAD")
