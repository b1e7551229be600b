"""`mlfork sweep` and `mlfork resume A B C --jobs J`: runs side by side.

Each job is a plain `mlfork resume RUN` in a git worktree of its own under the main
worktree's `.mlfork/local/worktrees/` (see `kernel.worktrees`): it shares the DVC cache,
the tracking store and the outbox, and the main worktree is never touched. The jobs run on
an existing engine, never on a scheduler of ours: local processes (at most J at a time), or
submitit (SLURM on a cluster; its local executor on one machine). A failed job is reported
with its log and the command that resumes it; the others go on.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mlfork import naming
from mlfork.errors import UsageError
from mlfork.ops.kernel import lineage, worktrees
from mlfork.ops.kernel.project import Project
from mlfork.ops.running.common import Event, Progress, check_positive, quiet

EXECUTORS = ("local", "submitit")
POLL = 0.2  # seconds between looks at the running jobs
GRACE = 30.0  # seconds an interrupted job has to put its workspace back


@dataclass
class JobResult:
    """How one job ended, and where the run stands."""

    run: str
    returncode: int
    status: str = ""
    done: int = 0
    budget: int = 0
    headline: str | None = None
    headline_value: float | None = None
    error: str = ""  # the job's one-line error, if it failed
    log: str = ""  # its output, relative to the project
    resume: str = ""  # the command that goes on from where it stopped

    @property
    def ok(self) -> bool:
        return self.returncode == 0


@dataclass
class FanoutResult:
    jobs: list[JobResult]
    executor: str
    parallel: int
    forks: list[dict[str, Any]] = field(default_factory=list)  # `sweep`: the forks made
    seconds: float = 0.0

    @property
    def failed(self) -> list[JobResult]:
        return [job for job in self.jobs if not job.ok]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["failed"] = [job.run for job in self.failed]
        return data


# -- sweeps --------------------------------------------------------------------------------------


def sweep_names(prefix: str, swept: Sequence[Sequence[tuple[str, str]]]) -> list[str]:
    """A run name per combination, from the values of the swept keys: prefix `base-`,
    `model.lr=0.1` and `seed=2` give `base-lr0.1-seed2`. Names that would repeat (values
    that only differ in characters a name cannot hold) get `-2`, `-3`."""
    names: list[str] = []
    for combo in swept:
        parts = []
        for key, value in combo:
            leaf = key.split(".")[-1].split("/")[-1]
            parts.append(leaf + re.sub(r"[^A-Za-z0-9._-]", "", value.strip("'\"")))
        stem = (prefix + "-".join(parts))[:60].rstrip("-.")
        name, n = stem, 1
        while name in names:
            n += 1
            name = f"{stem}-{n}"
        names.append(name)
    return names


def sweep(
    path: str | os.PathLike[str] = ".",
    source: str | None = None,
    *,
    overrides: Sequence[str],
    from_iteration: int | None = None,
    from_step: str | None = None,
    name_prefix: str | None = None,
    iterations: int | None = None,
    tags: Sequence[str] = (),
    jobs: int | None = None,
    executor: str = "local",
    executor_params: Sequence[str] = (),
    timeout: float | None = None,
    stage_timeout: float | None = None,
    run: bool = True,
    argv: Sequence[str] = (),
    progress: Progress = quiet,
    wait: bool | None = None,
) -> FanoutResult:
    """One fork of `source`'s checkpoint per combination of the sweep overrides (Hydra's
    multirun grammar), every one checked before the first is made; then (unless not
    `run`) the forks run side by side (`run_jobs`)."""
    from mlfork.adapters.hydra import expand_sweep
    from mlfork.ops.running import fork

    started = time.monotonic()
    combos = expand_sweep(list(overrides))
    if not any(c.swept for c in combos):
        raise UsageError("nothing to sweep: give a key several values (model.lr=0.1,0.2 or"
                         " range(1,4)); one fork is 'mlfork branch'")
    params = _check_executor(executor, executor_params, jobs)
    project = Project.open(path)
    try:
        src = lineage.resolve_run(project, source)
        runner = _runner(project, executor, params, wait) if run else None
    finally:
        project.close()
    prefix = f"{src}-" if name_prefix is None else name_prefix
    if prefix and not prefix.endswith(("-", "_", ".")):
        prefix += "-"
    if prefix and not naming.RUN_NAME_RE.fullmatch(prefix + "x"):
        raise UsageError(f"--name-prefix '{name_prefix}' cannot start a run name: letters,"
                         " digits, '.', '_' and '-', starting with a letter or digit")
    names = sweep_names(prefix, [c.swept for c in combos])
    made = fork.branches(
        path, src, forks=[(n, c.overrides) for n, c in zip(names, combos, strict=True)],
        from_iteration=from_iteration, from_step=from_step, iterations=iterations,
        tags=tags, timeout=timeout, stage_timeout=stage_timeout, argv=argv,
        progress=progress, wait=wait, deferred=run,  # each job delivers its fork's writes
    )
    for made_fork in made:
        progress(Event("note", made_fork.name, message=(
            f"forked '{made_fork.name}' from {made_fork.fork_run} at iteration"
            f" {made_fork.fork_iteration} {made_fork.fork_step}:"
            f" {' '.join(made_fork.own_overrides)}")))
    if not run:
        return FanoutResult([], executor, 0, [m.to_dict() for m in made],
                            time.monotonic() - started)
    result = run_jobs(path, [m.name for m in made], jobs=jobs, executor=executor,
                      progress=progress, runner=runner)
    result.forks = [m.to_dict() for m in made]
    result.seconds = time.monotonic() - started
    return result


# -- running jobs --------------------------------------------------------------------------------


def _runner(project: Project, executor: str, params: Sequence[str], wait: bool | None) -> Any:
    env = {k: v for k, v in os.environ.items() if k.startswith("MLFORK_")}
    if wait is not None:
        env["MLFORK_WAIT"] = "1" if wait else "0"
    return _Local(env) if executor == "local" else _Submitit(project, params, env)


def _check_executor(executor: str, params: Sequence[str], jobs: int | None) -> list[str]:
    if executor not in EXECUTORS:
        raise UsageError(f"unknown executor '{executor}': choose one of {', '.join(EXECUTORS)}")
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs must be 1 or more, got {jobs}")
    for text in params:
        if "=" not in text or not text.split("=", 1)[0]:
            raise UsageError(f"--executor-param '{text}': expected KEY=VALUE"
                             " (cluster=local, timeout_min=60, slurm_partition=gpu)")
    if params and executor != "submitit":
        raise UsageError("--executor-param is for --executor submitit")
    if executor == "submitit":
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise UsageError("--executor submitit needs submitit: pip install"
                             " 'mlfork-runs[slurm]' (or pip install submitit)") from None
    return list(params)


def run_jobs(
    path: str | os.PathLike[str] = ".",
    runs: Sequence[str] = (),
    *,
    iterations: int | None = None,
    jobs: int | None = None,
    executor: str = "local",
    executor_params: Sequence[str] = (),
    timeout: float | None = None,
    stage_timeout: float | None = None,
    progress: Progress = quiet,
    wait: bool | None = None,
    runner: Any = None,
) -> FanoutResult:
    """`mlfork resume A B C --jobs J`: each run resumed in a worktree of its own, at most
    `jobs` at a time (default: one per CPU), on `executor`. Every run is checked before
    the first job starts; a job's failure does not stop the others. (`runner`: the
    executor `sweep` made before its forks.)"""
    started = time.monotonic()
    params = [] if runner else _check_executor(executor, executor_params, jobs)
    if iterations is not None and iterations < 1:
        raise UsageError(f"--iterations must be 1 or more, got {iterations}")
    check_positive("--timeout", timeout)
    check_positive("--stage-timeout", stage_timeout)
    project = Project.open(path)
    try:
        names = list(dict.fromkeys(lineage.resolve_run(project, r) for r in runs))
        if not names:
            raise UsageError("name the runs to resume side by side")
        here = lineage.current_run(project)
        for name in names:
            if name == here:
                raise UsageError(
                    f"run '{name}' is checked out here: resume it without --jobs, or switch"
                    " to another branch first ('git switch main')")
            if project.git.resolve_branch(naming.branch_name(name)) is None:
                raise UsageError(f"run '{name}' is only on a remote: 'mlfork pull {name}'"
                                 " first, then resume it")
            worktrees.check_free(project, name)
        parallel = min(jobs or os.cpu_count() or 1, len(names))
        argv_extra = [*(["--iterations", str(iterations)] if iterations else []),
                      *(["--timeout", str(timeout)] if timeout else []),
                      *(["--stage-timeout", str(stage_timeout)] if stage_timeout else [])]
        runner = runner or _runner(project, executor, params, wait)
        results = _drive(project, names, parallel, runner, argv_extra, progress)
        _deliver_rest(project, wait)
    finally:
        project.close()
    return FanoutResult(results, executor, parallel, seconds=time.monotonic() - started)


def _drive(project: Project, names: list[str], parallel: int, runner: Any,
           argv_extra: list[str], progress: Progress) -> list[JobResult]:
    """At most `parallel` jobs at a time; a finished job's slot is given to the next one
    before the finished one is summed up (the summary reads what it committed)."""
    queue = list(names)
    active: dict[str, tuple[Any, Path]] = {}
    done: dict[str, JobResult] = {}
    try:
        while queue or active:
            ended: list[tuple[str, int, Path, str]] = []
            for name, (handle, log) in list(active.items()):
                code, why = runner.poll(handle)
                if code is not None:
                    del active[name]
                    _remove(project, name)
                    ended.append((name, code, log, why))
            while queue and len(active) < parallel:
                name = queue.pop(0)
                log = project.local("logs", name, "job.log")
                try:
                    root = worktrees.add(project, name)
                except Exception as exc:  # noqa: BLE001 - this job fails, the others go on
                    _remove(project, name)
                    ended.append((name, 1, log, _one_line(exc)))
                    continue
                active[name] = (runner.start(root, ["resume", name, *argv_extra], log), log)
                progress(Event("note", name, message=(
                    f"{name}: started in {_rel(project, root)} (log {_rel(project, log)})")))
            for name, code, log, why in ended:
                done[name] = _ended(project, name, code, log, why)
                progress(Event("note", name, message=_summary(done[name])))
            if active:
                time.sleep(POLL)
    except BaseException as exc:
        for handle, _ in active.values():
            runner.stop(handle)
        for name in active:
            _remove(project, name)
        if isinstance(exc, KeyboardInterrupt):
            from mlfork.errors import JobsInterrupted

            raise JobsInterrupted([n for n in names if n not in done], parallel) from None
        raise
    return [done[name] for name in names]


def job(args: list[str]) -> int:
    """A job's process, in its worktree: the run's DVC outputs brought in as a switch to
    its branch brings them (fetched from the DVC remote where the shared cache lacks
    them), then `mlfork ARGS` (a `resume RUN ...`)."""
    from mlfork.cli import main
    from mlfork.errors import MlforkError
    from mlfork.ops.kernel import workspace

    name = args[1]
    try:
        inner = Project.open(".")
        try:
            workspace.materialize(inner, naming.branch_name(name), note=print)
        finally:
            inner.close()
    except MlforkError as exc:
        print(f"mlfork: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    sys.stdout.flush()
    main(args)
    return 0


def _deliver_rest(project: Project, wait: bool | None) -> None:
    """Tracking writes no job delivered (a job that never started): now with `wait`, else
    by the background delivery."""
    from mlfork.ops.mirroring import background, outbox

    if not outbox.pending(project):
        return
    if background.waits(wait):
        background.deliver(project)
    else:
        background.start(project)


def _remove(project: Project, name: str) -> None:
    import contextlib

    from mlfork.errors import MlforkError

    with contextlib.suppress(MlforkError, OSError):
        worktrees.remove(project, worktrees.folder_of(project, name))


def _ended(project: Project, name: str, code: int, log: Path, why: str) -> JobResult:
    job = JobResult(run=name, returncode=code, log=_rel(project, log),
                    resume=f"mlfork resume {name}")
    if code != 0:
        job.error = why or _last_error(log) or f"the job ended with exit status {code}"
    fresh = Project.open(project.root)  # what the job committed, read anew
    try:
        info = lineage.run_info(fresh, name)
        job.status, job.done, job.budget = info.status, info.done, info.budget
        job.headline, job.headline_value = info.headline, info.headline_value
        if code != 0 and job.status == "completed":
            job.status = "failed"
    except Exception:  # noqa: BLE001 - the summary is best effort; the job's code stands
        job.status = "failed" if code else "completed"
    finally:
        fresh.close()
    return job


def _summary(job: JobResult) -> str:
    if job.ok:
        head = (f", {job.headline}={job.headline_value:.4f}"
                if job.headline and job.headline_value is not None else "")
        return f"{job.run}: {job.status} {job.done}/{job.budget}{head}"
    return (f"{job.run}: failed (exit {job.returncode}) at {job.done}/{job.budget}:"
            f" {job.error}; log {job.log}; go on with: {job.resume}")


def _last_error(log: Path) -> str:
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("mlfork: error:")]
    return errors[-1].removeprefix("mlfork: error: ") if errors else ""


def _one_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _rel(project: Project, path: Path) -> str:
    try:
        return path.relative_to(project.home).as_posix()
    except ValueError:
        return str(path)


# -- executors -----------------------------------------------------------------------------------


JOB = ["-m", "mlfork.ops.running.fanout"]  # a job's process: `job` below


def _log(log: Path, args: list[str]) -> Any:
    """A job's log, opened for appending, with a line saying what starts now."""
    fh = open(log, "ab")  # noqa: SIM115 - the caller's with-block closes it
    fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} mlfork {' '.join(args)}\n".encode())
    fh.flush()
    return fh  # a job's process: `job` below


def job_main(cwd: str, args: list[str], log: str, env: dict[str, str]) -> int:
    """One job, wherever the executor runs it (submitit pickles this function): `job` in
    `cwd`, its output appended to `log`. Its exit status is the job's."""
    with _log(Path(log), args) as fh:
        proc = subprocess.run(
            [sys.executable, *JOB, *args], cwd=cwd, stdout=fh,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **env}, check=False,
        )
    return proc.returncode


class _Local:
    """Local processes, each in a session of its own (stopped by SIGINT, as Ctrl-C would)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def start(self, root: Path, args: list[str], log: Path) -> Any:
        with _log(log, args) as fh:  # the child keeps its own descriptor
            return subprocess.Popen(
                [sys.executable, *JOB, *args], cwd=root, stdout=fh,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env}, start_new_session=True,
            )

    def poll(self, proc: subprocess.Popen[bytes]) -> tuple[int | None, str]:
        return proc.poll(), ""

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        import contextlib

        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class _Submitit:
    """submitit's AutoExecutor: SLURM where `sbatch` is, else its local executor
    (`--executor-param cluster=local` asks for the latter). Other KEY=VALUE parameters go
    to `update_parameters` (timeout_min, slurm_partition, gpus_per_node...)."""

    def __init__(self, project: Project, params: Sequence[str], env: dict[str, str]) -> None:
        import submitit
        import yaml

        values: dict[str, Any] = {}
        for text in params:
            key, raw = text.split("=", 1)
            try:
                values[key] = yaml.safe_load(raw) if raw else raw
            except yaml.YAMLError:
                values[key] = raw
        cluster = values.pop("cluster", None)
        self.env = env
        folder = project.home / naming.LOCAL_DIR / "submitit"  # its pickles and logs
        try:
            self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
            self.executor.update_parameters(**values)
        except (ValueError, NameError, TypeError, RuntimeError) as exc:
            raise UsageError(f"--executor-param: {_one_line(exc)}") from exc

    def start(self, root: Path, args: list[str], log: Path) -> Any:
        return self.executor.submit(job_main, str(root), args, str(log), self.env)

    def poll(self, job: Any) -> tuple[int | None, str]:
        if not job.done():
            return None, ""
        try:
            return int(job.result()), ""
        except Exception as exc:  # noqa: BLE001 - the job died: its code is a failure
            return 1, f"the {type(job).__name__} {job.job_id} failed: {_one_line(exc)}"

    def stop(self, job: Any) -> None:
        import contextlib

        with contextlib.suppress(Exception):
            job.cancel(check=False)
        deadline = time.monotonic() + GRACE
        while not job.done() and time.monotonic() < deadline:
            time.sleep(POLL)


if __name__ == "__main__":
    sys.exit(job(sys.argv[1:]))
