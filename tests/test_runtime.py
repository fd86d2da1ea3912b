"""Process settings and precision: the allocator setting applies (glibc) in a fresh process and
changes no result; a bfloat16 engine conserves and agrees with float32 to its precision. The job
runner (``conceptree.jobs.fan_out``): retries, the two failure policies, a process pool that
survives a dead worker. (Ray: tests/test_runs.py.)"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from conceptree import InputError
from conceptree.attribution import CRPEngine
from conceptree.errors import ConceptreeError
from conceptree.jobs import TaskFailed, TaskFailure, fan_out

from . import helpers


def test_tune_allocator_applies_on_glibc_and_is_a_no_op_elsewhere():
    code = "from conceptree.runtime import tune_allocator; print(tune_allocator())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert proc.returncode == 0 and proc.stdout.strip() == str(expected), proc.stderr


def test_maps_are_equal_with_the_tuned_allocator(tmp_path):
    code = (
        "import sys, numpy as np, torch, torchvision\n"
        "if sys.argv[1] == 'tuned':\n"
        "    from conceptree.runtime import tune_allocator; tune_allocator()\n"
        "from conceptree.attribution import CRPEngine\n"
        "torch.manual_seed(0); m = torchvision.models.resnet18().eval(); x = torch.randn(1, 3, 64, 64)\n"
        "e = CRPEngine(m); a = e.attribute(x)\n"
        "np.save(sys.argv[2], e.neuron_maps(a, channels={'layer3.0.conv1': range(16)}).maps)\n"
    )
    for mode in ("plain", "tuned"):
        subprocess.run([sys.executable, "-c", code, mode, str(tmp_path / f"{mode}.npy")], check=True, timeout=300)
    assert np.array_equal(np.load(tmp_path / "plain.npy"), np.load(tmp_path / "tuned.npy"))


def test_bfloat16_engine_conserves_and_agrees_with_float32():
    model = helpers.torchvision_model("resnet18")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    fp32, bf16 = CRPEngine(model), CRPEngine(model, dtype=torch.bfloat16)
    a32, a16 = fp32.attribute(x), bf16.attribute(x)
    assert a16.input_relevance.dtype == torch.bfloat16 and a16.target == a32.target
    channels = {"layer2.0.conv1": range(16), "layer4.1.conv2": range(16)}
    m32, m16 = fp32.neuron_maps(a32, channels=channels), bf16.neuron_maps(a16, channels=channels)
    scale = np.abs(m16.relevance).max()
    assert np.abs(m16.map_sums - m16.relevance).max() <= 3e-2 * scale  # conservation to bf16 precision
    a, b = m32.maps.reshape(len(m32), -1), m16.maps.reshape(len(m16), -1)
    live = np.linalg.norm(a, axis=1) > 0
    cos = (a * b).sum(1)[live] / np.linalg.norm(a, axis=1)[live] / np.linalg.norm(b, axis=1)[live]
    assert np.median(cos) > 0.99 and cos.min() > 0.8
    with pytest.raises(InputError, match="floating torch.dtype"):
        CRPEngine(model, dtype=torch.int8)


@dataclass(frozen=True)
class Square:
    """A task: ``n * n``, or ``torch.get_num_threads()`` for ``n < 0``."""

    n: int

    @property
    def task_id(self) -> str:
        return f"square {self.n}"

    def __call__(self) -> int:
        return torch.get_num_threads() if self.n < 0 else self.n * self.n


@dataclass(frozen=True)
class Faults:
    """A task wrapper: the listed tasks' attempts up to ``until`` raise (``how="raise"``), raise a
    ConceptreeError (``"user"``) or kill their process (``"exit"``)."""

    tasks: tuple[int, ...]
    until: int = 1
    how: str = "raise"

    def __call__(self, task, attempt):
        if task.n in self.tasks and attempt <= self.until:
            if self.how == "exit":
                os._exit(1)
            if self.how == "user":
                raise ConceptreeError(f"bad input {task.n}")
            raise RuntimeError(f"injected failure {task.n}\nsecond line")
        return task()


def test_fan_out_retries_and_records_failures_in_task_order():
    tasks = [Square(n) for n in range(5)]
    result = fan_out(tasks, retries=2, on_failure="record", task_wrapper=Faults((1, 3), until=1))
    assert result.results == [0, 1, 4, 9, 16] and result.attempts == [1, 2, 1, 2, 1] and result.ok
    assert result.executor == "local" and result.workers == 1
    result = fan_out(tasks, retries=1, task_wrapper=Faults((3, 1), until=5))
    assert result.results == [0, None, 4, None, 16] and result.attempts == [1, 2, 1, 2, 1] and not result.ok
    assert result.failures == [  # the whole message: explain-many's index.json records it
        TaskFailure(index=1, task_id="square 1", message="RuntimeError: injected failure 1\nsecond line", attempts=2),
        TaskFailure(index=3, task_id="square 3", message="RuntimeError: injected failure 3\nsecond line", attempts=2)]
    user = fan_out(tasks, retries=3, task_wrapper=Faults((2,), until=5, how="user"))  # the user's problem: no retry
    assert user.failures == [TaskFailure(index=2, task_id="square 2", message="ConceptreeError: bad input 2", attempts=1)]
    empty = fan_out([], executor="ray")  # nothing to run: no Ray session is started
    assert empty.results == [] and empty.workers == 0 and empty.executor == "ray"


def test_fan_out_raise_stops_at_the_first_failure():
    tasks = [Square(n) for n in range(4)]
    with pytest.raises(TaskFailed, match=r"^square 1 failed after 3 attempt\(s\) \(RuntimeError: injected failure 1\)$") as err:
        fan_out(tasks, retries=2, on_failure="raise", task_wrapper=Faults((1, 2), until=9))
    assert err.value.failure.index == 1 and err.value.failure.attempts == 3
    assert str(TaskFailed(err.value.failure, hint="rerun")).endswith("; rerun")
    with pytest.raises(ConceptreeError, match="^bad input 0$"):  # the task's own error, not wrapped
        fan_out(tasks, on_failure="raise", task_wrapper=Faults((0,), how="user"))
    assert fan_out(tasks, on_failure="raise", task_wrapper=Faults((2,), until=2)).attempts == [1, 1, 3, 1]
    for bad, match in (({"executor": "threads"}, "unknown executor"), ({"on_failure": "ignore"}, "failure policy"),
                       ({"retries": -1}, "retries"), ({"workers": 0}, "workers")):
        with pytest.raises(InputError, match=match):
            fan_out(tasks, **bad)


def test_fan_out_process_pool_retries_a_dead_worker_and_splits_the_threads():
    tasks = [Square(n) for n in (-1, 2, 3, 4)]
    result = fan_out(tasks, executor="process", workers=2, retries=1, task_wrapper=Faults((3,), how="exit"))
    assert result.executor == "process" and result.workers == 2 and result.ok
    assert result.results == [max(1, (os.cpu_count() or 1) // 2), 4, 9, 16]
    assert result.attempts[2] == 2  # its worker died: a new pool ran the retry
    failed = fan_out(tasks[1:], executor="process", workers=1, retries=1, task_wrapper=Faults((4,), until=5))
    assert failed.results == [4, 9, None] and failed.failures[0].attempts == 2
