"""`mlfork init`: a fresh example project, or the adoption of an existing git+DVC project
(at the top of its repository or in a folder of it: `dvc init --subdir`, a monorepo)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from mlfork import faults, naming
from mlfork.adapters.git import GitRepo
from mlfork.errors import NotAGitRepository, ProjectError, UsageError
from mlfork.nested import dump_yaml
from mlfork.ops.kernel.project import Project, find_dvc_root

EXAMPLE_FILES = ("conf", "pipelines", "dvc.yaml")
GITIGNORE = "# mlfork\n__pycache__/\n*.pyc\n/.mlfork/local/\n"


@dataclass
class InitResult:
    root: str
    mode: str  # "created" or "adopted"
    actions: list[str] = field(default_factory=list)
    commit: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


EXAMPLES = {
    "numpy": "the NumPy classifier (scikit-learn's digits; the default)",
    "torch": "a PyTorch network with AdamW, a scheduler, a DataLoader, dropout and dvclive",
}
# what each example's stages import beyond mlfork's own dependencies: (module, extra)
NEEDS = {"numpy": [("sklearn", "example")],
         "torch": [("sklearn", "example"), ("torch", "torch"), ("dvclive", "torch")]}


def example_dir(name: str = "numpy") -> Path:
    """An example project: inside an installed wheel, or in a source checkout (the numpy
    one is the checkout's root, the others are under examples/)."""
    if name not in EXAMPLES:
        raise UsageError(f"no example '{name}': choose one of {', '.join(EXAMPLES)}")
    packaged = Path(str(resources.files("mlfork"))) / (
        "_example" if name == "numpy" else f"_examples/{name}")
    if (packaged / "dvc.yaml").is_file():
        return packaged
    checkout = Path(__file__).resolve().parents[3]
    if name != "numpy":
        checkout = checkout / "examples" / name
    if (checkout / "dvc.yaml").is_file() and (checkout / "conf").is_dir():
        return checkout
    raise UsageError("the example project is missing from this installation: reinstall mlfork")


def init(path: str | os.PathLike[str] = ".", example: str | None = None) -> InitResult:
    """`mlfork init PATH`: a new project (an empty or missing folder gets the example,
    `example` names which, built aside and moved into place whole), or an existing DVC
    project adopted (its own files untouched; mlfork's local state ignored)."""
    target = Path(path).resolve()
    if example is not None:
        example_dir(example)  # an unknown name is refused before anything is looked at
    if not target.exists() or not any(target.iterdir()):
        return create(target, example or "numpy")  # a new project, even inside a repository
    if example is not None:
        raise UsageError(
            f"'{target}' is not empty: --example makes a new project; give a new folder"
            f" (mlfork init NEW_FOLDER --example {example})"
        )
    try:
        repo = GitRepo.open(target)
    except NotAGitRepository:
        raise UsageError(
            f"'{target}' exists and is not empty: give a new folder, or run 'mlfork init'"
            " inside an existing git+DVC project to adopt it"
        ) from None
    found = find_dvc_root(target, repo.workdir)
    if found is None:
        where = "" if target == repo.workdir else " (or 'dvc init --subdir' in this folder)"
        raise ProjectError(
            f"'{target}' is in the git repository '{repo.workdir}' but in no DVC project:"
            f" run 'dvc init' there{where}, then 'mlfork init'"
        )
    return adopt(found)


def create(target: Path, example: str = "numpy") -> InitResult:
    """git init, dvc init (cache links), the example files, params.yaml, first commit: all
    built in a folder beside `target`, then moved into place in one rename. A refused or
    killed init leaves no half-made project (a later init finds no project and starts
    again; the leftovers of a killed one are removed)."""
    src = example_dir(example)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create '{target}': {exc.strerror or exc}") from exc
    _remove_dead_builds(parent, target.name)
    build = parent / f".{target.name}.mlfork-init-{os.getpid()}"
    try:
        build.mkdir()
    except OSError as exc:
        raise UsageError(f"cannot create a project in '{parent}': {exc.strerror or exc}") from exc
    try:
        result = _create(src, build, target.name, example)
        os.rename(build, target)  # over an empty folder too: POSIX replaces it
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    result.root = str(target)
    return result


def _remove_dead_builds(parent: Path, name: str) -> None:
    import psutil

    for stale in parent.glob(f".{name}.mlfork-init-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or not psutil.pid_exists(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _create(src: Path, target: Path, project_name: str, example: str = "numpy") -> InitResult:
    from mlfork.adapters import hydra
    from mlfork.adapters.dvc import DvcProject

    git = GitRepo.init(target)
    git.signature()  # no identity: refuse before the example is copied
    faults.point("init.git")
    for name in EXAMPLE_FILES:
        if (src / name).is_dir():
            shutil.copytree(src / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src / name, target / name)
    (target / ".gitignore").write_text(GITIGNORE, encoding="utf-8")
    _name_experiment(target / naming.CONF_DIR / f"{naming.CONF_NAME}.yaml", project_name)
    DvcProject.init(target)
    faults.point("init.dvc")
    project = Project(git)
    with project.dvc as dvc:
        config = hydra.compose(target / naming.CONF_DIR, [], naming.CONF_NAME)
        policy_resume = (config.get("mlfork") or {}).get("checkpoint", {}).get("resume")
        config.pop("mlfork", None)
        (target / naming.PARAMS_FILE).write_text(dump_yaml(config), encoding="utf-8")
        if policy_resume:
            dvc.set_resume(policy_resume, None)
        dvc.reset()
        # git ignores the outputs on the base branch too: back on it after a run, they are
        # DVC's files in DVC's place, not untracked changes
        dvc.ignore_outputs(o.path for o in dvc.pipeline().outs() if o.cache)
    paths = [
        str(p.relative_to(target))
        for p in sorted(target.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(target).parts[:1]
        and not git.is_ignored(str(p.relative_to(target)))
    ]
    commit = git.add_and_commit_initial(paths, "mlfork init: example project\n")
    faults.point("init.committed")
    notes = []
    missing = [(module, extra) for module, extra in NEEDS[example]
               if importlib.util.find_spec(module) is None]
    if missing:
        extras = ",".join(dict.fromkeys(extra for _, extra in missing))
        notes.append(f"the example's stages import {', '.join(m for m, _ in missing)}, not"
                     f" installed here: pip install 'mlfork-runs[{extras}]'")
    return InitResult(
        root=str(target),
        mode="created",
        actions=["git init", "dvc init (cache.type reflink,hardlink,symlink)",
                 f"example project ({example})"],
        commit=commit,
        notes=notes,
    )


def adopt(root: Path) -> InitResult:
    """An existing git+DVC project: link the DVC cache (machine-local config), have git
    ignore its declared outputs locally, and nothing else: no tracked file changes."""
    from mlfork.ops.running import params

    project = Project.open(root)
    actions: list[str] = []
    notes: list[str] = []
    dvc = project.dvc
    try:
        if dvc.configure_links(dvc.repo, level="local"):
            actions.append("cache.type reflink,hardlink,symlink in .dvc/config.local")
        pipeline = dvc.pipeline()
        unignored = [o.path for o in pipeline.outs()
                     if o.cache and not project.git.is_ignored(o.path)]
        added = project.git.add_exclude(unignored)
        if added:
            actions.append(f"git ignores {len(added)} DVC output(s) here (.git/info/exclude)")
        project.local("outbox")
        actions.append(".mlfork/local/ (machine-local, ignores itself)")
        head = project.git.head_commit()
        mode = "conf/ (Hydra)" if (root / naming.CONF_DIR / "config.yaml").is_file() else (
            "params.yaml" if (root / naming.PARAMS_FILE).is_file() else "no params.yaml"
        )
        actions.append(f"config source: {mode}")
        if project.git.prefix:
            actions.append(f"project in folder '{project.git.prefix}' of its git repository")
        if head is not None:
            committed = _commit_experiment(project, head, notes)
            if committed:
                actions.append(committed)
        if not pipeline.stages:
            notes.append("dvc.yaml has no stages yet: add the pipeline's stages before"
                         " 'mlfork run'")
        elif head is not None and not params.iterates(
            pipeline, project.policy(head), project.params_at(head)
        ):
            notes.append(params.NOT_ITERATING)
    finally:
        project.close()
    return InitResult(root=str(root), mode="adopted", actions=actions, notes=notes)


def repository_name(project: Project) -> str:
    """The name a team knows the repository by: its origin's (`.../team.git` -> `team`),
    else the folder it is checked out in."""
    url = project.git.remote_url("origin")
    if url:
        tail = url.rstrip("/").replace(":", "/").rsplit("/", 1)[-1]
        name = tail[:-4] if tail.endswith(".git") else tail
        if name:
            return name
    return project.git.workdir.name


def _name_experiment(config: Path, name: str) -> None:
    """The example's policy names its MLflow experiment after the new project's folder."""
    text = config.read_text(encoding="utf-8")
    if "\nmlfork:\n" in "\n" + text and "  experiment:" not in text:
        text = text.replace("mlfork:\n", f"mlfork:\n  experiment: {json.dumps(name)}\n", 1)
        config.write_text(text, encoding="utf-8")


def _commit_experiment(project: Project, head: str, notes: list[str]) -> str | None:
    """Commit the team's MLflow experiment in `.mlfork/config.yaml` when the project's
    policy names none, so that every clone, folder and worktree writes to the same one.
    Only that file is committed (on the branch checked out); None when nothing was done."""
    if project.policy(head).experiment:
        return None
    path = project.root / naming.POLICY_FILE
    branch = project.git.head_branch()
    if path.exists() or branch is None:
        notes.append(f"name the team's MLflow experiment in the policy ('experiment: NAME'"
                     f" in {naming.POLICY_FILE}, committed) so that every clone uses it")
        return None
    name = repository_name(project)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# mlfork's policy for this project (committed: every clone uses it)\n"
                    f"experiment: {json.dumps(name)}\n", encoding="utf-8")
    try:
        project.git.commit_paths(branch, [naming.POLICY_FILE],
                                 "mlfork init: the team's MLflow experiment\n", parent=head)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return f"MLflow experiment '{name}' committed in {naming.POLICY_FILE}"
