"""`dvc repro` on a fork branch with no mlfork involved (issue 3): a fresh checkout of the fork
with the real `git` and `dvc` CLIs, then `dvc repro`.

The fork is made with --no-switch; the workspace then moves with `git checkout mlfork/f`
and `dvc checkout`, as a colleague who pulled the branch would do.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from conftest import copy_project, dvc, git, ok

import mlfork


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def checkout_fork(root: Path, name: str = "f") -> None:
    git(root, "checkout", "-q", f"mlfork/{name}")
    ok(dvc(root, "checkout"))


def lock_entry(lock: dict[str, Any], stage: str, kind: str, path: str) -> dict[str, Any]:
    (entry,) = [e for e in lock["stages"][stage][kind] if e["path"] == path]
    return entry


def test_repro_right_after_a_fork_without_overrides_runs_nothing(base_project: Path) -> None:
    mlfork.branch(path=str(base_project), source="base", from_iteration=1, name="f", switch=False)
    checkout_fork(base_project)
    lock = (base_project / "dvc.lock").read_bytes()
    assert lock.decode() == git(base_project, "show", "mlfork/f:dvc.lock")
    proc = ok(dvc(base_project, "repro"))
    assert "Running stage" not in proc.stdout, proc.stdout
    assert "up to date" in proc.stdout, proc.stdout
    assert (base_project / "dvc.lock").read_bytes() == lock
    assert git(base_project, "status", "--porcelain", "--untracked-files=all") == ""


def test_repro_after_a_training_change_resumes_from_the_fork_point(
    base_project: Path, tmp_path: Path
) -> None:
    root = base_project
    mlfork.branch(
        path=str(root),
        source="base",
        from_iteration=1,
        name="f",
        switch=False,
        overrides=["model.lr=0.05"],
    )
    clean = copy_project(root, tmp_path / "clean")  # an independent clone-like copy
    checkout_fork(root)
    at_fork = yaml.safe_load(git(root, "show", "mlfork/f:dvc.lock"))
    resume_md5 = lock_entry(at_fork, "train", "deps", "models/resume")["md5"]
    old_checkpoint = lock_entry(at_fork, "train", "outs", "models/checkpoint")["md5"]
    assert md5(root / "models" / "resume") == resume_md5

    # whatever is on disk: garbage in place of the checkpoint (unlinked first, it may be a
    # hard link into the DVC cache)
    checkpoint = root / "models" / "checkpoint"
    checkpoint.unlink()
    garbage = b"not a checkpoint\n" * 1000
    checkpoint.write_bytes(garbage)

    proc = ok(dvc(root, "repro"))
    assert "Running stage 'train'" in proc.stdout, proc.stdout
    assert "Running stage 'evaluate'" in proc.stdout, proc.stdout
    assert "Running stage 'data_split'" not in proc.stdout, proc.stdout
    after = yaml.safe_load((root / "dvc.lock").read_text())
    assert lock_entry(after, "train", "deps", "models/resume")["md5"] == resume_md5
    new_checkpoint = lock_entry(after, "train", "outs", "models/checkpoint")["md5"]
    assert md5(checkpoint) == new_checkpoint
    assert new_checkpoint not in (hashlib.md5(garbage).hexdigest(), old_checkpoint)
    assert md5(root / "models" / "resume") == resume_md5

    # the same fork, checked out clean elsewhere and reproduced: the same checkpoint bytes
    checkout_fork(clean)
    ok(dvc(clean, "repro"))
    again = yaml.safe_load((clean / "dvc.lock").read_text())
    assert lock_entry(again, "train", "deps", "models/resume")["md5"] == resume_md5
    assert lock_entry(again, "train", "outs", "models/checkpoint")["md5"] == new_checkpoint
