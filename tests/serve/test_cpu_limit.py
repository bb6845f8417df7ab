"""The CPU-limited worker loop (:mod:`serve.cpu_limit`) on its own: tasks are cut at their user-time limit on
the exact process clock, even when the kernel's timer signals early; time the kernel spends for a task
(faulting in memory) is not counted."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import resource
import signal
from multiprocessing.connection import Connection

from serve.cpu_limit import CPU, OK, SLACK_S, Outcome, serve_tasks, user_seconds


def _spin(task: tuple[float, float]) -> str:
    """Burn user CPU for ``total_s``; at ``early_s`` raise SIGVTALRM ourselves, as a timer running ahead
    would. A negative ``early_s``: never signal, and swallow every ``Exception`` as a careless decoder might.
    ``total_s`` negative: spend ``-total_s`` of *system* time instead, the kernel allocating and zeroing
    memory (``posix_fallocate`` on a memfd: no user-mode work at all), as a decode of a large frame does."""
    early_s, total_s = task
    if total_s < 0:
        start_sys = resource.getrusage(resource.RUSAGE_SELF).ru_stime
        while resource.getrusage(resource.RUSAGE_SELF).ru_stime - start_sys < -total_s:
            memory = os.memfd_create("page-faults")
            os.posix_fallocate(memory, 0, 64 << 20)
            os.close(memory)
        return "done"
    start = user_seconds()
    signalled = early_s < 0
    while (used := user_seconds() - start) < total_s:
        if not signalled and used >= early_s:
            signalled = True
            signal.raise_signal(signal.SIGVTALRM)
        if early_s < 0:
            with contextlib.suppress(Exception):  # what an ``except Exception: pass`` in a decoder does
                sum(range(1000))
    return "done"


def _as_error(exc: Exception) -> tuple[str, str]:
    return "error", repr(exc)


def _worker(conn: Connection, parents_end: Connection) -> None:
    parents_end.close()  # forked with it: closed here, so the parent's close reaches us as EOF
    serve_tasks(conn, _spin, _as_error)


def _run_tasks(tasks: list[tuple[float, tuple[float, float]]]) -> list[Outcome]:
    context = multiprocessing.get_context("fork")  # the worker function lives in this test module
    parent, child = context.Pipe()
    worker = context.Process(target=_worker, args=(child, parent), daemon=True)
    worker.start()
    child.close()
    try:
        outcomes = []
        for task in tasks:
            parent.send(task)
            assert parent.poll(30), "the worker did not answer"
            outcomes.append(Outcome(*parent.recv()))
        return outcomes
    finally:
        parent.close()
        worker.join(10)
        assert worker.exitcode == 0, "the worker did not return when its pipe closed"


def test_an_early_signal_does_not_cut_a_task_before_its_limit():
    limit = 0.2
    tasks = [(limit, (0.05, 0.15)), (limit, (0.0, 0.1)), (limit, (0.05, 5.0)), (limit, (-1.0, 5.0))]
    early, finished, cut, careless = _run_tasks(tasks)
    assert early.status == OK and early.value == "done" and early.cpu_s >= 0.15, early  # signalled at 0.05 s
    assert finished.status == OK and finished.cpu_s < limit, finished
    assert cut.status == CPU and limit - 2 * SLACK_S <= cut.cpu_s < limit + 0.1, cut  # cut at 0.2 s, not run 5 s
    # a task that swallows every Exception is cut all the same
    assert careless.status == CPU and limit - 2 * SLACK_S <= careless.cpu_s < limit + 0.1, careless


def test_system_time_is_not_counted():
    """Memory the kernel faults in is bounded by the pixel budgets, and its price is the host's (first touch on
    a fresh VM: ~50 us a page); only user time, the work a file can multiply, is limited."""
    limit = 0.1
    (kernel_work,) = _run_tasks([(limit, (0.0, -3 * limit))])
    assert kernel_work.status == OK and kernel_work.value == "done" and kernel_work.cpu_s < limit, kernel_work
