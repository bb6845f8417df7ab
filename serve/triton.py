"""Start the Triton server bundled in the ``nvidia-pytriton`` wheel, or connect to an external one.

The bundled ``tritonserver`` (2.51) only has the python backend, which is what the CPU flavour of
``model_repository/`` is written for (see ``export/``). Usage::

    from serve.triton import TritonServer, connect

    with TritonServer("model_repository") as urls:      # starts, waits until every model is ready
        client = tritonclient.grpc.InferenceServerClient(urls.grpc_address)
        ...                                              # stopped (process group, no orphan) on exit

    urls = connect("http://triton:8000")                 # an external server (e.g. the NGC container)

``python -m serve.triton --model-repository model_repository`` runs one in the foreground.

What it does, and why:

* The server binary runs from the installed package (read-only); the python-backend stub for the running
  Python version is copied, with the backend library, into a backend directory in a temporary work dir,
  so site-packages is never modified and several servers can run side by side.
* ``PATH`` starts with this interpreter's ``bin`` so the stub's embedded Python finds this environment's
  packages (onnxruntime, numpy); ``LD_LIBRARY_PATH`` gets the wheel's bundled libraries, as pytriton does.
* Loopback only, free ports unless given; ``--model-control-mode=explicit --load-model=*`` and
  ``--strict-readiness``: "ready" means every model in the repository loaded.
* ``--exit-on-error=false`` keeps the server up when a model fails to load, so the failure can be read from
  the repository index API (Triton's own message) before the server is stopped and an error raised.
* The server runs in its own process group; ``stop()`` terminates the group, waits, then kills it. ``stop``
  is idempotent and also registered with ``atexit``.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import contextlib
import ctypes
import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

LOGGER = logging.getLogger(__name__)
#: Triton's own log lines are forwarded to this logger (level taken from the line's I/W/E prefix).
SERVER_LOGGER = logging.getLogger(__name__ + ".server")

DEFAULT_STARTUP_TIMEOUT = 180.0
DEFAULT_STOP_TIMEOUT = 15.0


class TritonError(RuntimeError):
    """Base class of the launcher's errors."""


class RepositoryNotFoundError(TritonError, FileNotFoundError):
    pass


class PortInUseError(TritonError):
    """A port is taken; ``service`` is "http", "grpc" or "metrics" when known."""

    def __init__(self, message: str, service: str | None = None) -> None:
        super().__init__(message)
        self.service = service


class ModelLoadError(TritonError):
    """One or more models failed to load; ``reasons`` maps model name to Triton's message."""

    def __init__(self, reasons: dict[str, str], log_tail: str = "") -> None:
        self.reasons = reasons
        self.log_tail = log_tail
        listed = "; ".join(f"{name}: {reason}" for name, reason in sorted(reasons.items()))
        super().__init__(f"Triton failed to load model(s): {listed}")


class ServerStartError(TritonError):
    """The server exited or did not become ready in time; the message carries the end of its log."""


@dataclass(frozen=True)
class TritonURLs:
    """Where a running server listens.

    ``http_url`` and ``metrics_url`` are full URLs (for httpx/urllib); ``grpc_url`` is ``grpc://host:port``.
    tritonclient wants ``host:port`` without a scheme: use :attr:`http_address` / :attr:`grpc_address`.
    """

    http_url: str  # http://127.0.0.1:PORT
    grpc_url: str  # grpc://127.0.0.1:PORT
    metrics_url: str  # http://127.0.0.1:PORT/metrics

    @property
    def http_address(self) -> str:
        return _netloc(self.http_url)

    @property
    def grpc_address(self) -> str:
        return _netloc(self.grpc_url)

    @classmethod
    def from_http_url(cls, http_url: str, grpc_url: str | None = None, metrics_url: str | None = None) -> TritonURLs:
        """URLs of a server known by its HTTP URL (``http://host:port`` or ``host:port``). gRPC and
        metrics default to Triton's standard layout: the HTTP port + 1 and + 2 on the same host."""
        if "://" not in http_url:
            http_url = "http://" + http_url
        parts = urllib.parse.urlsplit(http_url.rstrip("/"))
        if parts.hostname is None:
            raise TritonError(f"not a URL: {http_url!r}")
        port = parts.port or 8000
        grpc = grpc_url or f"{parts.hostname}:{port + 1}"
        return cls(
            http_url=f"{parts.scheme}://{parts.netloc}",
            grpc_url=grpc if "://" in grpc else "grpc://" + grpc,
            metrics_url=metrics_url or f"{parts.scheme}://{parts.hostname}:{port + 2}/metrics",
        )

    @classmethod
    def from_url(cls, url: str, **others: str | None) -> TritonURLs:
        """``grpc://host:port`` -> HTTP on port - 1 and metrics on port + 1 (Triton's standard layout);
        anything else is an HTTP URL (see :meth:`from_http_url`). ``others``: http_url, grpc_url,
        metrics_url overriding the derived ones."""
        if url.startswith("grpc://"):
            parts = urllib.parse.urlsplit(url)
            if parts.hostname is None or parts.port is None:
                raise TritonError(f"a gRPC URL needs host and port: {url!r}")
            derived = cls(
                f"http://{parts.hostname}:{parts.port - 1}", url, f"http://{parts.hostname}:{parts.port + 1}/metrics"
            )
            return dataclasses.replace(derived, **{k: v for k, v in others.items() if v})
        return cls.from_http_url(url, others.get("grpc_url"), others.get("metrics_url"))

    @classmethod
    def local(cls, http_port: int, grpc_port: int, metrics_port: int, host: str = "127.0.0.1") -> TritonURLs:
        return cls(f"http://{host}:{http_port}", f"grpc://{host}:{grpc_port}", f"http://{host}:{metrics_port}/metrics")


def _netloc(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc if "://" in url else url


# --- the bundled server -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundledTriton:
    """Paths of the tritonserver distribution inside the installed pytriton package."""

    root: Path  # .../site-packages/pytriton/tritonserver
    libs: Path  # .../site-packages/nvidia_pytriton.libs

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    @property
    def python_backend(self) -> Path:
        return self.root / "backends" / "python"

    @property
    def caches(self) -> Path:
        return self.root / "caches"

    def stub(self, version: str | None = None) -> Path:
        version = version or f"{sys.version_info.major}.{sys.version_info.minor}"
        return self.root / "python_backend_stubs" / version / "triton_python_backend_stub"


def find_bundled_triton() -> BundledTriton:
    """Locate the tritonserver shipped in the ``nvidia-pytriton`` wheel (without importing pytriton, which
    pulls in its whole proxy stack)."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonError("the nvidia-pytriton package is not installed; it bundles the tritonserver binary")
    package = Path(next(iter(spec.submodule_search_locations)))
    bundled = BundledTriton(root=package / "tritonserver", libs=package.parent / "nvidia_pytriton.libs")
    if not bundled.binary.is_file():
        raise TritonError(f"no tritonserver binary at {bundled.binary}")
    if not bundled.stub().is_file():
        raise TritonError(
            f"the pytriton wheel has no python-backend stub for Python "
            f"{sys.version_info.major}.{sys.version_info.minor} ({bundled.stub()})"
        )
    if not bundled.libs.is_dir():  # editable installs keep them beside the binary
        bundled = BundledTriton(root=bundled.root, libs=bundled.root / "external_libs")
    return bundled


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(f"port {host}:{port} is already in use") from exc
            raise


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
    """A pre-exec hook that makes the kernel SIGTERM the server when this process dies, even by SIGKILL
    (Linux ``PR_SET_PDEATHSIG``); None where unavailable. ``prctl`` is looked up here, in the parent, so the
    forked child only calls it (no dlopen between fork and exec)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class TritonServer:
    """A bundled ``tritonserver`` serving ``model_repository`` on loopback.

    Args:
        model_repository: the repository directory (read-only to the server).
        http_port, grpc_port, metrics_port: fixed ports; ``None`` picks free ones.
        startup_timeout: seconds to wait for every model to be ready.
        log_file: also append Triton's log to this file.
        log_verbose: Triton's ``--log-verbose`` level.
        extra_args: more tritonserver flags, e.g. ``["--grpc-infer-thread-count=4"]``.
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
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.host = host
        self._ports = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.log_file = Path(log_file) if log_file is not None else None
        self.log_verbose = log_verbose
        self.extra_args = list(extra_args)
        self._log_tail: collections.deque[str] = collections.deque(maxlen=log_lines_kept)
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._urls: TritonURLs | None = None
        self._lock = threading.Lock()

    # -- public API

    @property
    def urls(self) -> TritonURLs:
        if self._urls is None:
            raise TritonError("the server is not running; call start() first")
        return self._urls

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of Triton's log."""
        return "".join(list(self._log_tail)[-lines:])

    def start(self) -> TritonURLs:
        """Start the server and wait until it (and every model) is ready; return its URLs."""
        with self._lock:
            if self.is_alive():
                return self.urls
            if not self.model_repository.is_dir():
                raise RepositoryNotFoundError(f"model repository {self.model_repository} does not exist")
            if not any((p / "config.pbtxt").is_file() for p in self.model_repository.iterdir()):
                raise RepositoryNotFoundError(f"{self.model_repository} holds no model (no */config.pbtxt)")
            for port in self._ports.values():
                if port is not None:
                    check_port_free(port, self.host)
            # A port picked free can be taken before Triton binds it: retry once with new ones.
            for attempt in range(2):
                try:
                    return self._start_once()
                except PortInUseError as exc:
                    self._stop_locked()
                    if attempt == 1 or exc.service is None or self._ports.get(exc.service) is not None:
                        raise
                    LOGGER.warning("the %s port was taken while Triton started; retrying", exc.service)
                except BaseException:
                    self._stop_locked()
                    raise
            raise AssertionError("unreachable")

    def stop(self) -> None:
        """Terminate the server's process group; kill it if it has not exited after ``stop_timeout``."""
        with self._lock:
            self._stop_locked()

    def __enter__(self) -> TritonURLs:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- internals

    def _start_once(self) -> TritonURLs:
        bundled = find_bundled_triton()
        ports = {k: (v if v is not None else free_port(self.host)) for k, v in self._ports.items()}
        self._workdir = tempfile.TemporaryDirectory(prefix="dyntta-triton-")
        backends = Path(self._workdir.name) / "backends"
        (backends / "python").mkdir(parents=True)
        for item in bundled.python_backend.iterdir():
            shutil.copy2(item, backends / "python" / item.name)
        shutil.copy2(bundled.stub(), backends / "python" / "triton_python_backend_stub")

        urls = TritonURLs.local(ports["http"], ports["grpc"], ports["metrics"], self.host)
        # A unique shared-memory prefix: python-backend regions of concurrent servers must not collide.
        shm_prefix = f"dyntta{os.getpid()}_{ports['grpc']}_"
        command = [
            str(bundled.binary),
            f"--model-repository={self.model_repository}",
            "--model-control-mode=explicit",
            "--load-model=*",
            "--strict-readiness=true",
            "--exit-on-error=false",
            "--disable-auto-complete-config",
            f"--http-address={self.host}",
            f"--http-port={ports['http']}",
            f"--grpc-address={self.host}",
            f"--grpc-port={ports['grpc']}",
            f"--metrics-address={self.host}",
            f"--metrics-port={ports['metrics']}",
            "--allow-gpu-metrics=false",
            f"--backend-directory={backends}",
            f"--cache-directory={bundled.caches}",
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            "--exit-timeout-secs=5",  # in-flight requests get 5 s on stop, not the default 30
            f"--log-verbose={self.log_verbose}",
            *self.extra_args,
        ]
        env = os.environ.copy()
        env["PATH"] = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        libs = (env.get("LD_LIBRARY_PATH"), str(bundled.libs))
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
        LOGGER.info("starting %s", " ".join(command))
        self._log_tail.clear()
        # The parent-death signal is tied to the starting thread: only set it from the main thread, where
        # it cannot fire while this process lives on.
        in_main = threading.current_thread() is threading.main_thread()
        self._process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_parent_death_signal() if in_main else None,
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
            if self._process.poll() is not None:
                self._raise_for_exit()
            # Models are loaded before the endpoints open, so once "live" the load outcome is known.
            if _http_status(urls.http_url + "/v2/health/live") == 200:
                if _http_status(urls.http_url + "/v2/health/ready") == 200:
                    self._raise_for_port_failure()
                    self._check_metrics_served(urls)
                    return
                failures = _failed_models(urls.http_url)
                if failures:
                    raise ModelLoadError(failures, self.log_tail())
            time.sleep(0.1)
        raise ServerStartError(f"Triton was not ready after {self.startup_timeout:.0f} s; log tail:\n{self.log_tail()}")

    def _check_metrics_served(self, urls: TritonURLs, wait: float = 3.0) -> None:
        """Triton runs on without metrics when their port is taken, and under load the log line saying so
        can arrive after readiness: ask the metrics endpoint itself."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if _http_status(urls.metrics_url, timeout=1.0) == 200:
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


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def _http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method="POST" if data is not None else "GET", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def repository_index(http_url: str) -> list[dict[str, Any]]:
    """Triton's repository index: ``[{"name", "version", "state", "reason"}, ...]``."""
    return list(_http_json(http_url.rstrip("/") + "/v2/repository/index", body={}) or [])


def _failed_models(http_url: str) -> dict[str, str]:
    try:
        index = repository_index(http_url)
    except (OSError, ValueError):
        return {}
    return {
        m["name"]: m.get("reason") or m.get("state", "UNAVAILABLE")
        for m in index
        if m.get("state") not in ("READY", "LOADING")
    }


# --- an external server -------------------------------------------------------------------------------


def connect(
    url: str,
    *,
    http_url: str | None = None,
    grpc_url: str | None = None,
    metrics_url: str | None = None,
    models: Sequence[str] = (),
    timeout: float = 30.0,
) -> TritonURLs:
    """Use an already running server (e.g. the NGC container): wait until it and ``models`` are ready.

    ``url`` is the HTTP URL (``http://host:8000`` or ``host:8000``) or the gRPC one (``grpc://host:8001``);
    readiness is asked over that protocol. The other URLs follow Triton's standard port layout unless
    given (see :meth:`TritonURLs.from_url`).
    """
    urls = TritonURLs.from_url(url, http_url=http_url, grpc_url=grpc_url, metrics_url=metrics_url)
    over_grpc = url.startswith("grpc://")
    deadline = time.monotonic() + timeout
    while True:
        ready = (
            _grpc_ready(urls.grpc_address, models)
            if over_grpc
            else _http_status(urls.http_url + "/v2/health/ready") == 200
            and all(_http_status(f"{urls.http_url}/v2/models/{name}/ready") == 200 for name in models)
        )
        if ready:
            return urls
        if time.monotonic() >= deadline:
            live = not over_grpc and _http_status(urls.http_url + "/v2/health/live") == 200
            detail = _failed_models(urls.http_url) if live else {}
            if detail:
                raise ModelLoadError(detail)
            raise TritonError(f"Triton at {url} is not ready (models {list(models)}) after {timeout:.0f} s")
        time.sleep(0.2)


def _grpc_ready(address: str, models: Sequence[str]) -> bool:
    import tritonclient.grpc as grpcclient  # only needed for gRPC-only connections

    try:
        client = grpcclient.InferenceServerClient(address)
        try:
            return bool(client.is_server_ready(client_timeout=2)) and all(
                client.is_model_ready(name, client_timeout=2) for name in models
            )
        finally:
            client.close()
    except Exception:  # any transport error means "not ready yet"
        return False


@contextlib.contextmanager
def triton(
    model_repository: str | os.PathLike[str] | None = None, *, url: str | None = None, **kwargs: Any
) -> Iterator[TritonURLs]:
    """Connect to ``url`` if given, else start the bundled server on ``model_repository``."""
    if url is not None:
        yield connect(url, **kwargs)
        return
    if model_repository is None:
        raise TritonError("give a model repository to serve or the URL of a running server")
    with TritonServer(model_repository, **kwargs) as urls:
        yield urls


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serve.triton", description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", default="model_repository")
    parser.add_argument("--http-port", type=int)
    parser.add_argument("--grpc-port", type=int)
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--log-file")
    parser.add_argument("--log-verbose", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    server = TritonServer(
        args.model_repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_file=args.log_file,
        log_verbose=args.log_verbose,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with server as urls:
        print(
            json.dumps({"http_url": urls.http_url, "grpc_url": urls.grpc_url, "metrics_url": urls.metrics_url}),
            flush=True,
        )
        try:
            while not stop.is_set() and server.is_alive():
                stop.wait(1.0)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
