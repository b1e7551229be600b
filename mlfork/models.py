"""Plain data the operations return and the persisted run record."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from mlfork import naming
from mlfork.errors import MalformedFile

RUN_RECORD_SCHEMA = 1

RunStatus = Literal["completed", "running", "stopped", "failed", "timeout", "interrupted"]


@dataclass(frozen=True)
class ParentRef:
    """Where a fork came from: the run that owns the checkpoint, and the checkpoint."""

    run: str
    iteration: int
    step: str
    commit: str


@dataclass
class RunRecord:
    """`.mlfork/run.yaml`, committed by the first commit of a run's branch."""

    name: str
    iterations: int
    overrides: list[str] = field(default_factory=list)
    own_overrides: list[str] = field(default_factory=list)
    parent: ParentRef | None = None
    options: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    created: str = ""
    base_commit: str = ""
    base_branch: str | None = None  # the branch the run started from (a root run)
    stages: list[str] = field(default_factory=list)
    schema: int = RUN_RECORD_SCHEMA
    # a merged run (`mlfork merge`): its sources, [{run, iteration, commit, weight}], and how
    # they were averaged ({strategy, object, only}); empty for every other run
    merged: list[dict[str, Any]] = field(default_factory=list)
    merge: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if not self.merged:  # the records of other runs stay as they were
            data.pop("merged")
            data.pop("merge")
        return {k: data[k] for k in sorted(data)}

    @classmethod
    def from_dict(cls, data: Any, source: str = naming.RUN_RECORD) -> RunRecord:
        if not isinstance(data, dict) or "name" not in data or "iterations" not in data:
            raise MalformedFile(source, "expected a mapping with 'name' and 'iterations'")
        schema = data.get("schema", RUN_RECORD_SCHEMA)
        if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
            raise MalformedFile(source, f"'schema' must be a positive integer, got {schema!r}")
        if schema > RUN_RECORD_SCHEMA:
            raise MalformedFile(
                source, f"it has schema {schema}, newer than this mlfork reads"
                f" ({RUN_RECORD_SCHEMA}): upgrade mlfork"
            )
        iterations = data["iterations"]
        if not isinstance(iterations, int) or isinstance(iterations, bool):
            raise MalformedFile(source, f"'iterations' must be an integer, got {iterations!r}")
        if iterations < 0:
            raise MalformedFile(source, f"'iterations' is {iterations}: it must be 0 or more")
        try:
            parent = data.get("parent")
            return cls(
                name=str(data["name"]),
                iterations=int(data["iterations"]),
                overrides=[str(o) for o in data.get("overrides") or []],
                own_overrides=[str(o) for o in data.get("own_overrides") or []],
                parent=ParentRef(
                    run=str(parent["run"]),
                    iteration=int(parent["iteration"]),
                    step=str(parent["step"]),
                    commit=str(parent["commit"]),
                )
                if parent
                else None,
                options=dict(data.get("options") or {}),
                tags=[str(t) for t in data.get("tags") or []],
                argv=[str(a) for a in data.get("argv") or []],
                created=str(data.get("created") or ""),
                base_commit=str(data.get("base_commit") or ""),
                base_branch=str(data["base_branch"]) if data.get("base_branch") else None,
                stages=[str(x) for x in data.get("stages") or []],
                schema=int(data.get("schema", RUN_RECORD_SCHEMA)),
                merged=[dict(m) for m in data.get("merged") or []],
                merge=dict(data.get("merge") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedFile(source, str(exc)) from exc


@dataclass(frozen=True)
class Commit:
    """A commit as mlfork sees it (no pygit2 objects leave the git adapter)."""

    id: str
    message: str
    time: int
    parents: tuple[str, ...]
    trailers: naming.Trailers | None
    author: str = ""  # the author's name


@dataclass(frozen=True)
class Checkpoint:
    """The commit after one stage of one iteration."""

    run: str  # the run that owns (ran) it
    iteration: int
    step: str
    commit: str
    time: int
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunInfo:
    """One line of `mlfork runs`."""

    name: str
    branch: str
    parent: ParentRef | None
    status: str
    done: int
    budget: int
    headline: str | None
    headline_value: float | None
    tip: str
    checked_out: bool
    tags: tuple[str, ...] = ()
    remote: str | None = None  # the git remote it is read from: it has no local branch
    merged: tuple[str, ...] = ()  # a merged run's sources, `run@iteration`

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tags"] = list(self.tags)
        data["merged"] = list(self.merged)
        return data


@dataclass
class RunResult:
    """What `mlfork run` / `mlfork resume` did."""

    name: str
    status: str
    done: int
    budget: int
    ran: list[tuple[int, str]] = field(default_factory=list)
    recomputed: list[tuple[int, str]] = field(default_factory=list)  # stages DVC really ran
    headline: str | None = None
    headline_value: float | None = None
    warnings: list[str] = field(default_factory=list)
    tip: str = ""
    suggestion: str | None = None  # an override of a real key of the project, for a hint

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ran"] = [{"iteration": i, "step": s} for i, s in self.ran]
        data["recomputed"] = [{"iteration": i, "step": s} for i, s in self.recomputed]
        return data


@dataclass(frozen=True)
class Policy:
    """The fork policy: the `mlfork:` section of conf/config.yaml (or params.yaml)."""

    locked: tuple[str, ...] = ("dataset", "val_metric")
    relative: tuple[str, ...] = ("iterations",)
    not_inherited: tuple[str, ...] = ("timeout", "stage_timeout")
    checkpoint_output: str | None = None
    checkpoint_resume: str | None = None
    experiment: str | None = None
    tracking_uri: str | None = None

    @classmethod
    def from_config(cls, section: Any, source: str = "conf/config.yaml") -> Policy:
        if section is None:
            return cls()
        if not isinstance(section, dict):
            raise MalformedFile(source, "the 'mlfork' section must be a mapping")
        ckpt = section.get("checkpoint") or {}
        if not isinstance(ckpt, dict):
            raise MalformedFile(source, "'mlfork.checkpoint' must map output and resume")
        defaults = cls()
        return cls(
            locked=tuple(section.get("locked", defaults.locked) or ()),
            relative=tuple(section.get("relative", defaults.relative) or ()),
            not_inherited=tuple(section.get("not_inherited", defaults.not_inherited) or ()),
            checkpoint_output=ckpt.get("output"),
            checkpoint_resume=ckpt.get("resume"),
            experiment=section.get("experiment"),
            tracking_uri=section.get("tracking_uri"),
        )


# -- the pipeline, as DVC's index describes it (adapters.dvc builds these) ---------------------


@dataclass(frozen=True)
class Out:
    """A declared output: of a pipeline stage, or of a `.dvc` file (a data source)."""

    path: str  # project-relative, posix
    stage: str  # the stage's addressing, or the .dvc file's path
    cache: bool
    metric: bool = False
    plot: bool = False
    persist: bool = False
    md5: str | None = None  # what dvc.lock / the .dvc file records (None: never ran)
    size: int | None = None
    nfiles: int | None = None


@dataclass(frozen=True)
class Stage:
    """A pipeline stage (a `foreach`/`matrix` item is a stage of its own)."""

    name: str  # DVC's addressing: `train`, `train@lr-0.1`, `sub/dvc.yaml:train`
    dvcfile: str
    deps: tuple[str, ...]
    params: tuple[tuple[str, tuple[str, ...]], ...]  # (params file, keys); () = whole file
    outs: tuple[Out, ...]
    frozen: bool = False


@dataclass(frozen=True)
class Pipeline:
    """What DVC declares in a workspace: the stages in run order, the data sources, the
    DVC files, and the top-level metrics and plots."""

    stages: tuple[Stage, ...] = ()
    sources: tuple[Out, ...] = ()
    dvcfiles: tuple[str, ...] = ()  # dvc.yaml and .dvc files
    lockfiles: tuple[str, ...] = ()
    top_metrics: tuple[str, ...] = ()
    top_plots: tuple[str, ...] = ()

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]

    def outs(self) -> list[Out]:
        return [o for s in self.stages for o in s.outs] + list(self.sources)

    def params_files(self) -> list[str]:
        return sorted({f for s in self.stages for f, _ in s.params})

    def tracked_params(self, file: str) -> list[tuple[str, ...]]:
        """The keys of `file` each stage tracks (() for a stage tracking the whole file)."""
        return [keys for s in self.stages for f, keys in s.params if f == file]

    def declared(self) -> list[str]:
        """Every path DVC owns in the workspace: DVC files, lock files, outputs, the top-level
        metrics and plots, and the .gitignore files DVC keeps next to cached outputs."""
        paths = {*self.dvcfiles, *self.lockfiles, *self.top_metrics, *self.top_plots}
        for out in self.outs():
            paths.add(out.path)
            if out.cache:
                folder = out.path.rsplit("/", 1)[0] if "/" in out.path else ""
                paths.add(f"{folder}/.gitignore" if folder else ".gitignore")
        return sorted(paths)

    def owns(self, path: str) -> bool:
        """Is `path` (project-relative) one of `declared()`, or inside one of them?"""
        return any(path == d or path.startswith(d.rstrip("/") + "/") for d in self.declared())
