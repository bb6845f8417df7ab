"""The loop every CPU-limited worker process of the gateway runs (upload decoding, the playground's corruptions).

A task runs under ``ITIMER_VIRTUAL``: the worker's own *user* CPU time, whose ``SIGVTALRM`` interrupts Python
code (Pillow's marker loops, the corruption suite) between bytecodes. User time is the work a hostile file can
multiply (decompression and parsing loops). System time is not limited: it is the kernel faulting in the memory
a decode touches, which the pixel budgets bound from the headers before any decoding, and whose price depends
on the host, not the file: on a fresh virtual machine the first touch of memory costs ~50 us a page (an
813-byte WebP declaring 36 M pixels: 0.03 s user, 1.84 s system the first time in a process, 0.11 s after;
CI refused a plain 16-megapixel PNG when system time counted). The timer is armed only while a task runs, so
a late signal cannot hit the loop itself. The kernel charges that timer whole scheduler ticks, which on a busy
(virtual) machine ran 16 % ahead of the exact time (CI: the signal came at 0.252 s of a 0.3 s limit); the
handler therefore checks :func:`user_seconds` and re-arms for what is left, so the limit holds on the exact
clock that the metric reports. Code stuck in C ignores the signal, and system time is not counted; the
parent process therefore also waits with a wall-clock limit and kills a worker that overruns it (the caller's
job, see :mod:`serve.decode_pool` and :mod:`serve.playground`).

Each task is answered with an :class:`Outcome`: ``"ok"`` and its value, ``"cpu"`` when the task ran over its
CPU time, or whatever ``on_error`` makes of any other exception (a worker never dies of a task's error),
together with the user CPU seconds the task used (the gateway's decode metric, and how tests tell a refusal from
the headers from a decode).
"""

from __future__ import annotations

import resource
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

OK, CPU = "ok", "cpu"


class Outcome(NamedTuple):
    """A task's answer: ``status`` is :data:`OK`, :data:`CPU` or the worker's ``on_error`` status."""

    status: str
    value: Any
    cpu_s: float = 0.0  # user CPU time of the task in the worker (the limited clock)


class CpuLimitExceeded(BaseException):
    """Not an ``Exception``: a decoder's own ``except Exception`` must not swallow the limit."""


_armed = False
_deadline = 0.0  # user_seconds() at which the running task is over its limit
SLACK_S = 0.001  # closer than this to the deadline counts as reached (not worth re-arming the timer for)
_REPEAT_S = 0.01  # after the limit, signal again this often: a bare ``except:`` in the task cannot outlast it


def user_seconds() -> float:
    """User CPU time of this process, all threads (the clock the limit holds on)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def _on_cpu_limit(signum: int, frame: object) -> None:
    if not _armed:
        return
    left = _deadline - user_seconds()
    if left > SLACK_S:
        signal.setitimer(signal.ITIMER_VIRTUAL, left)
        return
    signal.setitimer(signal.ITIMER_VIRTUAL, _REPEAT_S, _REPEAT_S)
    raise CpuLimitExceeded


def serve_tasks(conn: Connection, run: Callable[[Any], Any], on_error: Callable[[Exception], tuple[str, Any]]) -> None:
    """In a worker process: for each ``(cpu_s, task)`` received, send back the :class:`Outcome` of
    ``run(task)`` under ``cpu_s`` user CPU seconds. ``on_error(exc)`` -> ``(status, value)``. Returns when the
    parent closes the pipe."""
    global _armed, _deadline
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent stops us
    signal.signal(signal.SIGVTALRM, _on_cpu_limit)
    while True:
        try:
            cpu_s, task = conn.recv()
        except (EOFError, OSError):
            return
        start = user_seconds()
        _deadline = start + cpu_s
        _armed = True
        signal.setitimer(signal.ITIMER_VIRTUAL, cpu_s)
        try:
            try:
                value = run(task)
            finally:  # disarmed before anything else runs, on_error included
                _armed = False
                signal.setitimer(signal.ITIMER_VIRTUAL, 0)
            status = OK
        except CpuLimitExceeded:
            status, value = CPU, None
        except Exception as exc:  # a task's bug must not take the worker down: report it
            status, value = on_error(exc)
        finally:
            _armed = False
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        try:
            conn.send(Outcome(status, value, user_seconds() - start))
        except (OSError, ValueError):
            return
