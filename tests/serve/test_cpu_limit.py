"""The CPU-limited worker loop (:mod:`serve.cpu_limit`) on its own: tasks are cut at their limit on the exact
process clock, even when the kernel's profiling timer signals early."""

from __future__ import annotations

import multiprocessing
import signal
import time

from serve.cpu_limit import CPU, OK, Outcome, serve_tasks


def _spin(task: tuple[float, float]) -> str:
    """Burn CPU for ``total_s``; at ``early_s`` raise SIGPROF ourselves, as a timer running ahead would."""
    early_s, total_s = task
    start = time.process_time()
    signalled = False
    while (used := time.process_time() - start) < total_s:
        if not signalled and used >= early_s:
            signalled = True
            signal.raise_signal(signal.SIGPROF)
    return "done"


def _as_error(exc: Exception) -> tuple[str, str]:
    return "error", repr(exc)


def _run_tasks(tasks: list[tuple[float, tuple[float, float]]]) -> list[Outcome]:
    context = multiprocessing.get_context("fork")  # the worker function lives in this test module
    parent, child = context.Pipe()
    worker = context.Process(target=serve_tasks, args=(child, _spin, _as_error), daemon=True)
    worker.start()
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


def test_an_early_signal_does_not_cut_a_task_before_its_limit():
    limit = 0.2
    early, finished, cut = _run_tasks([(limit, (0.05, 0.15)), (limit, (0.0, 0.1)), (limit, (0.05, 5.0))])
    assert early.status == OK and early.value == "done", early  # signalled at 0.05 s, finished at 0.15 s
    assert finished.status == OK and finished.cpu_s < limit, finished
    assert cut.status == CPU and limit - 0.002 <= cut.cpu_s < limit + 0.1, cut  # cut at 0.2 s, not run 5 s
