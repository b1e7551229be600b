"""`mlfork init`: a fresh example project, or the adoption of an existing git+DVC project."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .. import naming
from ..adapters.git import GitRepo
from ..errors import NotADvcProject, UsageError
from .project import Project

EXAMPLE_FILES = ("conf", "pipelines", "dvc.yaml")
GITIGNORE = "# mlfork\n__pycache__/\n*.pyc\n/.mlfork/local/\n"


@dataclass
class InitResult:
    root: str
    mode: str  # "created" or "adopted"
    actions: list[str] = field(default_factory=list)
    commit: str | None = None

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def example_dir() -> Path:
    """The example project: inside an installed wheel, or the root of a source checkout."""
    packaged = Path(str(resources.files("mlfork"))) / "_example"
    if (packaged / "dvc.yaml").is_file():
        return packaged
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "dvc.yaml").is_file() and (checkout / "conf").is_dir():
        return checkout
    raise UsageError("the example project is missing from this installation: reinstall mlfork")


def init(path: str | os.PathLike[str] = ".") -> InitResult:
    target = Path(path).resolve()
    if not target.exists() or not any(target.iterdir()):
        return create(target)  # a new project, even inside another repository
    found = _git_root(target)
    if found is not None and (found / ".dvc").is_dir():
        return adopt(found)
    if found is not None:
        raise NotADvcProject(str(found))
    raise UsageError(
        f"'{target}' exists and is not empty: give a new folder, or run 'mlfork init'"
        " inside an existing git+DVC project to adopt it"
    )


def _git_root(path: Path) -> Path | None:
    probe = path
    while not probe.exists():
        probe = probe.parent
    try:
        return GitRepo.open(probe).root
    except Exception:
        return None


def create(target: Path) -> InitResult:
    """git init, dvc init (cache links), the example files, params.yaml, first commit."""
    src = example_dir()
    existed = target.exists()
    target.mkdir(parents=True, exist_ok=True)
    try:
        return _create(src, target)
    except BaseException:  # a refused init leaves no half-made project behind
        if existed:
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        else:
            shutil.rmtree(target, ignore_errors=True)
        raise


def _create(src: Path, target: Path) -> InitResult:
    from ..adapters import hydra
    from ..adapters.dvc import DvcProject

    git = GitRepo.init(target)
    git.signature()  # no identity: refuse before the example is copied
    for name in EXAMPLE_FILES:
        if (src / name).is_dir():
            shutil.copytree(src / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src / name, target / name)
    (target / ".gitignore").write_text(GITIGNORE, encoding="utf-8")
    DvcProject.init(target)
    project = Project(git)
    with project.dvc as dvc:
        config = hydra.compose(target / naming.CONF_DIR, [], naming.CONF_NAME)
        policy_resume = (config.get("mlfork") or {}).get("checkpoint", {}).get("resume")
        config.pop("mlfork", None)
        (target / naming.PARAMS_FILE).write_text(hydra.to_yaml(config), encoding="utf-8")
        if policy_resume:
            dvc.set_resume(policy_resume, None)
    paths = [
        str(p.relative_to(target))
        for p in sorted(target.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(target).parts[:1]
        and not git.is_ignored(str(p.relative_to(target)))
    ]
    commit = git.add_and_commit_initial(paths, "mlfork init: example project\n")
    return InitResult(
        root=str(target),
        mode="created",
        actions=["git init", "dvc init (cache.type reflink,hardlink,symlink)", "example project"],
        commit=commit,
    )


def adopt(root: Path) -> InitResult:
    """An existing git+DVC project: link the DVC cache (machine-local config) and nothing else."""
    from ..adapters.dvc import DvcProject

    project = Project.open(root)
    actions = []
    with DvcProject(root) as dvc, dvc.repo.config.edit("local") as local:
        merged = dvc.repo.config.get("cache", {})
        if not merged.get("type"):
            local.setdefault("cache", {})["type"] = "reflink,hardlink,symlink"
            actions.append("cache.type reflink,hardlink,symlink in .dvc/config.local")
    project.local("outbox")
    actions.append(".mlfork/local/ (machine-local, ignores itself)")
    mode = "conf/ (Hydra)" if (root / naming.CONF_DIR / "config.yaml").is_file() else "params.yaml"
    actions.append(f"config source: {mode}")
    return InitResult(root=str(root), mode="adopted", actions=actions)
