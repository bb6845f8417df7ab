"""The provenance header of a benchmark's results file: how the figures were obtained and on what machine state.

Every benchmark records the same things next to its figures (the command to rerun it, the commit it ran at, when
it started, how long it took and the load average around it, since the machines are shared), so they are written
by this one helper, with one spelling of each key, rather than by hand in every script::

    run = Provenance.start("benchmarks.damp_cost", argv)
    ...  # the measurements
    run.write(args.results, {"rows": rows})  # header + body to the file (if any), and printed
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

LoadAverage = tuple[float, float, float]


def load_average() -> LoadAverage:
    """The 1, 5 and 15 minute load averages, to 2 decimals (more is noise)."""
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def git_commit() -> str | None:
    """The short commit of the working tree the benchmark runs in; None without git or outside a repository (a
    results file is still worth writing without it)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def write_json(path: str | Path | None, result: Mapping[str, object]) -> None:
    """Writes ``result`` as indented JSON to ``path``, creating its folder; nothing when ``path`` is None."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


@dataclass(frozen=True)
class Provenance:
    """What a benchmark run notes at its start; :meth:`header` adds what it notes at the end."""

    command: str
    commit: str | None
    started: datetime  # UTC
    load_average_at_start: LoadAverage
    clock: float  # time.monotonic() at the start: elapsed time immune to clock changes

    @classmethod
    def start(cls, module: str, argv: Sequence[str] | None = None) -> Provenance:
        """Notes the start of ``python -m <module> <argv>`` (``argv``: ``sys.argv[1:]`` unless given, for a
        ``main(argv)`` called from code)."""
        command = " ".join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])
        return cls(command, git_commit(), datetime.now(UTC), load_average(), time.monotonic())

    def header(self) -> dict[str, object]:
        """The header fields, as of now: command, commit, started (ISO, UTC), seconds since the start and the load
        average at the start and now."""
        return {
            "command": self.command,
            "commit": self.commit,
            "started": self.started.isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - self.clock, 1),
            "load_average_at_start": list(self.load_average_at_start),
            "load_average_at_end": list(load_average()),
        }

    def write(self, path: str | Path | None, body: Mapping[str, object], *, echo: bool = True) -> dict[str, object]:
        """The header followed by ``body``, written to ``path`` (see :func:`write_json`; None: not written) and,
        with ``echo``, printed as the same JSON; returned. A body key that is also a header key is an error:
        it would hide the provenance or be hidden by it."""
        header = self.header()
        clash = sorted(header.keys() & body.keys())
        if clash:
            raise ValueError(f"the result body repeats header keys {clash}")
        result = {**header, **body}
        write_json(path, result)
        if echo:
            print(json.dumps(result, indent=2), flush=True)
        return result
