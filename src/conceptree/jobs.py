"""One runner for every many-task job: :func:`fan_out` runs picklable tasks in this process, in a
process pool or on Ray, retries each failing task, and applies one failure policy per call.

explain-many (one task per image), the reference index (one task per shard) and the evaluation
cache (one task per chunk of photos) all run through it. It sits below them: it imports nothing
of the explainer, the index, the evaluation or the runs.

A *task* is a picklable callable without arguments (a dataclass with ``__call__``); what it
returns is its result. Two optional attributes describe it: ``task_id`` (a name for failure
records and messages; default: its position) and ``size`` (its weight on the progress bar, e.g.
the images of a shard; default 1). State a task builds once per process (a model, a traced
engine) belongs on a worker object the tasks share: in this process they share the one
instance; on Ray or in a process pool each task gets its own pickled copy.

Retries and failures:

- an exception raised by a task, a killed Ray worker or a broken process pool is retried, up to
  ``retries`` more attempts;
- a :class:`~conceptree.errors.ConceptreeError` is the user's problem (a bad file, a model of
  another index): it is not retried;
- after its last attempt a task has *failed*: ``on_failure="record"`` keeps going and returns
  the failures in :attr:`FanOutResult.failures`; ``on_failure="raise"`` stops: in this process
  at once, on Ray or in a pool once the tasks already submitted have ended (their outputs stay,
  for a resume). It raises the task's own :class:`ConceptreeError`, or :class:`TaskFailed`.

Fault injection and logging: ``task_wrapper(task, attempt)`` is called in the worker instead of
``task()`` (``attempt`` counts from 1) and must call ``task()`` itself; tests use it to fail or
kill an attempt, and it can time or log each attempt.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import ConceptreeError, InputError
from .tasks import executor_kind, ray_session

__all__ = ["EXECUTORS", "FanOutResult", "Progress", "TaskFailed", "TaskFailure", "fan_out"]

R = TypeVar("R")

#: executor names :func:`fan_out` accepts (``sequential`` is ``local``; ``auto``: Ray when installed).
EXECUTORS = ("auto", "local", "sequential", "process", "ray")
ON_FAILURE = ("record", "raise")

TaskWrapper = Callable[[Callable[[], Any], int], Any]


@dataclass(frozen=True, kw_only=True)
class TaskFailure:
    """A task that failed after its last attempt.

    Parameters
    ----------
    index : int
        Its position in the tasks given to :func:`fan_out`.
    task_id : str
        Its ``task_id`` attribute (or its position).
    message : str
        ``"ExceptionType: message"`` of the last attempt's error, whole (records keep it; one-line
        displays take its first line).
    attempts : int
        Attempts made (1 + retries, or 1 for a :class:`ConceptreeError`, which is not retried).
    """

    index: int
    task_id: str
    message: str
    attempts: int


class TaskFailed(ConceptreeError):
    """A task failed after its retries (``on_failure="raise"``); :attr:`failure` says which and why."""

    def __init__(self, failure: TaskFailure, *, hint: str | None = None) -> None:
        self.failure, self.hint = failure, hint
        first = failure.message.splitlines()[0] if failure.message else ""
        text = f"{failure.task_id} failed after {failure.attempts} attempt(s) ({first})"
        super().__init__(f"{text}; {hint}" if hint else text)

    def __reduce__(self):  # picklable across processes despite the keyword-only constructor
        return _task_failed, (self.failure, self.hint)


def _task_failed(failure: TaskFailure, hint: str | None) -> TaskFailed:
    return TaskFailed(failure, hint=hint)


@dataclass(frozen=True, kw_only=True)
class Progress:
    """A progress bar (tqdm) over the tasks, each counted by its ``size`` (default 1)."""

    description: str
    unit: str = "task"


@dataclass(kw_only=True)
class FanOutResult(Generic[R]):
    """What :func:`fan_out` ran.

    Attributes
    ----------
    results : list
        Per task, in the order given: its result, or ``None`` where it failed.
    attempts : list of int
        Per task: the attempts it took (0: not run, after an abort).
    failures : list of TaskFailure
        The failed tasks, in the order given (empty under ``on_failure="raise"``, which raises).
    executor : str
        ``"local"``, ``"process"`` or ``"ray"``.
    workers : int
        Tasks run at a time (0 when there was no task).
    wall_s : float
        Seconds the run took.
    """

    results: list[R | None]
    attempts: list[int]
    failures: list[TaskFailure]
    executor: str
    workers: int
    wall_s: float

    @property
    def ok(self) -> bool:
        """Whether every task succeeded."""
        return not self.failures


def fan_out(
    tasks: Sequence[Callable[[], R]],
    *,
    executor: str = "local",
    retries: int = 2,
    on_failure: str = "record",
    workers: int | None = None,
    ray_address: str | None = None,
    gpu_per_task: bool = False,
    progress: Progress | None = None,
    task_wrapper: TaskWrapper | None = None,
) -> FanOutResult[R]:
    """Run every task, retrying a failing one up to ``retries`` times, with one failure policy.

    Parameters
    ----------
    tasks : sequence of picklable callables
        Each is called without arguments (see the module's docstring for ``task_id``/``size``).
    executor : {"local", "sequential", "process", "ray", "auto"}
        ``local`` (= ``sequential``): one after the other in this process. ``process``: a pool
        of ``workers`` spawned processes, each with ``CPUs // workers`` torch threads. ``ray``:
        Ray tasks (a local Ray with this machine's CPUs, or ``ray_address``), each with
        ``CPUs / workers`` CPUs and as many torch threads. ``auto``: Ray when installed, else local.
    retries : int
        Further attempts of a task whose attempt raised (not a :class:`ConceptreeError`) or whose
        worker died.
    on_failure : {"record", "raise"}
        ``record``: go on, the failures are in the result. ``raise``: stop at the first failed
        task (in a pool or on Ray, after the submitted tasks end) and raise its
        :class:`ConceptreeError` or a :class:`TaskFailed`.
    workers : int, optional
        Tasks at a time in a pool (default: the CPU count) or on Ray (default and cap: Ray's CPUs).
    ray_address : str, optional
        An existing Ray cluster (``ray://host:10001`` or ``auto``).
    gpu_per_task : bool
        On Ray, one GPU per task when torch sees one here.
    progress : Progress, optional
        Show a progress bar.
    task_wrapper : callable, optional
        Called in the worker as ``task_wrapper(task, attempt)`` instead of ``task()``; it must
        call ``task()``. For logging, timing, and fault injection in tests. Picklable for Ray
        and the pool.

    Returns
    -------
    FanOutResult
        Results in task order, attempts and failures.
    """
    if on_failure not in ON_FAILURE:
        raise InputError(f"unknown failure policy {on_failure!r}; use record or raise")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InputError(f"retries must be an int >= 0, got {retries!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise InputError(f"workers must be an int >= 1, got {workers!r}")
    kind = _kind(executor)
    run = _Run(list(tasks), retries=retries, on_failure=on_failure, task_wrapper=task_wrapper)
    t0 = time.perf_counter()
    used = 0
    if run.tasks:
        run.open_bar(progress)
        try:
            if kind == "ray":
                used = _run_ray(run, workers, ray_address, gpu_per_task)
            elif kind == "process":
                used = _run_pool(run, workers or os.cpu_count() or 1)
            else:
                used = 1
                _run_local(run)
        finally:
            run.close_bar()
        run.raise_first()
    return FanOutResult(results=run.results, attempts=run.attempts, failures=sorted(run.failures, key=lambda f: f.index),
                        executor=kind, workers=used, wall_s=time.perf_counter() - t0)


def _kind(executor: str) -> str:
    if executor not in EXECUTORS:
        raise InputError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    if executor == "sequential":
        return "local"
    if executor == "process":
        return "process"
    return executor_kind(executor)


def _task_id(task: object, index: int) -> str:
    name = getattr(task, "task_id", None)
    return str(name) if name is not None else f"task {index}"


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _call(task: Callable[[], R], attempt: int, task_wrapper: TaskWrapper | None) -> R:
    """One attempt at a task (in the worker)."""
    return task() if task_wrapper is None else task_wrapper(task, attempt)


def _set_threads(threads: int) -> None:
    """torch's thread count in a worker process (nothing when torch is not installed)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the package
        return
    torch.set_num_threads(max(1, threads))


def _call_in_ray(task: Callable[[], R], attempt: int, task_wrapper: TaskWrapper | None) -> R:
    """A Ray task: torch uses the CPUs Ray assigned (set in the worker only)."""
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    _set_threads(int(round(cpus)))
    return _call(task, attempt, task_wrapper)


@dataclass
class _Run:
    """The bookkeeping of one :func:`fan_out` call (results, attempts, failures, progress)."""

    tasks: list
    retries: int
    on_failure: str
    task_wrapper: TaskWrapper | None
    results: list = field(init=False)
    attempts: list[int] = field(init=False)
    failures: list[TaskFailure] = field(init=False, default_factory=list)
    first_error: BaseException | None = field(init=False, default=None)
    bar: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.results = [None] * len(self.tasks)
        self.attempts = [0] * len(self.tasks)

    def open_bar(self, progress: Progress | None) -> None:
        if progress is not None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=sum(getattr(t, "size", 1) for t in self.tasks), desc=progress.description,
                            unit=progress.unit)

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def succeeded(self, index: int, attempt: int, value: object) -> None:
        self.results[index], self.attempts[index] = value, attempt
        self._tick(index)

    def errored(self, index: int, attempt: int, exc: BaseException) -> bool:
        """Record a failed attempt; True when the task is to be tried again."""
        self.attempts[index] = attempt
        if not isinstance(exc, ConceptreeError) and attempt <= self.retries:
            return True
        failure = TaskFailure(index=index, task_id=_task_id(self.tasks[index], index), message=_message(exc),
                              attempts=attempt)
        self.failures.append(failure)
        if self.on_failure == "raise" and self.first_error is None:
            self.first_error = exc if isinstance(exc, ConceptreeError) else TaskFailed(failure)
        self._tick(index)
        return False

    @property
    def stopping(self) -> bool:
        return self.first_error is not None

    def raise_first(self) -> None:
        if self.first_error is not None:
            raise self.first_error

    def _tick(self, index: int) -> None:
        if self.bar is not None:
            self.bar.update(getattr(self.tasks[index], "size", 1))
            if self.failures:
                self.bar.set_postfix(failed=len(self.failures))


def _run_local(run: _Run) -> None:
    for index, task in enumerate(run.tasks):
        attempt = 1
        while True:
            try:
                value = _call(task, attempt, run.task_wrapper)
            except Exception as exc:  # noqa: BLE001 - retried, then recorded or raised by the policy
                if run.errored(index, attempt, exc):
                    attempt += 1
                    continue
                if run.stopping:
                    return
            else:
                run.succeeded(index, attempt, value)
            break


def _run_pool(run: _Run, workers: int) -> int:
    threads = max(1, (os.cpu_count() or 1) // workers)

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_set_threads,
                                   initargs=(threads,))

    pool = new_pool()
    pending: dict[Future, tuple[int, int]] = {}

    def submit(index: int, attempt: int) -> None:
        nonlocal pool
        try:
            future = pool.submit(_call, run.tasks[index], attempt, run.task_wrapper)
        except BrokenProcessPool:  # a worker died: the pool is unusable, a new one takes the retries
            pool.shutdown(wait=False, cancel_futures=True)
            pool = new_pool()
            future = pool.submit(_call, run.tasks[index], attempt, run.task_wrapper)
        pending[future] = (index, attempt)

    try:
        for index in range(len(run.tasks)):
            submit(index, 1)
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                index, attempt = pending.pop(future)
                try:
                    value = future.result()
                except Exception as exc:  # noqa: BLE001 - a task's error or a dead worker's broken pool
                    if run.errored(index, attempt, exc) and not run.stopping:
                        submit(index, attempt + 1)
                else:
                    run.succeeded(index, attempt, value)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return workers


def _run_ray(run: _Run, workers: int | None, ray_address: str | None, gpu_per_task: bool) -> int:
    gpus = 0
    if gpu_per_task:
        import torch

        gpus = 1 if torch.cuda.is_available() else 0
    with ray_session(ray_address) as ray:
        cpus = float(ray.cluster_resources().get("CPU", 1))
        n = max(1, min(workers or int(cpus), int(cpus)))
        # max_retries=0: Ray does not retry by itself; the loop below does, for every executor alike
        remote = ray.remote(num_cpus=cpus / n, num_gpus=gpus, max_retries=0)(_call_in_ray)
        wrapper = ray.put(run.task_wrapper)
        pending = {remote.remote(task, 1, wrapper): (index, 1) for index, task in enumerate(run.tasks)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            index, attempt = pending.pop(done[0])
            try:
                value = ray.get(done[0])
            except Exception as exc:  # noqa: BLE001 - a task's error (its cause) or a dead worker
                cause = getattr(exc, "cause", None) or exc
                if run.errored(index, attempt, cause) and not run.stopping:
                    pending[remote.remote(run.tasks[index], attempt + 1, wrapper)] = (index, attempt + 1)
            else:
                run.succeeded(index, attempt, value)
        return n
