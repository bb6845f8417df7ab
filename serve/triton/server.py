"""The bundled ``tritonserver`` as a child process: start, wait until every model is ready, stop.

What it does, and why:

* The server binary runs from the installed package (read-only); the python-backend stub for the running
  Python version is copied, with the backend library, into a backend directory in a temporary work dir,
  so site-packages is never modified and several servers can run side by side.
* ``PATH`` starts with this interpreter's ``bin`` so the stub's embedded Python finds this environment's
  packages (onnxruntime, numpy); ``LD_LIBRARY_PATH`` gets the wheel's bundled libraries, as pytriton does.
* Loopback only, free ports unless given; ``--model-control-mode=none`` (every model in the repository is
  loaded at start and the load/unload API is refused: loading a python-backend model is code execution as
  this user) and ``--strict-readiness``: "ready" means every model in the repository loaded.
* The admin APIs (model-repository, shared-memory, trace, logging) are restricted over HTTP and gRPC to
  requests carrying a header with a secret drawn afresh at every start (:attr:`TritonServer.admin_headers`),
  known only to this process. Caveat: Triton takes the secret on its command line, which other local users
  can read in ``/proc/<pid>/cmdline`` unless ``/proc`` is mounted with ``hidepid=2``; model control being
  off is what closes the code-execution hole whatever they read.
* ``--exit-on-error=false`` keeps the server up when a model fails to load, so the failure can be read from
  the repository index API (Triton's own message) before the server is stopped and an error raised.
* The server runs in its own process group; ``stop()`` terminates the group, waits, then kills it. ``stop``
  is idempotent and also registered with ``atexit``. After a first start the ports are kept, so
  :meth:`TritonServer.restart` (what :class:`~serve.triton.supervisor.TritonSupervisor` calls after a crash)
  comes back where clients expect it.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import itertools
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from serve.triton import ports
from serve.triton.bundled import find_bundled_triton
from serve.triton.errors import ModelLoadError, PortInUseError, RepositoryNotFoundError, ServerStartError, TritonError
from serve.triton.lifecycle import Startable
from serve.triton.probes import failed_models, http_status
from serve.triton.urls import TritonURLs

LOGGER = logging.getLogger("serve.triton")
#: Triton's own log lines are forwarded to this logger (level taken from the line's I/W/E prefix).
SERVER_LOGGER = logging.getLogger("serve.triton.server")

DEFAULT_STARTUP_TIMEOUT = 180.0
DEFAULT_STOP_TIMEOUT = 15.0
#: header (HTTP; gRPC prefixes it with ``triton-grpc-protocol-``) that unlocks the restricted APIs
ADMIN_HEADER = "dyntta-admin-key"
#: Triton API groups only the launcher may use: model control, shared-memory registration (Triton would
#: read/write regions a caller names), and trace/logging settings (they name files Triton writes).
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
_SHM_ROOT = Path("/dev/shm")
_start_counter = itertools.count()

_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR}
# Logged as errors/warnings by the bundled server on every host without a GPU, and harmless there.
_CPU_HOST_NOISE = re.compile(
    r"CUDA driver version is insufficient|CudaDriverHelper has not been initialized|"
    r"pinned memory"
)
# e.g. 'failed to start Metrics service: Unavailable - Socket '127.0.0.1:8002' already in use'. A busy HTTP or
# gRPC port stops the server; a busy metrics port does not (it runs on without metrics), so both are checked.
_SERVICE_FAILED = re.compile(r"failed to start (HTTP|GRPC|Metrics) service[^\n\"]*", re.IGNORECASE)


def _parent_death_signal() -> Any:
    """A pre-exec hook that makes the kernel SIGTERM the server when the thread that started it dies, even
    by SIGKILL of the process (Linux ``PR_SET_PDEATHSIG``); None where unavailable. ``prctl`` is looked up
    here, in the parent, so the forked child only calls it (no dlopen between fork and exec)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class TritonServer(Startable):
    """A bundled ``tritonserver`` serving ``model_repository`` on loopback.

    Args:
        model_repository: the repository directory (read-only to the server).
        http_port, grpc_port, metrics_port: fixed ports; ``None`` picks free ones (then kept for restarts).
        startup_timeout: seconds to wait for every model to be ready.
        log_file: also append Triton's log to this file.
        log_verbose: Triton's ``--log-verbose`` level.
        extra_args: more tritonserver flags, e.g. ``["--grpc-infer-thread-count=4"]``.
        restrict_admin: restrict the admin APIs to :attr:`admin_headers` (see the module docstring).
        parent_death_signal: have the kernel stop the server when the starting thread dies. None: only when
            started from the main thread (the signal follows the *thread*); a supervisor whose thread
            outlives the server passes True.
    """

    def __init__(
        self,
        model_repository: str | os.PathLike[str],
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        host: str = "127.0.0.1",
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        log_file: str | os.PathLike[str] | None = None,
        log_verbose: int = 0,
        extra_args: Sequence[str] = (),
        log_lines_kept: int = 400,
        restrict_admin: bool = True,
        parent_death_signal: bool | None = None,
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.host = host
        self._ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.log_file = Path(log_file) if log_file is not None else None
        self.log_verbose = log_verbose
        self.extra_args = list(extra_args)
        self.restrict_admin = restrict_admin
        self.parent_death_signal = parent_death_signal
        self._secret = ""
        self._shm_prefix = ""
        self._log_tail: collections.deque[str] = collections.deque(maxlen=log_lines_kept)
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._urls: TritonURLs | None = None
        self._lock = threading.Lock()
        self._cancel = threading.Event()

    # -- public API

    @property
    def urls(self) -> TritonURLs:
        if self._urls is None:
            raise TritonError("the server is not running; call start() first")
        return self._urls

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def admin_headers(self) -> dict[str, str]:
        """The HTTP header that unlocks the restricted APIs of the running server ({} if unrestricted)."""
        return {ADMIN_HEADER: self._secret} if self._secret else {}

    @property
    def admin_grpc_headers(self) -> dict[str, str]:
        """The same for gRPC (Triton prefixes the key with ``triton-grpc-protocol-``)."""
        return {f"triton-grpc-protocol-{ADMIN_HEADER}": self._secret} if self._secret else {}

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def wait(self, timeout: float | None = None) -> int | None:
        """The server's exit code once it exits within ``timeout`` s, else None (also when not started)."""
        process = self._process
        if process is None:
            return None
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of Triton's log."""
        return "".join(list(self._log_tail)[-lines:])

    def start(self) -> TritonURLs:
        """Start the server and wait until it (and every model) is ready; return its URLs."""
        self._cancel.clear()
        with self._lock:
            if self.is_alive():
                return self.urls
            return self._start_locked()

    def restart(self) -> TritonURLs:
        """Stop what is left of the server (its stubs, its shared memory) and start it again on the same
        ports."""
        self._cancel.clear()
        with self._lock:
            self._stop_locked()
            return self._start_locked()

    def stop(self) -> None:
        """Terminate the server's process group; kill it if it has not exited after ``stop_timeout``. A start
        in progress in another thread is abandoned."""
        self._cancel.set()
        with self._lock:
            self._stop_locked()

    # -- internals

    def _start_locked(self) -> TritonURLs:
        if not self.model_repository.is_dir():
            raise RepositoryNotFoundError(f"model repository {self.model_repository} does not exist")
        if not any((p / "config.pbtxt").is_file() for p in self.model_repository.iterdir()):
            raise RepositoryNotFoundError(f"{self.model_repository} holds no model (no */config.pbtxt)")
        for port in self._ports.values():
            if port is not None:
                ports.check_port_free(port, self.host)
        # A port picked free can be taken before Triton binds it: retry once with new ones.
        for attempt in range(2):
            try:
                urls = self._start_once()
            except PortInUseError as exc:
                self._stop_locked()
                if attempt == 1 or exc.service is None or self._ports.get(exc.service) is not None:
                    raise
                LOGGER.warning("the %s port was taken while Triton started; retrying", exc.service)
            except BaseException:
                self._stop_locked()
                raise
            else:
                # keep the ports: a restart must come back where the clients are
                self._ports = {
                    "http": int(urls.http_address.rsplit(":", 1)[1]),
                    "grpc": int(urls.grpc_address.rsplit(":", 1)[1]),
                    "metrics": int(urls.metrics_url.rsplit(":", 1)[1].split("/")[0]),
                }
                return urls
        raise AssertionError("unreachable")

    def _command(self, ports_: dict[str, int], backends: Path) -> list[str]:
        bundled = find_bundled_triton()
        command = [
            str(bundled.binary),
            f"--model-repository={self.model_repository}",
            "--model-control-mode=none",
            "--strict-readiness=true",
            "--exit-on-error=false",
            "--disable-auto-complete-config",
            f"--http-address={self.host}",
            f"--http-port={ports_['http']}",
            f"--grpc-address={self.host}",
            f"--grpc-port={ports_['grpc']}",
            f"--metrics-address={self.host}",
            f"--metrics-port={ports_['metrics']}",
            "--allow-gpu-metrics=false",
            f"--backend-directory={backends}",
            f"--cache-directory={bundled.caches}",
            f"--backend-config=python,shm-region-prefix-name={self._shm_prefix}",
            "--exit-timeout-secs=5",  # in-flight requests get 5 s on stop, not the default 30
            f"--log-verbose={self.log_verbose}",
        ]
        if self._secret:
            apis = ",".join(RESTRICTED_APIS)
            command += [
                f"--http-restricted-api={apis}:{ADMIN_HEADER}={self._secret}",
                f"--grpc-restricted-protocol={apis}:{ADMIN_HEADER}={self._secret}",
            ]
        return command + self.extra_args

    def _start_once(self) -> TritonURLs:
        bundled = find_bundled_triton()
        ports_ = {k: (v if v is not None else ports.free_port(self.host)) for k, v in self._ports.items()}
        self._workdir = tempfile.TemporaryDirectory(prefix="dyntta-triton-")
        backends = Path(self._workdir.name) / "backends"
        # the whole folder: `uv sync --compile-bytecode` adds a __pycache__ beside the backend's files
        shutil.copytree(bundled.python_backend, backends / "python")
        shutil.copy2(bundled.stub(), backends / "python" / "triton_python_backend_stub")

        urls = TritonURLs.local(ports_["http"], ports_["grpc"], ports_["metrics"], self.host)
        # Unique per start: python-backend regions of concurrent servers, and those a killed server left
        # behind, must not collide with the new ones.
        self._shm_prefix = f"dyntta{os.getpid()}_{next(_start_counter)}_"
        self._secret = secrets.token_urlsafe(24) if self.restrict_admin else ""
        command = self._command(ports_, backends)
        env = os.environ.copy()
        env["PATH"] = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        libs = (env.get("LD_LIBRARY_PATH"), str(bundled.libs))
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
        LOGGER.info("starting %s", " ".join(c.replace(self._secret, "***") if self._secret else c for c in command))
        self._log_tail.clear()
        pdeathsig = self.parent_death_signal
        if pdeathsig is None:
            pdeathsig = threading.current_thread() is threading.main_thread()
        self._process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_parent_death_signal() if pdeathsig else None,
        )
        atexit.register(self.stop)
        self._reader = threading.Thread(target=self._forward_log, args=(self._process,), name="triton-log", daemon=True)
        self._reader.start()
        self._wait_ready(urls)
        self._urls = urls
        LOGGER.info("Triton ready: %s", urls)
        return urls

    def _forward_log(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        sink = self.log_file.open("a", encoding="utf-8") if self.log_file is not None else None
        try:
            for raw in iter(process.stdout.readline, b""):
                line = raw.decode("utf-8", errors="replace")
                self._log_tail.append(line)
                if sink is not None:
                    sink.write(line)
                    sink.flush()
                level = logging.INFO if _CPU_HOST_NOISE.search(line) else _LEVELS.get(line[:1], logging.INFO)
                SERVER_LOGGER.log(level, "%s", line.rstrip())
        finally:
            if sink is not None:
                sink.close()

    def _wait_ready(self, urls: TritonURLs) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._cancel.is_set():
                raise ServerStartError("stopped while starting")
            if self._process.poll() is not None:
                self._raise_for_exit()
            # Models are loaded before the endpoints open, so once "live" the load outcome is known.
            if http_status(urls.http_url + "/v2/health/live") == 200:
                if http_status(urls.http_url + "/v2/health/ready") == 200:
                    self._raise_for_port_failure()
                    self._check_metrics_served(urls)
                    return
                failures = failed_models(urls.http_url, self.admin_headers)
                if failures:
                    raise ModelLoadError(failures, self.log_tail())
            time.sleep(0.1)
        raise ServerStartError(f"Triton was not ready after {self.startup_timeout:.0f} s; log tail:\n{self.log_tail()}")

    def _check_metrics_served(self, urls: TritonURLs, wait: float = 3.0) -> None:
        """Triton runs on without metrics when their port is taken, and under load the log line saying so
        can arrive after readiness: ask the metrics endpoint itself."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if http_status(urls.metrics_url, timeout=1.0) == 200:
                return
            time.sleep(0.2)
        self._raise_for_port_failure()
        raise PortInUseError(f"Triton's metrics endpoint {urls.metrics_url} does not answer (port taken?)", "metrics")

    def _raise_for_port_failure(self) -> None:
        for line in list(self._log_tail):
            match = _SERVICE_FAILED.search(line)
            if match:
                service, message = match.group(1).lower(), match.group(0).strip()
                raise PortInUseError(f"Triton could not start its {service} endpoint: {message}", service)

    def _raise_for_exit(self) -> None:
        assert self._process is not None
        if self._reader is not None:
            self._reader.join(timeout=2)  # collect the last lines
        self._raise_for_port_failure()
        tail = self.log_tail()
        raise ServerStartError(f"tritonserver exited with code {self._process.returncode}; log tail:\n{tail}")

    def _stop_locked(self) -> None:
        process, self._process, self._urls = self._process, None, None
        if process is not None:
            with contextlib.suppress(Exception):
                atexit.unregister(self.stop)
            if process.poll() is None:
                _signal_group(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    LOGGER.warning("tritonserver did not exit in %.0f s; killing it", self.stop_timeout)
                    _signal_group(process.pid, signal.SIGKILL)
                    process.wait()
            # Stubs of the python backend live in the same group; make sure none outlives the server.
            _signal_group(process.pid, signal.SIGKILL)
            if self._reader is not None:
                self._reader.join(timeout=5)
                self._reader = None
            if process.stdout is not None:
                process.stdout.close()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
        if self._shm_prefix:
            # a killed server leaves its python-backend shared memory behind
            for leftover in _SHM_ROOT.glob(self._shm_prefix + "*"):
                with contextlib.suppress(OSError):
                    leftover.unlink()
            self._shm_prefix = ""
        self._secret = ""


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
